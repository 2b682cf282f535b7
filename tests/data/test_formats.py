"""Source formats: SQuAD JSON (spec §4.2), Hugging Face parquet/arrow and hf: specs, format detection."""

from __future__ import annotations

import json
import time

import pytest

from vesper_core.errors import DataError
from vesper_data.sources import FORMATS, detect_format, load_token_ids, read_documents
from vesper_data.tokenizers import load_tokenizer

SQUAD = {"version": "1.1", "data": [
    {"title": "A", "paragraphs": [
        {"context": "Paris is in France.", "qas": [
            {"question": "Where is Paris?", "answers": [{"text": "France"}, {"text": "in France"}]},
            {"question": "Unanswered?", "answers": []},
        ]},
        {"context": "Rome is old.", "qas": []},
    ]},
    {"title": "no paragraphs"},
]}


def test_squad_paragraphs_are_documents(tmp_path):
    path = tmp_path / "train-v1.1.json"
    path.write_text(json.dumps(SQUAD), encoding="utf-8")
    assert detect_format(path) == "squad" and FORMATS.resolve("json") == "squad"
    assert list(read_documents(path)) == ["Paris is in France.\nQ: Where is Paris? A: France\n", "Rome is old.\n"]
    byte = load_tokenizer("byte")
    ids = load_token_ids(path, byte)
    assert byte.decode(ids, skip_special_tokens=False).count("<|endoftext|>") == 1  # EOS between documents


@pytest.mark.parametrize("content,match", [
    ('[{"text": "a list"}]', "not SQuAD-shaped JSON .*found a top-level list"),
    ('{"rows": [1, 2]}', "not SQuAD-shaped JSON .*top-level keys 'rows'"),
    ('{"data": [{"paragraphs": [{"text": "x"}]}]}', "no paragraphs with a 'context' string"),
    ('{"data": [', "invalid JSON"),
])
def test_non_squad_json_is_one_line_naming_the_file(tmp_path, content, match):
    path = tmp_path / "other.json"
    path.write_text(content, encoding="utf-8")
    with pytest.raises(DataError, match=match) as exc:
        list(read_documents(path))
    assert "other.json" in str(exc.value) and "\n" not in str(exc.value)


def test_detection_table(tmp_path):
    assert detect_format("hf:wikitext:wikitext-2-raw-v1@train") == "hf"
    assert detect_format(tmp_path / "x.parquet") == "hf" and detect_format(tmp_path / "x.arrow") == "hf"
    assert detect_format(tmp_path / "x.text") == "text" and detect_format(tmp_path / "x.jsonl") == "jsonl"


@pytest.fixture(scope="module")
def rows():
    return {"text": ["first row", "", "third row é"], "other": [1, 2, 3]}


def test_local_parquet(tmp_path, rows):
    import pyarrow as pa
    import pyarrow.parquet as pq

    path = tmp_path / "d.parquet"
    pq.write_table(pa.table(rows), path)
    assert list(read_documents(path)) == ["first row", "third row é"]
    assert list(read_documents(f"hf:{path}")) == ["first row", "third row é"]
    with pytest.raises(DataError, match="no 'body' column .*text, other"):
        list(read_documents(path, text_field="body"))


def test_dataset_folder_saved_to_disk(tmp_path, rows):
    datasets = pytest.importorskip("datasets")
    folder = tmp_path / "saved"
    datasets.DatasetDict({"train": datasets.Dataset.from_dict(rows),
                          "test": datasets.Dataset.from_dict({"text": ["held out"]})}).save_to_disk(str(folder))
    assert list(read_documents(f"hf:{folder}@test")) == ["held out"]
    assert list(read_documents(f"hf:{folder}@train")) == ["first row", "third row é"]


def test_chat_columns(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    path = tmp_path / "chat.parquet"
    pq.write_table(pa.table({"user": ["hi"], "assistant": ["hello"]}), path)
    assert list(read_documents(path)) == ["User: hi\nAssistant: hello"]


def test_hub_name_offline_fails_fast(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    start = time.perf_counter()
    with pytest.raises(DataError, match="hf:no-such/dataset: not a local file or folder, and HF_HUB_OFFLINE"):
        list(read_documents("hf:no-such/dataset:cfg@train"))
    assert time.perf_counter() - start < 5


def test_missing_local_parquet(tmp_path):
    with pytest.raises(DataError, match="not found"):
        list(read_documents(tmp_path / "absent.parquet"))
    bad = tmp_path / "bad.parquet"
    bad.write_bytes(b"not parquet at all")
    with pytest.raises(DataError, match="bad.parquet: not a readable parquet file"):
        list(read_documents(bad))

"""Dataset inspection and the streamed download writers (no network: rows come from a list)."""

from __future__ import annotations

import json

import pytest

from vesper_data.chat import default_template

from vesper_core.errors import DataError
from vesper_data.download import download_dataset, row_record, write_rows, write_text_budget
from vesper_data.inspect import inspect_dataset, suggest_text_column
from vesper_data.tokenizers.builtin import byte_tokenizer


def test_inspect_text_counts_exactly(tmp_path):
    path = tmp_path / "a.txt"
    path.write_text("héllo world\n\nsecond line\nthird\n", encoding="utf-8")
    report = inspect_dataset(path, tokenizer=byte_tokenizer(), num_samples=2)
    assert report.format == "text" and report.num_records == 3
    assert report.samples == ["héllo world", "second line"]
    assert report.num_chars == len(path.read_text(encoding="utf-8"))
    assert report.num_tokens == len(path.read_bytes())  # bytes, é is two
    assert not report.estimated


def test_inspect_jsonl_text_and_exchanges(tmp_path):
    texts = tmp_path / "t.jsonl"
    texts.write_text('{"id": 1, "text": "abc"}\n{"id": 2, "text": "de"}\n', encoding="utf-8")
    report = inspect_dataset(texts, tokenizer=byte_tokenizer())
    assert (report.text_column, report.columns, report.num_records) == ("text", ["id", "text"], 2)
    assert report.num_chars == 5 and report.num_tokens == 5
    pairs = tmp_path / "p.jsonl"
    pairs.write_text('{"instruction": "hi", "response": "yo"}\n', encoding="utf-8")
    report = inspect_dataset(pairs)
    assert report.conversation == ("instruction", "response") and report.text_column is None
    rendered = default_template().render([{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}])
    assert report.num_chars == len(rendered) and report.num_tokens is None  # what training reads: the template


def test_inspect_estimates_past_the_budget(tmp_path):
    path = tmp_path / "big.txt"
    path.write_text("abcdefghi\n" * 1000, encoding="utf-8")
    report = inspect_dataset(path, tokenizer=byte_tokenizer(), max_chars=2500)
    assert report.estimated and report.num_chars == 10_000 and report.num_tokens == 10_000


def test_inspect_errors_name_the_file(tmp_path):
    with pytest.raises(DataError, match="not found"):
        inspect_dataset(tmp_path / "missing.txt")
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"a": 1}\n{oops\n', encoding="utf-8")
    with pytest.raises(DataError, match="bad.jsonl line 2"):
        inspect_dataset(bad)
    with pytest.raises(DataError, match="download rows first"):
        inspect_dataset("hf:some/dataset")


def test_suggest_text_column():
    assert suggest_text_column([{"title": "a", "body": "a long body"}]) == ("body", None)
    assert suggest_text_column([{"prompt": "p", "completion": "c"}]) == (None, ("prompt", "completion"))


def test_rows_become_conversations_or_text(tmp_path):
    assert row_record({"instruction": "Add", "input": "1+1", "output": "2"}, None) == {
        "messages": [{"role": "user", "content": "Add\n\n1+1"}, {"role": "assistant", "content": "2"}]}
    assert row_record({"text": "plain", "n": 3}, None) == {"text": "plain"}
    assert row_record({"text": "  "}, None) is None
    out = tmp_path / "rows.jsonl"
    rows = [{"text": f"row {i}"} for i in range(10)] + [{"question": "q", "answer": "a"}]
    count, chars = write_rows(iter(rows), out, max_rows=4)
    lines = [json.loads(line) for line in out.read_text().splitlines()]
    assert count == 4 and lines == [{"text": f"row {i}"} for i in range(4)] and chars == 4 * len("row 0")


def test_text_budget_stops_and_skips_short(tmp_path):
    out = tmp_path / "fw.txt"
    docs = ["short"] + [("x" * 99) for _ in range(100)]
    count, chars = write_text_budget(iter(docs), out, max_chars=250)
    assert count == 3 and chars == 297
    assert out.read_text() == ("x" * 99 + "\n") * 3


def test_download_offline_is_one_clear_line_and_writes_nothing(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(DataError, match="offline") as err:
        download_dataset("fineweb-edu", tmp_path / "fw.txt", tokens=1000)
    assert "\n" not in str(err.value)
    assert list(tmp_path.iterdir()) == []

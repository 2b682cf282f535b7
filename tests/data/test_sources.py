"""Readers (text, jsonl), file checks and tokenization with EOS between documents."""

from __future__ import annotations

import json

import numpy as np
import pytest

from vesper_core.errors import DataError, UnknownNameError
from vesper_data import sources
from vesper_data.sources import (FORMATS, detect_format, load_token_ids, read_documents, split_text,
                                 tokenize_documents)
from vesper_data.tokenizers import load_tokenizer


@pytest.fixture(scope="module")
def byte():
    return load_tokenizer("byte")


def _write(path, data: bytes):
    path.write_bytes(data)
    return path


def test_text_reader_counts_invalid_bytes(tmp_path):
    path = _write(tmp_path / "data.txt", b"caf\xc3\xa9 ok\n\xff\xfe bad \x80\nreal \xef\xbf\xbd kept\n")
    warnings = []
    text = "".join(read_documents(path, on_warning=warnings.append))
    assert text == "café ok\n\ufffd\ufffd bad \ufffd\nreal \ufffd kept\n"
    assert warnings == ["data.txt: 3 invalid UTF-8 bytes replaced with U+FFFD"]


def test_text_reader_streams_pieces_at_line_breaks(tmp_path, monkeypatch):
    monkeypatch.setattr(sources, "BLOCK_BYTES", 64)
    lines = [f"line {i} with é and 🎉" for i in range(100)]
    path = _write(tmp_path / "big.txt", ("\ufeff" + "\n".join(lines)).encode("utf-8"))
    pieces = list(read_documents(path))
    assert len(pieces) > 10 and "".join(pieces) == "\n".join(lines)  # BOM dropped, nothing lost
    assert all(p.endswith("\n") and p.continues for p in pieces[:-1])
    assert not getattr(pieces[-1], "continues", False)


@pytest.mark.parametrize("content, expected", [
    (None, "not found"), ("dir", "is a folder"), (b"", "is empty"), (b"  \n\t\n", "no text"),
    (b"text\x00\x01\x02", "looks binary"),
])
def test_bad_files_name_the_path(tmp_path, content, expected):
    path = tmp_path / "input.txt"
    if content == "dir":
        path.mkdir()
    elif content is not None:
        path.write_bytes(content)
    with pytest.raises(DataError, match=expected) as info:
        list(read_documents(path))
    assert str(path) in str(info.value)


def test_jsonl_text_field_and_chat_pairs(tmp_path):
    rows = [{"text": "first doc"}, {"user": "Salut", "assistant": "Bonjour !"}, {"text": ""}, {"body": "x", "text": "last"}]
    path = tmp_path / "data.jsonl"
    path.write_text("\n".join(json.dumps(r, ensure_ascii=False) for r in rows[:2]) + "\n\n"
                    + "\n".join(json.dumps(r) for r in rows[2:]), encoding="utf-8")
    assert list(read_documents(path)) == ["first doc", "User: Salut\nAssistant: Bonjour !", "last"]
    custom = tmp_path / "custom.jsonl"
    custom.write_text('{"body": "in body"}\n', encoding="utf-8")
    assert list(read_documents(custom, text_field="body")) == ["in body"]


def test_jsonl_invalid_line_names_file_and_line(tmp_path):
    path = tmp_path / "data.jsonl"
    path.write_text('{"text": "a"}\n\n{"text": "b" "c"}\n', encoding="utf-8")
    with pytest.raises(DataError, match=r"data.jsonl line 3: invalid JSON \(Expecting ',' delimiter"):
        list(read_documents(path))


def test_jsonl_missing_field_lists_keys(tmp_path):
    path = tmp_path / "data.jsonl"
    path.write_text('{"text": "a"}\n{"title": "t", "body": "b"}\n', encoding="utf-8")
    with pytest.raises(DataError, match=r"line 2: no 'text' field \(keys present: 'title', 'body'\)"):
        list(read_documents(path))
    path.write_text('{"text": 5}\n', encoding="utf-8")
    with pytest.raises(DataError, match="expected a string"):
        list(read_documents(path))


def test_format_detection_and_unknown_format(tmp_path):
    assert detect_format(tmp_path / "a.jsonl") == "jsonl"
    assert detect_format(tmp_path / "a.md") == "text"
    assert detect_format(tmp_path / "a.jsonl", "txt") == "text"
    assert detect_format(tmp_path / "a.json") == "squad"
    with pytest.raises(UnknownNameError, match="choices: chat, hf, jsonl, squad, text"):
        read_documents(tmp_path / "a.txt", "xml")
    assert set(FORMATS.names()) >= {"text", "jsonl"}


def test_split_text_keeps_words_whole():
    text = " ".join(f"word{i}" for i in range(5000))
    pieces = split_text(text, 1000)
    assert "".join(pieces) == text and all(len(p) <= 1000 for p in pieces)
    assert all(p.endswith(" ") for p in pieces[:-1])


def test_tokenize_puts_eos_between_documents_only(byte):
    ids = tokenize_documents(["ab", "", "c"], byte)
    assert ids.dtype == np.uint32 and ids.tolist() == [97, 98, 256, 99]
    assert tokenize_documents(["ab", "c"], byte, eos_between=False).tolist() == [97, 98, 99]


def test_tokenize_pieces_are_one_document(tmp_path, byte, monkeypatch):
    monkeypatch.setattr(sources, "BLOCK_BYTES", 16)
    first = _write(tmp_path / "one.txt", ("hello world\n" * 20).encode())
    second = _write(tmp_path / "two.jsonl", b'{"text": "x"}\n{"text": "y"}\n')
    seen = []
    ids = load_token_ids([first, second], byte, progress=seen.append)
    expected = list(("hello world\n" * 20).encode()) + [256, ord("x"), 256, ord("y")]
    assert ids.tolist() == expected
    assert seen and seen[-1] == len("hello world\n" * 20) + 2


def test_load_token_ids_checks_every_file_first(tmp_path, byte):
    good = _write(tmp_path / "good.txt", b"fine\n")
    with pytest.raises(DataError, match="missing.txt"):
        load_token_ids([good, tmp_path / "missing.txt"], byte)


def test_plugin_format_without_on_warning(tmp_path):
    def shout(path, *, text_field="text"):
        yield path.read_text(encoding="utf-8").upper()

    FORMATS.register("shout-test", shout)
    try:
        path = _write(tmp_path / "a.txt", b"hi")
        assert list(read_documents(path, "shout-test", on_warning=print)) == ["HI"]
    finally:
        FORMATS.unregister("shout-test")

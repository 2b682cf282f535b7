"""Train from text files larger than memory: chunks read and tokenized ahead, windows streamed.

A chunk is up to ``chunk_bytes`` read at a byte offset and cut after its last newline (else its
last space, else at a UTF-8 character boundary); the next chunk starts at the cut, so neither a
UTF-8 sequence nor a line is ever split between chunks (upstream bug 19 split both). The tokens
of a chunk follow the ``leftover`` of the previous one (fewer than seq_len + 1 tokens), and
windows are cut exactly as :class:`~vesper_data.loader.TokenWindows` cuts them (S + 1 tokens,
stride S): the window stream equals the in-memory one when tokenization does not cross lines.

Batches are made of *groups* of ``batch_size * world_size`` consecutive windows (in a seeded
per-chunk permutation when shuffling); rank ``r`` takes windows ``r, r + W, ...`` of each group,
so ranks read disjoint windows and step in lock-step; an epoch ends when no full group is left.
The position (epoch, batch index, chunk byte offset, leftover tokens, window index in the chunk)
is a small JSON-able dict: ``load_state_dict`` resumes exactly, also on another world size.

Memory is bounded by about (prefetch + 2) chunks of text and tokens, whatever the file size.
"""

from __future__ import annotations

import queue
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np
import torch

from vesper_core.errors import ConfigError, DataError
from vesper_data.sources import _InvalidByteCounter, _jsonl_document, check_data_file, split_text

Batch = tuple[torch.Tensor, torch.Tensor]  # input_ids (B, S) int64, labels (B, S) int64
SAMPLE_BYTES = 1 << 20  # read at start to estimate tokens per byte
ENCODE_BYTES = 2 << 20  # text per encode_batch call (all cores; bounds the Python id lists)
_CUT_BYTES = (b"\n", b" ", b"\t")


# -- chunks -------------------------------------------------------------------------------------
def cut_chunk(data: bytes, at_eof: bool) -> int:
    """How many bytes of ``data`` to take: all at EOF, else up to the last newline/space/UTF-8 boundary."""
    if at_eof:
        return len(data)
    for sep in _CUT_BYTES:
        cut = data.rfind(sep)
        if cut >= 0:
            return cut + 1
    lead = len(data) - 1
    while lead > 0 and (data[lead] & 0xC0) == 0x80:  # back over continuation bytes to the lead byte
        lead -= 1
    first = data[lead] if data else 0
    width = 4 if first >= 0xF0 else 3 if first >= 0xE0 else 2 if first >= 0xC0 else 1
    cut = len(data) if len(data) - lead >= width else lead  # keep a complete last character
    return cut or len(data)


def _blocks(data: bytes, size: int) -> Iterator[bytes]:
    """``data`` in blocks of about ``size`` bytes, cut like chunks (never inside a line or character)."""
    start = 0
    while start < len(data):
        end = min(start + size, len(data))
        if end < len(data):
            end = start + cut_chunk(data[start:end], at_eof=False)
        yield data[start:end]
        start = end


@dataclass
class Chunk:
    offset: int  # byte offset of the chunk in the file
    next_offset: int
    ids: np.ndarray  # (n,) uint32 tokens of the chunk's text
    invalid_bytes: int


class ChunkTokenizer:
    """Reads ``path`` chunk by chunk from a byte offset and tokenizes each chunk (text or jsonl)."""

    chunk_type = Chunk  # built from (offset, next_offset, *encode(...))

    def __init__(self, path: Path, tokenizer, chunk_bytes: int, *, fmt: str = "text", text_field: str = "text"):
        self.path, self.tokenizer, self.chunk_bytes = path, tokenizer, chunk_bytes
        self.fmt, self.text_field = fmt, text_field
        self.size = path.stat().st_size

    def read(self, fh, offset: int, limit: int | None = None) -> tuple[bytes, int]:
        limit = limit or self.chunk_bytes
        fh.seek(offset)
        data = fh.read(limit)
        at_eof = offset + len(data) >= self.size
        data = data[:cut_chunk(data, at_eof)]
        return data, offset + len(data)

    def encode(self, data: bytes, offset: int) -> tuple[np.ndarray, int]:
        """Tokens of ``data`` (a chunk read at ``offset``) and its count of invalid UTF-8 bytes.

        Decoded and encoded in blocks of ~``ENCODE_BYTES`` cut at line breaks, so the transient
        text and Python id lists stay small whatever the chunk size: a chunk costs its bytes
        plus its uint32 tokens.
        """
        bad = _InvalidByteCounter()
        parts: list[np.ndarray] = []
        eos = self.tokenizer.eos_id
        for i, block in enumerate(_blocks(data, ENCODE_BYTES)):
            text = bad.clean(block.decode("utf-8", errors="surrogateescape"))
            if offset == 0 and i == 0:
                text = text.removeprefix("\ufeff")
            if self.fmt == "jsonl":
                docs = [_jsonl_document(_parse_line(line, self.path), self.text_field, self.path.name)
                        for line in text.splitlines() if line.strip()]
                encoded = self.tokenizer.encode_batch([d for d in docs if d])
                parts += [np.array(ids + ([eos] if eos is not None else []), np.uint32) for ids in encoded]
            else:
                parts += [np.array(ids, np.uint32) for ids in self.tokenizer.encode_batch(split_text(text))]
        ids = np.concatenate(parts) if parts else np.zeros(0, np.uint32)
        return ids, bad.count

    def chunks(self, start: int, stop: threading.Event | None = None) -> Iterator[Chunk]:
        with self.path.open("rb") as fh:
            offset = start
            while offset < self.size and not (stop is not None and stop.is_set()):
                data, next_offset = self.read(fh, offset)
                yield self.chunk_type(offset, next_offset, *self.encode(data, offset))
                offset = next_offset


def _parse_line(line: str, path: Path):
    import json

    try:
        return json.loads(line)
    except json.JSONDecodeError as exc:
        raise DataError(f"{path.name}: invalid JSON line ({exc.msg}); fix or remove it") from None


class _Prefetcher:
    """Runs ``ChunkTokenizer.chunks`` in a background thread, at most ``depth`` chunks ahead."""

    _END = object()

    def __init__(self, source: ChunkTokenizer, start: int, depth: int):
        self._queue: queue.Queue = queue.Queue(maxsize=depth)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, args=(source, start), daemon=True,
                                        name="vesper-stream-tokenizer")
        self._thread.start()

    def _put(self, item) -> bool:
        while not self._stop.is_set():
            try:
                self._queue.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def _run(self, source: ChunkTokenizer, start: int) -> None:
        try:
            for chunk in source.chunks(start, self._stop):
                if not self._put(chunk):
                    return
            self._put(self._END)
        except BaseException as exc:  # handed to the training thread
            self._put(exc)

    def __iter__(self) -> Iterator[Chunk]:
        while True:
            item = self._queue.get()
            if item is self._END:
                return
            if isinstance(item, BaseException):
                raise item
            yield item

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)


# -- windows and groups -------------------------------------------------------------------------
@dataclass
class StreamPosition:
    """Where the next window comes from: chunk at ``offset``, after ``leftover``, window ``window``."""

    offset: int = 0
    leftover: tuple[int, ...] = ()
    window: int = 0


class StreamingLoader:
    """BatchLoader's interface (iteration, epoch/index, state_dict) over a chunk-tokenized text file.

    ``num_batches`` is exact once an epoch has been read to its end (or the file fits in the
    first sample); before that it is an estimate from the first MiB that always exceeds ``index``,
    and the batch that ends an epoch sets it exactly (the loader reads one group ahead).
    """

    def __init__(self, path: str | Path, tokenizer, seq_len: int, batch_size: int, *, chunk_bytes: int = 50 << 20,
                 fmt: str = "text", text_field: str = "text", shuffle: bool = True, seed: int = 0,
                 rank: int = 0, world_size: int = 1, prefetch: int = 2,
                 on_warning: Callable[[str], None] | None = None):
        if seq_len <= 0 or batch_size <= 0:
            raise ConfigError(f"--seq-len and --batch-size must be positive, got {seq_len} and {batch_size}")
        if chunk_bytes <= 0:
            raise ConfigError(f"--chunk-mb must be positive, got {chunk_bytes} bytes")
        if world_size <= 0 or not 0 <= rank < world_size:
            raise ConfigError(f"rank {rank} is not in 0..{world_size - 1} (world size {world_size})")
        if fmt not in ("text", "jsonl"):
            raise ConfigError(f"--streaming reads text or jsonl files, not {fmt!r}; build a cache for other formats")
        path = Path(path)
        check_data_file(path)
        self.path = path
        self.source = ChunkTokenizer(path, tokenizer, chunk_bytes, fmt=fmt, text_field=text_field)
        self.seq_len, self.batch_size = seq_len, batch_size
        self.shuffle, self.seed = shuffle, seed
        self.rank, self.world_size = rank, world_size
        self.prefetch = prefetch
        self.on_warning = on_warning
        self.drop_last = True
        self.epoch = 0
        self.index = 0  # batches consumed in this epoch
        self.position = StreamPosition()
        self._known_batches: int | None = None
        self._warned = False
        self.tokens_per_byte = self._sample()
        if self.num_batches == 0:
            raise DataError(f"{path} gives fewer than one batch of {batch_size} windows of {seq_len + 1} tokens"
                            f"{f' per rank on {world_size} ranks' if world_size > 1 else ''}; "
                            f"lower --batch-size or --seq-len, or add data")

    @property
    def group_size(self) -> int:
        return self.batch_size * self.world_size

    def _sample(self) -> float:
        """Tokens per byte from the first MiB (exact batch count when that is the whole file)."""
        with self.path.open("rb") as fh:
            data, end = self.source.read(fh, 0, max(SAMPLE_BYTES, 1))
        ids, _ = self.source.encode(data, 0)
        if end >= self.source.size and self.source.chunk_bytes >= self.source.size:
            windows = max(len(ids) - 1, 0) // self.seq_len
            self._known_batches = windows // self.group_size
        return len(ids) / max(len(data), 1)

    @property
    def estimated_tokens(self) -> int:
        return int(self.tokens_per_byte * self.source.size)

    @property
    def num_batches(self) -> int:
        if self._known_batches is not None:
            return self._known_batches
        estimate = max(self.estimated_tokens - 1, 0) // self.seq_len // self.group_size
        return max(estimate, self.index + 1)

    def __len__(self) -> int:
        return self.num_batches

    # -- the stream ----------------------------------------------------------------------
    def _order(self, chunk_offset: int, n: int) -> np.ndarray:
        if not self.shuffle:
            return np.arange(n)
        rng = np.random.default_rng([self.seed, self.epoch, chunk_offset])
        return rng.permutation(n)

    def _chunk_stream(self, start: int) -> tuple[Iterator[Chunk], Callable[[], None]]:
        if self.prefetch <= 0:
            return self.source.chunks(start), lambda: None
        prefetcher = _Prefetcher(self.source, start, self.prefetch)
        return iter(prefetcher), prefetcher.close

    def _groups(self, start: StreamPosition) -> Iterator[tuple[np.ndarray, StreamPosition]]:
        """(group of windows (G, S+1) uint32, the position right after it), from ``start`` to the epoch's end."""
        S, G = self.seq_len, self.group_size
        chunks, close = self._chunk_stream(start.offset)
        bad_bytes = 0
        try:
            leftover = np.asarray(start.leftover, np.uint32)
            skip = start.window
            pending: list[np.ndarray] = []
            for chunk in chunks:
                bad_bytes += chunk.invalid_bytes
                tokens = np.concatenate([leftover, chunk.ids])
                n = (len(tokens) - 1) // S if len(tokens) > S else 0
                order = self._order(chunk.offset, n)
                carried = tuple(int(t) for t in leftover)
                for w in range(skip, n):
                    s = int(order[w]) * S
                    pending.append(tokens[s:s + S + 1])
                    if len(pending) == G:
                        yield np.stack(pending), StreamPosition(chunk.offset, carried, w + 1)
                        pending = []
                skip = 0
                leftover = tokens[n * S:].copy() if n else tokens
        finally:
            close()
        if bad_bytes and not self._warned and self.on_warning is not None:
            self._warned = True
            noun = "byte" if bad_bytes == 1 else "bytes"
            self.on_warning(f"{self.path.name}: {bad_bytes} invalid UTF-8 {noun} replaced with U+FFFD")

    def _batch(self, group: np.ndarray) -> Batch:
        windows = torch.from_numpy(group[self.rank::self.world_size].astype(np.int64))
        return windows[:, :-1], windows[:, 1:]

    def __iter__(self) -> Iterator[Batch]:
        """The rest of the current epoch; when exhausted, the next epoch starts (like BatchLoader)."""
        if self._known_batches is not None and self.index >= self._known_batches:
            self._next_epoch()
        groups = self._groups(self.position)
        current = next(groups, None)
        while current is not None:
            upcoming = next(groups, None)  # one group ahead: the last batch of the epoch is known as such
            if upcoming is None:
                self._known_batches = self.index + 1
            group, self.position = current
            self.index += 1
            yield self._batch(group)
            current = upcoming
        if self._known_batches is None:  # resumed exactly at the end of an epoch
            self._known_batches = self.index
        self._next_epoch()

    def _next_epoch(self) -> None:
        self.epoch, self.index, self.position = self.epoch + 1, 0, StreamPosition()

    def batches_forever(self) -> Iterator[Batch]:
        while True:
            yield from self

    def iter_windows(self) -> Iterator[np.ndarray]:
        """Every window of one epoch in stream order, as (S+1,) uint32 arrays (for tests and tools)."""
        for group, _ in self._groups(StreamPosition()):
            yield from group

    # -- position ------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        if self._known_batches is not None and self.index >= self._known_batches:  # epoch done: next one
            epoch, index, p = self.epoch + 1, 0, StreamPosition()
        else:
            epoch, index, p = self.epoch, self.index, self.position
        return {"epoch": epoch, "index": index, "seed": self.seed,
                "stream": {"offset": p.offset, "leftover": list(p.leftover), "window": p.window,
                           "windows_consumed": index * self.group_size, "path": str(self.path),
                           "chunk_bytes": self.source.chunk_bytes, "seq_len": self.seq_len}}

    def load_state_dict(self, state: dict) -> None:
        """Continue exactly where ``state`` was taken (another batch size or world size is fine)."""
        stream = state.get("stream")
        if not isinstance(stream, dict) or not {"offset", "leftover", "window"} <= set(stream):
            raise DataError("the checkpoint's data position is not a streaming position; resume without "
                            "--streaming, or start a new run")
        if stream.get("chunk_bytes", self.source.chunk_bytes) != self.source.chunk_bytes or \
                stream.get("seq_len", self.seq_len) != self.seq_len:
            raise DataError(f"the checkpoint streamed with --chunk-mb {stream.get('chunk_bytes', 0) / (1 << 20):g} "
                            f"and --seq-len {stream.get('seq_len')}; resume with the same values")
        if not 0 <= int(stream["offset"]) <= self.source.size:
            raise DataError(f"saved stream offset {stream['offset']} is past the end of {self.path} "
                            f"({self.source.size} bytes); the file changed since the checkpoint")
        self.epoch, self.seed = int(state["epoch"]), int(state["seed"])
        consumed = int(stream.get("windows_consumed", int(state["index"]) * self.group_size))
        self.index = consumed // self.group_size
        self.position = StreamPosition(int(stream["offset"]), tuple(int(t) for t in stream["leftover"]),
                                       int(stream["window"]))

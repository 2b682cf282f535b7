"""Stream a conversations .jsonl larger than memory: chunks of whole lines encoded ahead, padded rows out.

The position logic is :class:`~vesper_data.streaming.StreamingLoader`'s (a chunk's byte offset and
the index of the next conversation in that chunk's seeded permutation; groups of
``batch_size x world_size`` conversations, rank ``r`` taking rows ``r, r + W, ...``), so a resumed
run continues exactly. Rows are the padded conversations of :mod:`vesper_data.chat.examples`;
conversations longer than ``seq_len + 1`` tokens and bad records are skipped and counted, and the
counts are reported once, after the first pass over the file.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

import numpy as np

from vesper_core.errors import ConfigError, DataError
from vesper_data.chat.examples import encode_all, pad_examples
from vesper_data.chat.formats import BadRecord, SkipCounter, normalize_record
from vesper_data.chat.template import ChatTemplate
from vesper_data.sources import check_data_file
from vesper_data.streaming import SAMPLE_BYTES, ChunkTokenizer, StreamingLoader, StreamPosition

Example = tuple[np.ndarray, np.ndarray]  # (tokens uint32, mask uint8)


@dataclass
class ChatChunk:
    offset: int
    next_offset: int
    examples: list[Example]
    skipped: SkipCounter


class ChatChunkReader(ChunkTokenizer):
    """Reads whole lines of a .jsonl from a byte offset and encodes their conversations."""

    chunk_type = ChatChunk

    def __init__(self, path: Path, tokenizer, template: ChatTemplate, chunk_bytes: int):
        self.path, self.tokenizer, self.template, self.chunk_bytes = path, tokenizer, template, chunk_bytes
        self.size = path.stat().st_size

    def read(self, fh, offset: int, limit: int | None = None) -> tuple[bytes, int]:
        """Bytes from ``offset`` up to the last newline within ``limit`` (more when one line is longer)."""
        fh.seek(offset)
        data = fh.read(limit or self.chunk_bytes)
        while offset + len(data) < self.size:
            cut = data.rfind(b"\n")
            if cut >= 0:
                data = data[:cut + 1]
                break
            data += fh.read(self.chunk_bytes)  # a line longer than a chunk: keep it whole
        return data, offset + len(data)

    def encode(self, data: bytes, offset: int) -> tuple[list[Example], SkipCounter]:
        counter = SkipCounter()
        conversations = []
        text = data.decode("utf-8", errors="replace")
        if offset == 0:
            text = text.removeprefix("\ufeff")
        import json

        for line in text.splitlines():
            if not line.strip():
                continue
            counter.read += 1
            where = f"a line after byte {offset}"
            try:
                conversations.append(normalize_record(json.loads(line)))
            except json.JSONDecodeError as exc:
                counter.skip("invalid JSON", f"{where}: {exc.msg}")
            except BadRecord as bad:
                counter.skip(bad.reason, f"{where}{': ' + bad.detail if bad.detail else ''}")
        return list(encode_all(conversations, self.template, self.tokenizer, counter)), counter


class ChatStreamingLoader(StreamingLoader):
    """StreamingLoader's interface and exact position over a conversations .jsonl, one padded row each."""

    def __init__(self, path: str | Path, tokenizer, template: ChatTemplate, seq_len: int, batch_size: int, *,
                 chunk_bytes: int = 50 << 20, shuffle: bool = True, seed: int = 0, rank: int = 0,
                 world_size: int = 1, prefetch: int = 2, train_on_prompt: bool = False,
                 on_warning: Callable[[str], None] | None = None):
        if seq_len <= 0 or batch_size <= 0:
            raise ConfigError(f"--seq-len and --batch-size must be positive, got {seq_len} and {batch_size}")
        if chunk_bytes <= 0:
            raise ConfigError(f"--chunk-mb must be positive, got {chunk_bytes} bytes")
        if world_size <= 0 or not 0 <= rank < world_size:
            raise ConfigError(f"rank {rank} is not in 0..{world_size - 1} (world size {world_size})")
        path = Path(path)
        check_data_file(path)
        with path.open("rb") as fh:
            if fh.read(4096).lstrip(b"\xef\xbb\xbf \t\r\n").startswith(b"["):
                raise ConfigError(f"--streaming reads one conversation per line (.jsonl); {path.name} is a JSON "
                                  f"array: drop --streaming or convert it to .jsonl")
        template.check_tokenizer(tokenizer)
        self.path = path
        self.source = ChatChunkReader(path, tokenizer, template, chunk_bytes)
        self.seq_len, self.batch_size = seq_len, batch_size
        self.shuffle, self.seed = shuffle, seed
        self.rank, self.world_size = rank, world_size
        self.prefetch = prefetch
        self.train_on_prompt = train_on_prompt
        self.pad_id = tokenizer.eos_id or 0
        self.on_warning = on_warning
        self.drop_last = True
        self.epoch = 0
        self.index = 0
        self.position = StreamPosition()
        self._known_batches: int | None = None
        self._warned = False
        self.skipped = SkipCounter()
        self.num_too_long = 0
        self.examples_per_byte = self._sample()
        if self.num_batches == 0:
            raise DataError(f"{path} gives fewer than one batch of {batch_size} conversations of at most "
                            f"{seq_len + 1} tokens{f' per rank on {world_size} ranks' if world_size > 1 else ''}; "
                            f"lower --batch-size, raise --seq-len, or add data")

    def _fits(self, example: Example) -> bool:
        return 2 <= len(example[0]) <= self.seq_len + 1

    def _sample(self) -> float:
        with self.path.open("rb") as fh:
            data, end = self.source.read(fh, 0, max(SAMPLE_BYTES, 1))
        examples, _ = self.source.encode(data, 0)
        usable = sum(self._fits(e) for e in examples)
        if end >= self.source.size and self.source.chunk_bytes >= self.source.size:
            self._known_batches = usable // self.group_size
        self.tokens_per_byte = sum(len(e[0]) for e in examples) / max(len(data), 1)
        return usable / max(len(data), 1)

    @property
    def num_batches(self) -> int:
        if self._known_batches is not None:
            return self._known_batches
        estimate = int(self.examples_per_byte * self.source.size) // self.group_size
        return max(estimate, self.index + 1)

    def _groups(self, start: StreamPosition) -> Iterator[tuple[list[Example], StreamPosition]]:
        G = self.group_size
        chunks, close = self._chunk_stream(start.offset)
        skip = start.window
        pending: list[Example] = []
        first_pass = start.offset == 0 and skip == 0 and self.epoch == 0
        try:
            for chunk in chunks:
                usable = [e for e in chunk.examples if self._fits(e)]
                if first_pass:
                    self.skipped.merge(chunk.skipped)
                    self.num_too_long += len(chunk.examples) - len(usable)
                order = self._order(chunk.offset, len(usable))
                for w in range(skip, len(usable)):
                    pending.append(usable[int(order[w])])
                    if len(pending) == G:
                        yield pending, StreamPosition(chunk.offset, (), w + 1)
                        pending = []
                skip = 0
        finally:
            close()
        if first_pass and not self._warned and self.on_warning is not None:
            self._warned = True
            if self.num_too_long:
                self.on_warning(f"{self.path.name}: {self.num_too_long} conversation(s) longer than --seq-len + 1 = "
                                f"{self.seq_len + 1} tokens skipped")
            if self.skipped.num_skipped:
                self.on_warning(self.skipped.summary(self.path.name))

    def _batch(self, group: list[Example]):
        return pad_examples(group[self.rank::self.world_size], self.seq_len, self.pad_id, self.train_on_prompt)

    def iter_windows(self):
        """Every padded row of one epoch in stream order: (input_ids, labels) pairs of (S,) tensors."""
        for group, _ in self._groups(StreamPosition()):
            ids, labels = pad_examples(group, self.seq_len, self.pad_id, self.train_on_prompt)
            yield from zip(ids, labels)

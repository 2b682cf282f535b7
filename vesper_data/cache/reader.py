"""Open a VSPR cache: header and index checked, tokens memory-mapped (nothing else is read).

``TokenCache.open(path)`` costs a few small reads whatever the cache size. ``tokens`` is a
read-only ``np.memmap`` over the token region (uint32 for v1, uint16/uint32 for v2); sequence
``i`` is ``tokens[offsets[i]:offsets[i + 1]]``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np

from vesper_core.errors import CacheFormatError, DataError
from vesper_data.cache.format import HEADER_SIZE, IDX_DTYPE, CacheHeader, idx_path, mask_path, sidecar_path

SCAN_TOKENS = 1 << 24  # tokens per block when scanning ids against the vocabulary


def read_header(path: Path) -> CacheHeader:
    """The checked header of ``path``, plus a check that the file holds every token it declares."""
    if not path.exists():
        raise DataError(f"cache file not found: {path}; build one with `vesper cache build`")
    if path.is_dir():
        raise DataError(f"{path} is a folder; pass the cache's .bin file")
    with path.open("rb") as fh:
        header = CacheHeader.unpack(fh.read(HEADER_SIZE), path)
    size = path.stat().st_size
    expected = HEADER_SIZE + header.data_bytes
    if size < expected:
        raise CacheFormatError(
            f"{path} is truncated: the header declares {header.total_tokens} tokens ({expected} bytes with the "
            f"header) but the file has {size} bytes; rebuild it with `vesper cache build`")
    if size > expected:
        raise CacheFormatError(
            f"{path} has {size - expected} bytes after the {header.total_tokens} tokens its header declares; "
            f"the header or the file is damaged, rebuild it with `vesper cache build`")
    return header


def read_offsets(path: Path, header: CacheHeader, on_warning: Callable[[str], None] | None = None) -> np.ndarray:
    """The ``.idx`` offsets (memory-mapped), checked against the header.

    A missing ``.idx`` means one sequence covering every token, as the Rust reader does, with a warning.
    """
    index = idx_path(path)
    if not index.exists():
        if on_warning is not None:
            on_warning(f"{index.name} not found beside {path.name}: treating the cache as one sequence of "
                       f"{header.total_tokens} tokens (as the Rust reader does)")
        return np.array([0, header.total_tokens], dtype=IDX_DTYPE)
    size = index.stat().st_size
    expected = (header.num_sequences + 1) * IDX_DTYPE.itemsize
    if size != expected:
        raise CacheFormatError(
            f"{index} disagrees with {path.name}: {size} bytes, but the header's {header.num_sequences} sequences "
            f"need {expected} ({header.num_sequences} + 1 u64 offsets); rebuild the cache")
    offsets = np.memmap(index, dtype=IDX_DTYPE, mode="r")
    if offsets[0] != 0 or offsets[-1] != header.total_tokens:
        raise CacheFormatError(
            f"{index} disagrees with {path.name}: offsets run from {int(offsets[0])} to {int(offsets[-1])}, "
            f"expected 0 to total_tokens {header.total_tokens}; rebuild the cache")
    if header.num_sequences and bool((np.diff(offsets) > np.iinfo(np.int64).max).any()):  # u64 wrap = decrease
        raise CacheFormatError(f"{index}: offsets decrease somewhere; the index is damaged, rebuild the cache")
    return offsets


def read_sidecar(path: Path) -> dict[str, Any] | None:
    """The Vesper ``.meta.json`` beside ``path``, or None (Rust caches have none)."""
    meta = sidecar_path(path)
    if not meta.exists():
        return None
    try:
        data = json.loads(meta.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise CacheFormatError(f"{meta} is not valid JSON ({exc}); delete it or rebuild the cache") from None
    if not isinstance(data, dict):
        raise CacheFormatError(f"{meta} must hold a JSON object; delete it or rebuild the cache")
    return data


def read_mask(path: Path, header: CacheHeader, sidecar: dict[str, Any] | None) -> np.ndarray | None:
    """A chat cache's loss mask (memory-mapped), checked against the header; None for a text cache."""
    if not (sidecar or {}).get("chat"):
        return None
    mask = mask_path(path)
    if not mask.is_file():
        raise CacheFormatError(f"{path.name} is a chat cache but its loss mask {mask.name} is missing; "
                               f"rebuild it with `vesper cache build --format chat`")
    if mask.stat().st_size != header.total_tokens:
        raise CacheFormatError(f"{mask} has {mask.stat().st_size} bytes but {path.name} holds {header.total_tokens} "
                               f"tokens (one mask byte each); rebuild the cache")
    return np.memmap(mask, dtype=np.uint8, mode="r", shape=(header.total_tokens,))


@dataclass
class TokenCache:
    path: Path
    header: CacheHeader
    offsets: np.ndarray  # (num_sequences + 1,) u64 token offsets
    tokens: np.ndarray  # (total_tokens,) memmap, uint16 or uint32
    sidecar: dict[str, Any] | None
    mask: np.ndarray | None = None  # (total_tokens,) uint8 memmap of a chat cache: 1 = in the loss

    @property
    def is_chat(self) -> bool:
        return bool((self.sidecar or {}).get("chat"))

    @classmethod
    def open(cls, path: str | Path, *, on_warning: Callable[[str], None] | None = None) -> "TokenCache":
        path = Path(path)
        header = read_header(path)
        if header.total_tokens == 0:
            raise DataError(f"{path} holds no tokens; rebuild it from a non-empty dataset")
        offsets = read_offsets(path, header, on_warning)
        tokens = np.memmap(path, dtype=header.dtype, mode="r", offset=HEADER_SIZE, shape=(header.total_tokens,))
        sidecar = read_sidecar(path)
        return cls(path, header, offsets, tokens, sidecar, read_mask(path, header, sidecar))

    def __len__(self) -> int:
        return len(self.offsets) - 1

    def sequence(self, i: int) -> np.ndarray:
        if not 0 <= i < len(self):
            raise IndexError(f"sequence {i} out of range for {len(self)} sequences")
        return self.tokens[int(self.offsets[i]):int(self.offsets[i + 1])]

    def check_vocab(self, vocab_size: int, *, block: int = SCAN_TOKENS) -> None:
        """DataError when a token id is >= ``vocab_size`` (scans the tokens block by block)."""
        for start in range(0, len(self.tokens), block):
            part = self.tokens[start:start + block]
            top = int(part.max())
            if top >= vocab_size:
                where = start + int(np.argmax(part >= vocab_size))
                raise DataError(f"{self.path}: token id {top} (first bad id at token {where}) is >= the vocabulary "
                                f"size {vocab_size}; the cache was built with another tokenizer")

"""The VSPR token cache layout (spec §4.6), shared by the writer, the reader and ``cache info``.

``<name>.bin``: a 64-byte little-endian header, then the tokens of every sequence back to back.

    offset size  field
         0    4  magic         b"VSPR"
         4    4  version       u32: 1 = Rust v1 (u32 tokens); 2 = Vesper compact (token width below)
         8    8  total_tokens  u64
        16    8  num_sequences u64
        24    4  vocab_size    u32 (tokenizer vocabulary, added tokens included)
        28    4  max_seq_len   u32 (--seq-len at build time; informative)
        32   32  reserved      v1: zeros. v2: byte 32 = bytes per token (2 = uint16, 4 = uint32), rest zeros
        64    .  tokens        total_tokens x (u32 | u16), little-endian

``<name>.idx``: ``num_sequences + 1`` little-endian u64 *token* offsets, ``0 ... total_tokens``.
``<name>.meta.json`` (Vesper only, optional): tokenizer (its sha256 and tokenizer.json), source, dates.
``<name>.mask`` (Vesper chat caches only): one byte per token, 1 where the loss covers it (assistant
tokens), so the token file stays byte-compatible; the sidecar's ``chat`` entry records the template.
"""

from __future__ import annotations

import hashlib
import struct
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from vesper_core.errors import CacheFormatError

MAGIC = b"VSPR"
HEADER_SIZE = 64
VERSION_V1 = 1
VERSION_COMPACT = 2
_HEADER = struct.Struct("<4sIQQII32s")  # 64 bytes, no padding
_WIDTH_DTYPES = {2: np.dtype("<u2"), 4: np.dtype("<u4")}
IDX_DTYPE = np.dtype("<u8")
UINT16_MAX_VOCAB = 1 << 16
SIDECAR_SUFFIX = ".meta.json"


@dataclass(frozen=True)
class CacheHeader:
    version: int
    total_tokens: int
    num_sequences: int
    vocab_size: int
    max_seq_len: int
    token_bytes: int = 4  # 4 for v1

    @property
    def dtype(self) -> np.dtype:
        return _WIDTH_DTYPES[self.token_bytes]

    @property
    def data_bytes(self) -> int:
        return self.total_tokens * self.token_bytes

    def pack(self) -> bytes:
        reserved = bytes(32) if self.version == VERSION_V1 else bytes([self.token_bytes]) + bytes(31)
        return _HEADER.pack(MAGIC, self.version, self.total_tokens, self.num_sequences, self.vocab_size,
                            self.max_seq_len, reserved)

    @classmethod
    def unpack(cls, raw: bytes, path: Path | str) -> "CacheHeader":
        """Parse and check a header; CacheFormatError names ``path`` and the problem."""
        if len(raw) < HEADER_SIZE:
            raise CacheFormatError(f"{path} is truncated: {len(raw)} bytes, shorter than the {HEADER_SIZE}-byte "
                                   f"VSPR header; rebuild it with `vesper cache build`")
        magic, version, total, num_seq, vocab, max_len, reserved = _HEADER.unpack(raw[:HEADER_SIZE])
        if magic != MAGIC:
            raise CacheFormatError(f"{path} is not a VSPR token cache (magic {magic!r}, expected b'VSPR'); "
                                   f"pass a .bin written by `vesper cache build`")
        if version == VERSION_V1:
            width = 4  # reserved bytes are not checked: the Rust reader does not check them either
        elif version == VERSION_COMPACT:
            width = reserved[0]
            if width not in _WIDTH_DTYPES:
                raise CacheFormatError(f"{path}: VSPR version 2 declares {width} bytes per token; expected 2 or 4")
        else:
            raise CacheFormatError(f"{path}: unsupported VSPR version {version} (this Vesper reads 1 and 2); "
                                   f"rebuild it with `vesper cache build`")
        return cls(version, total, num_seq, vocab, max_len, width)


def choose_token_bytes(vocab_size: int, layout: str) -> tuple[int, int]:
    """(version, bytes per token) for ``layout`` "v1", "compact" or "auto" (= compact)."""
    if layout == "v1":
        return VERSION_V1, 4
    if layout in ("compact", "auto"):
        return VERSION_COMPACT, 2 if vocab_size <= UINT16_MAX_VOCAB else 4
    raise CacheFormatError(f"unknown cache format {layout!r}; choices: auto, compact, v1")


def idx_path(bin_path: Path | str) -> Path:
    return Path(bin_path).with_suffix(".idx")


def mask_path(bin_path: Path | str) -> Path:
    return Path(bin_path).with_suffix(".mask")


def sidecar_path(bin_path: Path | str) -> Path:
    bin_path = Path(bin_path)
    return bin_path.with_name(bin_path.stem + SIDECAR_SUFFIX)


def path_hash(path_text: str) -> str:
    """16 lower-case hex digits of a stable 64-bit hash of the dataset path string *as given*.

    Rust uses ``DefaultHasher`` (SipHash-1-3, not stable across Rust releases); this is BLAKE2b-64,
    so names differ from Rust-built ones but stay the same across runs and machines.
    """
    return hashlib.blake2b(path_text.encode("utf-8"), digest_size=8).hexdigest()


def cache_name(dataset: str) -> str:
    """``<file stem>_<16 hex>``, as Rust names its caches (``hf:`` specs use the dataset name)."""
    stem = Path(dataset.removeprefix("hf:").split("@")[0].replace(":", "_")).stem or "dataset"
    return f"{stem}_{path_hash(dataset)}"

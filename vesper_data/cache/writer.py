"""Write a VSPR cache as tokens arrive: bounded memory, temp files renamed into place at the end.

:class:`CacheWriter` appends document tokens to ``.<name>.bin.*.tmp`` and offsets to
``.<name>.idx.*.tmp`` beside the final files; ``commit()`` writes the header, fsyncs and renames
(idx, sidecar, then bin last), ``abort()`` (or any exception inside ``with``) deletes the temps,
so a failed build never leaves a file under the final names. :func:`build_cache` runs the
whole pipeline: documents -> ``encode_batch`` -> writer.
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from vesper_core import __version__
from vesper_core.errors import DataError
from vesper_data.cache.format import (HEADER_SIZE, IDX_DTYPE, CacheHeader, cache_name, choose_token_bytes,
                                      idx_path, mask_path, sidecar_path)

WRITE_BUFFER = 1 << 20
Progress = Callable[[int, int], None]  # (bytes of text tokenized, tokens written)


def _temp(final: Path) -> Path:
    fd, name = tempfile.mkstemp(prefix=f".{final.name}.", suffix=".tmp", dir=final.parent)
    os.close(fd)
    mask = os.umask(0)
    os.umask(mask)
    os.chmod(name, 0o666 & ~mask)  # mkstemp makes 0600 files; a cache is shared like any other file
    return Path(name)


def _fsync(path: Path) -> None:
    with open(path, "rb+") as fh:
        os.fsync(fh.fileno())


class CacheWriter:
    """Append documents to a new cache at ``bin_path`` (its .idx and sidecar beside it)."""

    def __init__(self, bin_path: Path | str, *, vocab_size: int, max_seq_len: int, layout: str = "auto",
                 with_mask: bool = False):
        self.bin_path = Path(bin_path)
        self.vocab_size = vocab_size
        self.max_seq_len = max_seq_len
        self.version, self.token_bytes = choose_token_bytes(vocab_size, layout)
        self.dtype = np.dtype("<u2") if self.token_bytes == 2 else np.dtype("<u4")
        self.total_tokens = 0
        self.num_sequences = 0
        self._doc_tokens = 0
        self._tmp_bin = _temp(self.bin_path)
        self._tmp_idx = _temp(idx_path(self.bin_path))
        self._bin = open(self._tmp_bin, "wb", buffering=WRITE_BUFFER)
        self._idx = open(self._tmp_idx, "wb", buffering=WRITE_BUFFER)
        self._tmp_mask = _temp(mask_path(self.bin_path)) if with_mask else None
        self._mask = open(self._tmp_mask, "wb", buffering=WRITE_BUFFER) if with_mask else None
        self._bin.write(bytes(HEADER_SIZE))  # placeholder, rewritten by commit()
        self._idx.write(np.zeros(1, IDX_DTYPE).tobytes())  # offsets start at 0

    # -- appending -----------------------------------------------------------------------
    def append(self, ids: np.ndarray, mask: np.ndarray | None = None) -> None:
        """Tokens continuing the current document (and, for a chat cache, their loss mask). Ids must be < vocab_size."""
        if (mask is None) != (self._mask is None) or (mask is not None and len(mask) != len(ids)):
            raise DataError("a chat cache needs one mask byte per token (and a text cache none)")
        if not len(ids):
            return
        top = int(ids.max())
        if top >= self.vocab_size:
            raise DataError(f"token id {top} is >= the vocabulary size {self.vocab_size}; the tokenizer and "
                            f"--vocab-size disagree")
        ids.astype(self.dtype, copy=False).tofile(self._bin)
        if mask is not None:
            np.asarray(mask, np.uint8).tofile(self._mask)
        self.total_tokens += len(ids)
        self._doc_tokens += len(ids)

    @property
    def in_document(self) -> bool:
        """Tokens were appended since the last end_document()."""
        return self._doc_tokens > 0

    def end_document(self) -> None:
        """Close the current document (an empty one is not stored)."""
        if self._doc_tokens:
            self._idx.write(np.array([self.total_tokens], IDX_DTYPE).tobytes())
            self.num_sequences += 1
            self._doc_tokens = 0

    # -- finishing -----------------------------------------------------------------------
    @property
    def header(self) -> CacheHeader:
        return CacheHeader(self.version, self.total_tokens, self.num_sequences, self.vocab_size,
                           self.max_seq_len, self.token_bytes)

    def commit(self, sidecar: dict[str, Any] | None = None) -> CacheHeader:
        """Header, fsync, rename into place. Returns the header written."""
        self.end_document()
        header = self.header
        self._bin.seek(0)
        self._bin.write(header.pack())
        for fh in (self._bin, self._idx, self._mask):
            if fh is None:
                continue
            fh.flush()
            os.fsync(fh.fileno())
            fh.close()
        tmp_meta = None
        try:
            if sidecar is not None:
                tmp_meta = _temp(sidecar_path(self.bin_path))
                tmp_meta.write_text(json.dumps(sidecar, indent=2) + "\n", encoding="utf-8")
                _fsync(tmp_meta)
            os.replace(self._tmp_idx, idx_path(self.bin_path))
            if self._tmp_mask is not None:
                os.replace(self._tmp_mask, mask_path(self.bin_path))
            if tmp_meta is not None:
                os.replace(tmp_meta, sidecar_path(self.bin_path))
            os.replace(self._tmp_bin, self.bin_path)  # last: a .bin under its name means a whole cache
        finally:
            if tmp_meta is not None:
                tmp_meta.unlink(missing_ok=True)
            self.abort()
        with contextlib.suppress(OSError):
            fd = os.open(self.bin_path.parent, os.O_RDONLY)
            os.fsync(fd)
            os.close(fd)
        return header

    def abort(self) -> None:
        """Close and delete the temp files (no-op for those already renamed)."""
        for fh in (self._bin, self._idx, self._mask):
            if fh is not None:
                fh.close()
        for tmp in (self._tmp_bin, self._tmp_idx, self._tmp_mask):
            if tmp is not None:
                tmp.unlink(missing_ok=True)

    def __enter__(self) -> "CacheWriter":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        self.abort()


# -- the build pipeline ---------------------------------------------------------------------------
@dataclass
class BuiltCache:
    bin_path: Path
    idx_path: Path
    sidecar_path: Path | None
    header: CacheHeader
    source_bytes: int
    elapsed_s: float

    @property
    def tokens_per_sec(self) -> float:
        return self.header.total_tokens / max(self.elapsed_s, 1e-9)


def _sidecar(tokenizer, sources: Sequence[str], fmt: str, text_field: str, header: CacheHeader,
             source_bytes: int, eos: bool) -> dict[str, Any]:
    return {
        "format": "VSPR", "version": header.version, "token_dtype": str(header.dtype.name),
        "tokenizer": {"name": tokenizer.name, "sha256": tokenizer.sha256(), "vocab_size": tokenizer.vocab_size,
                      "eos_id": tokenizer.eos_id},
        "source": {"datasets": list(sources), "format": fmt, "text_field": text_field, "bytes": source_bytes},
        "documents_end_with_eos": eos,
        "created_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "vesper_version": __version__,
        "tokenizer_json": tokenizer.to_str(),
    }


def build_cache(sources: Sequence[str | Path], tokenizer, output_dir: str | Path, *, fmt: str = "auto",
                text_field: str = "text", seq_len: int = 512, layout: str = "auto", name: str | None = None,
                sidecar: bool = True, progress: Progress | None = None,
                on_warning: Callable[[str], None] | None = None, batch_chars: int = 1 << 22) -> BuiltCache:
    """Tokenize ``sources`` into ``<output_dir>/<name>.bin/.idx`` (+ ``.meta.json`` unless v1-only wanted).

    One sequence per document: its tokens, then the tokenizer's EOS when it has one, so the token
    region read end to end is the training stream with EOS between documents. ``name`` defaults
    to Rust's ``<stem>_<16 hex>`` of the first source.
    """
    from vesper_data.sources import check_source, detect_format, encode_stream, read_documents

    sources = [str(s) for s in sources]
    if not sources:
        raise DataError("no dataset given; pass --dataset PATH")
    for source in sources:  # fail on a bad file before writing anything
        check_source(source, detect_format(source, fmt))
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    bin_path = output_dir / f"{name or cache_name(sources[0])}.bin"
    eos = None if tokenizer.eos_id is None else np.array([tokenizer.eos_id], np.uint32)
    start = time.perf_counter()
    done_bytes = 0

    def documents():
        for source in sources:
            yield from read_documents(source, fmt, text_field=text_field, on_warning=on_warning)

    with CacheWriter(bin_path, vocab_size=tokenizer.vocab_size, max_seq_len=seq_len, layout=layout) as writer:
        for batch, num_bytes in encode_stream(documents(), tokenizer, batch_chars=batch_chars):
            for ids, ends in batch:
                writer.append(ids)
                if ends and writer.in_document:
                    if eos is not None:
                        writer.append(eos)
                    writer.end_document()
            done_bytes += num_bytes
            if progress is not None:
                progress(done_bytes, writer.total_tokens)
        if writer.total_tokens == 0:
            raise DataError(f"{', '.join(sources)}: no tokens to cache (the dataset is empty)")
        meta = (_sidecar(tokenizer, sources, fmt, text_field, writer.header, done_bytes, eos is not None)
                if sidecar else None)
        header = writer.commit(meta)
    return BuiltCache(bin_path, idx_path(bin_path), sidecar_path(bin_path) if sidecar else None, header,
                      done_bytes, time.perf_counter() - start)

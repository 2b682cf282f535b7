"""What ``vesper cache info`` reports: header, index and sidecar only (tokens are never read)."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

from vesper_data.cache.format import idx_path
from vesper_data.cache.reader import read_header, read_offsets, read_sidecar


def cache_info(path: str | Path, *, on_warning: Callable[[str], None] | None = None) -> dict[str, Any]:
    """A flat, JSON-ready description of the cache at ``path`` (checked like a training run would)."""
    path = Path(path)
    header = read_header(path)
    offsets = read_offsets(path, header, on_warning)
    size = path.stat().st_size
    info: dict[str, Any] = {
        "path": str(path),
        "version": header.version,
        "token_dtype": header.dtype.name,
        "num_sequences": len(offsets) - 1,
        "total_tokens": header.total_tokens,
        "vocab_size": header.vocab_size,
        "max_seq_len": header.max_seq_len,
        "file_size_bytes": size,
        "file_size_mib": round(size / (1 << 20), 1),
        "index": str(idx_path(path)) if idx_path(path).exists() else None,
    }
    sidecar = read_sidecar(path)
    if sidecar is not None:
        tok = sidecar.get("tokenizer") or {}
        source = sidecar.get("source") or {}
        info.update(tokenizer=tok.get("name"), tokenizer_sha256=tok.get("sha256"),
                    source=source.get("datasets"), source_format=source.get("format"),
                    created_at=sidecar.get("created_at"), vesper_version=sidecar.get("vesper_version"))
        chat = sidecar.get("chat")
        if isinstance(chat, dict):  # a chat cache: its template and loss mask (vesper_data.chat.cache)
            info.update(chat_template=(chat.get("template") or {}).get("name"), mask=chat.get("mask"),
                        skipped_conversations=chat.get("skipped"))
    return info

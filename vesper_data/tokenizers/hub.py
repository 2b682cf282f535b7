"""Fetch tokenizer.json from the Hugging Face hub without hanging when offline.

``HF_HUB_OFFLINE`` is read at call time (huggingface_hub reads it once at import), the local
hub cache is tried first, and a short reachability probe runs before any download, so an
offline machine gets an answer in seconds instead of a minute of retries.
"""

from __future__ import annotations

import os
import socket
import threading
from urllib.parse import urlparse

import tokenizers

PROBE_TIMEOUT_S = 3.0
_TRUE = {"1", "true", "yes", "on"}


class HubUnavailable(Exception):
    """The hub could not provide the file; ``unreachable`` tells offline apart from a refusal."""

    def __init__(self, reason: str, *, unreachable: bool):
        super().__init__(reason)
        self.unreachable = unreachable


def hub_offline() -> bool:
    return any(os.environ.get(k, "").strip().lower() in _TRUE for k in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"))


def cached_tokenizer_file(repo_id: str) -> str | None:
    """Path of ``repo_id``'s tokenizer.json in the local hub cache, if it is there."""
    try:
        from huggingface_hub import try_to_load_from_cache  # installed with tokenizers
        found = try_to_load_from_cache(repo_id, "tokenizer.json")
    except Exception:  # missing package, malformed id, unreadable cache: just not cached
        return None
    return found if isinstance(found, str) else None


def _behind_proxy() -> bool:
    return any(os.environ.get(k) for k in ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy"))


def hub_reachable(timeout: float = PROBE_TIMEOUT_S) -> bool:
    """Can we open a TCP connection to the hub endpoint within ``timeout`` seconds?"""
    if _behind_proxy():
        return True  # cannot probe through a proxy; let the download try
    url = urlparse(os.environ.get("HF_ENDPOINT", "https://huggingface.co"))
    host, port = url.hostname or "huggingface.co", url.port or (80 if url.scheme == "http" else 443)
    result = []

    def probe() -> None:
        try:
            socket.create_connection((host, port), timeout=timeout).close()
            result.append(True)
        except OSError:
            pass

    worker = threading.Thread(target=probe, daemon=True)  # DNS lookups ignore socket timeouts
    worker.start()
    worker.join(timeout)
    return bool(result)


def load_from_hub(repo_id: str) -> tokenizers.Tokenizer:
    """The hub tokenizer ``repo_id`` (local cache first); raises HubUnavailable."""
    cached = cached_tokenizer_file(repo_id)
    if cached is not None:
        try:
            return tokenizers.Tokenizer.from_file(cached)
        except Exception as exc:
            raise HubUnavailable(f"cached file {cached} is unreadable: {exc}"[:200], unreachable=False) from exc
    if hub_offline():
        raise HubUnavailable("HF_HUB_OFFLINE is set and it is not in the local cache", unreachable=True)
    if not hub_reachable():
        raise HubUnavailable("no connection to the hub", unreachable=True)
    try:
        return tokenizers.Tokenizer.from_pretrained(repo_id)
    except Exception as exc:
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise HubUnavailable(f"{type(exc).__name__}: {reason}"[:200], unreachable=False) from exc

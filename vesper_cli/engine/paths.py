"""Checking an output path before any work is done (and before anything is written)."""

from __future__ import annotations

import os
from pathlib import Path

from vesper_core.errors import ConfigError


def check_writable(path: str | os.PathLike, flag: str, *, folder: bool = False) -> Path:
    """ConfigError unless ``path`` (a file, or with ``folder`` a folder) could be written; creates nothing.

    The nearest existing folder above it must be writable, and nothing in the way may be of the wrong kind.
    """
    path = Path(path)
    if folder and path.exists() and not path.is_dir():
        raise ConfigError(f"{flag} {path} is a file, not a folder; choose another path")
    if not folder and path.is_dir():
        raise ConfigError(f"{flag} {path} is a folder; give a file name")
    target = path if folder else path.parent
    existing = target if str(target) else Path(".")
    while not existing.exists():
        existing = existing.parent
    if not existing.is_dir():
        raise ConfigError(f"{flag} {path} is not writable: {existing} is a file, so the folder cannot be created; "
                          f"choose another path")
    if not os.access(existing, os.W_OK | os.X_OK) or (not folder and path.exists() and not os.access(path, os.W_OK)):
        raise ConfigError(f"{flag} {path} is not writable (permission denied in {existing}); choose another path")
    return path

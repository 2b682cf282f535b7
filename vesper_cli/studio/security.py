"""The studio's guards: the access token, the CSRF header, and paths that stay inside the workspace."""

from __future__ import annotations

import os
import re
import secrets
from pathlib import Path

from vesper_core.errors import ConfigError

TOKEN_QUERY = "token"
CSRF_HEADER = "x-vesper-csrf"
NAME_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")


class StudioError(ConfigError):
    """A request the studio refuses; ``status`` is the HTTP status it answers with."""

    def __init__(self, message: str, status: int = 400):
        super().__init__(message)
        self.status = status


def new_token() -> str:
    return secrets.token_urlsafe(24)


def same_secret(given: str | None, expected: str) -> bool:
    return given is not None and secrets.compare_digest(given.encode(), expected.encode())


def check_name(value: object, what: str = "name") -> str:
    """A run/report/file name: letters, digits, '.', '_', '-' (no separators, no leading dot)."""
    if not isinstance(value, str) or not NAME_PATTERN.fullmatch(value) or value in (".", ".."):
        raise StudioError(f"{what} {value!r} is not allowed: use up to 64 letters, digits, '.', '_' or '-' "
                          f"(starting with a letter or digit)")
    return value


def resolve_inside(workspace: Path, relative: object, what: str = "path") -> Path:
    """``workspace / relative`` fully resolved (symlinks followed) and still inside the workspace.

    Refuses absolute paths, '..' parts, NUL bytes, and links whose target lies outside.
    """
    if not isinstance(relative, str) or not relative.strip():
        raise StudioError(f"{what} is missing")
    if "\x00" in relative:
        raise StudioError(f"{what} contains a NUL byte")
    candidate = Path(relative)
    if candidate.is_absolute() or relative.startswith(("~", "\\")) or re.match(r"^[A-Za-z]:", relative):
        raise StudioError(f"{what} {relative!r} must be relative to the workspace", 403)
    if any(part == ".." for part in re.split(r"[\\/]", relative)):
        raise StudioError(f"{what} {relative!r} leaves the workspace ('..' is not allowed)", 403)
    root = workspace.resolve()
    resolved = (root / candidate).resolve()
    if resolved != root and root not in resolved.parents:
        raise StudioError(f"{what} {relative!r} points outside the workspace (a link to {resolved}?)", 403)
    return resolved


def relative_to_workspace(workspace: Path, path: Path) -> str:
    return Path(os.path.relpath(path, workspace.resolve())).as_posix()

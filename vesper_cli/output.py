"""Where things are printed: results on stdout, logs and progress on stderr; rich only on a TTY."""

from __future__ import annotations

import os
import sys

from rich.console import Console

console = Console(highlight=False, soft_wrap=True)
err_console = Console(stderr=True, highlight=False, soft_wrap=True)


def stderr_is_tty() -> bool:
    return sys.stderr.isatty() and os.environ.get("TERM") != "dumb"


def is_rank_zero() -> bool:
    return int(os.environ.get("RANK", "0")) == 0


def info(message: str) -> None:
    if is_rank_zero():
        err_console.print(message, markup=False)


def warn(message: str) -> None:
    if is_rank_zero():
        err_console.print(f"Warning: {message}", style="yellow", markup=False)


def human_count(n: float) -> str:
    for limit, suffix in ((1e9, "B"), (1e6, "M"), (1e3, "K")):
        if abs(n) >= limit:
            return f"{n / limit:.1f}{suffix}" if suffix == "B" else f"{n / limit:.2f}{suffix}"
    return str(int(n))

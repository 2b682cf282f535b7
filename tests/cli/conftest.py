from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from vesper_cli.app import run

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
def cli(capsys):
    """Run ``vesper ARGS`` in-process; returns (exit_code, stdout, stderr)."""

    def invoke(*args: str):
        code = run([str(a) for a in args])
        out, err = capsys.readouterr()
        return code, out, err

    return invoke


def run_subprocess(*args: str, env: dict | None = None, cwd: Path | None = None) -> subprocess.CompletedProcess:
    full_env = {**os.environ, **(env or {})}
    full_env.setdefault("HF_HUB_OFFLINE", "1")
    return subprocess.run([sys.executable, "-m", "vesper_cli", *map(str, args)], capture_output=True, text=True,
                          env=full_env, cwd=cwd, timeout=300)


@pytest.fixture
def english_text(tmp_path) -> Path:
    """A small project-written English text (a few KB) that a nano model can learn from."""
    words = ["the cat", "a dog", "my friend", "the old man", "our teacher"]
    verbs = ["sees", "likes", "finds", "paints", "remembers"]
    objects = ["the red house", "a small boat", "the green garden", "an open window", "the quiet river"]
    lines = []
    for i in range(400):
        lines.append(f"{words[i % 5]} {verbs[(i // 5) % 5]} {objects[(i // 25) % 5]} every morning.")
    path = tmp_path / "english.txt"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path

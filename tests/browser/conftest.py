"""Browser tests drive a real `vesper studio` server with the system Chromium (headless, via Playwright)."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


def _chromium() -> str | None:
    for name in ("chromium", "chromium-browser"):
        found = shutil.which(name)
        if found:
            return found
    return None


@pytest.fixture(scope="module")
def browser():
    pytest.importorskip("fastapi")
    sync_api = pytest.importorskip("playwright.sync_api")
    executable = _chromium()
    if executable is None:
        pytest.skip("chromium is not installed (apt-get install chromium)")
    with sync_api.sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=executable, headless=True, args=["--no-sandbox"])
        yield browser
        browser.close()


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """A `vesper studio` subprocess over a fresh workspace; yields (url with token, base, workspace)."""
    from tests.studio.conftest import write_corpus

    workspace = tmp_path_factory.mktemp("studio-ws")
    write_corpus(workspace / "corpus.txt")
    (workspace / "pairs.jsonl").write_text('{"instruction": "Say hi", "response": "hi"}\n' * 5, encoding="utf-8")
    env = dict(os.environ, HF_HUB_OFFLINE="1", PYTHONPATH=os.pathsep.join(
        filter(None, [str(REPO), os.environ.get("PYTHONPATH")])))
    process = subprocess.Popen([sys.executable, "-m", "vesper_cli", "studio", "--workspace", str(workspace),
                                "--port", "0", "--max-jobs", "2"], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                               text=True, env=env)
    line = process.stdout.readline()
    match = re.search(r"(http://127\.0\.0\.1:\d+)/\?token=(\S+)", line)
    assert match, f"no URL printed: {line!r} {process.stderr.read() if process.poll() is not None else ''}"
    yield match.group(0), match.group(1), workspace
    process.terminate()
    try:
        process.wait(30)
    except subprocess.TimeoutExpired:
        process.kill()


def wait_until(predicate, timeout: float = 90.0, every: float = 0.25):
    deadline = time.time() + timeout
    while time.time() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(every)
    raise AssertionError("timed out")

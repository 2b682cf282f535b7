from __future__ import annotations

import os
from pathlib import Path

import pytest

pytest.importorskip("fastapi")
pytest.importorskip("jinja2")
pytest.importorskip("plotly")

TOKEN = "test-token-123"


def write_corpus(path: Path, lines: int = 300) -> Path:
    subjects = ["the cat", "a dog", "my friend", "the old man", "our teacher"]
    verbs = ["sees", "likes", "finds", "paints", "remembers"]
    objects = ["the red house", "a small boat", "the green garden", "an open window", "the quiet river"]
    text = "\n".join(f"{subjects[i % 5]} {verbs[(i // 5) % 5]} {objects[(i // 25) % 5]} every morning."
                     for i in range(lines))
    path.write_text(text + "\n", encoding="utf-8")
    return path


@pytest.fixture
def workspace(tmp_path) -> Path:
    ws = tmp_path / "ws"
    ws.mkdir()
    write_corpus(ws / "corpus.txt")
    return ws


@pytest.fixture
def studio(workspace, monkeypatch):
    """(TestClient with the token cookie set, app) over a fresh workspace."""
    from fastapi.testclient import TestClient

    from vesper_cli.studio import create_app

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(filter(None, [str(Path(__file__).resolve().parents[2]),
                                                                   os.environ.get("PYTHONPATH")])))
    app = create_app(workspace, token=TOKEN, max_jobs=1, allowed_hosts=("127.0.0.1",))
    client = TestClient(app, base_url="http://127.0.0.1")
    assert client.get(f"/runs?token={TOKEN}").status_code == 200  # sets the cookie
    yield client, app
    app.state.jobs.shutdown(timeout=20)

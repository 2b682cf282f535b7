"""The studio's guards: token on every request, CSRF on every change, paths inside the workspace, host check."""

from __future__ import annotations

import time

import pytest

from vesper_cli.studio.security import StudioError, check_name, resolve_inside
from tests.studio.conftest import TOKEN


def test_every_request_needs_the_token(studio, workspace):
    from fastapi.testclient import TestClient

    _, app = studio
    bare = TestClient(app, base_url="http://127.0.0.1")
    for path in ("/", "/runs", "/train", "/data", "/api/runs", "/static/plotly.min.js", "/api/env", "/nothing"):
        response = bare.get(path)
        assert response.status_code == 401, path
        assert "token" in response.text
    assert bare.get("/runs?token=wrong").status_code == 401
    assert bare.get("/api/runs", headers={"Authorization": "token wrong"}).status_code == 401
    assert bare.get("/api/runs", headers={"Authorization": f"token {TOKEN}"}).status_code == 200
    first = bare.get(f"/runs?token={TOKEN}")
    assert first.status_code == 200
    cookie = first.headers["set-cookie"].lower()
    assert "httponly" in cookie and "samesite=strict" in cookie
    assert bare.get("/api/runs").status_code == 200  # the cookie now carries it


def test_state_changes_need_the_csrf_header(studio, workspace):
    client, app = studio
    body = {"name": "forged", "dataset": "corpus.txt", "model_size": "nano", "max_steps": 5}
    assert client.post("/api/train", json=body).status_code == 403
    assert client.post("/api/train", json=body, headers={"X-Vesper-CSRF": "guess"}).status_code == 403
    forged_origin = {"X-Vesper-CSRF": app.state.csrf, "Origin": "http://evil.example"}
    assert client.post("/api/train", json=body, headers=forged_origin).status_code == 403
    assert client.post("/api/train", json=body, headers={"X-Vesper-CSRF": app.state.csrf,
                                                          "Origin": "null"}).status_code == 403
    assert client.post("/api/stop", json={"job": "1"}).status_code == 403
    assert app.state.jobs.all() == []
    assert not (workspace / "runs" / "forged").exists()


def test_foreign_host_header_is_refused(studio):
    client, _ = studio
    assert client.get("/api/runs", headers={"Host": "evil.example"}).status_code == 400


def test_paths_stay_inside_the_workspace(workspace, tmp_path):
    outside = tmp_path / "secret.txt"
    outside.write_text("secret")
    (workspace / "escape").symlink_to(tmp_path)
    (workspace / "link.txt").symlink_to(outside)
    for bad in ("../secret.txt", "/etc/passwd", "runs/../../secret.txt", "escape/secret.txt", "link.txt",
                "~/x", "a\x00b"):
        with pytest.raises(StudioError):
            resolve_inside(workspace, bad)
    assert resolve_inside(workspace, "corpus.txt") == (workspace / "corpus.txt").resolve()
    (workspace / "inner").mkdir()
    (workspace / "inner_link").symlink_to(workspace / "inner")
    assert resolve_inside(workspace, "inner_link") == (workspace / "inner").resolve()


def test_api_refuses_traversal_and_symlink_escape(studio, workspace, tmp_path):
    client, _ = studio
    (tmp_path / "secret.txt").write_text("top secret words here\n")
    (workspace / "escape").symlink_to(tmp_path)
    for path in ("../secret.txt", "escape/secret.txt", str(tmp_path / "secret.txt")):
        response = client.get("/api/inspect", params={"path": path})
        assert response.status_code == 403, path
        assert "secret words" not in response.text
    assert client.get("/api/run", params={"path": "../"}).status_code == 403
    assert client.get("/runs/..%2F..%2Fetc").status_code in (403, 404)
    assert client.get("/static/..%2Fapp.py").status_code in (400, 404)


@pytest.mark.parametrize("name", ["../x", "a/b", ".hidden", "", "x" * 65, "a b", "-rf"])
def test_bad_names_are_refused(name):
    with pytest.raises(StudioError):
        check_name(name)


def test_job_cap_and_stop(tmp_path):
    """A second job past the cap is refused (429); Stop sends SIGTERM; jobs get argument lists, no shell."""
    from vesper_cli.studio.jobs import JobManager

    fake = tmp_path / "fake-python"
    fake.write_text("#!/bin/sh\necho \"args: $*\"\nexec sleep 30\n")
    fake.chmod(0o755)
    jobs = JobManager(tmp_path, max_jobs=1, python=str(fake))
    job = jobs.start("train", ["train", "--dataset", "a; rm -rf /"], tmp_path / "runs" / "one")
    with pytest.raises(StudioError) as refused:
        jobs.start("train", ["train"], tmp_path / "runs" / "two")
    assert refused.value.status == 429
    assert not (tmp_path / "runs" / "two").exists()
    deadline = time.time() + 30
    while "args:" not in job.log_path.read_text() and time.time() < deadline:
        time.sleep(0.05)
    assert "args: -m vesper_cli train --dataset a; rm -rf /" in job.log_path.read_text()
    jobs.stop(job.id)
    job.process.wait(10)
    assert job.state == "stopped"
    assert job.log_path.parent == (tmp_path / "runs" / "one").resolve()
    second = jobs.start("train", ["train"], tmp_path / "runs" / "two")  # room again
    jobs.shutdown(timeout=5)
    assert second.returncode is not None

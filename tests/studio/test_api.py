"""The studio's API over a real workspace: validated arguments, a real training stopped and resumed, data tools."""

from __future__ import annotations

import json
import time

import pytest

from vesper_cli.studio.forms import train_args
from vesper_cli.studio.security import StudioError


def _wait(predicate, timeout=120.0, every=0.2):
    deadline = time.time() + timeout
    while time.time() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(every)
    raise AssertionError("timed out waiting")


def test_train_arguments_are_validated(workspace):
    folder, args = train_args(workspace, {"name": "r1", "dataset": "corpus.txt", "model_size": "nano",
                                          "optimizer": "adamw", "lr": "0.002", "max_steps": "12", "seq_len": 16})
    assert folder == (workspace / "runs" / "r1").resolve()
    assert args[:3] == ["train", "--dataset", "corpus.txt"]
    pairs = dict(zip(args[1::2], args[2::2]))
    assert pairs["--model-size"] == "nano" and pairs["--optimizer"] == "adamw" and pairs["--lr"] == "0.002"
    assert pairs["--max-steps"] == "12" and pairs["--output-dir"] == "runs/r1"
    assert all(isinstance(a, str) for a in args)
    bad = [{"name": "../up"}, {"name": "ok", "dataset": "../corpus.txt"}, {"name": "ok", "dataset": "missing.txt"},
           {"name": "ok", "dataset": "corpus.txt", "model_size": "huge"},
           {"name": "ok", "dataset": "corpus.txt", "optimizer": "sgd; rm"},
           {"name": "ok", "dataset": "corpus.txt", "lr": "nan"}, {"name": "ok", "dataset": "corpus.txt", "lr": "1e9"},
           {"name": "ok", "dataset": "corpus.txt", "max_steps": 0},
           {"name": "ok", "dataset": "corpus.txt", "batch_size": "4; ls"},
           {"name": "ok", "dataset": "corpus.txt", "tokenizer": "/etc/passwd"},
           {"name": "ok", "dataset": "corpus.txt", "dtype": "f64"}]
    for body in bad:
        with pytest.raises(StudioError):
            train_args(workspace, body)


def test_bad_form_is_refused_with_one_line_and_nothing_written(studio, workspace):
    client, app = studio
    response = client.post("/api/train", json={"name": "x", "dataset": "corpus.txt", "model_size": "huge"},
                           headers={"X-Vesper-CSRF": app.state.csrf})
    assert response.status_code == 400
    assert "model_size 'huge'" in response.json()["error"] and "nano" in response.json()["error"]
    assert not (workspace / "runs").exists()
    assert client.post("/api/train", content=b"not json", headers={"X-Vesper-CSRF": app.state.csrf}).status_code == 400


@pytest.mark.slow  # two real training processes
def test_train_stop_resume_through_the_api(studio, workspace):
    """A real nano training: events grow, Stop writes the emergency checkpoint (exit 143), Resume continues."""
    client, app = studio
    csrf = {"X-Vesper-CSRF": app.state.csrf}
    body = {"name": "live", "dataset": "corpus.txt", "tokenizer": "byte", "model_size": "nano", "max_steps": 2000,
            "seq_len": 16, "batch_size": 2, "log_every": 1}
    job = client.post("/api/train", json=body, headers=csrf).json()
    assert job["folder"] == "runs/live" and job["log"] == "runs/live/studio-train.log"
    again = client.post("/api/train", json=dict(body, name="second"), headers=csrf)
    assert again.status_code == 429  # the cap (max_jobs=1) while the first runs

    def steps():
        events = client.get("/api/events", params={"path": "runs/live"}).json()["events"]
        return [e for e in events if e["event"] == "step"]

    first = _wait(lambda: len(steps()) >= 3 and steps())
    assert first[0]["step"] == 1 and all(e["loss"] > 0 for e in first)
    offset = client.get("/api/events", params={"path": "runs/live"}).json()["offset"]
    assert client.post("/api/stop", json={"run": "runs/live"}, headers=csrf).status_code == 200
    job_state = _wait(lambda: (lambda j: not j["running"] and j)(client.get(f"/api/jobs/{job['id']}").json()))
    assert job_state["returncode"] == 143 and job_state["state"] == "stopped"
    run = client.get("/api/run", params={"path": "runs/live"}).json()
    assert run["emergency"] and run["emergency"][0].startswith("checkpoint-emergency-step")
    assert (workspace / "runs" / "live" / run["emergency"][0]).is_file()
    assert run["status"].startswith("stopped")
    stopped_at = run["step"]
    later = client.get("/api/events", params={"path": "runs/live", "offset": offset}).json()
    assert all(e["step"] >= first[-1]["step"] for e in later["events"])

    resumed = client.post("/api/resume", json={"run": "runs/live"}, headers=csrf).json()
    assert resumed["args"] == ["train", "--resume", "runs/live"]
    _wait(lambda: any(e["step"] > stopped_at for e in steps()))
    client.post("/api/stop", json={"job": resumed["id"]}, headers=csrf)
    _wait(lambda: not client.get(f"/api/jobs/{resumed['id']}").json()["running"])
    assert not list(workspace.glob("*.log")) and not (workspace / "checkpoints").exists()  # outputs in the run folder


def test_pages_render(studio, workspace):
    client, _ = studio
    for page, marker in (("/runs", "Runs"), ("/train", "corpus.txt"), ("/benchmark", "Report name"),
                         ("/chat", "Chat"), ("/data", "corpus.txt"), ("/models", "Machine")):
        response = client.get(page)
        assert response.status_code == 200 and marker in response.text, page
        assert "cdn" not in response.text.lower() and "https://" not in response.text
    js = client.get("/static/plotly.min.js")
    assert js.status_code == 200 and len(js.content) > 1_000_000


def test_chat_and_models_state_what_is_missing(studio, monkeypatch):
    from vesper_cli.studio import features

    client, app = studio
    monkeypatch.setattr(features, "chat_available", lambda: False)
    assert "not available in this build" in client.get("/chat").text
    response = client.post("/api/chat/open", json={"checkpoint": "x.safetensors"},
                           headers={"X-Vesper-CSRF": app.state.csrf})
    assert response.status_code == 501 and "not available" in response.json()["error"]
    models = client.get("/models").text
    for name in ("export", "merge"):
        if features.command_options(name) is None:
            assert f"<code>vesper {name}</code> is not installed" in models


def test_inspect_and_scale_numbers(studio, workspace):
    client, _ = studio
    text = (workspace / "corpus.txt").read_text(encoding="utf-8")
    report = client.get("/api/inspect", params={"path": "corpus.txt", "tokenizer": "byte"}).json()
    assert report["format"] == "text" and report["num_records"] == 300
    assert report["num_chars"] == len(text) and report["num_tokens"] == len(text.encode())
    plan = client.get("/api/scale", params={"dataset": "corpus.txt", "tokenizer": "byte",
                                            "batch_size": 2, "seq_len": 16}).json()
    assert plan["dataset_tokens"] == len(text.encode()) and plan["optimal_params"] == len(text.encode()) // 20
    assert plan["vocab_size"] == 257 and plan["suggestions"][0]["name"] == "nano"


def test_download_offline_says_so_in_one_line(studio, workspace):
    client, app = studio
    response = client.post("/api/download", json={"name": "roneneldan/TinyStories", "max_rows": 10},
                           headers={"X-Vesper-CSRF": app.state.csrf})
    assert response.status_code == 400
    assert "offline" in response.json()["error"] and "\n" not in response.json()["error"]
    assert app.state.jobs.all() == []
    search = client.get("/api/search", params={"q": "stories"})
    assert search.status_code == 400 and "offline" in search.json()["error"]


def test_benchmark_report_is_served(studio, workspace):
    client, _ = studio
    folder = workspace / "benchmarks" / "old"
    folder.mkdir(parents=True)
    (folder / "report.json").write_text(json.dumps({"verdict": "velvet wins", "summary": {}}))
    assert client.get("/api/benchmarks").json() == [{"name": "old"}]
    assert client.get("/api/benchmarks/old").json()["report"]["verdict"] == "velvet wins"
    assert "velvet wins" in client.get("/benchmark").text
    assert client.get("/api/benchmarks/.hidden").status_code == 400


@pytest.mark.slow  # one `vesper cache build` process
def test_cache_build_job_writes_into_caches(studio, workspace):
    client, app = studio
    job = client.post("/api/cache", json={"dataset": "corpus.txt", "tokenizer": "byte", "seq_len": 32},
                      headers={"X-Vesper-CSRF": app.state.csrf}).json()
    assert job["args"][:4] == ["cache", "build", "--dataset", "corpus.txt"] and job["folder"] == "caches"
    done = _wait(lambda: (lambda j: not j["running"] and j)(client.get(f"/api/jobs/{job['id']}").json()))
    assert done["returncode"] == 0, done["log_tail"]
    bins = list((workspace / "caches").glob("*.bin"))
    assert len(bins) == 1 and bins[0].stat().st_size > 0
    assert (workspace / "caches" / "studio-cache.log").is_file()

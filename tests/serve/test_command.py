"""`vesper serve` as a command: what it refuses before loading anything, and one real run in a subprocess."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time

import httpx
import pytest

from tests.serve.conftest import free_port


@pytest.mark.parametrize("args,message", [
    (("--host", "0.0.0.0"), "--host 0.0.0.0 is reachable from other machines; pass --api-key"),
    (("--port", "0"), "--port must be in 1..65535"),
    (("--max-batch-size", "0"), "--max-batch-size must be >= 1"),
    (("--max-queue", "-1"), "--max-queue must be >= 0"),
    (("--api-key", " "), "--api-key is empty"),
    (("--dtype", "f64"), "unknown --dtype 'f64'"),
    (("--log-level", "loud"), "--log-level must be one of"),
])
def test_refusals_are_one_line_before_anything_loads(cli, tiny_run, args, message, monkeypatch):
    monkeypatch.delenv("VESPER_API_KEY", raising=False)
    code, out, err = cli("serve", "--model", tiny_run, *args)
    assert code != 0 and out == ""
    assert message in err and "Traceback" not in err


def test_a_missing_checkpoint_and_a_busy_port(cli, tmp_path, tiny_run, monkeypatch):
    monkeypatch.delenv("VESPER_API_KEY", raising=False)
    code, _, err = cli("serve", "--model", tmp_path / "nope.safetensors", "--port", str(free_port()))
    assert code != 0 and "not found" in err
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        code, _, err = cli("serve", "--model", tiny_run, "--port", str(port))
    assert code != 0 and f"cannot listen on 127.0.0.1:{port}" in err and "--port" in err


def test_model_name_defaults_to_the_run_folder(tiny_run):
    from vesper_cli.commands.serve import default_model_name

    assert default_model_name(tiny_run) == "tiny-run"
    assert default_model_name(tiny_run / "checkpoint-final.safetensors") == "tiny-run"


@pytest.mark.slow
def test_vesper_serve_runs_and_stops_on_ctrl_c(tiny_run):
    openai = pytest.importorskip("openai")
    port = free_port()
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "VESPER_API_KEY": "k"}
    proc = subprocess.Popen([sys.executable, "-m", "vesper_cli", "serve", "--model", str(tiny_run), "--port",
                             str(port), "--model-name", "tiny"], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                if httpx.get(f"http://127.0.0.1:{port}/health", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert proc.poll() is None, proc.communicate()[1]
            assert time.monotonic() < deadline, "the server did not come up"
            time.sleep(0.2)
        api = openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="k", max_retries=0)
        assert [m.id for m in api.models.list().data] == ["tiny"]
        out = api.completions.create(model="tiny", prompt="the cat", max_tokens=5, temperature=0)
        assert out.usage.completion_tokens == 5
        chunks = list(api.chat.completions.create(model="tiny", messages=[{"role": "user", "content": "the"}],
                                                  max_tokens=4, stream=True, seed=1))
        assert chunks[-1].choices[0].finish_reason in ("stop", "length")
    finally:
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err
    assert f"on http://127.0.0.1:{port}/v1" in err and "chat: template chatml" in err


SERVE_FLAGS = {"--model", "--host", "--port", "--model-name", "--api-key", "--max-batch-size", "--max-queue",
               "--dtype", "--tokenizer", "--chat-template", "--device", "--log-level"}


def test_serve_flags_snapshot(cli):
    import typer

    from vesper_cli.app import app

    command = typer.main.get_command(app).commands["serve"]
    assert {opt for param in command.params for opt in param.opts} == SERVE_FLAGS
    code, out, _ = cli("--help")
    assert code == 0 and "serve" in out

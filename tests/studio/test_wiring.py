"""When the other issues' pieces exist, the Chat and Models pages use them (fakes stand in for them here)."""

from __future__ import annotations

import importlib.machinery
import json
import sys
import types
from dataclasses import dataclass

from vesper_cli.studio import features


@dataclass
class _Token:
    text: str
    confidence: float


def _fake_chat_module(with_confidence: bool):
    module = types.ModuleType("vesper_cli.engine.chat")
    module.__spec__ = importlib.machinery.ModuleSpec("vesper_cli.engine.chat", None)

    class ChatSession:  # the shape of the real one: open_chat(path, sampling=...), stream_reply(_metacog), reset
        opened: list[str] = []

        def __init__(self, checkpoint):
            self.checkpoint, self.turns = checkpoint, []
            self.gen = types.SimpleNamespace(checkpoint=types.SimpleNamespace(has_metacog=with_confidence),
                                             tokenizer=None)
            ChatSession.opened.append(checkpoint)

        def stream_reply(self, user_text):
            self.turns.append(user_text)
            reply = f"turn {len(self.turns)}: {user_text[::-1]}"
            for word in reply.split(" "):
                yield word + " "

        def stream_reply_metacog(self, user_text, summary, boundary_ids=None):
            for piece in self.stream_reply(user_text):
                yield _Token(piece, 0.25)

        def reset(self):
            self.turns = []

    def open_chat(checkpoint, *, sampling):
        assert sampling.max_tokens == 0  # the chat command's automatic reply length
        return ChatSession(checkpoint)

    module.ChatSession, module.open_chat = ChatSession, open_chat
    return module


def _chat(client, csrf, session, text):
    response = client.post("/api/chat/message", json={"session": session, "text": text}, headers=csrf)
    assert response.status_code == 200 and response.headers["content-type"].startswith("application/x-ndjson")
    return [json.loads(line) for line in response.text.splitlines()]


def test_chat_streams_multi_turn_through_the_engine(studio, workspace, monkeypatch):
    client, app = studio
    csrf = {"X-Vesper-CSRF": app.state.csrf}
    for with_confidence in (False, True):
        fake = _fake_chat_module(with_confidence)
        monkeypatch.setitem(sys.modules, "vesper_cli.engine.chat", fake)
        monkeypatch.setattr("vesper_cli.engine.metacog_generation.sentence_ends", lambda tokenizer: frozenset())
        assert features.chat_available()
        (workspace / "runs" / "r").mkdir(parents=True, exist_ok=True)
        (workspace / "runs" / "r" / "checkpoint-final.safetensors").write_bytes(b"x")
        (workspace / "runs" / "r" / "events.jsonl").write_text("")
        assert 'id="chat-checkpoint"' in client.get("/chat").text
        session = client.post("/api/chat/open", json={"checkpoint": "runs/r/checkpoint-final.safetensors"},
                              headers=csrf).json()["session"]
        assert fake.ChatSession.opened == [str((workspace / "runs/r/checkpoint-final.safetensors").resolve())]
        first = _chat(client, csrf, session, "abc")
        assert "".join(p["text"] for p in first) == "turn 1: cba "
        assert all(p["confidence"] == (0.25 if with_confidence else None) for p in first)
        assert "".join(p["text"] for p in _chat(client, csrf, session, "xy")) == "turn 2: yx "
        assert client.post("/api/chat/reset", json={"session": session}, headers=csrf).status_code == 200
        assert "".join(p["text"] for p in _chat(client, csrf, session, "z")) == "turn 1: z "
    refused = client.post("/api/chat/open", json={"checkpoint": "../x.safetensors"}, headers=csrf)
    assert refused.status_code == 403


def test_models_runs_a_registered_command_with_workspace_paths(studio, workspace, monkeypatch, tmp_path):
    client, app = studio
    csrf = {"X-Vesper-CSRF": app.state.csrf}
    options = [{"name": "checkpoint", "flag": "--checkpoint", "is_flag": False, "required": True, "default": None,
                "help": "", "argument": False},
               {"name": "format", "flag": "--format", "is_flag": False, "required": False, "default": "hf",
                "help": "", "argument": False},
               {"name": "output", "flag": "--output", "is_flag": False, "required": False, "default": None,
                "help": "", "argument": False},
               {"name": "verify", "flag": "--verify", "is_flag": True, "required": False, "default": False,
                "help": "", "argument": False}]
    monkeypatch.setattr(features, "command_options", lambda name: options if name == "export" else None)
    fake = tmp_path / "fake-python"
    fake.write_text("#!/bin/sh\necho \"$*\"\n")
    fake.chmod(0o755)
    app.state.jobs.python = str(fake)
    (workspace / "model.safetensors").write_bytes(b"x")
    page = client.get("/models").text
    assert 'data-command="export"' in page and "<code>vesper merge</code> is not installed" in page
    body = {"output_name": "hf1", "options": {"checkpoint": "model.safetensors", "format": "onnx",
                                              "output": "/etc/elsewhere", "verify": True}}
    job = client.post("/api/command/export", json=body, headers=csrf).json()
    assert job["args"] == ["export", "--checkpoint", "model.safetensors", "--format", "onnx",
                           "--output", "exports/hf1", "--verify"]
    bad = dict(body, options={"checkpoint": "../../etc/passwd"})
    assert client.post("/api/command/export", json=dict(bad, output_name="hf2"), headers=csrf).status_code == 403
    assert client.post("/api/command/merge", json=body, headers=csrf).status_code == 501
    assert client.post("/api/command/train", json=body, headers=csrf).status_code == 404


def test_merge_writes_a_checkpoint_file_inside_its_folder(studio, workspace, monkeypatch, tmp_path):
    client, app = studio
    csrf = {"X-Vesper-CSRF": app.state.csrf}
    options = [{"name": "model", "flag": "--model", "is_flag": False, "required": True, "default": None,
                "help": "", "argument": False},
               {"name": "output", "flag": "--output", "is_flag": False, "required": True, "default": None,
                "help": "", "argument": False}]
    monkeypatch.setattr(features, "command_options", lambda name: options if name == "merge" else None)
    fake = tmp_path / "fake-python"
    fake.write_text("#!/bin/sh\necho \"$*\"\n")
    fake.chmod(0o755)
    app.state.jobs.python = str(fake)
    (workspace / "adapter.safetensors").write_bytes(b"x")
    body = {"output_name": "m1", "options": {"model": "adapter.safetensors", "output": "ignored"}}
    job = client.post("/api/command/merge", json=body, headers=csrf).json()
    assert job["args"] == ["merge", "--model", "adapter.safetensors", "--output", "merged/m1/model.safetensors"]

"""`vesper chat` end to end on stdin: streaming, /reset, /save, trimming, end-of-turn, bad input.

The checkpoints are pinned untrained models (see tests/engine/test_chat.py) saved with their chat tokenizer,
so every reply is known in advance and nothing is trained.
"""

from __future__ import annotations

import io
import json
import sys

import pytest
import torch

from vesper_core.checkpoint import save_weights
from vesper_metacog.training import METACOG_CONFIG_KEY, build_head, head_state
from vesper_data.tokenizers import load_tokenizer
from tests.engine.test_chat import chat_tokenizer, pinned_model


def _checkpoint(folder, token: str, context: int = 128, chat_tokens: bool = True, metacog: bool = False):
    tokenizer = chat_tokenizer() if chat_tokens else load_tokenizer("byte")
    token_id = tokenizer.tokenizer.token_to_id(token) if len(token) > 1 else tokenizer.encode(token)[0]
    folder.mkdir(parents=True, exist_ok=True)
    model = pinned_model(tokenizer, token_id, context)
    weights, extra = model.export_state_dict(), {"tokenizer_sha256": tokenizer.sha256()}
    if metacog:  # an untrained meta head beside the model, as `vesper train --metacog` saves one
        head, _ = build_head(model.config, None, torch.device("cpu"), 0.1)
        weights.update(head_state(head))
        extra[METACOG_CONFIG_KEY] = head.config.to_dict()
    path = save_weights(folder / "checkpoint-final.safetensors", model, state_dict=weights, extra=extra)
    tokenizer.save(folder / "tokenizer.json")
    return path


@pytest.fixture
def chat(cli, monkeypatch):
    """``chat(stdin_text, *args)`` -> (exit code, stdout, stderr)."""

    def invoke(stdin_text: str, *args):
        monkeypatch.setattr(sys, "stdin", io.StringIO(stdin_text))
        return cli("chat", *args)

    return invoke


def test_replies_stream_and_save_and_reset(chat, tmp_path):
    ckpt = _checkpoint(tmp_path / "a", "a")
    first, second = tmp_path / "first.json", tmp_path / "second.json"
    code, out, err = chat(f"hello\nagain\n/save {first}\n/reset\n/save {second}\n/exit\nnever read\n",
                          "--model", ckpt, "--max-tokens", "4", "--temperature", "0", "--system", "be brief")
    assert code == 0, err
    assert out == "aaaa\naaaa\n"
    saved = json.loads(first.read_text())
    assert [m["content"] for m in saved["messages"]] == ["be brief", "hello", "aaaa", "again", "aaaa"]
    assert saved["model"] == str(ckpt) and saved["template"] == "chatml"
    assert json.loads(second.read_text())["messages"] == [{"role": "system", "content": "be brief"}]
    assert "(conversation reset)" in err and "(4 tokens" in err and "saved 4 messages" in err


def test_a_reply_ends_at_the_end_of_turn_token(chat, tmp_path):
    ckpt = _checkpoint(tmp_path / "eot", "<|im_end|>")
    code, out, err = chat("hello\n", "--model", ckpt, "--max-tokens", "50")
    assert code == 0 and out == "\n" and "(0 tokens" in err  # EOF ends the session


def test_oldest_turns_leave_a_full_context(chat, tmp_path):
    ckpt = _checkpoint(tmp_path / "small", "<|im_end|>", context=64)
    saved = tmp_path / "all.json"
    messages = "".join(f"message {i}\n" for i in range(5))
    code, _, err = chat(messages + f"/save {saved}\n", "--model", ckpt, "--max-tokens", "8")
    assert code == 0
    assert "1 oldest turn(s) left the context to make room" in err
    data = json.loads(saved.read_text())
    assert len(data["messages"]) == 10 and data["in_context"] < 10  # the transcript keeps every turn


def test_session_survives_a_message_too_long_and_bad_commands(chat, tmp_path):
    ckpt = _checkpoint(tmp_path / "small", "a", context=64)
    code, out, err = chat("x" * 100 + "\n/nope\n/save\n/save /no/such/folder/c.json\nhi\n", "--model", ckpt,
                          "--max-tokens", "3")
    assert code == 0
    assert "Error: the message is 119 tokens" in err and "does not fit the model's context of 64" in err
    assert "unknown command /nope" in err and "usage: /save PATH" in err and "could not save" in err
    assert out == "aaa\n"  # the refused message printed nothing


@pytest.mark.parametrize("args, message", [
    (("--max-tokens", "128"), "--max-tokens must be in 1..127"),
    (("--temperature", "-1"), "--temperature must be >= 0"),
    (("--metacog",), "has no metacog head"),
    (("--chat-template", "nowhere.jinja"), "--chat-template nowhere.jinja: no such file"),
])
def test_bad_settings_are_one_line(chat, tmp_path, args, message):
    ckpt = _checkpoint(tmp_path / "a", "a")
    code, out, err = chat("hi\n", "--model", ckpt, *args)
    assert code == 1 and out == "" and message in err and "Traceback" not in err


def test_a_model_not_fine_tuned_on_chat_is_refused(chat, tmp_path):
    ckpt = _checkpoint(tmp_path / "base", "a", chat_tokens=False)
    code, _, err = chat("hi\n", "--model", ckpt)
    assert code == 1 and "not fine-tuned on conversations" in err and "--init-from" in err


def test_metacog_replies_stop_at_end_of_turn_and_report_confidence(chat, tmp_path):
    pinned_a = _checkpoint(tmp_path / "a", "a", metacog=True)
    code, out, err = chat("hello\nagain\n", "--model", pinned_a, "--metacog", "--max-tokens", "5", "--seed", "1")
    assert code == 0, err
    # the untrained head is unsure, so the regulator re-draws a span's first token away from the pinned one
    lines = out.splitlines()
    assert len(lines) == 2 and all(line.endswith("aaaa") for line in lines)
    assert err.count("metacog: 5 tokens, mean confidence") == 2
    eot = _checkpoint(tmp_path / "eot", "<|im_end|>", metacog=True)
    code, out, err = chat("hello\n", "--model", eot, "--metacog", "--max-tokens", "5")
    assert code == 0 and out == "\n" and "stopped: stop_token" in err

"""Fixtures for `vesper serve`: a tiny trained checkpoint and a real uvicorn server on a free loopback port."""

from __future__ import annotations

import contextlib
import dataclasses
import socket
import threading
import time
from pathlib import Path

import pytest
import torch

pytest.importorskip("fastapi")
pytest.importorskip("uvicorn")

CONTEXT = 96  # small, so that an oversized prompt is cheap to make
WORDS = ["[UNK]", "the", "cat", "sees", "red", "house", "every", "morning", ".", "a", "dog", "likes", "green",
         "garden", "river", "boat"]


def word_tokenizer():
    """A word-level tokenizer (one token per word, no EOS) with ChatML's two special tokens: any sampled text is
    readable words, and chat prompts take the fine-tuned model's path."""
    from tokenizers import Tokenizer, models, pre_tokenizers

    from vesper_data.tokenizers.base import VesperTokenizer

    tokenizer = Tokenizer(models.WordLevel({w: i for i, w in enumerate(WORDS)}, unk_token="[UNK]"))
    tokenizer.pre_tokenizer = pre_tokenizers.Whitespace()
    tok = VesperTokenizer(tokenizer, "words")
    tok.add_special_tokens(["<|im_start|>", "<|im_end|>"])
    return tok


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory) -> Path:
    """A run folder `tiny-run/` with a nano-shaped model (context 96, random weights: this CPU is too busy to
    train one in a test) and a word-level tokenizer."""
    from vesper_core.checkpoint import save_weights
    from vesper_core.model import VesperLM
    from vesper_core.presets import model_config

    tok = word_tokenizer()
    config = dataclasses.replace(model_config("nano", vocab_size=tok.vocab_size), max_position_embeddings=CONTEXT)
    torch.manual_seed(0)
    model = VesperLM(config).eval()
    folder = tmp_path_factory.mktemp("runs") / "tiny-run"
    folder.mkdir()
    tok.save(folder / "tokenizer.json")
    save_weights(folder / "checkpoint-final.safetensors", model, extra={"tokenizer_sha256": tok.sha256(), "step": 0})
    return folder


@pytest.fixture(scope="session")
def tiny_generator(tiny_run):
    from vesper_cli.engine.generation import load_generator

    return load_generator(tiny_run)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def running(app):
    """Serve ``app`` with uvicorn on 127.0.0.1:<free port> in a thread; yields the base URL (no /v1)."""
    import uvicorn

    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="error"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError("uvicorn did not start")
        time.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(15)


def make_app(generator, **settings):
    from vesper_cli.serve.app import ServeSettings, create_app

    from vesper_cli.serve.loading import load_chat_prompts

    chat = settings.pop("chat") if "chat" in settings else load_chat_prompts(generator, None)
    settings.setdefault("model_name", "tiny-run")
    return create_app(generator, ServeSettings(**settings), chat=chat)


@pytest.fixture(scope="module")
def server(tiny_generator):
    """A server for the whole module: (base URL, app)."""
    app = make_app(tiny_generator, max_batch_size=4, max_queue=16)
    with running(app) as url:
        yield url, app


@pytest.fixture
def cli(capsys):
    """Run ``vesper ARGS`` in-process; returns (exit_code, stdout, stderr)."""
    from vesper_cli.app import run

    def invoke(*args):
        code = run([str(a) for a in args])
        out, err = capsys.readouterr()
        return code, out, err

    return invoke

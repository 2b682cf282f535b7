"""Serve a checkpoint over an OpenAI-compatible HTTP API (POST /v1/completions, /v1/chat/completions, GET /v1/models,
/health) with FastAPI + uvicorn. Binds 127.0.0.1 unless --host says otherwise; a wider bind needs --api-key
(bearer auth). Concurrent requests share decode steps (up to --max-batch-size rows); when --max-queue requests
already wait, new ones get 429.
"""

from __future__ import annotations

import ipaddress
import socket
from pathlib import Path
from typing import Optional

import typer

from vesper_cli.commands.options import inference_dtype_option
from vesper_cli.output import info

Opt = typer.Option
INSTALL_HINT = "pip install 'vesper[serve]'"


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def default_model_name(model: str | Path) -> str:
    """The checkpoint's folder name (a run folder's own name, or the folder a .safetensors file sits in)."""
    path = Path(model).resolve()
    return (path if path.is_dir() else path.parent).name or "vesper"


def _check_port_free(host: str, port: int) -> None:
    from vesper_core.errors import ConfigError

    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host, port))
        except OSError as exc:
            raise ConfigError(f"cannot listen on {host}:{port} ({exc.strerror or exc}); pick another --port "
                              f"or --host") from None


def serve_command(
    model: str = Opt(..., help="Checkpoint (.safetensors) or a run folder (its newest checkpoint)."),
    host: str = Opt("127.0.0.1", help="Address to bind; anything but loopback needs --api-key."),
    port: int = Opt(8000, help="TCP port."),
    model_name: Optional[str] = Opt(None, help="Name clients send as 'model'  [default: the checkpoint's folder name]"),
    api_key: Optional[str] = Opt(None, envvar="VESPER_API_KEY",
                                 help="Require 'Authorization: Bearer KEY' on /v1 routes (env VESPER_API_KEY)."),
    max_batch_size: int = Opt(8, help="Completions decoded together in shared steps, at most."),
    max_queue: int = Opt(32, help="Requests that may wait for a slot; beyond that the answer is 429."),
    dtype: str = inference_dtype_option(),
    tokenizer: Optional[str] = Opt(None, help="Override the tokenizer saved with the checkpoint."),
    chat_template: Optional[str] = Opt(None, help="Chat template for /v1/chat/completions: 'default', a tokenizer "
                                       "folder, a .jinja file or a checkpoint  [default: the checkpoint's, else ChatML]"),
    device: str = Opt("auto", help="auto | cpu | cuda"),
    log_level: str = Opt("warning", help="uvicorn's log level: critical | error | warning | info | debug"),
) -> None:
    from vesper_core.errors import ConfigError

    if not 1 <= port <= 65535:
        raise ConfigError(f"--port must be in 1..65535, got {port}")
    if max_batch_size < 1:
        raise ConfigError(f"--max-batch-size must be >= 1, got {max_batch_size}")
    if max_queue < 0:
        raise ConfigError(f"--max-queue must be >= 0, got {max_queue}")
    if api_key is not None and not api_key.strip():
        raise ConfigError("--api-key is empty; give a secret string or leave the flag out")
    if not _is_loopback(host) and api_key is None:
        raise ConfigError(f"--host {host} is reachable from other machines; pass --api-key KEY (or set "
                          f"VESPER_API_KEY) so that only clients with the key can generate")
    levels = ("critical", "error", "warning", "info", "debug")
    if log_level not in levels:
        raise ConfigError(f"--log-level must be one of {', '.join(levels)}, got {log_level!r}")
    try:
        import fastapi  # noqa: F401
        import uvicorn
    except ImportError as exc:
        raise ConfigError(f"vesper serve needs fastapi and uvicorn ({exc.name} is missing): {INSTALL_HINT}") from None
    _check_port_free(host, port)

    from vesper_cli.serve.app import ServeSettings, create_app
    from vesper_cli.serve.loading import load_chat_prompts, load_serving_generator
    from vesper_core.precision import parse_inference_dtype

    parse_inference_dtype(dtype)  # a bad name is refused before the checkpoint is read
    generator = load_serving_generator(model, tokenizer=tokenizer, dtype=dtype, device=device)
    chat = load_chat_prompts(generator, chat_template)
    settings = ServeSettings(model_name=model_name or default_model_name(model), api_key=api_key,
                             max_batch_size=max_batch_size, max_queue=max_queue)
    app = create_app(generator, settings, chat=chat)
    shown = f"[{host}]" if ":" in host else host
    info(f"serving '{settings.model_name}' ({dtype}, context {generator.model.config.max_position_embeddings}) on "
         f"http://{shown}:{port}/v1; up to {max_batch_size} completions per decode step, {max_queue} waiting at "
         f"most; chat: {chat.describe()}. Ctrl-C stops")
    uvicorn.run(app, host=host, port=port, log_level=log_level, timeout_graceful_shutdown=5)

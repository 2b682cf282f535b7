"""Which features of other issues are in this build, found at run time (chat engine, export, merge).

The Chat and Models pages ask these functions and show "not available in this build" when a piece is
missing. The wiring to each feature is kept to this module so that it is easy to adjust.
"""

from __future__ import annotations

import importlib
import importlib.util
from typing import Any, Iterator


def chat_available() -> bool:
    try:
        return importlib.util.find_spec("vesper_cli.engine.chat") is not None
    except (ModuleNotFoundError, ValueError):  # ValueError: a stand-in module without a spec
        return False


def open_chat_session(checkpoint: str) -> Any:
    """A ``vesper_cli.engine.chat.ChatSession`` for a checkpoint: the engine and defaults `vesper chat` uses
    (its template, temperature 0.8, replies up to 256 tokens or half the context)."""
    chat = importlib.import_module("vesper_cli.engine.chat")
    from vesper_cli.engine.generation import SamplingConfig

    return chat.open_chat(checkpoint, sampling=SamplingConfig(max_tokens=0, temperature=0.8))


def _metacog_stream(session: Any, text: str) -> Iterator[Any] | None:
    """The meta head's regulated stream (pieces with a confidence) when the checkpoint has a head, else None."""
    checkpoint = getattr(getattr(session, "gen", None), "checkpoint", None)
    if checkpoint is None or not checkpoint.has_metacog:
        return None
    from vesper_cli.engine.metacog_generation import MetacogSummary, sentence_ends

    return session.stream_reply_metacog(text, MetacogSummary(), boundary_ids=sentence_ends(session.gen.tokenizer))


def stream_pieces(session: Any, text: str) -> Iterator[dict]:
    """{"text", "confidence"} per streamed piece; confidence is None without a metacog head."""
    stream = _metacog_stream(session, text)
    for piece in stream if stream is not None else session.stream_reply(text):
        if isinstance(piece, str):
            yield {"text": piece, "confidence": None}
        else:  # metacog_generation.Piece: text + the meta head's confidence
            confidence = getattr(piece, "confidence", None)
            yield {"text": getattr(piece, "text", str(piece)),
                   "confidence": None if confidence is None else float(confidence)}


def registered_command(name: str):
    """The click command ``vesper <name>`` if this build registers it, else None."""
    import typer

    from vesper_cli.app import app

    group = typer.main.get_command(app)
    return group.commands.get(name) if hasattr(group, "commands") else None


def command_options(name: str) -> list[dict] | None:
    """The options of ``vesper <name>`` (for a generated form), or None when the command is missing."""
    command = registered_command(name)
    if command is None:
        return None
    out = []
    for param in command.params:
        if param.name in ("help",) or not getattr(param, "opts", None):
            continue
        flag = max(param.opts, key=len)
        is_flag = bool(getattr(param, "is_flag", False))
        default = param.default if isinstance(param.default, (str, int, float, bool)) else None
        out.append({"name": param.name, "flag": flag if flag.startswith("--") else None, "is_flag": is_flag,
                    "required": bool(param.required), "default": default,
                    "help": getattr(param, "help", "") or "", "argument": not flag.startswith("-")})
    return out

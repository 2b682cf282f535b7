"""Chat with a fine-tuned checkpoint: a multi-turn REPL on stdin, replies streamed to stdout.

Each message is rendered with the chat template the checkpoint was fine-tuned with (else ChatML) after
the system prompt and the turns so far; the reply ends at the template's end-of-turn token. When the
context window would overflow, the oldest turns leave the context first. Commands: /reset (forget the
conversation), /save PATH (write it as JSON), /help, /exit (or Ctrl-D). Ctrl-C stops a reply.
"""

from __future__ import annotations

import sys
from typing import List, Optional

import typer

from vesper_cli.commands.options import (check_metacog_dtype, inference_dtype_option,
                                         metacog_threshold_overrides)
from vesper_cli.output import info

Opt = typer.Option

HELP = "commands: /reset (forget the conversation), /save PATH (write it as JSON), /help, /exit"


def _read_line(prompt: str) -> str | None:
    sys.stderr.write(prompt)
    sys.stderr.flush()
    line = sys.stdin.readline()
    return None if not line else line.rstrip("\r\n")


def _reply(session, text: str, metacog: dict | None) -> None:
    """Stream one reply to stdout, then a stats line on stderr."""
    if metacog is None:
        stream = session.stream_reply(text)  # a message that cannot be answered fails here, before any output
        try:
            for piece in stream:
                sys.stdout.write(piece)
                sys.stdout.flush()
        finally:
            sys.stdout.write("\n")
            sys.stdout.flush()
        stats = session.stats
        line = f"({stats.get('new_tokens', 0)} tokens, {stats.get('tokens_per_sec', 0.0):.1f} tok/s"
    else:
        from rich.text import Text

        from vesper_cli.commands.generate import confidence_style
        from vesper_cli.engine.metacog_generation import MetacogSummary
        from vesper_cli.output import console

        colour = sys.stdout.isatty() and console.is_terminal
        summary = MetacogSummary()
        stream = session.stream_reply_metacog(text, summary, overrides=metacog["overrides"],
                                              boundary_ids=metacog["boundaries"])
        try:
            for piece in stream:
                if colour:
                    console.print(Text(piece.text, style=confidence_style(piece.confidence, piece.resampled,
                                                                          *metacog["thresholds"])), end="")
                else:
                    sys.stdout.write(piece.text)
                    sys.stdout.flush()
        finally:
            sys.stdout.write("\n")
            sys.stdout.flush()
        line = f"({summary.line()}"
    if session.num_trimmed:
        line += f"; {session.num_trimmed} oldest turn(s) left the context to make room"
    info(line + ")")


def _metacog_settings(session, overrides: dict) -> dict:
    from vesper_cli.engine.metacog_generation import sentence_ends
    from vesper_metacog.training import load_head

    config = load_head(session.gen.checkpoint).config.replace(**overrides)  # one line when there is no head
    return {"overrides": overrides, "boundaries": sentence_ends(session.gen.tokenizer),
            "thresholds": (config.confidence_threshold, config.regulation_threshold)}


def repl(session, metacog: dict | None = None) -> None:
    """Read messages from stdin until /exit or EOF."""
    from vesper_core.errors import VesperError

    while True:
        try:
            line = _read_line("you> ")
        except KeyboardInterrupt:
            sys.stderr.write("\n")
            return
        if line is None:  # EOF (Ctrl-D)
            sys.stderr.write("\n")
            return
        text = line.strip()
        if not text:
            continue
        if text.startswith("/"):
            command, _, argument = text.partition(" ")
            if command in ("/exit", "/quit"):
                return
            if command == "/reset":
                session.reset()
                info("(conversation reset)")
            elif command == "/save":
                if not argument.strip():
                    info("usage: /save PATH")
                    continue
                try:
                    info(f"(saved {len(session.transcript)} messages to {session.save(argument.strip())})")
                except (VesperError, OSError) as exc:
                    info(f"could not save: {exc}")
            elif command == "/help":
                info(HELP)
            else:
                info(f"unknown command {command}; {HELP}")
            continue
        try:
            _reply(session, line, metacog)
        except KeyboardInterrupt:
            info("(interrupted)")
        except VesperError as exc:  # e.g. a message too long for the context: the session goes on
            info(f"Error: {exc}")


def chat_command(
    model: str = Opt(..., help="Checkpoint (.safetensors) or a run folder (its newest checkpoint), fine-tuned on "
                     "conversations."),
    system: Optional[str] = Opt(None, help="System prompt, kept at the start of the context."),
    max_tokens: int = Opt(0, help="New tokens per reply at most, 0 = 256 or half the context if less.",
                          show_default=False),
    temperature: float = Opt(0.7, help="Sampling temperature, 0 = greedy."),
    top_k: int = Opt(0, help="Keep the k most likely tokens, 0 = off."),
    top_p: float = Opt(1.0, help="Nucleus sampling mass, 1 = off."),
    repetition_penalty: float = Opt(1.0, help="Penalty for tokens already present, 1 = off."),
    seed: Optional[int] = Opt(None, help="Seed for sampling (the whole conversation repeats with it)."),
    stop: Optional[List[str]] = Opt(None, "--stop", help="Also end a reply before this text (repeatable)."),
    chat_template: Optional[str] = Opt(None, help="Chat template: default | a tokenizer folder, "
                                       "tokenizer_config.json or .jinja file  [default: the checkpoint's]"),
    tokenizer: Optional[str] = Opt(None, help="Override the tokenizer saved with the checkpoint."),
    device: str = Opt("auto", help="auto | cpu | cuda"),
    dtype: str = inference_dtype_option(),
    metacog: bool = Opt(False, "--metacog", help="Regulate replies with the checkpoint's meta head (per-token "
                        "confidence, re-sampled low-confidence spans)."),
    confidence_threshold: Optional[float] = Opt(None, help="With --metacog: mean span confidence that satisfices "
                                                "[default: the head's, 0.85]"),
    regulation_threshold: Optional[float] = Opt(None, help="With --metacog: a span whose mean confidence is under "
                                                "this is re-drawn  [default: the head's, 0.3]"),
) -> None:
    from vesper_core.device import resolve_device
    from vesper_cli.engine.chat import open_chat
    from vesper_cli.engine.generation import SamplingConfig

    sampling = SamplingConfig(max_tokens=max_tokens, temperature=temperature, top_k=top_k, top_p=top_p,
                              repetition_penalty=repetition_penalty, seed=seed, stop=tuple(stop or ()))
    check_metacog_dtype(metacog, dtype)
    overrides = metacog_threshold_overrides(confidence_threshold, regulation_threshold) if metacog else {}
    session = open_chat(model, sampling=sampling, system=system, chat_template=chat_template, tokenizer=tokenizer,
                        device=resolve_device(device), dtype=dtype)
    settings = _metacog_settings(session, overrides) if metacog else None
    info(f"chatting with {session.gen.checkpoint.path} (template {session.template.name}, context "
         f"{session.window} tokens); {HELP}")
    repl(session, settings)

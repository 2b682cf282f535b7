"""Generate text from a checkpoint (config and tokenizer are found next to / inside it).

One of: --prompt TEXT (streamed), --prompts-file FILE (one prompt per line; prompts of equal token length
run as one batch, each result printed when its batch ends), or --interactive (a `>>> ` REPL on stdin;
an empty line is skipped, Ctrl-D ends it). Generated text goes to stdout, everything else to stderr.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import TYPE_CHECKING, List, Mapping, Optional

import typer

from vesper_cli.commands.options import (check_metacog_dtype, inference_dtype_option,
                                         metacog_threshold_overrides)
from vesper_cli.output import info

if TYPE_CHECKING:
    from vesper_cli.engine.generation import Generator, SamplingConfig

Opt = typer.Option


def _stream_samples(gen, prompt: str, sampling, num_samples: int, *, echo_prompt: bool) -> tuple[int, float]:
    """Stream ``num_samples`` completions of ``prompt`` to stdout; returns (new tokens, seconds)."""
    import torch

    shared = None
    if sampling.seed is not None:  # one random stream across the samples: they differ, and repeat per seed
        shared = torch.Generator(device=gen.device).manual_seed(sampling.seed)
    tokens, seconds = 0, 0.0
    gen.check(prompt, sampling)  # refuse before the prompt is echoed
    for i in range(num_samples):
        if num_samples > 1:  # on stdout, with the samples, so that a script can split them
            sys.stdout.write(f"--- sample {i + 1}/{num_samples} ---\n")
        if echo_prompt:
            sys.stdout.write(prompt)
            sys.stdout.flush()
        try:
            for piece in gen.stream(prompt, sampling, generator=shared):
                sys.stdout.write(piece)
                sys.stdout.flush()
        finally:
            sys.stdout.write("\n")
            sys.stdout.flush()
        tokens += gen.stats["new_tokens"]
        seconds += gen.stats["seconds"]
    return tokens, seconds


def _report(tokens: int, seconds: float) -> None:
    rate = tokens / seconds if seconds > 0 else 0.0
    info(f"{tokens} tokens in {seconds:.2f} s ({rate:.1f} tok/s)")


def _read_prompts(path: Path) -> list[str]:
    from vesper_core.errors import DataError

    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except FileNotFoundError:
        raise DataError(f"--prompts-file {path}: no such file") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise DataError(f"--prompts-file {path} is not a readable UTF-8 text file ({exc})") from None
    prompts = [line for line in lines if line.strip()]
    if not prompts:
        raise DataError(f"--prompts-file {path} has no prompts (one per line, blank lines are skipped)")
    return prompts


def _repl(gen, sampling, num_samples: int) -> None:
    """Read prompts from stdin until EOF; Ctrl-C stops the current generation, Ctrl-C at the prompt exits."""
    while True:
        sys.stderr.write(">>> ")
        sys.stderr.flush()
        try:
            line = sys.stdin.readline()
        except KeyboardInterrupt:
            sys.stderr.write("\n")
            return
        if not line:  # EOF (Ctrl-D)
            sys.stderr.write("\n")
            return
        prompt = line.rstrip("\r\n")
        if not prompt.strip():
            continue
        try:
            _report(*_stream_samples(gen, prompt, sampling, num_samples, echo_prompt=False))
        except KeyboardInterrupt:
            info("(interrupted)")


def generate_command(
    model: str = Opt(..., help="Checkpoint (.safetensors) or a run folder (its newest checkpoint)."),
    prompt: Optional[str] = Opt(None, help="Text to continue."),
    max_tokens: int = Opt(100, help="New tokens at most."),
    temperature: float = Opt(0.8, help="Sampling temperature, 0 = greedy."),
    top_k: int = Opt(0, help="Keep the k most likely tokens, 0 = off."),
    top_p: float = Opt(1.0, help="Nucleus sampling mass, 1 = off."),
    repetition_penalty: float = Opt(1.0, help="Penalty for tokens already present, 1 = off."),
    seed: Optional[int] = Opt(None, help="Seed for sampling."),
    stop: Optional[List[str]] = Opt(None, "--stop", help="Stop before this text (repeatable; not printed)."),
    num_samples: int = Opt(1, help="Completions per prompt."),
    prompts_file: Optional[Path] = Opt(None, help="One prompt per line; equal-length prompts run as a batch."),
    interactive: bool = Opt(False, "--interactive", help="Read prompts from stdin at a '>>> ' prompt."),
    tokenizer: Optional[str] = Opt(None, help="Override the tokenizer saved with the checkpoint."),
    model_size: Optional[str] = Opt(None, help="Override the config recorded in the checkpoint."),
    device: str = Opt("auto", help="auto | cpu | cuda"),
    dtype: str = inference_dtype_option(),
    metacog: bool = Opt(False, "--metacog", help="Regulate with the checkpoint's meta head: per-token confidence, "
                        "re-sample low-confidence spans, stop when satisficed (with --prompt)."),
    confidence_threshold: Optional[float] = Opt(None, help="With --metacog: mean span confidence that satisfices "
                                                "(stops)  [default: the head's, 0.85]"),
    regulation_threshold: Optional[float] = Opt(None, help="With --metacog: a span whose mean confidence is under "
                                                "this is re-drawn  [default: the head's, 0.3]"),
) -> None:
    from vesper_cli.engine.generation import SamplingConfig, load_generator
    from vesper_core.device import resolve_device
    from vesper_core.errors import ConfigError

    modes = [name for name, on in (("--prompt", prompt is not None), ("--prompts-file", prompts_file is not None),
                                   ("--interactive", interactive)) if on]
    if len(modes) != 1:
        raise ConfigError("give exactly one of --prompt TEXT, --prompts-file FILE or --interactive"
                          + (f" (got {' and '.join(modes)})" if modes else ""))
    if num_samples <= 0:
        raise ConfigError(f"--num-samples must be positive, got {num_samples}")
    if metacog and prompt is None:
        raise ConfigError("--metacog works with --prompt TEXT (not --prompts-file or --interactive)")
    check_metacog_dtype(metacog, dtype)
    overrides = metacog_threshold_overrides(confidence_threshold, regulation_threshold) if metacog else {}
    sampling = SamplingConfig(max_tokens=max_tokens, temperature=temperature, top_k=top_k, top_p=top_p,
                              repetition_penalty=repetition_penalty, seed=seed, stop=tuple(stop or ()))
    prompts = _read_prompts(prompts_file) if prompts_file is not None else None
    gen = load_generator(model, tokenizer=tokenizer, model_size=model_size, device=resolve_device(device),
                         dtype=dtype)

    if metacog:
        print_metacog_samples(gen, prompt, sampling, num_samples, overrides)
    elif interactive:
        _repl(gen, sampling, num_samples)
    elif prompts is not None:
        completions = gen.generate_batch(prompts, sampling, num_samples)
        multi = len(completions) > 1
        for c in completions:
            if multi:  # on stdout with the text, so that a script can split the output
                sys.stdout.write(f"--- prompt {c.prompt_index + 1}/{len(prompts)}"
                                 + (f", sample {c.sample + 1}/{num_samples}" if num_samples > 1 else "") + " ---\n")
            sys.stdout.write(c.prompt + c.text + "\n")
        sys.stdout.flush()
        info(f"{len(completions)} completions in {gen.stats['num_batches']} batch(es) (rows of equal prompt length "
             f"run together)")
        _report(gen.stats["new_tokens"], gen.stats["seconds"])
    else:
        _report(*_stream_samples(gen, prompt, sampling, num_samples, echo_prompt=True))


def confidence_style(confidence: float, resampled: bool, threshold: float = 0.85, low: float = 0.3) -> str:
    """A rich style: green at or above the satisficing threshold, red under the regulation one."""
    colour = "green" if confidence >= threshold else "red" if confidence < low else "yellow"
    return f"{colour} underline" if resampled else colour


def print_metacog_samples(gen: Generator, prompt: str, sampling: SamplingConfig, num_samples: int,
                          overrides: Mapping[str, float] | None = None) -> None:
    """``generate --metacog --prompt``: stream each sample to stdout (coloured by confidence on a TTY), then a
    summary line on stderr."""
    import torch
    from rich.text import Text

    from vesper_cli.engine.metacog_generation import MetacogSummary, metacog_stream, sentence_ends
    from vesper_cli.output import console, info
    from vesper_metacog.training import load_head

    colour = sys.stdout.isatty() and console.is_terminal
    shared = None
    if sampling.seed is not None:
        shared = torch.Generator(device=gen.device).manual_seed(sampling.seed)
    # fails early, with one line, when there is no head
    config = load_head(gen.checkpoint).config.replace(**(overrides or {}))
    boundaries = sentence_ends(gen.tokenizer)
    for i in range(num_samples):
        if num_samples > 1:  # on stdout, with the samples, so that a script can split them
            sys.stdout.write(f"--- sample {i + 1}/{num_samples} ---\n")
        summary = MetacogSummary()
        sys.stdout.write(prompt)
        sys.stdout.flush()
        try:
            for piece in metacog_stream(gen, prompt, sampling, summary, generator=shared,
                                        overrides=overrides, boundary_ids=boundaries):
                if colour:
                    style = confidence_style(piece.confidence, piece.resampled, config.confidence_threshold,
                                             config.regulation_threshold)
                    console.print(Text(piece.text, style=style), end="")
                else:
                    sys.stdout.write(piece.text)
                    sys.stdout.flush()
        finally:
            sys.stdout.write("\n")
            sys.stdout.flush()
        info(summary.line())

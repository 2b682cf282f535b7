"""Generate text from a checkpoint (config and tokenizer are found next to / inside it)."""

from __future__ import annotations

import sys
from typing import Optional

import typer

from vesper_cli.output import info

Opt = typer.Option


def generate_command(
    model: str = Opt(..., help="Checkpoint (.safetensors) or a run folder (its newest checkpoint)."),
    prompt: str = Opt(..., help="Text to continue."),
    max_tokens: int = Opt(100, help="New tokens at most."),
    temperature: float = Opt(0.8, help="Sampling temperature, 0 = greedy."),
    top_k: int = Opt(0, help="Keep the k most likely tokens, 0 = off."),
    top_p: float = Opt(1.0, help="Nucleus sampling mass, 1 = off."),
    repetition_penalty: float = Opt(1.0, help="Penalty for tokens already present, 1 = off."),
    seed: Optional[int] = Opt(None, help="Seed for sampling."),
    tokenizer: Optional[str] = Opt(None, help="Override the tokenizer saved with the checkpoint."),
    model_size: Optional[str] = Opt(None, help="Override the config recorded in the checkpoint."),
    device: str = Opt("auto", help="auto | cpu | cuda"),
) -> None:
    from vesper_cli.generation import SamplingConfig, load_generator
    from vesper_core.device import resolve_device

    sampling = SamplingConfig(max_tokens=max_tokens, temperature=temperature, top_k=top_k, top_p=top_p,
                              repetition_penalty=repetition_penalty, seed=seed)
    gen = load_generator(model, tokenizer=tokenizer, model_size=model_size, device=resolve_device(device))
    sys.stdout.write(prompt)
    sys.stdout.flush()
    for piece in gen.stream(prompt, sampling):
        sys.stdout.write(piece)
        sys.stdout.flush()
    sys.stdout.write("\n")
    sys.stdout.flush()
    stats = gen.stats
    info(f"{stats['new_tokens']} tokens in {stats['seconds']:.2f} s ({stats['tokens_per_sec']:.1f} tok/s)")

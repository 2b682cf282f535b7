"""Fold the LoRA / FlyLoRA adapters of a fine-tuning checkpoint into a plain checkpoint (no base file needed)."""

from __future__ import annotations

from pathlib import Path

import typer


def merge_command(
    model: Path = typer.Option(..., "--model", help="Adapter checkpoint of a LoRA / FlyLoRA fine-tuning run."),
    output: Path = typer.Option(..., "--output", help="Merged checkpoint to write (.safetensors)."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace --output if it exists."),
) -> None:
    from vesper_cli.engine.merge import merge_checkpoint

    result = merge_checkpoint(model, output, overwrite=overwrite)
    typer.echo(str(result.output))
    typer.echo(f"merged {result.num_adapted} {result.kind} adapters into {result.base.name}; max |logit difference| "
               f"vs the adapted model {result.max_logit_diff:.2e}"
               + (f"; tokenizer {result.tokenizer}" if result.tokenizer else "; no tokenizer found to carry"),
               err=True)

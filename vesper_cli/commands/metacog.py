"""Measure a checkpoint's meta head (`vesper metacog eval`): calibration of its confidence on held-out text."""

from __future__ import annotations

import json
import math
from typing import Optional

import typer

from vesper_cli.output import console, info

metacog_app = typer.Typer(help=__doc__, no_args_is_help=True, add_completion=False, rich_markup_mode=None)
Opt = typer.Option

_ROWS = (("ece", "expected calibration error (15 bins)", "{:.4f}"),
         ("auroc", "AUROC (confidence vs top-1 right)", "{:.4f}"),
         ("accuracy", "top-1 accuracy of the model", "{:.4f}"),
         ("mean_confidence", "mean confidence", "{:.4f}"),
         ("count", "positions", "{:,}"),
         ("lm_loss", "LM loss (nats/token)", "{:.4f}"))


def _fmt(fmt: str, value) -> str:
    return "nan" if isinstance(value, float) and math.isnan(value) else fmt.format(value)


@metacog_app.command("eval")
def eval_command(
    model: str = Opt(..., help="Checkpoint with a meta head (trained with `vesper train --metacog`), or a run folder."),
    dataset: str = Opt(..., help="Held-out text (.txt, .jsonl, SQuAD .json, ...)."),
    format: str = Opt("auto", "--format", help="auto | text | jsonl | squad | hf"),
    seq_len: Optional[int] = Opt(None, help="Tokens per window  [default: the training --seq-len when recorded, else 256]"),
    batch_size: int = Opt(8, help="Windows per forward pass."),
    max_batches: int = Opt(0, help="Evaluate at most this many batches, 0 = the whole file."),
    tokenizer: Optional[str] = Opt(None, help="Override the tokenizer saved with the checkpoint."),
    device: str = Opt("auto", help="auto | cpu | cuda"),
    json_output: bool = Opt(False, "--json", help="Print the numbers as one JSON object."),
) -> None:
    """Held-out ECE, AUROC, accuracy and mean confidence of the checkpoint's meta head."""
    from vesper_cli.engine.metacog_eval import evaluate_checkpoint
    from vesper_core.device import resolve_device

    result = evaluate_checkpoint(model, dataset, seq_len=seq_len, batch_size=batch_size, max_batches=max_batches,
                                 data_format=format, tokenizer=tokenizer, device=resolve_device(device),
                                 on_warning=info)
    if json_output:
        clean = {k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in result.items()}
        console.print(json.dumps(clean, indent=2), markup=False)
        return
    info(f"{result['checkpoint']} on {result['dataset']}: {result['batches']} batches of seq-len {result['seq_len']}")
    width = max(len(label) for _, label, _ in _ROWS)
    for key, label, fmt in _ROWS:
        console.print(f"{label:<{width}}  {_fmt(fmt, result[key])}", markup=False)

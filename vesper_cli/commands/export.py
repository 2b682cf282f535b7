"""Export a checkpoint for other runtimes: a Hugging Face folder (transformers, trust_remote_code) or ONNX.

The export is checked before it is kept: the exported model's logits must match Vesper's within
--tolerance and its greedy tokens must be Vesper's (when transformers / onnxruntime are installed).
Adapters are merged into the weights first. The output folder is written only when everything passed.
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from vesper_cli.output import console, info

Opt = typer.Option


def export_command(
    model: str = Opt(..., help="Checkpoint (.safetensors) or a run folder (its newest checkpoint)."),
    format: str = Opt("hf", "--format", help="hf (transformers folder) | onnx (model.onnx with a KV cache)."),
    output: Path = Opt(..., help="Folder to write (must not exist or be empty, unless --overwrite)."),
    overwrite: bool = Opt(False, "--overwrite", help="Replace an existing output folder."),
    tokenizer: Optional[str] = Opt(None, help="Override the tokenizer saved with the checkpoint."),
    verify: bool = Opt(True, "--verify/--no-verify", help="Compare the export's logits and greedy tokens with "
                       "Vesper's before keeping it."),
    tolerance: float = Opt(1e-4, help="Largest logit difference accepted by the check."),
    opset: int = Opt(18, help="ONNX opset (with --format onnx)."),
) -> None:
    from vesper_cli.engine.export import export_checkpoint

    result = export_checkpoint(model, fmt=format, output=output, overwrite=overwrite, tokenizer=tokenizer,
                               verify=verify, tolerance=tolerance, opset=opset)
    for note in result.notes:
        info(note)
    if result.max_logit_diff is not None:
        info(f"checked: max logit difference {result.max_logit_diff:.2e}, greedy tokens identical")
    info(f"exported {result.checkpoint} as {result.format}: {len(result.files)} files")
    console.print(str(result.output), markup=False)

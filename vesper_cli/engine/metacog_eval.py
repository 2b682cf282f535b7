"""``vesper metacog eval``: the calibration of a checkpoint's meta head on held-out text."""

from __future__ import annotations

import json
from typing import Any, Callable

import torch

from vesper_core.errors import ConfigError, DataError
from vesper_core.resume_state import state_paths
from vesper_data.config import DataConfig
from vesper_data.loader import TokenWindows
from vesper_data.pipeline import load_tokens
from vesper_metacog.training import evaluate_calibration, load_head
from vesper_cli.engine.evaluation import eval_batches
from vesper_cli.engine.generation import load_generator

DEFAULT_EVAL_SEQ_LEN = 256


def _recorded_seq_len(checkpoint_path) -> int | None:
    """The --seq-len the checkpoint was trained with, from the resume state beside it (if any)."""
    json_path = state_paths(checkpoint_path)[1]
    try:
        return int(json.loads(json_path.read_text(encoding="utf-8"))["run_config"]["data"]["seq_len"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


def evaluate_checkpoint(model_path: str, dataset: str, *, seq_len: int | None = None, batch_size: int = 8,
                        max_batches: int = 0, data_format: str = "auto", tokenizer: str | None = None,
                        device: torch.device | str = "cpu",
                        on_warning: Callable[[str], None] | None = None) -> dict[str, Any]:
    """``vesper metacog eval``: the saved head's calibration on ``dataset`` (see ``evaluate_calibration``).

    ``seq_len`` defaults to the training one when the checkpoint's resume state records it, else 256 (at
    most the model's context). CheckpointError when the checkpoint has no head.
    """

    if batch_size <= 0 or max_batches < 0 or (seq_len is not None and seq_len <= 0):
        raise ConfigError(f"--batch-size and --seq-len must be positive and --max-batches >= 0, got "
                          f"{batch_size}, {seq_len}, {max_batches}")
    device = torch.device(device)
    gen = load_generator(model_path, tokenizer=tokenizer, device=device)
    ckpt, model = gen.checkpoint, gen.model
    head = load_head(ckpt, device)
    context = model.config.max_position_embeddings
    if seq_len is None:
        seq_len = min(_recorded_seq_len(ckpt.path) or DEFAULT_EVAL_SEQ_LEN, context)
    if seq_len > context:
        raise ConfigError(f"--seq-len {seq_len} is longer than the model's context ({context})")
    data_cfg = DataConfig(dataset=dataset, format=data_format, seq_len=seq_len, batch_size=batch_size)
    windows = TokenWindows(load_tokens(dataset, data_cfg, gen.tokenizer, on_warning=on_warning), seq_len)
    if len(windows) == 0:
        raise DataError(f"{dataset} is shorter than one window of --seq-len {seq_len} + 1 tokens; "
                        f"use a longer file or a smaller --seq-len")
    batches = eval_batches(windows, batch_size, max_batches=max_batches)
    result = evaluate_calibration(model, head, batches, device=device, eos_id=gen.tokenizer.eos_id)
    return {**result, "checkpoint": str(ckpt.path), "dataset": dataset, "seq_len": seq_len}

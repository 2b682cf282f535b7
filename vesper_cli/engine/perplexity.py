"""Perplexity of a checkpoint on a file, measured exactly as ``vesper train`` measures its validation loss.

Same pipeline (``vesper_data.pipeline.load_tokens``: documents joined by EOS), same windows
(``TokenWindows``: seq_len + 1 tokens, stride seq_len, the tail that does not fill a window dropped),
same held-out split (``split_validation`` for ``--val-fraction``), same batches and loss
(``engine.evaluation.evaluate``: token-weighted mean cross-entropy, no MoE aux). Settings not given
default to the ones the run recorded beside the checkpoint, so that ``vesper eval`` on the run's
held-out text reproduces the validation loss in its training log.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from vesper_core.checkpoint import LoadedCheckpoint
from vesper_core.device import dtype_name, parse_dtype
from vesper_core.distributed import DistInfo
from vesper_core.errors import ConfigError
from vesper_core.kernels.cross_entropy import perplexity
from vesper_core.resume_state import state_paths
from vesper_data.config import DataConfig
from vesper_data.loader import TokenWindows
from vesper_data.pipeline import load_tokens, split_validation
from vesper_cli.engine.evaluation import evaluate
from vesper_cli.engine.generation import Generator
from vesper_cli.engine.step import autocast_factory

DEFAULT_BATCH_SIZE = 8


def recorded_run_config(ckpt: LoadedCheckpoint) -> dict[str, Any] | None:
    """The run config saved with the checkpoint's run (its own resume state, else another checkpoint's of the
    same folder, else the run's event log); None for a checkpoint without one (weights only, Rust-written)."""
    own = state_paths(ckpt.path)[1]
    folder = ckpt.path.parent
    candidates = [own] + sorted((p for p in folder.glob("checkpoint-*.state.json") if p != own),
                                key=lambda p: p.stat().st_mtime, reverse=True)
    for path in candidates:
        try:
            config = json.loads(path.read_text(encoding="utf-8")).get("run_config")
        except (OSError, ValueError, AttributeError):
            continue
        if isinstance(config, dict):
            return config
    events = folder / "events.jsonl"
    if events.is_file():
        try:
            for line in events.read_text(encoding="utf-8").splitlines():
                event = json.loads(line)
                if event.get("event") == "start" and isinstance(event.get("run_config"), dict):
                    return event["run_config"]
        except (OSError, ValueError, AttributeError):
            return None
    return None


@dataclass(kw_only=True)
class WindowSettings:
    """How a file is cut and scored; ``resolve`` fills what was not given from the run."""

    seq_len: int | None = None
    batch_size: int | None = None
    dtype: str | None = None
    loss: str | None = None
    max_batches: int = 0
    val_fraction: float = 0.0
    format: str = "auto"
    text_field: str = "text"

    def resolve(self, ckpt: LoadedCheckpoint) -> "WindowSettings":
        recorded = recorded_run_config(ckpt) or {}
        data, train = recorded.get("data") or {}, recorded.get("train") or {}
        context = ckpt.config.max_position_embeddings
        seq_len = self.seq_len or data.get("seq_len") or context
        if seq_len <= 0 or seq_len > context:
            raise ConfigError(f"--seq-len {seq_len} must be in 1..{context} (the model's context)")
        if self.max_batches < 0:
            raise ConfigError(f"--max-batches must be >= 0 (0 = the whole file), got {self.max_batches}")
        if not 0.0 <= self.val_fraction < 1.0:
            raise ConfigError(f"--val-fraction must be in [0, 1), got {self.val_fraction}")
        dtype = self.dtype or ckpt.meta("dtype") or train.get("dtype") or "f32"
        parse_dtype(str(dtype))
        return WindowSettings(seq_len=int(seq_len), batch_size=int(self.batch_size or data.get("batch_size")
                                                                       or DEFAULT_BATCH_SIZE),
                              dtype=str(dtype), loss=self.loss or train.get("loss") or "auto",
                              max_batches=self.max_batches, val_fraction=self.val_fraction, format=self.format,
                              text_field=self.text_field)


@dataclass
class PerplexityResult:
    file: str
    loss: float  # mean cross-entropy per scored token (nats)
    perplexity: float
    num_tokens: int  # tokens scored
    num_windows: int
    num_batches: int
    seq_len: int
    batch_size: int
    dtype: str
    val_fraction: float
    max_batches: int

    def to_dict(self) -> dict[str, Any]:
        return {"file": self.file, "loss": self.loss, "perplexity": self.perplexity, "tokens": self.num_tokens,
                "windows": self.num_windows, "batches": self.num_batches, "seq_len": self.seq_len,
                "batch_size": self.batch_size, "dtype": self.dtype, "val_fraction": self.val_fraction,
                "max_batches": self.max_batches}


def file_windows(path: str | Path, gen: Generator, settings: WindowSettings,
                 on_warning: Callable[[str], None] | None = None) -> TokenWindows:
    """The windows of ``path`` that training would score (its held-out tail with ``val_fraction``)."""
    cfg = DataConfig(format=settings.format, text_field=settings.text_field, seq_len=settings.seq_len,
                     batch_size=settings.batch_size)
    ids = load_tokens(str(path), cfg, gen.tokenizer, on_warning=on_warning)
    if settings.val_fraction:
        _, ids = split_validation(ids, settings.val_fraction, settings.seq_len)
    return TokenWindows(ids, settings.seq_len)


def file_perplexity(path: str | Path, gen: Generator, settings: WindowSettings,
                    on_warning: Callable[[str], None] | None = None) -> PerplexityResult:
    """Mean loss and perplexity of ``gen.model`` on ``path``; ``settings`` must be resolved."""
    windows = file_windows(path, gen, settings, on_warning)
    dtype = parse_dtype(settings.dtype)
    metrics = evaluate(gen.model, windows, batch_size=settings.batch_size, device=gen.device,
                       autocast=autocast_factory(gen.device, dtype), max_batches=settings.max_batches,
                       dist_info=DistInfo(), loss_impl=settings.loss)
    num_windows = min(len(windows), metrics["val_batches"] * settings.batch_size)
    return PerplexityResult(file=str(path), loss=metrics["val_loss"], perplexity=perplexity(metrics["val_loss"]),
                            num_tokens=num_windows * settings.seq_len, num_windows=num_windows,
                            num_batches=metrics["val_batches"], seq_len=settings.seq_len,
                            batch_size=settings.batch_size, dtype=dtype_name(dtype),
                            val_fraction=settings.val_fraction, max_batches=settings.max_batches)

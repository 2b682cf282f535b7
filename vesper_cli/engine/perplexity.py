"""Perplexity of a checkpoint on a file, measured exactly as ``vesper train`` measures its validation loss.

Same pipeline (``vesper_data.pipeline.load_tokens``: documents joined by EOS), same windows
(``TokenWindows``: seq_len + 1 tokens, stride seq_len, the tail that does not fill a window dropped),
same held-out split (``split_validation`` for ``--val-fraction``); conversations (chat data) as
``vesper_data.chat`` trains them: one padded row each, rendered with the checkpoint's chat template,
the loss on the assistant tokens, the last conversations held out. Same batches and loss
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
from vesper_core.kernels.cross_entropy import IGNORE_INDEX, perplexity
from vesper_core.resume_state import state_paths
from vesper_data.config import DataConfig
from vesper_data.loader import TokenWindows
from vesper_data.pipeline import load_tokens, split_validation
from vesper_cli.engine.evaluation import eval_batches, evaluate
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
    chat_template: str | None = None  # conversations: None = the checkpoint's recorded template (else the default)
    train_on_prompt: bool | None = None  # conversations: None = as the run trained

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
                              text_field=self.text_field, chat_template=self.chat_template,
                              train_on_prompt=bool(self.train_on_prompt if self.train_on_prompt is not None
                                                   else data.get("train_on_prompt", False)))


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


def chat_windows(path: str | Path, gen: Generator, settings: WindowSettings,
                 on_warning: Callable[[str], None] | None = None):
    """Conversations as training scores them: one padded row each, the loss on the assistant tokens (or every
    token when the run trained on prompts), rendered with the checkpoint's chat template."""
    from vesper_data.chat import load_chat_template
    from vesper_data.chat.data import open_chat_windows
    from vesper_data.chat.examples import ChatWindows, load_chat_examples

    template = load_chat_template(settings.chat_template or gen.checkpoint.path)
    if not settings.val_fraction:
        return open_chat_windows(str(path), gen.tokenizer, template, settings.seq_len,
                                 train_on_prompt=settings.train_on_prompt, on_warning=on_warning)
    _, held_out = load_chat_examples([str(path)], template, gen.tokenizer).split(settings.val_fraction)
    return ChatWindows(held_out, settings.seq_len, pad_id=gen.tokenizer.eos_id or 0,
                       train_on_prompt=settings.train_on_prompt, source=f"{path} (held-out part)")


def is_chat_file(path: str | Path, fmt: str) -> bool:
    from vesper_data.sources import detect_format

    return detect_format(path, fmt) == "chat"


def file_windows(path: str | Path, gen: Generator, settings: WindowSettings,
                 on_warning: Callable[[str], None] | None = None):
    """The windows of ``path`` that training would score (its held-out tail with ``val_fraction``):
    TokenWindows for text, ChatWindows for conversations."""
    if is_chat_file(path, settings.format):
        return chat_windows(path, gen, settings, on_warning)
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
    num_tokens = sum(int((labels != IGNORE_INDEX).sum())  # scored tokens: a chat row's prompt and padding are not
                     for _, labels in eval_batches(windows, settings.batch_size, max_batches=settings.max_batches))
    return PerplexityResult(file=str(path), loss=metrics["val_loss"], perplexity=perplexity(metrics["val_loss"]),
                            num_tokens=num_tokens, num_windows=num_windows,
                            num_batches=metrics["val_batches"], seq_len=settings.seq_len,
                            batch_size=settings.batch_size, dtype=dtype_name(dtype),
                            val_fraction=settings.val_fraction, max_batches=settings.max_batches)

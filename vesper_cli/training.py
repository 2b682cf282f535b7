"""The training loop behind ``vesper train``.

data -> VesperLM (autocast) -> token-normalised CE (+ MoE aux) -> backward (grad accumulation)
-> NaN/Inf guard -> clip -> Velvet/AdamW -> log / eval / checkpoint (with full resume state).

Everything is importable: ``from vesper_cli.training import train``. The loop never prints; it
reports through a :class:`TrainObserver`, and stops cleanly through a :class:`StopControl`.
"""

from __future__ import annotations

import contextlib
import math
import random
import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
import torch.nn.functional as F

from vesper_cli.checkpoint import TOKENIZER_FILE, read_checkpoint, save_weights, step_from_name
from vesper_cli.control import StopControl
from vesper_cli.datasets import load_tokens, open_training_data, prepare_tokenizer
from vesper_cli.distributed import (DistInfo, all_reduce_sum, barrier, full_model_state, full_optimizer_state, gradient_sync,
                                   init_distributed, shard_model, shard_optimizer_state, shutdown)
from vesper_cli.evaluation import evaluate
from vesper_cli.experiment_log import ExperimentLogger
from vesper_cli.metacog_training import (METACOG_CONFIG_KEY, StepStats, adapt_optimizer_state, build_head,
                                         evaluate_calibration, head_param_groups, head_state, metacog_step_loss,
                                         sync_head_grads)
from vesper_cli.observer import RunInfo, StepMetrics, TrainObserver, TrainResult
from vesper_cli.resume_state import LoadedResumeState, ResumeState, load_resume_state, save_resume_state, state_paths
from vesper_cli.run_config import RunConfig
from vesper_cli.training_log import TrainingLog
from vesper_core.config import ModelConfig
from vesper_core.device import dtype_name, parse_dtype
from vesper_core.errors import CheckpointError, ConfigError, VesperError
from vesper_core.kernels.cross_entropy import chunked_cross_entropy
from vesper_core.model import VesperLM
from vesper_data.loader import BatchLoader, TokenWindows
from vesper_data.streaming import StreamingLoader
from vesper_data.tokenizers import VesperTokenizer
from vesper_optim.clipping import clip_grad_norm_
from vesper_optim.param_groups import build_param_groups
from vesper_optim.registry import build_optimizer
from vesper_optim.schedules import lr_at
from vesper_optim.signals import normalized_entropy
from vesper_optim.velvet import Velvet


class TrainingDivergedError(VesperError):
    """Too many consecutive non-finite steps."""


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def autocast_factory(device: torch.device, dtype: torch.dtype) -> Callable[[], contextlib.AbstractContextManager]:
    """bf16/f16 autocast over f32 master weights (upstream cast the weights themselves: bug 41)."""
    if dtype == torch.float32:
        return contextlib.nullcontext
    return lambda: torch.autocast(device_type=device.type, dtype=dtype)


@dataclass
class _Run:
    """Everything built before the first step."""

    cfg: RunConfig
    dist: DistInfo
    dtype: torch.dtype
    tokenizer: VesperTokenizer
    model_config: ModelConfig
    model: VesperLM
    forward_model: torch.nn.Module  # model, or its DDP / compiled wrapper
    optimizer: torch.optim.Optimizer
    scaler: torch.amp.GradScaler
    loader: BatchLoader | StreamingLoader
    val_windows: TokenWindows | None
    output_dir: Path
    log: TrainingLog
    num_train_tokens: int
    notes: list[str]
    step: int = 0
    counters: dict[str, Any] = field(default_factory=lambda: {
        "best_loss": None, "bad_steps": 0, "consecutive_bad_steps": 0, "tokens_seen": 0})
    head: Any = None  # the MetaHead with --metacog / --metacog-only


# -- setup -----------------------------------------------------------------------------------
def _prepare_output_dir(path: Path, is_main: bool) -> Path:
    if not is_main:
        return path
    try:
        path.mkdir(parents=True, exist_ok=True)
        probe = path / ".vesper-write-test"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as exc:
        raise ConfigError(f"--output-dir {path} is not writable ({exc.strerror}); choose another folder") from exc
    return path


def _config_diff(a: ModelConfig, b: ModelConfig) -> str:
    da, db = a.to_dict(), b.to_dict()
    return ", ".join([f"{k}: {da[k]} vs {db.get(k)}" for k in da if da[k] != db.get(k)][:4])


def _resolve_resume(path: str) -> Path:
    from vesper_cli.checkpoint import newest_checkpoint

    p = Path(path)
    if p.is_dir():
        return newest_checkpoint(p)
    if not p.is_file():
        raise CheckpointError(f"--resume {p}: no such file or folder; pass a checkpoint-*.safetensors or a run folder")
    return p


def _build(cfg: RunConfig, observer: TrainObserver) -> tuple[_Run, LoadedResumeState | None]:
    tcfg = cfg.train
    notes: list[str] = []
    dist_info = init_distributed(tcfg.device)
    output_dir = _prepare_output_dir(Path(tcfg.output_dir), dist_info.is_main)
    dtype = parse_dtype(tcfg.dtype)
    seed_everything(tcfg.seed)
    if tcfg.eval_every and not cfg.data.val_dataset:
        raise ConfigError("--eval-every needs --val-dataset (a held-out file to evaluate on)")

    resume_path = _resolve_resume(tcfg.resume) if tcfg.resume else None
    resume_ckpt = read_checkpoint(resume_path) if resume_path else None
    resume_state = load_resume_state(resume_path) if resume_path else None

    saved = [output_dir / TOKENIZER_FILE]
    if resume_ckpt is not None:
        saved = resume_ckpt.tokenizer_candidates() + saved
    tokenizer, notice = prepare_tokenizer(cfg.data, saved_candidates=saved)
    if notice:
        notes.append(notice)
    if dist_info.is_main:
        tokenizer.save(output_dir / TOKENIZER_FILE)

    data = open_training_data(cfg.data, tokenizer, seed=tcfg.seed, rank=dist_info.rank,
                              world_size=dist_info.world_size, on_warning=observer.on_message)
    notes.extend(data.notes)
    vocab_size = cfg.data.vocab_size or tokenizer.vocab_size
    if vocab_size < tokenizer.vocab_size:
        raise ConfigError(
            f"--vocab-size {vocab_size} is smaller than the tokenizer's vocabulary ({tokenizer.vocab_size}); "
            f"token ids would not fit the embedding. Use 0 (the tokenizer's size) or a larger value")
    model_config = cfg.model.build(vocab_size)
    if tcfg.metacog_only and resume_ckpt is not None:  # the frozen model is the checkpoint's, whatever the flags
        model_config, vocab_size = resume_ckpt.config, resume_ckpt.config.vocab_size
    if resume_ckpt is not None and resume_ckpt.config.to_dict() != model_config.to_dict():
        raise CheckpointError(
            f"--resume {resume_ckpt.path}: checkpoint was trained with a different model "
            f"({_config_diff(resume_ckpt.config, model_config)}); use the same --model-size/--vocab-size/--moe")

    model = VesperLM(model_config)
    if resume_ckpt is not None:
        model.load_exported_state_dict(resume_ckpt.state_dict)
    model.to(dist_info.device)
    head = None
    if tcfg.metacog or tcfg.metacog_only:
        head, note = build_head(model_config, resume_ckpt, dist_info.device, tcfg.metacog_weight)
        notes.append(note)
        if tcfg.metacog_only:
            model.requires_grad_(False)
            notes.append("metacog-only: the model is frozen, only the meta head trains")

    scaler = torch.amp.GradScaler(dist_info.device.type, enabled=dtype == torch.float16)

    loader = data.loader
    val_windows = None
    if cfg.data.val_dataset:
        val_windows = TokenWindows(load_tokens(cfg.data.val_dataset, cfg.data, tokenizer,
                                               on_warning=observer.on_message), cfg.data.seq_len)

    if tcfg.fsdp:
        shard_model(model, dist_info)
    forward_model: torch.nn.Module = model
    if tcfg.compile:
        forward_model = torch.compile(model)
        notes.append("torch.compile on: the first steps compile (slow), checkpoints stay uncompiled")
    if dist_info.enabled and not tcfg.fsdp and not tcfg.metacog_only:
        from torch.nn.parallel import DistributedDataParallel

        forward_model = DistributedDataParallel(
            forward_model, device_ids=[dist_info.device.index] if dist_info.device.type == "cuda" else None)
        notes.append(f"DDP on {dist_info.world_size} ranks ({'nccl' if dist_info.device.type == 'cuda' else 'gloo'}), "
                     f"global batch {cfg.data.batch_size * dist_info.world_size * tcfg.grad_accum}")

    groups = [] if tcfg.metacog_only else build_param_groups(model, cfg.optim.weight_decay)
    if head is not None:
        groups += head_param_groups(head, cfg.optim.weight_decay)
    optimizer = build_optimizer(groups, cfg.optim, vocab_size=vocab_size)
    start_step = 0
    if tcfg.metacog_only and not _metacog_only_state(resume_state):
        resume_state = None  # a new run on the frozen weights: fresh head optimizer, data order and step count
    elif resume_ckpt is not None:
        start_step = int(resume_ckpt.meta("step", step_from_name(resume_ckpt.path)))
        if resume_state is None:
            notes.append(f"warning: {resume_ckpt.path.name} has no resume state beside it (a weights-only or "
                         f"Rust checkpoint): continuing at step {start_step} with a fresh optimizer and data order")
    log = TrainingLog.open(output_dir, optimizer=cfg.optim.name, model_size=cfg.model.model_size,
                           resume_step=start_step)
    run = _Run(cfg=cfg, dist=dist_info, dtype=dtype, tokenizer=tokenizer, model_config=model_config, model=model,
               forward_model=forward_model, optimizer=optimizer, scaler=scaler, loader=loader,
               val_windows=val_windows, output_dir=output_dir, log=log, num_train_tokens=data.num_tokens, notes=notes,
               step=start_step, head=head)
    return run, resume_state


def _metacog_only_state(state: LoadedResumeState | None) -> bool:
    """Whether a resume state was written by a --metacog-only run (then it resumes exactly)."""
    train_cfg = ((state.meta.get("run_config") or {}).get("train") or {}) if state is not None else {}
    return bool(train_cfg.get("metacog_only"))


def _restore(run: _Run, state: LoadedResumeState) -> None:
    """Optimizer, scaler, data position, counters and RNG: the run continues as if never stopped."""
    meta = state.meta
    if meta.get("optimizer_class") != type(run.optimizer).__name__:
        raise CheckpointError(
            f"resume state was written by optimizer {meta.get('optimizer_class')}, this run uses "
            f"{type(run.optimizer).__name__}; pass the same --optimizer")
    try:
        saved, note = adapt_optimizer_state(state.optimizer_state_dict(), run.optimizer)
        if note:
            run.notes.append(note)
        run.optimizer.load_state_dict(saved)
    except (ValueError, KeyError, RuntimeError) as exc:
        raise CheckpointError(f"optimizer state in the checkpoint does not fit this model: {exc}") from exc
    if run.cfg.train.fsdp:
        shard_optimizer_state(run.optimizer)
    if meta.get("scaler") and run.scaler.is_enabled():
        run.scaler.load_state_dict(meta["scaler"])
    run.loader.load_state_dict(_loader_state_for(run, meta["loader"]))
    run.counters.update(meta.get("counters", {}))
    run.step = state.step
    state.restore_rng()


def _loader_state(run: _Run) -> dict[str, Any]:
    state = run.loader.state_dict()
    # the position in windows (all ranks together) lets a run resume on another world size
    state["windows_consumed"] = state["index"] * run.loader.batch_size * run.loader.world_size
    state["world_size"] = run.loader.world_size
    state["batch_size"] = run.loader.batch_size
    return state


def _loader_state_for(run: _Run, saved: dict[str, Any]) -> dict[str, Any]:
    if ("stream" in saved) != isinstance(run.loader, StreamingLoader):
        raise CheckpointError(
            "the checkpoint's data position was saved " + ("with" if "stream" in saved else "without") +
            " --streaming; resume with the same data source (--dataset/--streaming/--cache) as the original run")
    if "stream" in saved:  # a stream position is global: the streaming loader adapts to a new batch/world size
        return saved
    if saved.get("world_size", 1) == run.loader.world_size and saved.get("batch_size") == run.loader.batch_size:
        return saved
    per_step = run.loader.batch_size * run.loader.world_size
    consumed = int(saved["windows_consumed"])
    if consumed % per_step:
        raise CheckpointError(
            f"cannot resume the data position: {consumed} windows were consumed in this epoch, not a multiple of the "
            f"new global batch {per_step} (batch {run.loader.batch_size} x {run.loader.world_size} ranks); keep "
            f"--batch-size x ranks equal to the original {saved.get('batch_size')} x {saved.get('world_size')}")
    return {"epoch": saved["epoch"], "index": consumed // per_step, "seed": saved["seed"]}


# -- checkpoints -----------------------------------------------------------------------------
_PERIODIC = re.compile(r"^checkpoint-(\d+)\.safetensors$")


def _save(run: _Run, name: str, *, full_state: bool = True, observer: TrainObserver | None = None) -> Path:
    path = run.output_dir / name
    # with FSDP every rank takes part in gathering the full tensors; rank 0 writes them
    weights = full_model_state(run.model)
    extra = {}
    if run.head is not None:
        weights.update(head_state(run.head))
        extra[METACOG_CONFIG_KEY] = run.head.config.to_dict()
    optimizer_state = full_optimizer_state(run.optimizer) if full_state else None
    if not run.dist.is_main:
        return path
    if full_state:
        save_resume_state(path, ResumeState(step=run.step, loader=_loader_state(run), counters=run.counters,
                                            run_config=run.cfg.to_dict()), optimizer_state,
                          type(run.optimizer).__name__, run.scaler)
    save_weights(path, run.model, state_dict=weights, extra={
        "step": str(run.step), "model_size": run.cfg.model.model_size, "optimizer": run.cfg.optim.name,
        "tokenizer_sha256": run.tokenizer.sha256(), "dtype": dtype_name(run.dtype), **extra,
    })
    run.log.write()
    if observer is not None:
        observer.on_checkpoint(path)
    return path


def _rotate(run: _Run, keep_last: int) -> None:
    """Keep only the newest ``keep_last`` periodic checkpoint-{N} files (with their state)."""
    if keep_last <= 0 or not run.dist.is_main:
        return
    periodic = sorted((int(m.group(1)), p) for p in run.output_dir.iterdir() if (m := _PERIODIC.match(p.name)))
    for _, path in periodic[:-keep_last]:
        for file in (path, *state_paths(path)):
            file.unlink(missing_ok=True)


# -- one optimizer step ----------------------------------------------------------------------
@dataclass
class _StepOutcome:
    loss: float
    grad_norm: float
    aux_loss: float | None
    skipped: str | None = None  # why the update was skipped
    metacog: dict[str, float] | None = None  # loss, mean confidence, top-1 accuracy of this step


CHUNKED_LOSS_MIN_VOCAB = 32768


def uses_chunked_loss(loss: str, vocab_size: int) -> bool:
    """``auto``: the fused linear + CE from a 32k vocabulary up, where the logits dominate memory."""
    return loss == "chunked" or (loss == "auto" and vocab_size >= CHUNKED_LOSS_MIN_VOCAB)


def _micro_batches(run: _Run, batches):
    for _ in range(run.cfg.train.grad_accum):
        yield next(batches)


def _optimizer_step(run: _Run, micro_batches: list) -> _StepOutcome:
    model, optimizer, cfg = run.forward_model, run.optimizer, run.cfg
    device = run.dist.device
    autocast = autocast_factory(device, run.dtype)
    chunked = uses_chunked_loss(cfg.train.loss, run.model_config.vocab_size)
    num_tokens = sum(labels.numel() for _, labels in micro_batches)
    total_tokens = all_reduce_sum(torch.tensor(float(num_tokens), device=device), run.dist)
    ce_sum = torch.zeros((), dtype=torch.float64, device=device)
    aux_total = None
    entropies = []
    head, meta_only, meta_stats = run.head, cfg.train.metacog_only, StepStats()
    for i, (input_ids, labels) in enumerate(micro_batches):
        input_ids, labels = input_ids.to(device, non_blocking=True), labels.to(device, non_blocking=True)
        is_last = i == len(micro_batches) - 1
        with gradient_sync(model, enabled=is_last or not run.dist.enabled):
            with autocast(), (torch.no_grad() if meta_only else contextlib.nullcontext()):
                out = model(input_ids, compute_logits=not chunked or meta_only, return_hidden=head is not None)
                if chunked and not meta_only:  # fused linear + CE: the (tokens, vocab) f32 logits never exist at once
                    ce, entropy = chunked_cross_entropy(out.hidden_states, run.model.lm_head.weight, labels,
                                                        reduction="sum", return_entropy=True)
            if not chunked or meta_only:
                ce = F.cross_entropy(out.logits.float().flatten(0, 1), labels.flatten(), reduction="sum")
            # normalised by the tokens of the whole accumulated (global) batch: not a mean of means;
            # DDP averages gradients over ranks, so scale by the world size to undo that average
            loss = ce * (run.dist.world_size / total_tokens)
            if out.aux_loss is not None:
                aux = out.aux_loss.float() / len(micro_batches)
                loss = loss + run.model_config.moe_aux_loss_weight * aux
                aux_total = aux.detach() if aux_total is None else aux_total + aux.detach()
            if head is not None:
                with autocast():
                    meta = metacog_step_loss(head, out.hidden_states, out.logits, labels, run.tokenizer.eos_id,
                                             meta_stats, lm_head=run.model.lm_head) / len(micro_batches)
                # --metacog-only: the head's loss alone (the frozen model has no gradient to give)
                loss = meta if meta_only else loss + head.config.loss_weight * meta
            run.scaler.scale(loss).backward()
        ce_sum += ce.detach().double()
        if cfg.train.entropy_signal == "logits" and isinstance(optimizer, Velvet):
            entropies.append(entropy if chunked and not meta_only else normalized_entropy(out.logits.detach()))
    if head is not None:
        sync_head_grads(head, run.dist)
    mean_loss = float(all_reduce_sum(ce_sum, run.dist) / total_tokens)
    aux_value = None if aux_total is None else float(aux_total)
    if not math.isfinite(mean_loss):
        optimizer.zero_grad(set_to_none=True)
        return _StepOutcome(mean_loss, float("nan"), aux_value, skipped="non-finite loss")

    run.scaler.unscale_(optimizer)
    if isinstance(optimizer, Velvet):
        entropy = None
        if entropies:
            entropy = float(all_reduce_sum(torch.stack(entropies).mean().reshape(1), run.dist)) / run.dist.world_size
        optimizer.set_signals(mean_loss, normalized_entropy=entropy, vocab_size=run.model_config.vocab_size)
        grad_norm = float(optimizer.clip_grad_norm_())
    else:
        params = list(run.model.parameters()) + (list(head.parameters()) if head is not None else [])
        grad_norm = float(clip_grad_norm_([p for p in params if p.grad is not None], cfg.optim.max_grad_norm))
    if not math.isfinite(grad_norm):
        if run.scaler.is_enabled():  # an f16 overflow: the scaler skips the step and lowers its scale
            run.scaler.step(optimizer)
            run.scaler.update()
            optimizer.zero_grad(set_to_none=True)
            return _StepOutcome(mean_loss, grad_norm, aux_value, skipped="f16 overflow (loss scale lowered)")
        optimizer.zero_grad(set_to_none=True)
        return _StepOutcome(mean_loss, grad_norm, aux_value, skipped="non-finite gradient norm")
    run.scaler.step(optimizer)
    run.scaler.update()
    optimizer.zero_grad(set_to_none=True)
    return _StepOutcome(mean_loss, grad_norm, aux_value, metacog=meta_stats.result())


# -- the loop ----------------------------------------------------------------------------------
def _epoch_budget(cfg: RunConfig) -> int | None:
    """--epochs when given; otherwise 3 (the Rust default), or unlimited when --max-steps sets the length."""
    if cfg.train.epochs is not None:
        return cfg.train.epochs
    return None if cfg.train.max_steps else 3


def _total_steps(cfg: RunConfig, batches_per_epoch: int) -> int | None:
    epochs = _epoch_budget(cfg)
    by_epochs = None if epochs is None else epochs * (batches_per_epoch // cfg.train.grad_accum)
    if cfg.train.max_steps > 0:
        return cfg.train.max_steps if by_epochs is None else min(cfg.train.max_steps, by_epochs)
    return by_epochs


def train(cfg: RunConfig, observer: TrainObserver | None = None, control: StopControl | None = None) -> TrainResult:
    """Train one model as ``cfg`` says; returns where everything was written."""
    observer = observer or TrainObserver()
    control = control or StopControl()
    run, resume_state = _build(cfg, observer)
    try:
        result = _train(run, resume_state, observer, control)
        barrier(run.dist)  # rank 0 may still be writing files: leave the process group together
        return result
    finally:
        shutdown(run.dist)


def _train(run: _Run, resume_state: LoadedResumeState | None, observer: TrainObserver,
           control: StopControl) -> TrainResult:
    cfg, tcfg, loader = run.cfg, run.cfg.train, run.loader
    if loader.num_batches < tcfg.grad_accum:
        raise ConfigError(f"--grad-accum {tcfg.grad_accum} needs at least that many batches per epoch, the data "
                          f"gives {loader.num_batches}; lower it or --batch-size")
    total_steps = _total_steps(cfg, loader.num_batches)
    epochs = _epoch_budget(cfg)
    tokens_per_step = cfg.data.batch_size * cfg.data.seq_len * tcfg.grad_accum * run.dist.world_size
    if resume_state is not None:
        _restore(run, resume_state)
    observer.on_start(RunInfo(
        model_size=cfg.model.model_size, num_params=run.model.num_parameters(),
        vocab_size=run.model_config.vocab_size, device=str(run.dist.device), dtype=dtype_name(run.dtype),
        optimizer=cfg.optim.name, tokenizer=run.tokenizer.name, num_train_tokens=run.num_train_tokens,
        batches_per_epoch=loader.num_batches, total_steps=total_steps, start_step=run.step, notes=run.notes))
    tracker = ExperimentLogger.create(cfg, run.dist.is_main, observer.on_message)

    checkpoints: list[Path] = []
    first_loss = last_loss = None
    window_losses: list[float] = []  # since the last periodic save: the training-loss "best" criterion
    epoch_losses: list[float] = []
    start = time.perf_counter()
    session_tokens = 0
    stop_reason = None
    run.model.train()
    if run.head is not None:
        run.head.train()

    def save(name: str, **kw) -> Path:
        path = _save(run, name, observer=observer, **kw)
        checkpoints.append(path)
        return path

    def maybe_best(loss: float | None, what: str) -> None:
        best = run.counters["best_loss"]
        if loss is not None and math.isfinite(loss) and (best is None or loss < best):
            run.counters["best_loss"] = loss
            run.counters["best_by"] = what
            save("checkpoint-best.safetensors", full_state=False)

    def epochs_done() -> int:
        return loader.epoch + (1 if loader.index >= loader.num_batches else 0)

    batches = loader.batches_forever()
    while True:
        if tcfg.max_steps and run.step >= tcfg.max_steps:
            break
        epoch = epochs_done()  # 0-based epoch the next batch comes from
        if epochs is not None and epoch >= epochs:
            break
        for group in run.optimizer.param_groups:
            group["lr"] = lr_at(run.step, base_lr=cfg.optim.lr, schedule=cfg.optim.lr_schedule,
                                warmup_steps=cfg.optim.warmup_steps, max_steps=total_steps or 0,
                                min_lr_ratio=cfg.optim.min_lr_ratio)
        outcome = _optimizer_step(run, list(_micro_batches(run, batches)))
        session_tokens += tokens_per_step
        if outcome.skipped:
            run.counters["bad_steps"] += 1
            if "overflow" not in outcome.skipped:
                run.counters["consecutive_bad_steps"] += 1
            run.log.skipped(run.step, outcome.skipped, outcome.loss, outcome.grad_norm)
            observer.on_message(f"step {run.step + 1} skipped: {outcome.skipped} "
                                f"({run.counters['bad_steps']} skipped so far)")
            if run.counters["consecutive_bad_steps"] >= tcfg.max_bad_steps:
                path = save(f"checkpoint-{run.step}.safetensors")
                raise TrainingDivergedError(
                    f"{run.counters['consecutive_bad_steps']} consecutive steps had a non-finite loss or gradient "
                    f"(--max-bad-steps {tcfg.max_bad_steps}); stopped and saved the last good weights to {path}. "
                    f"Lower --lr, use --dtype f32/bf16, or check the data")
        else:
            run.counters["consecutive_bad_steps"] = 0
            run.step += 1
            run.counters["tokens_seen"] += tokens_per_step
            group = run.optimizer.param_groups[0]
            is_velvet = isinstance(run.optimizer, Velvet)
            metrics = StepMetrics(
                step=run.step, epoch=epoch + 1, loss=outcome.loss, ppl=math.exp(min(outcome.loss, 20.0)),
                lr=run.optimizer.effective_lr() if is_velvet else group["lr"], grad_norm=outcome.grad_norm,
                entropy_scale=float(group.get("entropy_scale", 1.0)), ppl_scale=float(group.get("ppl_scale", 1.0)),
                tokens_per_sec=session_tokens / max(time.perf_counter() - start, 1e-9), aux_loss=outcome.aux_loss,
                metacog=outcome.metacog)
            run.log.append(metrics)
            observer.on_step(metrics)
            if run.step % tcfg.log_every == 0:
                tracker.log_step(metrics)
            first_loss = outcome.loss if first_loss is None else first_loss
            last_loss = outcome.loss
            window_losses.append(outcome.loss)
            epoch_losses.append(outcome.loss)

            if tcfg.eval_every and run.val_windows is not None and run.step % tcfg.eval_every == 0:
                _run_eval(run, observer, tracker)
                maybe_best(run.log.evals[-1]["val_loss"], "val_loss")
            if tcfg.save_every and run.step % tcfg.save_every == 0:
                save(f"checkpoint-{run.step}.safetensors")
                _rotate(run, tcfg.keep_last)
                if run.val_windows is None:
                    maybe_best(sum(window_losses) / len(window_losses), "train_loss")
                window_losses.clear()

        if epochs_done() > epoch and epoch_losses:  # this step used the epoch's last batch
            observer.on_epoch_end(epoch + 1, sum(epoch_losses) / len(epoch_losses))
            save(f"checkpoint-epoch{epoch + 1}.safetensors")
            epoch_losses.clear()
        if control.requested:
            stop_reason = control.reason
            break

    if stop_reason is not None:
        final = save(f"checkpoint-emergency-step{run.step}.safetensors")
        observer.on_message(f"stopped by {stop_reason}: resume with --resume {final}")
    else:
        if run.val_windows is not None:
            if not run.log.evals or run.log.evals[-1]["step"] != run.step:  # not evaluated at this step yet
                _run_eval(run, observer, tracker)
                maybe_best(run.log.evals[-1]["val_loss"], "val_loss")
        elif window_losses:
            maybe_best(sum(window_losses) / len(window_losses), "train_loss")
        final = save("checkpoint-final.safetensors")
    tracker.finish()
    result = TrainResult(
        output_dir=run.output_dir, final_checkpoint=final, log_path=run.log.path, steps=run.step,
        first_loss=first_loss, final_loss=last_loss, elapsed_s=time.perf_counter() - start,
        tokens_seen=run.counters["tokens_seen"], checkpoints=checkpoints, stopped_by=stop_reason)
    observer.on_end(result)
    return result


def _run_eval(run: _Run, observer: TrainObserver, tracker: "ExperimentLogger") -> None:
    common = dict(batch_size=run.cfg.data.batch_size, device=run.dist.device,
                  autocast=autocast_factory(run.dist.device, run.dtype), max_batches=run.cfg.train.eval_batches,
                  dist_info=run.dist)
    calibration = ""
    if run.head is None:
        metrics = evaluate(run.forward_model, run.val_windows, **common)
    else:  # one pass gives both the held-out LM loss and the head's calibration
        cal = evaluate_calibration(run.forward_model, run.head, run.val_windows, eos_id=run.tokenizer.eos_id,
                                   **common)
        metrics = {"val_loss": cal["lm_loss"], "val_ppl": math.exp(min(cal["lm_loss"], 20.0)),
                   "val_batches": cal["batches"]}
        metrics.update({f"metacog_{k}": cal[k] if math.isfinite(cal[k]) else None  # nan: one class missing
                        for k in ("ece", "auroc", "accuracy", "mean_confidence")})
        calibration = (f"; confidence ECE {cal['ece']:.4f}, AUROC {cal['auroc']:.3f}, "
                       f"accuracy {cal['accuracy']:.3f}, mean confidence {cal['mean_confidence']:.3f}")
    run.log.evaluation(run.step, metrics)
    tracker.log_eval(run.step, metrics)
    observer.on_message(f"eval at step {run.step}: val loss {metrics['val_loss']:.4f}, "
                        f"val ppl {metrics['val_ppl']:.1f} ({metrics['val_batches']} batches){calibration}")

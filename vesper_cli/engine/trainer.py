"""The trainer behind ``vesper train`` and every ``vesper benchmark`` arm.

``build_training(cfg)`` turns a RunConfig into components (model, objective, optimizer, loader,
checkpointer); :class:`Trainer` runs the loop around the one step function (:class:`TrainStep`):
LR schedule -> step -> log / eval / checkpoint, with exact resume, a NaN guard and clean stops.
Each component is injectable: the benchmark builds in-memory data and a checkpointer that writes
nothing, and runs the same ``Trainer``.

Nothing here prints: the loop reports through a :class:`TrainObserver` and stops cleanly through a
:class:`StopControl`. ``from vesper_cli.engine import train``.
"""

from __future__ import annotations

import dataclasses
import math
import random
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from vesper_core.checkpoint import (build_adapted_model, check_tokenizer, file_sha256, newest_checkpoint,
                                    read_checkpoint, step_from_name)
from vesper_core.config import ModelConfig
from vesper_core.device import dtype_name, parse_dtype
from vesper_core.distributed import DistInfo, barrier, init_distributed, shard_model, shutdown
from vesper_core.errors import CheckpointError, ConfigError, VesperError
from vesper_core.kernels.cross_entropy import perplexity
from vesper_core.layers.adapters import AdapterReport, adapter_report, attach_adapters
from vesper_core.model import METACOG_PREFIX, VesperLM
from vesper_core.resume_state import LoadedResumeState, load_resume_state
from vesper_core.vocab import GROWTH_KEY, grow_vocabulary
from vesper_data.chat import CHECKPOINT_KEY as CHAT_TEMPLATE_KEY
from vesper_data.chat import ChatTemplate, add_chat_tokens
from vesper_data.chat.data import is_chat_data, open_chat_validation, resolve_chat_template
from vesper_data.loader import BatchLoader, TokenWindows
from vesper_data.pipeline import load_tokens, open_training_data, prepare_tokenizer
from vesper_data.streaming import StreamingLoader
from vesper_data.tokenizers import VesperTokenizer
from vesper_metacog.training import build_head
from vesper_optim.param_groups import build_param_groups
from vesper_optim.registry import build_optimizer
from vesper_optim.schedules import lr_at
from vesper_cli.engine.checkpointer import Checkpointer, NullCheckpointer, check_output_dir
from vesper_cli.engine.control import StopControl
from vesper_cli.engine.evaluation import evaluate
from vesper_cli.engine.experiment_log import ExperimentLogger
from vesper_cli.engine.observer import RunInfo, StepMetrics, TrainObserver, TrainResult
from vesper_cli.engine.run_config import RunConfig
from vesper_cli.engine.step import StepOutcome, TrainStep, autocast_factory
from vesper_cli.engine.training_log import TrainingLog
from vesper_metacog.training import evaluate_calibration
from vesper_cli.engine.evaluation import eval_batches


class TrainingDivergedError(VesperError):
    """Too many consecutive non-finite steps."""


# dense bf16/f16 peak FLOP/s of accelerators we know, for MFU (absent: MFU is not reported)
_PEAK_TFLOPS = {"H200": 989.0, "H100": 989.0, "A100": 312.0, "L40S": 362.0, "A10G": 125.0, "L4": 121.0,
                "RTX 4090": 165.0, "RTX 3090": 71.0}


def model_flops_per_token(config: ModelConfig, seq_len: int) -> float:
    """Training FLOPs per token: 6 x parameters in matmuls + 12 x layers x hidden x seq_len (attention)."""
    h, layers = config.hidden_size, config.num_layers
    matmul_params = layers * (4 * h * h + 3 * h * config.intermediate_size) + h * config.vocab_size
    return 6.0 * matmul_params + 12.0 * layers * h * seq_len


def peak_flops(device: torch.device, dtype: torch.dtype) -> float | None:
    """The device's peak FLOP/s when known (CUDA with a known name; ``VESPER_PEAK_TFLOPS`` overrides)."""
    import os

    if os.environ.get("VESPER_PEAK_TFLOPS"):
        try:
            return float(os.environ["VESPER_PEAK_TFLOPS"]) * 1e12
        except ValueError:
            return None
    if device.type != "cuda" or not torch.cuda.is_available():
        return None
    name = torch.cuda.get_device_name(device)
    for key, tflops in _PEAK_TFLOPS.items():
        if key in name:
            return tflops * 1e12 / (1 if dtype != torch.float32 else 2)  # TF32 is about half
    return None


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def build_model(model_config: ModelConfig, seed: int) -> VesperLM:
    """The initial weights of a run: the same for ``vesper train`` and every benchmark arm of one seed."""
    seed_everything(seed)
    return VesperLM(model_config)


def switch_optimizer_mode(optimizer: torch.optim.Optimizer, training: bool) -> None:
    """Optimizers with train()/eval() (Schedule-Free) evaluate and save their averaged weights."""
    method = getattr(optimizer, "train" if training else "eval", None)
    if callable(method):
        method()


@dataclass
class TrainingRun:
    """Everything built before the first step, and the counters that the checkpoints carry."""

    cfg: RunConfig
    dist: DistInfo
    dtype: torch.dtype
    model_config: ModelConfig
    model: VesperLM
    step_fn: TrainStep
    optimizer: torch.optim.Optimizer
    loader: BatchLoader | StreamingLoader
    checkpointer: Checkpointer | NullCheckpointer
    log: TrainingLog | None
    val_windows: TokenWindows | None = None
    adapters: AdapterReport | None = None  # --finetune lora/flylora: what trains
    base_checkpoint: tuple[Path, str] | None = None  # the adapters' base file and its sha256
    tokenizer: VesperTokenizer | None = None
    num_train_tokens: int = 0
    notes: list[str] = field(default_factory=list)
    extra_meta: dict[str, Any] = field(default_factory=dict)  # recorded in every checkpoint (chat template, ...)
    step: int = 0
    counters: dict[str, Any] = field(default_factory=lambda: {
        "best_loss": None, "bad_steps": 0, "consecutive_bad_steps": 0, "tokens_seen": 0})

    @property
    def head(self):
        return self.step_fn.objective.head

    @property
    def scaler(self) -> torch.amp.GradScaler:
        return self.step_fn.scaler


# -- building a run from its config ------------------------------------------------------------------
def _config_diff(a: ModelConfig, b: ModelConfig) -> str:
    da, db = a.to_dict(), b.to_dict()
    return ", ".join([f"{k}: {da[k]} vs {db.get(k)}" for k in da if da[k] != db.get(k)][:4])


def _same_folder(a: Path, b: Path) -> bool:
    try:
        return a.resolve() == b.resolve()
    except OSError:
        return False


def _file_sha(path: Path) -> str | None:
    try:
        return VesperTokenizer.from_file(path).sha256()
    except VesperError:
        return None


def _resolve_resume(path: str) -> Path:
    p = Path(path)
    if p.is_dir():
        return newest_checkpoint(p)
    if not p.is_file():
        raise CheckpointError(f"--resume {p}: no such file or folder; pass a checkpoint-*.safetensors or a run folder")
    return p


def _resolve_init(path: str) -> Path:
    p = Path(path)
    if p.is_dir():
        return newest_checkpoint(p)
    if not p.is_file():
        raise CheckpointError(f"--init-from {p}: no such file or folder; pass a checkpoint-*.safetensors or a run folder")
    return p


def recorded_chat_template(ckpt) -> "ChatTemplate | None":
    raw = ckpt.metadata.get(CHAT_TEMPLATE_KEY)
    return None if raw is None else ChatTemplate.from_dict(ckpt.meta(CHAT_TEMPLATE_KEY), str(ckpt.path))


def check_extends_tokenizer(ckpt, tokenizer: VesperTokenizer) -> None:
    """CheckpointError unless ``tokenizer`` is the checkpoint's, or the checkpoint's plus added tokens."""
    recorded = ckpt.meta("tokenizer_sha256")
    if not recorded or str(recorded) == tokenizer.sha256():
        return
    base = next((VesperTokenizer.from_file(p) for p in ckpt.tokenizer_candidates()
                 if p.is_file() and _file_sha(p) == str(recorded)), None)
    if base is not None:
        new_vocab = tokenizer.tokenizer.get_vocab(with_added_tokens=True)
        if all(new_vocab.get(tok) == i for tok, i in base.tokenizer.get_vocab(with_added_tokens=True).items()):
            return
    check_tokenizer(ckpt, tokenizer.sha256(), tokenizer.name)  # raises with the usual message


def _metacog_only_state(state: LoadedResumeState | None) -> bool:
    """Whether a resume state was written by a --metacog-only run (then it resumes exactly)."""
    train_cfg = ((state.meta.get("run_config") or {}).get("train") or {}) if state is not None else {}
    return bool(train_cfg.get("metacog_only"))


def build_optimizer_for(cfg: RunConfig, model: VesperLM, head, vocab_size: int) -> torch.optim.Optimizer:
    """The run's optimizer over the model's decay / no-decay (/ sparse) groups and the head's."""
    ocfg = cfg.optim
    groups = [] if cfg.train.metacog_only else build_param_groups(
        model, ocfg.weight_decay, sparse_patterns=[p.strip() for p in ocfg.sparse_params.split(",") if p.strip()])
    if ocfg.sparse_aware and cfg.train.finetune != "full":
        stuck = [n for g in groups if g.get("sparse") for n in g["param_names"] if n.endswith(".lora_B")]
        if stuck:
            raise ConfigError(f"--sparse-params puts {stuck[0]} in the sparse group, but adapter B matrices start at "
                              f"exactly zero, so --sparse-aware would keep them at zero forever; leave lora_B out "
                              f"of --sparse-params (e.g. '*.lora_A')")
    if head is not None:
        groups += build_param_groups(head, ocfg.weight_decay, name_prefix=METACOG_PREFIX)
    return build_optimizer(groups, ocfg, vocab_size=vocab_size)


def build_training(cfg: RunConfig, observer: TrainObserver) -> tuple[TrainingRun, LoadedResumeState | None]:
    """Every component of a ``vesper train`` run; validates the inputs before the first write."""
    tcfg = cfg.train
    notes: list[str] = []
    notes.extend(cfg.notes)
    dist_info = init_distributed(tcfg.device)
    output_dir = Path(tcfg.output_dir)
    dtype = parse_dtype(tcfg.dtype)
    if tcfg.eval_every and not (cfg.data.val_dataset or cfg.data.val_fraction):
        raise ConfigError("--eval-every needs --val-dataset or --val-fraction (held-out text to evaluate on)")

    resume_path = _resolve_resume(tcfg.resume) if tcfg.resume else None
    resume_ckpt = read_checkpoint(resume_path) if resume_path else None
    resume_state = load_resume_state(resume_path) if resume_path else None
    # --init-from: a new run on a checkpoint's weights (a resumed --init-from run takes everything from --resume)
    init_ckpt = read_checkpoint(_resolve_init(tcfg.init_from)) if tcfg.init_from and resume_ckpt is None else None
    continuing = (resume_path is not None and not (tcfg.metacog_only and not _metacog_only_state(resume_state))
                  and _same_folder(resume_path.parent, output_dir))
    if continuing and tcfg.overwrite:
        raise ConfigError(f"--overwrite would delete the run that --resume {tcfg.resume} continues; drop --overwrite "
                          f"(or write the continued run to another --output-dir)")
    if dist_info.is_main:
        check_output_dir(output_dir, continuing=continuing, overwrite=tcfg.overwrite)

    # --tokenizer auto: the resumed checkpoint's own tokenizer, else (a new run) one trained on the data;
    # never a tokenizer left in --output-dir by an earlier run
    source_ckpt = resume_ckpt if resume_ckpt is not None else init_ckpt
    saved = source_ckpt.tokenizer_candidates() if source_ckpt is not None else []
    if source_ckpt is not None and cfg.data.tokenizer == "auto":
        recorded = source_ckpt.meta("tokenizer_sha256")
        saved = [p for p in saved if p.is_file() and (not recorded or _file_sha(p) == str(recorded))] or saved
    tokenizer, notice = prepare_tokenizer(cfg.data, saved_candidates=saved)
    if notice:
        notes.append(notice)
    if resume_ckpt is not None:
        check_tokenizer(resume_ckpt, tokenizer.sha256(), tokenizer.name)
    if init_ckpt is not None:
        check_extends_tokenizer(init_ckpt, tokenizer)

    chat_template = None
    extra_meta: dict[str, Any] = {}
    chat = is_chat_data(cfg.data)
    if not chat and (cfg.data.train_on_prompt or cfg.data.chat_template != "auto"):
        flag = "--train-on-prompt" if cfg.data.train_on_prompt else "--chat-template"
        raise ConfigError(f"{flag} applies to conversation data; {cfg.data.cache or cfg.data.dataset} is not read as "
                          f"conversations (pass --format chat, or a chat cache)")
    if chat:
        recorded_templates = [recorded_chat_template(c) for c in (resume_ckpt, init_ckpt) if c is not None]
        chat_template, where = resolve_chat_template(cfg.data, *recorded_templates)
        added = add_chat_tokens(tokenizer, chat_template)
        covered = "every token" if cfg.data.train_on_prompt else "the assistant tokens"
        note = f"chat data: template {where}; loss on {covered}"
        if added:
            note += f"; added special token(s) {', '.join(added)} to the tokenizer (vocab {tokenizer.vocab_size})"
        notes.append(note)
        extra_meta[CHAT_TEMPLATE_KEY] = chat_template.to_dict()
    if init_ckpt is not None:
        extra_meta["init_from"] = str(init_ckpt.path)
    for key in ("init_from", GROWTH_KEY):  # a resumed run keeps the record of where it started
        if resume_ckpt is not None and resume_ckpt.metadata.get(key) is not None:
            extra_meta[key] = resume_ckpt.meta(key)

    data = open_training_data(cfg.data, tokenizer, seed=tcfg.seed, rank=dist_info.rank,
                              world_size=dist_info.world_size, on_warning=observer.on_message,
                              chat_template=chat_template)
    notes.extend(data.notes)
    vocab_size = cfg.data.vocab_size or tokenizer.vocab_size
    if vocab_size < tokenizer.vocab_size:
        raise ConfigError(
            f"--vocab-size {vocab_size} is smaller than the tokenizer's vocabulary ({tokenizer.vocab_size}); "
            f"token ids would not fit the embedding. Use 0 (the tokenizer's size) or a larger value")
    model_config = cfg.model.build(vocab_size)
    if init_ckpt is not None:  # the architecture is the checkpoint's; the vocabulary grows with added tokens
        cfg.model.model_size = str(init_ckpt.meta("model_size", cfg.model.model_size))  # recorded as the base's
        vocab_size = max(vocab_size, init_ckpt.config.vocab_size)
        model_config = dataclasses.replace(init_ckpt.config, vocab_size=vocab_size, gradient_checkpointing=(
            init_ckpt.config.gradient_checkpointing or cfg.model.gradient_checkpointing))
    elif tcfg.init_from and resume_ckpt is not None:  # resuming a run that started --init-from
        vocab_size, model_config = resume_ckpt.config.vocab_size, resume_ckpt.config
    if tcfg.metacog_only and resume_ckpt is not None:  # the frozen model is the checkpoint's, whatever the flags
        model_config, vocab_size = resume_ckpt.config, resume_ckpt.config.vocab_size
    if resume_ckpt is not None and resume_ckpt.config.to_dict() != model_config.to_dict():
        raise CheckpointError(
            f"--resume {resume_ckpt.path}: checkpoint was trained with a different model "
            f"({_config_diff(resume_ckpt.config, model_config)}); use the same --model-size/--vocab-size/--moe")
    if cfg.data.seq_len > model_config.max_position_embeddings:
        raise ConfigError(f"--seq-len {cfg.data.seq_len} is longer than the model's context "
                          f"({model_config.max_position_embeddings} positions for {cfg.model.model_size}); "
                          f"lower --seq-len")

    model = build_model(model_config, tcfg.seed)
    adapter_cfg = tcfg.adapter_config()
    adapters = base_checkpoint = None
    if resume_ckpt is not None and resume_ckpt.is_adapter:
        if adapter_cfg != resume_ckpt.adapter.config:
            raise CheckpointError(
                f"--resume {resume_ckpt.path}: its adapters are {resume_ckpt.adapter.config.to_dict()}, this run "
                f"asks for {adapter_cfg.to_dict() if adapter_cfg else '--finetune full'}; drop the changed "
                f"--finetune/--lora-*/--flylora-*/--seed flags to continue the run as recorded")
        model = build_adapted_model(model_config, resume_ckpt.adapter)
        base_checkpoint = (resume_ckpt.adapter.base_path, resume_ckpt.adapter.base_sha256)
    elif resume_ckpt is not None:
        if adapter_cfg is not None:
            raise ConfigError(f"--resume {resume_ckpt.path} holds full weights, not adapters; to train adapters "
                              f"on it start a new run with --init-from {resume_ckpt.path}")
        model.load_exported_state_dict(resume_ckpt.state_dict)
    elif init_ckpt is not None:
        if adapter_cfg is not None and init_ckpt.is_adapter:
            raise ConfigError(f"--init-from {init_ckpt.path} is an adapter checkpoint; fold it into a plain "
                              f"model first (vesper merge --model {init_ckpt.path} --output merged.safetensors)")
        weights, growth = grow_vocabulary(init_ckpt.state_dict, model_config.vocab_size)
        model.load_exported_state_dict(weights)
        notes.append(f"weights from {init_ckpt.path} (fresh optimizer, schedule and data order)")
        if growth is not None:
            growth["tokens"] = [tokenizer.tokenizer.id_to_token(i)
                                for i in range(growth["from"], min(growth["to"], tokenizer.vocab_size))]
            extra_meta[GROWTH_KEY] = growth
            notes.append(f"embedding grown from {growth['from']} to {growth['to']} rows (new rows: {growth['init']})")
        if adapter_cfg is not None:  # the base (with any grown rows) stays frozen, only the adapters train
            attach_adapters(model, adapter_cfg)
            base_checkpoint = (init_ckpt.path.resolve(), file_sha256(init_ckpt.path))
            if growth is not None:
                notes.append(f"warning: the {growth['to'] - growth['from']} new token rows ({', '.join(growth['tokens'])}) "
                             f"stay frozen under --finetune {adapter_cfg.kind}: the model cannot learn to predict them "
                             f"(a chat model then ends its turns poorly); --finetune full trains them")
    if base_checkpoint is not None:
        adapters = adapter_report(model)
        notes.append(f"{adapters.summary()}; base {base_checkpoint[0].name} frozen")
    model.to(dist_info.device)
    head = None
    if tcfg.metacog or tcfg.metacog_only:
        head, note = build_head(model_config, resume_ckpt, dist_info.device, tcfg.metacog_weight)
        notes.append(note)
        if tcfg.metacog_only:
            model.requires_grad_(False)
            notes.append("metacog-only: the model is frozen, only the meta head trains")

    val_windows = data.val_windows
    if cfg.data.val_dataset and chat_template is not None:  # held-out conversations: the same mask as training
        val_windows = open_chat_validation(cfg.data, cfg.data.val_dataset, tokenizer, chat_template,
                                           on_warning=observer.on_message)
    elif cfg.data.val_dataset:
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

    optimizer = build_optimizer_for(cfg, model, head, vocab_size)
    step_fn = make_step(cfg, model, forward_model, optimizer, dist_info, head=head, eos_id=tokenizer.eos_id)
    start_step = 0
    if tcfg.metacog_only and not _metacog_only_state(resume_state):
        resume_state = None  # a new run on the frozen weights: fresh head optimizer, data order and step count
    elif resume_ckpt is not None:
        start_step = int(resume_ckpt.meta("step", step_from_name(resume_ckpt.path)))
        if resume_state is None:
            notes.append(f"warning: {resume_ckpt.path.name} has no resume state beside it (a weights-only or "
                         f"Rust checkpoint): continuing at step {start_step} with a fresh optimizer and data order")
    if tcfg.max_steps and start_step >= tcfg.max_steps:
        raise ConfigError(
            f"--max-steps {tcfg.max_steps} is not beyond the checkpoint's step {start_step}: nothing to train. "
            f"Pass --max-steps larger than {start_step} to continue the run")
    log = TrainingLog.open(output_dir, optimizer=cfg.optim.name, model_size=cfg.model.model_size,
                           resume_step=start_step if continuing else 0)
    checkpointer = Checkpointer(output_dir, cfg=cfg, dist=dist_info, tokenizer=tokenizer, dtype=dtype)
    run = TrainingRun(cfg=cfg, dist=dist_info, dtype=dtype, model_config=model_config, model=model, step_fn=step_fn,
                      optimizer=optimizer, loader=data.loader, checkpointer=checkpointer, log=log,
                      val_windows=val_windows, tokenizer=tokenizer, num_train_tokens=data.num_tokens, notes=notes,
                      step=start_step, extra_meta=extra_meta, adapters=adapters,
                      base_checkpoint=base_checkpoint)
    return run, resume_state


def make_step(cfg: RunConfig, model: VesperLM, forward_model: torch.nn.Module, optimizer: torch.optim.Optimizer,
              dist: DistInfo, *, head=None, eos_id: int | None = None) -> TrainStep:
    """The step function of a run: its objective, optimizer, clipping, precision and ranks."""
    from vesper_cli.engine.objective import LanguageModelObjective

    dtype = parse_dtype(cfg.train.dtype)
    objective = LanguageModelObjective(model, forward_model=forward_model, loss_impl=cfg.train.loss, head=head,
                                       head_only=cfg.train.metacog_only, eos_id=eos_id)
    scaler = torch.amp.GradScaler(dist.device.type, enabled=dtype == torch.float16)
    return TrainStep(objective, optimizer, max_grad_norm=cfg.optim.max_grad_norm, scaler=scaler,
                     autocast=autocast_factory(dist.device, dtype), dist=dist, vocab_size=model.config.vocab_size)


# -- the loop ----------------------------------------------------------------------------------------
def epoch_budget(epochs: int | None, max_steps: int, default_epochs: int) -> int | None:
    """``epochs`` when given; otherwise ``default_epochs``, or unlimited when ``max_steps`` sets the length."""
    if epochs is not None:
        return epochs
    return None if max_steps else default_epochs


def total_steps(epochs: int | None, max_steps: int, steps_per_epoch: int) -> int | None:
    by_epochs = None if epochs is None else epochs * steps_per_epoch
    if max_steps > 0:
        return max_steps if by_epochs is None else min(max_steps, by_epochs)
    return by_epochs


class Trainer:
    """The loop around the step function: schedule, log, eval, checkpoint, stop."""

    def __init__(self, run: TrainingRun, observer: TrainObserver | None = None, control: StopControl | None = None):
        self.run = run
        self.observer = observer or TrainObserver()
        self.control = control or StopControl()
        self.checkpoints: list[Path] = []

    def _lr(self, step: int, total: int | None) -> float:
        ocfg = self.run.cfg.optim
        return lr_at(step, base_lr=ocfg.lr, schedule=ocfg.lr_schedule, warmup_steps=ocfg.warmup_steps,
                     max_steps=total or 0, min_lr_ratio=ocfg.min_lr_ratio)

    def _save(self, name: str, *, full_state: bool = True) -> Path | None:
        run = self.run
        switch_optimizer_mode(run.optimizer, training=False)
        path = run.checkpointer.save(run, name, full_state=full_state)
        switch_optimizer_mode(run.optimizer, training=True)
        if path is not None:
            self.checkpoints.append(path)
            if run.log is not None and run.dist.is_main:
                run.log.event("checkpoint", step=run.step, path=str(path))
            self.observer.on_checkpoint(path)
        return path

    def _maybe_best(self, loss: float | None, what: str) -> None:
        best = self.run.counters["best_loss"]
        if loss is not None and math.isfinite(loss) and (best is None or loss < best):
            self.run.counters["best_loss"] = loss
            self.run.counters["best_by"] = what
            self._save("checkpoint-best.safetensors", full_state=False)

    def evaluate(self) -> dict[str, float]:
        """Held-out loss (and the head's calibration) at this step; logged and reported."""
        run = self.run
        switch_optimizer_mode(run.optimizer, training=False)
        common = dict(device=run.dist.device, autocast=autocast_factory(run.dist.device, run.dtype),
                      dist_info=run.dist)
        forward_model = run.step_fn.objective.forward_model
        calibration = ""
        if run.head is None:
            metrics = evaluate(forward_model, run.val_windows, batch_size=run.cfg.data.batch_size,
                               max_batches=run.cfg.train.eval_batches, loss_impl=run.cfg.train.loss, **common)
        else:  # one pass gives both the held-out LM loss and the head's calibration
            batches = eval_batches(run.val_windows, run.cfg.data.batch_size, max_batches=run.cfg.train.eval_batches,
                                   dist_info=run.dist)
            cal = evaluate_calibration(forward_model, run.head, batches, eos_id=run.tokenizer.eos_id, **common)
            metrics = {"val_loss": cal["lm_loss"], "val_ppl": perplexity(cal["lm_loss"]), "val_batches": cal["batches"]}
            metrics.update({f"metacog_{k}": cal[k] if math.isfinite(cal[k]) else None  # nan: one class missing
                            for k in ("ece", "auroc", "accuracy", "mean_confidence")})
            calibration = (f"; confidence ECE {cal['ece']:.4f}, AUROC {cal['auroc']:.3f}, "
                           f"accuracy {cal['accuracy']:.3f}, mean confidence {cal['mean_confidence']:.3f}")
        switch_optimizer_mode(run.optimizer, training=True)
        if run.log is not None:
            run.log.evaluation(run.step, metrics)
        self.tracker.log_eval(run.step, metrics)
        self.observer.on_eval(run.step, metrics)
        self.observer.on_message(f"eval at step {run.step}: val loss {metrics['val_loss']:.4f}, "
                                 f"val ppl {metrics['val_ppl']:.1f} ({metrics['val_batches']} batches){calibration}")
        return metrics

    def fit(self, resume_state: LoadedResumeState | None = None) -> TrainResult:
        run, observer, control = self.run, self.observer, self.control
        cfg, tcfg, loader = run.cfg, run.cfg.train, run.loader
        if loader.num_batches < tcfg.grad_accum:
            raise ConfigError(f"--grad-accum {tcfg.grad_accum} needs at least that many batches per epoch, the data "
                              f"gives {loader.num_batches}; lower it or --batch-size")
        epochs = epoch_budget(tcfg.epochs, tcfg.max_steps, default_epochs=3)  # 3: the Rust default
        total = total_steps(epochs, tcfg.max_steps, loader.num_batches // tcfg.grad_accum)
        tokens_per_step = cfg.data.batch_size * cfg.data.seq_len * tcfg.grad_accum * run.dist.world_size
        if resume_state is not None:
            run.checkpointer.restore(run, resume_state)
        if epochs is not None and loader.epoch + (1 if loader.index >= loader.num_batches else 0) >= epochs:
            raise ConfigError(
                f"the checkpoint at step {run.step} already finished the run's {epochs} epoch(s): nothing to train. "
                f"Pass a larger --epochs, or --max-steps beyond {run.step}, to continue")
        if control.requested:  # stopped while the run was being built: nothing has been written, keep it so
            result = TrainResult(output_dir=None, final_checkpoint=None, log_path=None, steps=run.step, first_loss=None,
                                 final_loss=None, elapsed_s=0.0, tokens_seen=run.counters["tokens_seen"],
                                 stopped_by=control.reason)
            observer.on_end(result)
            return result
        # every check passed: the first write of the run
        run.checkpointer.begin(run, overwrite=tcfg.overwrite)
        if run.log is not None and run.dist.is_main:
            run.log.start_events(fresh=tcfg.overwrite or run.step == 0)
            control.on_force_exit = run.log.write  # a second signal exits at once, but keeps the log
        flops_per_token = model_flops_per_token(run.model_config, cfg.data.seq_len)
        peak = peak_flops(run.dist.device, run.dtype)
        observer.on_start(RunInfo(
            model_size=cfg.model.model_size,
            num_params=run.adapters.num_total if run.adapters else run.model.num_parameters(),
            vocab_size=run.model_config.vocab_size, device=str(run.dist.device), dtype=dtype_name(run.dtype),
            optimizer=cfg.optim.name, tokenizer=run.tokenizer.name if run.tokenizer else "",
            num_train_tokens=run.num_train_tokens, batches_per_epoch=loader.num_batches, total_steps=total,
            start_step=run.step, notes=run.notes))
        self.tracker = ExperimentLogger.create(cfg, run.dist.is_main, observer.on_message)
        if run.log is not None:
            trainable = {} if run.adapters is None else {
                "trainable_params": run.adapters.num_trainable, "total_params": run.adapters.num_total,
                "trainable_share": run.adapters.share}
            run.log.event("start", step=run.step, total_steps=total, run_config=cfg.to_dict(), **trainable)

        first_loss = last_loss = None
        window_losses: list[float] = []  # since the last periodic save: the training-loss "best" criterion
        epoch_losses: list[float] = []
        start = time.perf_counter()
        session_tokens = session_steps = 0
        step_start = start
        stop_reason = None
        run.step_fn.objective.train(True)
        switch_optimizer_mode(run.optimizer, training=True)

        def epochs_done() -> int:
            return loader.epoch + (1 if loader.index >= loader.num_batches else 0)

        batches = loader.batches_forever()
        while True:
            if tcfg.max_steps and run.step >= tcfg.max_steps:
                break
            epoch = epochs_done()  # 0-based epoch the next batch comes from
            if epochs is not None and epoch >= epochs:
                break
            lr = self._lr(run.step, total)
            for group in run.optimizer.param_groups:
                group["lr"] = lr
            step_start = time.perf_counter()
            outcome = run.step_fn([next(batches) for _ in range(tcfg.grad_accum)])
            session_tokens += tokens_per_step
            if outcome.skipped:
                self._skipped(outcome)
            else:
                run.counters["consecutive_bad_steps"] = 0
                run.step += 1
                run.counters["tokens_seen"] += tokens_per_step
                session_steps += 1
                now = time.perf_counter()
                elapsed = now - start
                metrics = self._metrics(outcome, lr, epoch, session_tokens / max(elapsed, 1e-9))
                metrics.step_time_s, metrics.elapsed_s, metrics.total_steps = now - step_start, elapsed, total
                if total is not None:
                    metrics.eta_s = max(total - run.step, 0) * elapsed / session_steps
                if peak:
                    metrics.mfu = metrics.tokens_per_sec * flops_per_token / peak
                if run.log is not None:
                    run.log.append(metrics)
                observer.on_step(metrics)
                if run.step % tcfg.log_every == 0:
                    self.tracker.log_step(metrics)
                    if run.log is not None and run.dist.is_main:
                        run.log.event("step", **run.log.steps[-1])
                        run.log.write()
                first_loss = outcome.loss if first_loss is None else first_loss
                last_loss = outcome.loss
                window_losses.append(outcome.loss)
                epoch_losses.append(outcome.loss)

                if tcfg.eval_every and run.val_windows is not None and run.step % tcfg.eval_every == 0:
                    self._maybe_best(self.evaluate()["val_loss"], "val_loss")
                if tcfg.save_every and run.step % tcfg.save_every == 0:
                    self._save(f"checkpoint-{run.step}.safetensors")
                    run.checkpointer.rotate(tcfg.keep_last)
                    if run.val_windows is None:
                        self._maybe_best(sum(window_losses) / len(window_losses), "train_loss")
                    window_losses.clear()

            if epochs_done() > epoch and epoch_losses:  # this step used the epoch's last batch
                observer.on_epoch_end(epoch + 1, sum(epoch_losses) / len(epoch_losses))
                self._save(f"checkpoint-epoch{epoch + 1}.safetensors")
                epoch_losses.clear()
            if control.requested:
                stop_reason = control.reason
                break

        final_eval = None
        if stop_reason is not None:
            final = self._save(f"checkpoint-emergency-step{run.step}.safetensors")
        else:
            if run.val_windows is not None:
                evals = run.log.evals if run.log is not None else []
                if not evals or evals[-1]["step"] != run.step:  # not evaluated at this step yet
                    final_eval = self.evaluate()
                    self._maybe_best(final_eval["val_loss"], "val_loss")
            elif window_losses:
                self._maybe_best(sum(window_losses) / len(window_losses), "train_loss")
            final = self._save("checkpoint-final.safetensors")
        self.tracker.finish()
        if run.log is not None and run.dist.is_main:
            run.log.event("end", step=run.step, stopped_by=stop_reason, final_checkpoint=final and str(final))
            run.log.write()
        result = TrainResult(
            output_dir=run.checkpointer.output_dir, final_checkpoint=final,
            log_path=run.log.path if run.log is not None else None, steps=run.step,
            first_loss=first_loss, final_loss=last_loss, elapsed_s=time.perf_counter() - start,
            tokens_seen=run.counters["tokens_seen"], checkpoints=self.checkpoints, stopped_by=stop_reason,
            final_eval=final_eval)
        observer.on_end(result)
        return result

    def _skipped(self, outcome: StepOutcome) -> None:
        run, tcfg = self.run, self.run.cfg.train
        run.counters["bad_steps"] += 1
        if "overflow" not in outcome.skipped:
            run.counters["consecutive_bad_steps"] += 1
        if run.log is not None:
            run.log.skipped(run.step, outcome.skipped, outcome.loss, outcome.grad_norm)
        self.observer.on_message(f"step {run.step + 1} skipped: {outcome.skipped} "
                                 f"({run.counters['bad_steps']} skipped so far)")
        if run.counters["consecutive_bad_steps"] >= tcfg.max_bad_steps:
            finite = all(bool(torch.isfinite(p).all()) for p in run.model.parameters())
            path = self._save(f"checkpoint-{run.step}.safetensors") if finite else None
            where = (f"saved the last good weights to {path}" if path else
                     "the weights themselves are not finite, so nothing was saved (resume from an earlier checkpoint)"
                     if not finite else "nothing was saved")
            raise TrainingDivergedError(
                f"{run.counters['consecutive_bad_steps']} consecutive steps had a non-finite loss or gradient "
                f"(--max-bad-steps {tcfg.max_bad_steps}); stopped, {where}. "
                f"Lower --lr, use --dtype f32/bf16, or check the data")

    def _metrics(self, outcome: StepOutcome, lr: float, epoch: int, tokens_per_sec: float) -> StepMetrics:
        extra = outcome.optimizer_metrics
        return StepMetrics(
            step=self.run.step, epoch=epoch + 1, loss=outcome.loss, ppl=perplexity(outcome.loss),
            lr=float(extra.get("lr_effective", lr)), grad_norm=outcome.grad_norm,
            entropy_scale=float(extra.get("entropy_scale", 1.0)), ppl_scale=float(extra.get("ppl_scale", 1.0)),
            tokens_per_sec=tokens_per_sec, aux_loss=outcome.aux_loss, metacog=outcome.metacog,
            beta1=extra.get("beta1_effective"))


def train(cfg: RunConfig, observer: TrainObserver | None = None, control: StopControl | None = None) -> TrainResult:
    """Train one model as ``cfg`` says; returns where everything was written."""
    observer = observer or TrainObserver()
    run, resume_state = build_training(cfg, observer)
    try:
        result = Trainer(run, observer, control).fit(resume_state)
        barrier(run.dist)  # rank 0 may still be writing files: leave the process group together
        return result
    finally:
        shutdown(run.dist)

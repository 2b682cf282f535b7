"""The optimizer benchmark behind ``vesper benchmark``: a fair, seeded, held-out comparison.

Fairness rules (what upstream's benchmark did not do, UPSTREAM_SPEC §3.7/§11):

* for each seed the model is built **once** and every optimizer (and every LR of a sweep) starts from a
  copy of the same initial weights;
* every run sees the **same batches in the same order** (one BatchLoader seed per seed);
* the last ``val_fraction`` of the token stream is held out and the final weights are scored on the
  first ``val_tokens`` of it (token-weighted cross-entropy, no MoE aux loss);
* every arm trains through the same :class:`~vesper_cli.engine.trainer.Trainer` and step function as
  ``vesper train`` (same loss, same clipping, same signals to the optimizer), in memory: it writes nothing;
* N seeds per optimizer; the verdict only says "better" when the difference of the means exceeds the
  seed spread (``|mean_a - mean_b| > std_a + std_b``);
* ``lr_sweep`` widens each optimizer's grid (x2 beyond an edge) until its best LR is interior, at most
  ``max_sweep_widenings`` times, and the report says whether each best LR is "bracketed".

The report keeps the Rust keys of §6.2 (``velvet``, ``adamw``, ``comparison``, ``step_metrics``...)
filled from the first seed, and adds ``seeds``, ``summary``, ``verdict`` and (with ``lr_sweep``) the
grid. The library never prints: it reports through an optional ``progress`` callback.
"""

from __future__ import annotations

import dataclasses
import datetime as _dt
import math
import platform
import statistics
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

import numpy as np
import torch

from vesper_core.config import ModelConfig
from vesper_core.device import dtype_name, parse_dtype, resolve_device
from vesper_core.distributed import DistInfo
from vesper_core.errors import ConfigError, DataError
from vesper_core.kernels.cross_entropy import perplexity as _ppl
from vesper_core.presets import PRESETS
from vesper_data.config import DataConfig
from vesper_data.loader import BatchLoader, TokenWindows
from vesper_data.pipeline import load_tokens, prepare_tokenizer, split_validation
from vesper_optim.config import OptimConfig
from vesper_optim.protocol import ReportsMetrics
from vesper_optim.registry import OPTIMIZERS
from vesper_cli.engine.checkpointer import NullCheckpointer
from vesper_cli.engine.observer import StepMetrics, TrainObserver
from vesper_cli.engine.run_config import ModelSpec, RunConfig, TrainConfig
from vesper_cli.engine.trainer import (Trainer, TrainingRun, build_model, build_optimizer_for, epoch_budget, make_step,
                                       total_steps)

DISPLAY_NAMES = {"velvet": "Velvet", "adamw": "AdamW"}
DEFAULT_LR_GRID = (0.5, 1.0, 2.0)
#: The benchmark's own defaults where they differ from ``vesper train``'s, and why.
BENCH_DEFAULTS = {
    "model_size": "small",  # the Rust benchmark's default
    "seq_len": 256,  # the Rust benchmark's default (train: 512)
    "epochs": 5,  # the Rust benchmark's default (train: 3)
    "dtype": "f32",  # comparisons in full precision: no autocast noise between arms (train: bf16)
    "val_fraction": 0.1,  # a benchmark needs held-out text (train: 0, none)
}


def bench_data_config(**overrides: Any) -> DataConfig:
    """DataConfig with the benchmark's seq_len / val_fraction defaults (see BENCH_DEFAULTS)."""
    values = {"seq_len": BENCH_DEFAULTS["seq_len"], "val_fraction": BENCH_DEFAULTS["val_fraction"], **overrides}
    return DataConfig(**values)


@dataclass(kw_only=True)
class BenchConfig:
    """One benchmark: the data and base optimizer settings it shares with ``vesper train`` (composed, not
    re-declared), the model, the length, and which optimizers over how many seeds."""

    data: DataConfig = field(default_factory=bench_data_config)
    optim: OptimConfig = field(default_factory=OptimConfig)  # every arm's settings; name and lr set per arm
    model_size: str = BENCH_DEFAULTS["model_size"]
    """Preset, MoE presets included (nano, tiny, small, ..., tiny-moe)."""
    epochs: int | None = None
    """Epochs per run (none given: 5, the Rust default, or no limit with --max-steps)."""
    max_steps: int = 0
    """Steps per run, 0 = by --epochs."""
    seeds: int = 1
    """Seeds per optimizer (3 or more for a verdict)."""
    seed: int = 0
    """First seed (seeds are SEED, SEED+1, ...)."""
    optimizers: tuple[str, ...] = ("velvet", "adamw")
    """Comma-separated optimizer names (any registered one: `vesper plugins`)."""
    lr_sweep: bool = False
    """Try --lr x {0.5, 1, 2} per optimizer, widening x2 beyond an edge until the best LR is interior."""
    lr_grid: tuple[float, ...] = DEFAULT_LR_GRID
    """Multipliers of --lr tried with --lr-sweep."""
    max_sweep_widenings: int = 4
    """Extra LRs per optimizer while its best LR sits on the grid's edge."""
    val_tokens: int = 65536
    """Score the first N held-out tokens, 0 = all (the same windows for every run)."""
    dtype: str = BENCH_DEFAULTS["dtype"]
    """f32 | bf16 | f16 (autocast over f32 weights)."""
    device: str = "auto"
    """auto | cpu | cuda."""
    loss: str = "auto"
    """LM loss, as `vesper train --loss`."""

    def __post_init__(self) -> None:
        if isinstance(self.optimizers, str):
            self.optimizers = tuple(s for s in self.optimizers.split(","))
        self.optimizers = tuple(s.strip().lower() for s in self.optimizers if s.strip())
        if not self.optimizers:
            raise ConfigError("--optimizers is empty; give names such as velvet,adamw")
        if len(set(self.optimizers)) != len(self.optimizers):
            raise ConfigError(f"--optimizers lists a name twice: {','.join(self.optimizers)}")
        for name in self.optimizers:
            OPTIMIZERS.get(name)  # UnknownNameError lists the choices and the closest match
        PRESETS.get(self.model_size)
        if self.seeds <= 0:
            raise ConfigError(f"--seeds must be positive, got {self.seeds}")
        if self.max_steps < 0 or (self.epochs is not None and self.epochs < 0):
            raise ConfigError("--epochs and --max-steps must be >= 0")
        if self.epochs == 0 and self.max_steps == 0:
            raise ConfigError("--epochs 0 with --max-steps 0 would train nothing; set one of them")
        if self.val_tokens < 0:
            raise ConfigError(f"--val-tokens must be >= 0 (0 = every held-out token), got {self.val_tokens}")
        if not self.lr_grid or any(not m > 0 for m in self.lr_grid):
            raise ConfigError(f"lr_grid must be positive multipliers, got {self.lr_grid}")
        if self.max_sweep_widenings < 0:
            raise ConfigError(f"max_sweep_widenings must be >= 0, got {self.max_sweep_widenings}")
        self.train_config(seed=self.seed)  # validates dtype, device, loss

    @property
    def epoch_budget(self) -> int | None:
        return epoch_budget(self.epochs, self.max_steps, default_epochs=BENCH_DEFAULTS["epochs"])

    def learning_rates(self) -> list[float]:
        return sorted(self.optim.lr * m for m in self.lr_grid) if self.lr_sweep else [self.optim.lr]

    def seed_list(self) -> list[int]:
        return [self.seed + i for i in range(self.seeds)]

    def train_config(self, *, seed: int, max_steps: int | None = None) -> TrainConfig:
        """The loop settings of one arm: as ``vesper train`` with the benchmark's length and precision."""
        steps = self.max_steps if max_steps is None else max_steps
        return TrainConfig(epochs=self.epoch_budget if max_steps is None else None, max_steps=steps, seed=seed,
                           device=self.device, dtype=self.dtype, loss=self.loss, save_every=0, eval_batches=0,
                           log_every=1 << 30)

    def run_config(self, name: str, lr: float, seed: int, *, max_steps: int | None = None) -> RunConfig:
        return RunConfig(model=ModelSpec(model_size=self.model_size), data=self.data,
                         optim=dataclasses.replace(self.optim, name=name, lr=lr),
                         train=self.train_config(seed=seed, max_steps=max_steps))

    @classmethod
    def from_flat(cls, **values: Any) -> "BenchConfig":
        """Build from flat settings (``dataset=..., lr=..., seeds=3``): each key goes to the DataConfig,
        the OptimConfig or the benchmark's own fields; an unknown key is an error listing the valid ones."""
        own = {f.name for f in dataclasses.fields(cls)} - {"data", "optim"}
        data_keys = {f.name for f in dataclasses.fields(DataConfig)}
        optim_keys = {f.name for f in dataclasses.fields(OptimConfig)} - {"name"}
        parts: dict[str, dict[str, Any]] = {"own": {}, "data": {}, "optim": {}}
        for key, value in values.items():
            part = "own" if key in own else "data" if key in data_keys else "optim" if key in optim_keys else None
            if part is None:
                valid = sorted(own | data_keys | optim_keys)
                raise ConfigError(f"unknown benchmark setting {key!r}; valid: {', '.join(valid)}")
            parts[part][key] = value
        return cls(data=bench_data_config(**parts["data"]), optim=OptimConfig(**parts["optim"]), **parts["own"])

    def to_dict(self) -> dict[str, Any]:
        d = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        d["data"], d["optim"] = self.data.to_dict(), self.optim.to_dict()
        d["optimizers"], d["lr_grid"] = list(self.optimizers), list(self.lr_grid)
        # flat keys kept for readers of older reports
        d.update(dataset=self.data.dataset, tokenizer=self.data.tokenizer, seq_len=self.data.seq_len,
                 batch_size=self.data.batch_size, lr=self.optim.lr, val_fraction=self.data.val_fraction)
        return d


@dataclass
class BenchProgress:
    """What the runner reports: a run starting/advancing/ending, or a message."""

    kind: str  # "start" | "step" | "end" | "message"
    run: str = ""  # e.g. "velvet lr=3.0e-04 seed=0"
    step: int = 0
    total_steps: int = 0
    loss: float | None = None
    message: str = ""


ProgressFn = Callable[[BenchProgress], None]


@dataclass
class _Data:
    train: TokenWindows
    val: TokenWindows | None
    vocab_size: int
    tokenizer_name: str
    num_train_tokens: int
    num_val_tokens: int
    eos_id: int | None = None


@dataclass
class RunResult:
    """One optimizer x LR x seed run."""

    optimizer: str
    lr: float
    seed: int
    steps: int
    epochs: int
    loss_history: list[float]
    step_metrics: list[dict[str, float]]
    training_time_secs: float
    final_train_loss: float  # mean loss over the last 10% of steps (at least one)
    val_loss: float | None
    tokens_per_sec: float
    time_per_step_ms: float
    peak_memory_mb: float | None  # None where no per-arm measurement exists (CPU)
    peak_memory_kind: str
    extra: dict[str, Any] = field(default_factory=dict)

    def seed_row(self) -> dict[str, Any]:
        return {
            "seed": self.seed, "lr": self.lr, "steps": self.steps,
            "final_train_loss": self.final_train_loss, "val_loss": self.val_loss,
            "val_ppl": None if self.val_loss is None else _ppl(self.val_loss),
            "tokens_per_sec": self.tokens_per_sec, "time_per_step_ms": self.time_per_step_ms,
            "peak_memory_mb": self.peak_memory_mb, "peak_memory_kind": self.peak_memory_kind,
            "training_time_secs": self.training_time_secs,
        }

    def rust_result(self, model_size: str) -> dict[str, Any]:
        """The §6.2 ``Result`` object, keys in the Rust order."""
        ppl = [_ppl(x) for x in self.loss_history]
        return {
            "optimizer": DISPLAY_NAMES.get(self.optimizer, self.optimizer),
            "model_size": model_size,
            "epochs": self.epochs,
            "final_loss": self.loss_history[-1] if self.loss_history else 0.0,
            "best_loss": min(self.loss_history) if self.loss_history else None,
            "training_time_secs": self.training_time_secs,
            "loss_history": self.loss_history,
            "perplexity_history": ppl,
            "step_metrics": self.step_metrics,
        }


# -- data ------------------------------------------------------------------------------------
def _load_data(cfg: BenchConfig, progress: ProgressFn) -> _Data:
    dcfg = cfg.data
    if dcfg.val_fraction <= 0:
        raise ConfigError("the benchmark scores held-out text: --val-fraction must be > 0")
    tokenizer, notice = prepare_tokenizer(dcfg, saved_candidates=[])
    if notice:
        progress(BenchProgress("message", message=notice))
    ids = load_tokens(dcfg.dataset, dcfg, tokenizer,
                      on_warning=lambda m: progress(BenchProgress("message", message=m)))
    train_ids, val_ids = split_validation(np.asarray(ids), dcfg.val_fraction, dcfg.seq_len)
    if cfg.val_tokens and len(val_ids) > cfg.val_tokens + 1:
        val_ids = val_ids[:max(cfg.val_tokens, dcfg.seq_len) + 1]  # the held-out part is never trained on
    val = TokenWindows(val_ids, dcfg.seq_len)
    return _Data(train=TokenWindows(train_ids, dcfg.seq_len), val=val, vocab_size=tokenizer.vocab_size,
                 tokenizer_name=tokenizer.name, num_train_tokens=len(train_ids),
                 num_val_tokens=len(val) * dcfg.seq_len, eos_id=tokenizer.eos_id)


# -- one run ---------------------------------------------------------------------------------
class _Recorder(TrainObserver):
    """Collects what the report needs from the trainer's events."""

    def __init__(self, label: str, total: int, progress: ProgressFn, signals: bool):
        self.label, self.total, self.progress, self.signals = label, total, progress, signals
        self.rows: list[dict[str, float]] = []
        self.epoch_means: list[float] = []
        self._epoch_losses: list[float] = []
        self.started = self.last_step = time.perf_counter()

    def on_step(self, m: StepMetrics) -> None:
        row = {"step": m.step - 1, "loss": m.loss}
        if self.signals:
            row.update(entropy_scale=m.entropy_scale, ppl_scale=m.ppl_scale)
        row["grad_norm"] = m.grad_norm
        self.rows.append(row)
        self._epoch_losses.append(m.loss)
        self.last_step = time.perf_counter()
        self.progress(BenchProgress("step", run=self.label, step=m.step, total_steps=self.total, loss=m.loss))

    def on_epoch_end(self, epoch: int, mean_loss: float) -> None:
        self.epoch_means.append(mean_loss)
        self._epoch_losses = []

    def finish(self) -> None:
        if self._epoch_losses:  # a partial last epoch (--max-steps) still gets its mean
            self.epoch_means.append(sum(self._epoch_losses) / len(self._epoch_losses))


def _train_one(cfg: BenchConfig, name: str, lr: float, seed: int, mcfg: ModelConfig, data: _Data,
               device: torch.device, progress: ProgressFn, *, max_steps: int | None = None,
               score: bool = True) -> RunResult:
    label = f"{name} lr={lr:.1e} seed={seed}"
    rcfg = cfg.run_config(name, lr, seed, max_steps=max_steps)
    dist = DistInfo(device=device)
    model = build_model(mcfg, seed).to(device)  # the same initial weights for every optimizer and LR
    optimizer = build_optimizer_for(rcfg, model, None, data.vocab_size)
    loader = BatchLoader(data.train, rcfg.data.batch_size, shuffle=True, seed=seed)  # the same batch order
    run = TrainingRun(cfg=rcfg, dist=dist, dtype=parse_dtype(cfg.dtype), model_config=mcfg, model=model,
                      step_fn=make_step(rcfg, model, model, optimizer, dist, eos_id=data.eos_id),
                      optimizer=optimizer, loader=loader, checkpointer=NullCheckpointer(), log=None,
                      val_windows=data.val if score else None, num_train_tokens=data.num_train_tokens)
    total = _total_steps(rcfg, loader.num_batches)
    recorder = _Recorder(label, total, progress, signals=isinstance(optimizer, ReportsMetrics))
    progress(BenchProgress("start", run=label, total_steps=total))
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    result = Trainer(run, recorder).fit()
    recorder.finish()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        peak, peak_kind = torch.cuda.max_memory_allocated(device) / 2**20, "cuda_max_allocated"
    else:  # a process-wide high-water mark would be shared by every arm: not a per-arm number
        peak, peak_kind = None, "n/a on cpu (no per-arm allocator statistics)"
    elapsed = recorder.last_step - recorder.started
    steps = result.steps
    val_loss = result.final_eval["val_loss"] if result.final_eval else None
    tail = [r["loss"] for r in recorder.rows[-max(1, steps // 10):]]
    tokens = steps * rcfg.data.batch_size * rcfg.data.seq_len
    out = RunResult(
        optimizer=name, lr=lr, seed=seed, steps=steps, epochs=len(recorder.epoch_means),
        loss_history=recorder.epoch_means, step_metrics=recorder.rows, training_time_secs=elapsed,
        final_train_loss=sum(tail) / len(tail) if tail else float("nan"), val_loss=val_loss,
        tokens_per_sec=tokens / elapsed if elapsed > 0 else 0.0,
        time_per_step_ms=1000 * elapsed / max(steps, 1), peak_memory_mb=peak, peak_memory_kind=peak_kind)
    progress(BenchProgress("end", run=label, step=steps, total_steps=total,
                           loss=val_loss if val_loss is not None else out.final_train_loss))
    return out


def _total_steps(rcfg: RunConfig, batches_per_epoch: int) -> int:
    return total_steps(rcfg.train.epochs, rcfg.train.max_steps, batches_per_epoch) or 0


# -- statistics ------------------------------------------------------------------------------
def mean_std(values: Sequence[float]) -> dict[str, float]:
    """Mean and sample standard deviation (0 for a single value)."""
    vals = [float(v) for v in values]
    return {"mean": statistics.fmean(vals), "std": statistics.stdev(vals) if len(vals) > 1 else 0.0,
            "n": len(vals)}


def _metric(result: RunResult) -> float:
    return result.val_loss if result.val_loss is not None else result.final_train_loss


def _summary(runs: list[RunResult]) -> dict[str, Any]:
    out: dict[str, Any] = {"lr": runs[0].lr}
    if runs[0].val_loss is not None:
        out["val_loss"] = mean_std([r.val_loss for r in runs])
        out["val_ppl"] = mean_std([_ppl(r.val_loss) for r in runs])
    for key in ("final_train_loss", "tokens_per_sec", "time_per_step_ms"):
        out[key] = mean_std([getattr(r, key) for r in runs])
    peaks = [r.peak_memory_mb for r in runs]
    out["peak_memory_mb"] = mean_std(peaks) if None not in peaks else None
    out["peak_memory_kind"] = runs[0].peak_memory_kind
    return out


def verdict(name_a: str, runs_a: list[RunResult], name_b: str, runs_b: list[RunResult]) -> dict[str, Any]:
    """Compare two optimizers on validation loss (training loss when nothing is held out); lower is better.

    "better" only when ``|mean_a - mean_b| > std_a + std_b`` over the seeds; one seed gives no spread, so
    the verdict is then "inconclusive".
    """
    metric = "val_loss"
    a, b = mean_std([_metric(r) for r in runs_a]), mean_std([_metric(r) for r in runs_b])
    delta = a["mean"] - b["mean"]
    spread = a["std"] + b["std"]
    numbers = (f"{metric} {name_a} {a['mean']:.4f} ± {a['std']:.4f} vs {name_b} {b['mean']:.4f} ± {b['std']:.4f} "
               f"over {a['n']} seed(s): |Δ| = {abs(delta):.4f}, seed spread = {spread:.4f}")
    if a["n"] < 2 or b["n"] < 2:
        outcome, winner = "inconclusive (one seed has no spread; use --seeds 3 or more)", None
    elif abs(delta) > spread:
        winner = name_a if delta < 0 else name_b
        loser = name_b if winner == name_a else name_a
        outcome = f"{winner} is better than {loser}"
    else:
        outcome, winner = "no significant difference", None
    return {"metric": metric, "winner": winner, "delta_mean": delta, "seed_spread": spread,
            "text": f"{outcome}: {numbers}"}


def _rust_comparison(a: RunResult, b: RunResult, name_a: str, name_b: str) -> dict[str, Any]:
    """§6.2's comparison keys (improvement of ``a`` over ``b``; positive = ``a`` better/faster)."""
    fa = a.loss_history[-1] if a.loss_history else 0.0
    fb = b.loss_history[-1] if b.loss_history else 0.0
    pa, pb = _ppl(fa), _ppl(fb)

    def pct(x: float, y: float) -> float:
        return (y - x) / y * 100 if y else 0.0

    return {
        "loss_improvement_pct": pct(fa, fb),
        "perplexity_improvement_pct": pct(pa, pb),
        "speed_difference_pct": pct(a.training_time_secs, b.training_time_secs),
        f"{name_a}_final_loss": fa, f"{name_b}_final_loss": fb,
        f"{name_a}_final_ppl": pa, f"{name_b}_final_ppl": pb,
    }


def _pair(names: Sequence[str]) -> tuple[str, str] | None:
    """The compared pair: velvet vs adamw when both run, else the first two names."""
    if len(names) < 2:
        return None
    if "velvet" in names and "adamw" in names:
        return "velvet", "adamw"
    return names[0], names[1]


# -- the runner ------------------------------------------------------------------------------
def _mean_metric(runs: list[RunResult]) -> float:
    return statistics.fmean(_metric(r) for r in runs)


def _sweep(cfg: BenchConfig, name: str, run_lr: Callable[[str, float], list[RunResult]]) -> tuple[dict[float, list[RunResult]], bool]:
    """Every LR tried for ``name`` (all seeds each) and whether the best one is interior to the grid."""
    by_lr = {lr: run_lr(name, lr) for lr in cfg.learning_rates()}
    if not cfg.lr_sweep:
        return by_lr, False
    factor = 2.0
    for _ in range(cfg.max_sweep_widenings + 1):
        lrs = sorted(by_lr)
        best = min(lrs, key=lambda lr: _mean_metric(by_lr[lr]))
        if len(lrs) >= 3 and lrs[0] < best < lrs[-1]:
            return by_lr, True
        if len(by_lr) - len(cfg.learning_rates()) >= cfg.max_sweep_widenings:
            break
        new = best / factor if best == lrs[0] else best * factor
        by_lr[new] = run_lr(name, new)
    return by_lr, False


class BenchmarkInterrupted(Exception):
    """Ctrl-C during the runs; ``report`` holds every run that finished (the command saves it)."""

    def __init__(self, report: dict[str, Any]):
        super().__init__("benchmark interrupted")
        self.report = report


def run_benchmark(cfg: BenchConfig, progress: ProgressFn | None = None) -> dict[str, Any]:
    """Run every optimizer (x LR grid) x seed and return the report (see the module docstring)."""
    progress = progress or (lambda event: None)
    if cfg.data.dataset is None:
        raise DataError("no data: pass --dataset PATH (a .txt or .jsonl file) or --dataset demo")
    device = resolve_device(cfg.device)
    data = _load_data(cfg, progress)
    mcfg: ModelConfig = ModelSpec(model_size=cfg.model_size).build(data.vocab_size)
    num_params = mcfg.num_params()
    model_size = f"{cfg.model_size} ({num_params}params)"
    progress(BenchProgress("message", message=(
        f"{cfg.model_size}: {num_params:,} params, vocab {data.vocab_size} ({data.tokenizer_name}); "
        f"{data.num_train_tokens:,} train / {data.num_val_tokens:,} held-out tokens scored; device {device}, "
        f"{dtype_name(parse_dtype(cfg.dtype))}; optimizers {','.join(cfg.optimizers)}; seeds {cfg.seed_list()}")))

    _warm_up(cfg, mcfg, data, device)

    completed: list[RunResult] = []

    def run_lr(name: str, lr: float) -> list[RunResult]:
        results = []
        for seed in cfg.seed_list():
            results.append(_train_one(cfg, name, lr, seed, mcfg, data, device, progress))
            completed.append(results[-1])
        return results

    runs: dict[str, dict[float, list[RunResult]]] = {}
    bracketed: dict[str, bool] = {}
    try:
        for name in cfg.optimizers:
            runs[name], bracketed[name] = _sweep(cfg, name, run_lr)
    except KeyboardInterrupt:
        raise BenchmarkInterrupted(json_safe({
            "interrupted": True,
            "completed_runs": [{"optimizer": r.optimizer, **r.seed_row()} for r in completed],
            "config": cfg.to_dict(),
        })) from None

    best = {name: min(by_lr, key=lambda lr: _mean_metric(by_lr[lr])) for name, by_lr in runs.items()}
    chosen = {name: runs[name][best[name]] for name in cfg.optimizers}

    report: dict[str, Any] = {}
    for name in cfg.optimizers:
        report[name] = chosen[name][0].rust_result(model_size)
    pair = _pair(cfg.optimizers)
    if pair is not None:
        a, b = pair
        comparison = _rust_comparison(chosen[a][0], chosen[b][0], a, b)
        comparison["note"] = (f"the fields above compare seed {cfg.seed} only, on mean training loss per epoch "
                              f"(the Rust definition); see 'verdict' for the held-out, all-seed comparison")
        report["comparison"] = comparison
    report["seeds"] = {name: [r.seed_row() for r in chosen[name]] for name in cfg.optimizers}
    report["summary"] = {name: _summary(chosen[name]) for name in cfg.optimizers}
    if pair is not None:
        v = verdict(pair[0], chosen[pair[0]], pair[1], chosen[pair[1]])
        if cfg.lr_sweep:
            state = {n: "bracketed" if bracketed[n] else "not bracketed" for n in pair}
            if all(bracketed[n] for n in pair):
                v["text"] += "; both best LRs bracketed (tuned against tuned)"
            else:
                loose = ", ".join(n for n in pair if not bracketed[n])
                v["text"] += (f"; best LR not bracketed for {loose} (at the edge after "
                              f"{cfg.max_sweep_widenings} widenings): not a tuned comparison")
            v["lr_bracketed"] = state
        report["verdict"] = v["text"]
        report["verdict_detail"] = v
    ranking_metric = "val_loss"
    report["ranking"] = sorted(cfg.optimizers, key=lambda n: report["summary"][n][ranking_metric]["mean"])
    if cfg.lr_sweep:
        report["lr_sweep"] = {
            name: {"best_lr": best[name], "bracketed": bracketed[name],
                   "grid": [{"lr": lr, ranking_metric: mean_std([_metric(r) for r in rs]),
                             "seeds": [r.seed_row() for r in rs]} for lr, rs in sorted(runs[name].items())]}
            for name in cfg.optimizers}
    report["config"] = cfg.to_dict()
    report["environment"] = {
        "device": _device_name(device), "torch": torch.__version__, "python": platform.python_version(),
        "dtype": dtype_name(parse_dtype(cfg.dtype)), "num_threads": torch.get_num_threads(),
        "tokenizer": data.tokenizer_name, "vocab_size": data.vocab_size, "num_params": num_params,
        "train_tokens": data.num_train_tokens, "val_tokens": data.num_val_tokens,
        "date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
    }
    return json_safe(report)


def json_safe(obj: Any) -> Any:
    """NaN/inf become ``null`` (as the Rust report serialises them)."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [json_safe(v) for v in obj]
    return obj


def _warm_up(cfg: BenchConfig, mcfg: ModelConfig, data: _Data, device: torch.device) -> None:
    """Two untimed steps per optimizer first, so that one-time costs (allocator, kernels, lazy imports)
    are not charged to whichever run happens to come first."""
    for name in cfg.optimizers:
        _train_one(cfg, name, cfg.optim.lr, cfg.seed, mcfg, data, device, lambda event: None, max_steps=2,
                   score=False)


def _device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"cpu ({platform.processor() or platform.machine()})"

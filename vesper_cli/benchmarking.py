"""The optimizer benchmark behind ``vesper benchmark``: a fair, seeded, held-out comparison.

Fairness rules (what upstream's benchmark did not do, UPSTREAM_SPEC §3.7/§11):

* for each seed the model is built **once** and every optimizer (and every LR of a sweep) starts from a
  copy of the same initial weights;
* every run sees the **same batches in the same order** (one BatchLoader seed per seed);
* the last ``val_fraction`` of the token stream is held out and the final weights are scored on all of
  it (token-weighted cross-entropy, no MoE aux loss);
* N seeds per optimizer; the verdict only says "better" when the difference of the means exceeds the
  seed spread (``|mean_a - mean_b| > std_a + std_b``).

The report keeps the Rust keys of §6.2 (``velvet``, ``adamw``, ``comparison``, ``step_metrics``...)
filled from the first seed, and adds ``seeds``, ``summary``, ``verdict`` and (with ``lr_sweep``) the
grid. The library never prints: it reports through an optional ``progress`` callback.
"""

from __future__ import annotations

import copy
import dataclasses
import datetime as _dt
import math
import platform
import resource
import statistics
import sys
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from vesper_cli.distributed import DistInfo
from vesper_cli.evaluation import evaluate
from vesper_cli.datasets import load_tokens, prepare_tokenizer
from vesper_cli.training import autocast_factory, seed_everything
from vesper_core.config import ModelConfig
from vesper_core.device import dtype_name, parse_dtype, resolve_device
from vesper_core.errors import ConfigError, DataError
from vesper_core.model import VesperLM
from vesper_core.presets import PRESETS, model_config
from vesper_data.config import DataConfig
from vesper_data.loader import BatchLoader, TokenWindows
from vesper_optim.clipping import clip_grad_norm_
from vesper_optim.config import OptimConfig
from vesper_optim.param_groups import build_param_groups
from vesper_optim.registry import OPTIMIZERS, build_optimizer
from vesper_optim.signals import normalized_entropy
from vesper_optim.velvet import Velvet

DISPLAY_NAMES = {"velvet": "Velvet", "adamw": "AdamW"}
DEFAULT_LR_GRID = (0.5, 1.0, 2.0)


@dataclass(kw_only=True)
class BenchConfig:
    """One benchmark: data, model, length, and which optimizers over how many seeds."""

    dataset: str | None = None  # a .txt/.jsonl path, or "demo"
    format: str = "auto"
    tokenizer: str = "auto"
    model_size: str = "small"  # Rust default
    epochs: int | None = None  # None: 5 (Rust default), or unlimited when max_steps > 0
    max_steps: int = 0
    batch_size: int = 4
    lr: float = 3e-4
    seq_len: int = 256  # Rust default
    seeds: int = 1
    seed: int = 0  # first seed; seeds are seed, seed+1, ...
    optimizers: tuple[str, ...] = ("velvet", "adamw")
    lr_sweep: bool = False
    lr_grid: tuple[float, ...] = DEFAULT_LR_GRID  # multipliers of ``lr`` tried with lr_sweep
    val_fraction: float = 0.1
    val_tokens: int = 65536  # score the first N held-out tokens (0 = all of them): the same windows for every run
    dtype: str = "f32"
    device: str = "auto"
    entropy_signal: str = "logits"  # Velvet's entropy signal; the Rust benchmark used the logits
    weight_decay: float = 1e-3
    max_grad_norm: float = 1.0

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
        for name in ("batch_size", "seq_len", "seeds"):
            if getattr(self, name) <= 0:
                raise ConfigError(f"--{name.replace('_', '-')} must be positive, got {getattr(self, name)}")
        if not self.lr > 0:
            raise ConfigError(f"--lr must be positive, got {self.lr}")
        if self.max_steps < 0 or (self.epochs is not None and self.epochs < 0):
            raise ConfigError("--epochs and --max-steps must be >= 0")
        if self.epochs == 0 and self.max_steps == 0:
            raise ConfigError("--epochs 0 with --max-steps 0 would train nothing; set one of them")
        if self.val_tokens < 0:
            raise ConfigError(f"--val-tokens must be >= 0 (0 = every held-out token), got {self.val_tokens}")
        if not 0.0 <= self.val_fraction < 1.0:
            raise ConfigError(f"--val-fraction must be in [0, 1), got {self.val_fraction}")
        if not self.lr_grid or any(not m > 0 for m in self.lr_grid):
            raise ConfigError(f"lr_grid must be positive multipliers, got {self.lr_grid}")
        if self.entropy_signal not in ("loss", "logits"):
            raise ConfigError(f"entropy_signal must be 'loss' or 'logits', got {self.entropy_signal!r}")
        parse_dtype(self.dtype)

    @property
    def epoch_budget(self) -> int | None:
        if self.epochs is not None:
            return self.epochs
        return None if self.max_steps else 5

    def learning_rates(self) -> list[float]:
        return [self.lr * m for m in self.lr_grid] if self.lr_sweep else [self.lr]

    def seed_list(self) -> list[int]:
        return [self.seed + i for i in range(self.seeds)]

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["optimizers"] = list(self.optimizers)
        d["lr_grid"] = list(self.lr_grid)
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
    peak_memory_mb: float
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


def _ppl(loss: float) -> float:
    return math.exp(min(loss, 20.0))


# -- data ------------------------------------------------------------------------------------
def _load_data(cfg: BenchConfig, progress: ProgressFn) -> _Data:
    dcfg = DataConfig(dataset=cfg.dataset, format=cfg.format, tokenizer=cfg.tokenizer,
                      seq_len=cfg.seq_len, batch_size=cfg.batch_size)
    tokenizer, notice = prepare_tokenizer(dcfg, saved_candidates=[])
    if notice:
        progress(BenchProgress("message", message=notice))
    ids = load_tokens(cfg.dataset, dcfg, tokenizer,
                      on_warning=lambda m: progress(BenchProgress("message", message=m)))
    ids = np.asarray(ids)
    num_val = int(len(ids) * cfg.val_fraction)
    if cfg.val_fraction > 0 and num_val < cfg.seq_len + 1:
        raise DataError(
            f"--val-fraction {cfg.val_fraction} holds out {num_val} of {len(ids)} tokens, fewer than one window "
            f"of seq_len+1={cfg.seq_len + 1}; raise --val-fraction, lower --seq-len, or add data")
    train_ids, val_ids = ids[:len(ids) - num_val], ids[len(ids) - num_val:]
    if cfg.val_tokens and len(val_ids) > cfg.val_tokens + 1:
        val_ids = val_ids[:max(cfg.val_tokens, cfg.seq_len) + 1]  # the held-out part is never trained on
    val = TokenWindows(val_ids, cfg.seq_len) if num_val else None
    num_scored = len(val) * cfg.seq_len if val is not None else 0
    return _Data(train=TokenWindows(train_ids, cfg.seq_len), val=val, vocab_size=tokenizer.vocab_size,
                 tokenizer_name=tokenizer.name, num_train_tokens=len(train_ids), num_val_tokens=num_scored)


@torch.no_grad()
def evaluate_loss(model: torch.nn.Module, windows: TokenWindows, *, batch_size: int, device: torch.device,
                  autocast) -> float:
    """Token-weighted mean cross-entropy of ``model`` over every window (no MoE aux loss)."""
    return evaluate(model, windows, batch_size=batch_size, device=device, autocast=autocast, max_batches=0,
                    dist_info=DistInfo(device=device))["val_loss"]


# -- one run ---------------------------------------------------------------------------------
def _memory_reset(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)


def _memory_peak(device: torch.device) -> tuple[float, str]:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20, "cuda_max_allocated"
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux, bytes on macOS
    return (rss / 2**20 if sys.platform == "darwin" else rss / 2**10), "process_rss_high_water"


def _total_steps(cfg: BenchConfig, batches_per_epoch: int) -> int:
    epochs = cfg.epoch_budget
    by_epochs = None if epochs is None else epochs * batches_per_epoch
    if cfg.max_steps:
        return cfg.max_steps if by_epochs is None else min(cfg.max_steps, by_epochs)
    return by_epochs or 0


def _train_one(cfg: BenchConfig, name: str, lr: float, seed: int, init_model: VesperLM, data: _Data,
               device: torch.device, progress: ProgressFn) -> RunResult:
    label = f"{name} lr={lr:.1e} seed={seed}"
    dtype = parse_dtype(cfg.dtype)
    autocast = autocast_factory(device, dtype)
    model = copy.deepcopy(init_model).to(device)  # the same initial weights for every optimizer
    model.train()
    ocfg = OptimConfig(name=name, lr=lr, weight_decay=cfg.weight_decay, max_grad_norm=cfg.max_grad_norm)
    optimizer = build_optimizer(build_param_groups(model, ocfg.weight_decay), ocfg, vocab_size=data.vocab_size)
    is_velvet = isinstance(optimizer, Velvet)
    scaler = torch.amp.GradScaler(device.type, enabled=dtype == torch.float16)
    loader = BatchLoader(data.train, cfg.batch_size, shuffle=True, seed=seed)  # the same batch order for all
    total = _total_steps(cfg, loader.num_batches)
    params = [p for p in model.parameters() if p.requires_grad]
    torch.manual_seed(seed)  # any sampling inside the model (none today) starts from the same state too

    progress(BenchProgress("start", run=label, total_steps=total))
    _memory_reset(device)
    step_metrics: list[dict[str, float]] = []
    epoch_means: list[float] = []
    epoch_losses: list[float] = []
    batches = loader.batches_forever()
    start = time.perf_counter()
    for step in range(total):
        input_ids, labels = next(batches)
        input_ids, labels = input_ids.to(device), labels.to(device)
        with autocast():
            out = model(input_ids)
        ce = F.cross_entropy(out.logits.float().flatten(0, 1), labels.flatten())
        loss = ce if out.aux_loss is None else ce + model.config.moe_aux_loss_weight * out.aux_loss.float()
        scaler.scale(loss).backward()
        loss_value = float(ce.detach())
        scaler.unscale_(optimizer)
        row: dict[str, float] = {"step": step, "loss": loss_value}
        if is_velvet:
            entropy = normalized_entropy(out.logits.detach()) if cfg.entropy_signal == "logits" else None
            optimizer.set_signals(loss_value, normalized_entropy=entropy, vocab_size=data.vocab_size)
            grad_norm = float(optimizer.clip_grad_norm_())
            group = optimizer.param_groups[0]
            row.update(entropy_scale=float(group["entropy_scale"]), ppl_scale=float(group["ppl_scale"]))
        else:
            grad_norm = float(clip_grad_norm_(params, cfg.max_grad_norm))
        row["grad_norm"] = grad_norm
        if math.isfinite(loss_value) and math.isfinite(grad_norm):
            scaler.step(optimizer)
            scaler.update()
        # else: the update is skipped (as the trainer does); the run's loss shows it
        optimizer.zero_grad(set_to_none=True)
        step_metrics.append(row)
        epoch_losses.append(loss_value)
        if loader.index >= loader.num_batches:  # this step used the epoch's last batch
            epoch_means.append(sum(epoch_losses) / len(epoch_losses))
            epoch_losses = []
        progress(BenchProgress("step", run=label, step=step + 1, total_steps=total, loss=loss_value))
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    elapsed = time.perf_counter() - start
    if epoch_losses:  # a partial last epoch (--max-steps) still gets its mean
        epoch_means.append(sum(epoch_losses) / len(epoch_losses))
    peak, peak_kind = _memory_peak(device)
    val_loss = None
    if data.val is not None:
        val_loss = evaluate_loss(model, data.val, batch_size=cfg.batch_size, device=device, autocast=autocast)
    tail = [r["loss"] for r in step_metrics[-max(1, total // 10):]]
    tokens = total * cfg.batch_size * cfg.seq_len
    result = RunResult(
        optimizer=name, lr=lr, seed=seed, steps=total, epochs=len(epoch_means), loss_history=epoch_means,
        step_metrics=step_metrics, training_time_secs=elapsed,
        final_train_loss=sum(tail) / len(tail) if tail else float("nan"), val_loss=val_loss,
        tokens_per_sec=tokens / elapsed if elapsed > 0 else 0.0,
        time_per_step_ms=1000 * elapsed / max(total, 1), peak_memory_mb=peak, peak_memory_kind=peak_kind)
    progress(BenchProgress("end", run=label, step=total, total_steps=total,
                           loss=val_loss if val_loss is not None else result.final_train_loss))
    return result


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
    for key in ("final_train_loss", "tokens_per_sec", "time_per_step_ms", "peak_memory_mb"):
        out[key] = mean_std([getattr(r, key) for r in runs])
    return out


def verdict(name_a: str, runs_a: list[RunResult], name_b: str, runs_b: list[RunResult]) -> dict[str, Any]:
    """Compare two optimizers on validation loss (training loss when nothing is held out); lower is better.

    "better" only when ``|mean_a - mean_b| > std_a + std_b`` over the seeds; one seed gives no spread, so
    the verdict is then "inconclusive".
    """
    metric = "val_loss" if runs_a[0].val_loss is not None else "final_train_loss"
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
def run_benchmark(cfg: BenchConfig, progress: ProgressFn | None = None) -> dict[str, Any]:
    """Run every optimizer (x LR grid) x seed and return the report (see the module docstring)."""
    progress = progress or (lambda event: None)
    if cfg.dataset is None:
        raise DataError("no data: pass --dataset PATH (a .txt or .jsonl file) or --dataset demo")
    device = resolve_device(cfg.device)
    data = _load_data(cfg, progress)
    mcfg: ModelConfig = model_config(cfg.model_size, vocab_size=data.vocab_size)
    num_params = mcfg.num_params()
    model_size = f"{cfg.model_size} ({num_params}params)"
    progress(BenchProgress("message", message=(
        f"{cfg.model_size}: {num_params:,} params, vocab {data.vocab_size} ({data.tokenizer_name}); "
        f"{data.num_train_tokens:,} train / {data.num_val_tokens:,} held-out tokens scored; device {device}, "
        f"{dtype_name(parse_dtype(cfg.dtype))}; optimizers {','.join(cfg.optimizers)}; seeds {cfg.seed_list()}")))

    # runs[name][lr] -> list over seeds
    runs: dict[str, dict[float, list[RunResult]]] = {n: {lr: [] for lr in cfg.learning_rates()}
                                                    for n in cfg.optimizers}
    _warm_up(cfg, mcfg, data, device)
    for seed in cfg.seed_list():
        seed_everything(seed)
        init_model = VesperLM(mcfg)  # built once per seed, copied for every optimizer and LR
        for name in cfg.optimizers:
            for lr in cfg.learning_rates():
                runs[name][lr].append(_train_one(cfg, name, lr, seed, init_model, data, device, progress))

    best = {name: min(by_lr, key=lambda lr: statistics.fmean(_metric(r) for r in by_lr[lr]))
            for name, by_lr in runs.items()}
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
        report["verdict"] = v["text"]
        report["verdict_detail"] = v
    ranking_metric = "val_loss" if data.val is not None else "final_train_loss"
    report["ranking"] = sorted(cfg.optimizers, key=lambda n: report["summary"][n][ranking_metric]["mean"])
    if cfg.lr_sweep:
        report["lr_sweep"] = {
            name: {"best_lr": best[name],
                   "grid": [{"lr": lr, ranking_metric: mean_std([_metric(r) for r in rs]),
                             "seeds": [r.seed_row() for r in rs]} for lr, rs in runs[name].items()]}
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
    short = dataclasses.replace(cfg, max_steps=2, epochs=None)
    no_val = dataclasses.replace(data, val=None)
    torch.manual_seed(cfg.seed)
    model = VesperLM(mcfg)
    for name in cfg.optimizers:
        _train_one(short, name, cfg.lr, cfg.seed, model, no_val, device, lambda event: None)


def _device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"cpu ({platform.processor() or platform.machine()})"

"""PNG plots of a benchmark report (UPSTREAM_SPEC §6.3) and of training logs (§6.4).

matplotlib is optional (the ``plot`` extra) and imported lazily with the Agg backend. Each figure
builder returns a matplotlib Figure (tests inspect its axes); ``save_figure`` writes it atomically.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any, Iterable, Sequence

from vesper_core.atomic import atomic_path
from vesper_core.errors import DataError, VesperError

DPI = 150
OPTIMIZER_COLORS = {"adamw": "tab:blue", "velvet": "tab:green"}
CYCLE = ("tab:green", "tab:blue", "tab:orange", "tab:red", "tab:purple", "tab:brown")
RUST_RESULT_KEYS = ("optimizer", "step_metrics", "loss_history")


class PlottingUnavailableError(VesperError):
    """matplotlib is not installed."""


def _pyplot():
    try:
        import matplotlib
    except ImportError:
        raise PlottingUnavailableError("plotting needs matplotlib: pip install 'vesper[plot]'") from None
    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def ema(values: Sequence[float], weight: float) -> list[float]:
    """Bias-corrected EMA: ``s <- w*s + (1-w)*x`` from s = 0, shown as ``s / (1 - w^t)`` (as TensorBoard and
    Adam do), so the first points are the mean of what was seen, not pulled toward the first value."""
    out: list[float] = []
    s, correction = 0.0, 1.0
    for x in values:
        s = weight * s + (1 - weight) * x
        correction *= weight
        out.append(s / (1 - correction) if correction < 1 else x)
    return out


def _finite(xs: Iterable[Any], ys: Iterable[Any]) -> tuple[list[float], list[float]]:
    pairs = [(x, y) for x, y in zip(xs, ys) if y is not None and math.isfinite(y)]
    return [p[0] for p in pairs], [p[1] for p in pairs]


# -- benchmark report (§6.3) ---------------------------------------------------------------
def benchmark_results(report: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """The per-optimizer Rust ``Result`` objects of a report, in report order."""
    results = {k: v for k, v in report.items() if isinstance(v, dict) and all(key in v for key in RUST_RESULT_KEYS)}
    if not results:
        raise DataError("not a benchmark report: no optimizer result with step_metrics and loss_history")
    return results


def _color(name: str, index: int) -> str:
    return OPTIMIZER_COLORS.get(name.lower(), CYCLE[index % len(CYCLE)])


def _comparison_text(report: dict[str, Any], results: dict[str, dict[str, Any]]) -> str:
    lines = []
    comp = report.get("comparison") or {}
    if comp:
        lines.append(f"loss improvement {comp.get('loss_improvement_pct', 0):+.2f}%   "
                     f"perplexity improvement {comp.get('perplexity_improvement_pct', 0):+.2f}%   "
                     f"speed difference {comp.get('speed_difference_pct', 0):+.2f}%   (first seed, train loss)")
    finals = []
    for name, res in results.items():
        hist = res.get("loss_history") or []
        if hist and hist[-1] is not None:
            finals.append(f"{res['optimizer']}: final loss {hist[-1]:.4f}, ppl {math.exp(min(hist[-1], 20)):.1f}")
    if finals:
        lines.append("   ".join(finals))
    if report.get("verdict"):
        lines.append(str(report["verdict"]))
    return "\n".join(lines)


def benchmark_figure(report: dict[str, Any]):
    """The four graphs of §6.3 (scales and grad norms only when present) plus a comparison text box."""
    plt = _pyplot()
    from matplotlib.ticker import MaxNLocator

    results = benchmark_results(report)
    has_scales = any("entropy_scale" in m for r in results.values() for m in r["step_metrics"])
    has_norms = any("grad_norm" in m for r in results.values() for m in r["step_metrics"])
    num_panels = 2 + has_scales + has_norms
    fig, axes = plt.subplots(num_panels, 1, figsize=(14, 4 * num_panels + 1.2), squeeze=False)
    axes = list(axes[:, 0])
    first = next(iter(results.values()))
    fig.suptitle(f"VelvetOptimizer Benchmark — {first.get('model_size', '?')} | {first.get('epochs', '?')} epochs")

    ax = axes[0]
    for i, (name, res) in enumerate(results.items()):
        color = _color(name, i)
        steps, losses = _finite([m["step"] for m in res["step_metrics"]], [m.get("loss") for m in res["step_metrics"]])
        ax.plot(steps, losses, color=color, alpha=0.15, label=f"{res['optimizer']} (raw)")
        if len(losses) > 5:
            ax.plot(steps, ema(losses, 0.9), color=color, label=f"{res['optimizer']} (smoothed)")
    ax.set_title("Training loss per step")
    ax.set_xlabel("step")
    ax.set_ylabel("loss")
    ax.legend()
    ax.grid(alpha=0.3)

    ax = axes[1]
    for i, (name, res) in enumerate(results.items()):
        color = _color(name, i)
        epochs, ppl = _finite(range(1, len(res["perplexity_history"]) + 1), res["perplexity_history"])
        ax.plot(epochs, ppl, "o-", color=color, label=res["optimizer"])
        if ppl:
            ax.annotate(f"{ppl[-1]:.1f}", (epochs[-1], ppl[-1]), textcoords="offset points", xytext=(6, 0),
                        color=color)
    ax.set_title("Perplexity per epoch")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("epoch")
    ax.set_ylabel("perplexity")
    ax.legend()
    ax.grid(alpha=0.3)

    panel = 2
    if has_scales:
        ax = axes[panel]
        panel += 1
        for name, res in results.items():
            rows = [m for m in res["step_metrics"] if "entropy_scale" in m]
            if not rows:
                continue
            steps = [m["step"] for m in rows]
            ax.plot(steps, ema([m["entropy_scale"] for m in rows], 0.95), color="tab:orange",
                    label=f"{res['optimizer']} entropy scale (EMA)")
            ax.plot(steps, ema([m["ppl_scale"] for m in rows], 0.95), color="tab:purple",
                    label=f"{res['optimizer']} perplexity scale (EMA)")
        ax.axhline(1.0, color="grey", linestyle="--", label="1.0")
        ax.set_title("Velvet adaptive scales")
        ax.set_xlabel("step")
        ax.set_ylabel("scale factor")
        ax.legend()
        ax.grid(alpha=0.3)
    if has_norms:
        ax = axes[panel]
        for i, (name, res) in enumerate(results.items()):
            steps, norms = _finite([m["step"] for m in res["step_metrics"]],
                                   [m.get("grad_norm") for m in res["step_metrics"]])
            if not norms:
                continue
            color = "tab:red" if name.lower() == "velvet" else _color(name, i)
            ax.plot(steps, norms, color=color, alpha=0.2, label=f"{res['optimizer']} (raw)")
            ax.plot(steps, ema(norms, 0.95), color=color, label=f"{res['optimizer']} (EMA)")
        ax.set_title("Gradient norms (before clipping)")
        ax.set_xlabel("step")
        ax.set_ylabel("grad norm")
        ax.legend()
        ax.grid(alpha=0.3)

    text = _comparison_text(report, results)
    if text:
        fig.text(0.5, 0.01, text, ha="center", va="bottom", family="monospace", fontsize=8,
                 bbox={"boxstyle": "round", "facecolor": "wheat", "alpha": 0.4})
    fig.tight_layout(rect=(0, 0.07, 1, 0.97))
    return fig


# -- training logs (§6.4) ------------------------------------------------------------------
def read_json(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise DataError(f"{path}: no such file; pass a training_log.json or a benchmark report") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise DataError(f"{path} is not readable JSON ({exc})") from None
    if not isinstance(data, dict):
        raise DataError(f"{path} holds a JSON {type(data).__name__}, expected an object")
    return data


def _log_steps(log: dict[str, Any], name: str) -> tuple[list[int], list[float]]:
    steps = log.get("steps")
    if not isinstance(steps, list) or not steps:
        raise DataError(f"{name} has no 'steps' list; is it a training_log.json?")
    try:
        return _finite([int(s["step"]) for s in steps], [s.get("loss") for s in steps])
    except (KeyError, TypeError, ValueError) as exc:
        raise DataError(f"{name}: a step entry lacks 'step'/'loss' ({exc})") from None


def training_figure(logs: Sequence[tuple[str, dict[str, Any]]]):
    """§6.4: loss (raw + EMA 0.9) and perplexity (EMA 0.95) per step, one colour per run, a footer line each."""
    plt = _pyplot()
    if not logs:
        raise DataError("no training logs given")
    fig, (ax_loss, ax_ppl) = plt.subplots(2, 1, figsize=(14, 8 + 0.25 * len(logs)))
    footer = []
    for i, (name, log) in enumerate(logs):
        color = ("tab:green", "tab:blue", "tab:orange", "tab:red")[i % 4]
        steps, losses = _log_steps(log, name)
        label = f"{log.get('optimizer', '?')} ({log.get('model_size', '?')})"
        if len(logs) > 1 and sum(lbl == label for lbl in (f"{lg.get('optimizer', '?')} ({lg.get('model_size', '?')})"
                                                            for _, lg in logs)) > 1:
            label = f"{label} {Path(name).parent.name or name}"
        ax_loss.plot(steps, losses, color=color, alpha=0.15)
        if len(losses) > 5:
            ax_loss.plot(steps, ema(losses, 0.9), color=color, label=label)
        else:
            ax_loss.lines[-1].set_label(label)
        ppl = [math.exp(min(x, 20.0)) for x in losses]
        ax_ppl.plot(steps, ema(ppl, 0.95), color=color, label=label)
        evals = [e for e in (log.get("evals") or []) if isinstance(e, dict) and isinstance(e.get("val_loss"), (int, float))
                 and math.isfinite(e["val_loss"]) and "step" in e]
        if evals:
            eval_steps, val_losses = [e["step"] for e in evals], [e["val_loss"] for e in evals]
            ax_loss.plot(eval_steps, val_losses, color=color, marker="o", linestyle="--", label=f"{label} validation")
            ax_ppl.plot(eval_steps, [math.exp(min(x, 20.0)) for x in val_losses], color=color, marker="o",
                        linestyle="--", label=f"{label} validation")
        if losses:
            footer.append(f"{label}: last step {steps[-1]}, final loss {losses[-1]:.4f}, "
                          f"final ppl {math.exp(min(losses[-1], 20.0)):.1f}")
    ax_loss.set_title("Training loss")
    ax_loss.set_xlabel("step")
    ax_loss.set_ylabel("loss")
    ax_ppl.set_title("Perplexity (EMA 0.95)")
    ax_ppl.set_xlabel("step")
    ax_ppl.set_ylabel("perplexity")
    for ax in (ax_loss, ax_ppl):
        ax.legend()
        ax.grid(alpha=0.3)
    fig.text(0.01, 0.01, "\n".join(footer), ha="left", va="bottom", family="monospace", fontsize=8)
    fig.tight_layout(rect=(0, 0.03 + 0.02 * len(footer), 1, 1))
    return fig


# -- files -----------------------------------------------------------------------------------
IMAGE_FORMATS = {".png": "png", ".jpg": "jpg", ".jpeg": "jpg", ".pdf": "pdf", ".svg": "svg"}


def image_format(path: str | Path) -> str:
    """The image format the file name asks for (no suffix: PNG); DataError for one we cannot write."""
    suffix = Path(path).suffix.lower()
    if not suffix:
        return "png"
    if suffix not in IMAGE_FORMATS:
        raise DataError(f"cannot write {path}: unknown image type {suffix!r}; use one of "
                        f"{', '.join(IMAGE_FORMATS)}")
    return IMAGE_FORMATS[suffix]


def save_figure(fig, path: str | Path) -> Path:
    """Write ``fig`` in the format its suffix names (PNG by default) atomically (dpi 150) and close it."""
    plt = _pyplot()
    path = Path(path)
    if path.parent and not path.parent.exists():
        raise DataError(f"cannot write {path}: folder {path.parent} does not exist")
    fmt = image_format(path)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format=fmt, dpi=DPI)
    plt.close(fig)
    return path


def is_benchmark_report(data: dict[str, Any]) -> bool:
    return "comparison" in data or any(
        isinstance(v, dict) and all(k in v for k in RUST_RESULT_KEYS) for v in data.values())


def plot_benchmark(report: dict[str, Any], output: str | Path):
    """Build and save the §6.3 figure; returns the Figure (already written and closed)."""
    fig = benchmark_figure(report)
    save_figure(fig, output)
    return fig


def plot_files(paths: Sequence[str | Path], output: str | Path | None = None) -> tuple[Path, Any]:
    """``vesper plot``: training logs (one figure, all runs) or a single benchmark report.

    Default output: the first path with a ``.png`` suffix. Returns (output path, Figure).
    """
    if not paths:
        raise DataError("give at least one training_log.json (or a benchmark report)")
    paths = [Path(p) / "training_log.json" if Path(p).is_dir() else Path(p) for p in paths]  # a run folder
    out = Path(output) if output else Path(paths[0]).with_suffix(".png")
    from vesper_cli.engine.paths import check_writable

    check_writable(out, "--output")
    image_format(out)
    loaded = [(str(p), read_json(p)) for p in paths]
    reports = [name for name, data in loaded if is_benchmark_report(data) and "steps" not in data]
    if reports:
        if len(loaded) > 1:
            raise DataError(f"{reports[0]} is a benchmark report: plot it alone (one report per figure)")
        fig = benchmark_figure(loaded[0][1])
    else:
        fig = training_figure(loaded)
    save_figure(fig, out)
    return out, fig

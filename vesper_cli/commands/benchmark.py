"""Compare optimizers fairly: same initial weights, same batches, N seeds, held-out loss, verdict."""

from __future__ import annotations

import sys

import json
from pathlib import Path
from typing import Any, Optional

import typer

from vesper_cli.commands.options import config_option, data_option, given
from vesper_cli.engine.benchmark import BENCH_DEFAULTS, BenchConfig
from vesper_cli.output import console, err_console, info, stderr_is_tty
from vesper_optim.config import OptimConfig

B, O = BenchConfig, OptimConfig


class _ProgressPrinter:
    """Runner events on stderr: a rich bar per run on a TTY, a line per run (and every N steps) otherwise."""

    def __init__(self, every: int = 50):
        self.every = every
        self.bar = None
        self.task = None

    def __call__(self, event) -> None:
        if event.kind == "message":
            info(event.message)
        elif event.kind == "start":
            if stderr_is_tty():
                from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

                self.bar = Progress(TextColumn(event.run), BarColumn(bar_width=30), MofNCompleteColumn(),
                                    TextColumn("{task.fields[loss]}"), TimeElapsedColumn(), console=err_console,
                                    transient=True)
                self.bar.start()
                self.task = self.bar.add_task(event.run, total=event.total_steps, loss="")
            else:
                info(f"{event.run}: {event.total_steps} steps")
        elif event.kind == "step":
            if self.bar is not None:
                self.bar.update(self.task, completed=event.step, loss=f"loss {event.loss:.4f}")
            elif event.step % self.every == 0:
                info(f"{event.run}: step {event.step}/{event.total_steps} loss {event.loss:.4f}")
        elif event.kind == "end":
            if self.bar is not None:
                self.bar.stop()
                self.bar = None
            info(f"{event.run}: done, held-out loss {event.loss:.4f}" if event.loss is not None
                 else f"{event.run}: done")


def _fmt(stat: dict[str, Any] | None, digits: int = 4) -> str:
    if not stat or stat.get("mean") is None:
        return "n/a"
    return f"{stat['mean']:.{digits}f} ± {stat['std']:.{digits}f}"


def render_table(report: dict[str, Any]) -> None:
    from rich import box
    from rich.table import Table

    summary = report["summary"]
    cfg = report["config"]
    table = Table(title=f"vesper benchmark: {cfg['model_size']}, {cfg['seeds']} seed(s), mean ± std",
                  box=box.SIMPLE_HEAD)
    for column in ("optimizer", "lr", "val loss", "train loss", "tok/s", "ms/step", "peak MiB"):
        table.add_column(column, justify="left" if column == "optimizer" else "right", no_wrap=True)
    for name, s in summary.items():
        table.add_row(name, f"{s['lr']:.1e}", _fmt(s.get("val_loss")), _fmt(s["final_train_loss"]),
                      f"{s['tokens_per_sec']['mean']:.0f}", f"{s['time_per_step_ms']['mean']:.1f}",
                      f"{s['peak_memory_mb']['mean']:.0f}" if s.get("peak_memory_mb") else "n/a")
    if console.is_terminal:
        console.print(table)
    else:  # a pipe or file has no width: never cut the table to rich's default 80 columns
        from rich.console import Console

        Console(file=sys.stdout, width=1000, highlight=False).print(table)
    for name, sweep in (report.get("lr_sweep") or {}).items():
        grid = ", ".join(f"{g['lr']:.1e}: {_fmt(next(v for k, v in g.items() if k not in ('lr', 'seeds')))}"
                         for g in sweep["grid"])
        state = "bracketed" if sweep.get("bracketed") else "NOT bracketed (best at the grid's edge)"
        console.print(f"lr sweep {name}: {grid} -> best {sweep['best_lr']:.1e}, {state}", markup=False)
    if report.get("verdict"):
        console.print(f"Verdict: {report['verdict']}", markup=False)


def _check_writable(output: Path) -> None:
    from vesper_cli.engine.paths import check_writable

    check_writable(output, "--output")


def benchmark_command(
    dataset: Optional[str] = data_option("dataset"),
    format: Optional[str] = data_option("format", "--format"),
    text_field: Optional[str] = data_option("text_field"),
    tokenizer: Optional[str] = data_option("tokenizer"),
    model_size: Optional[str] = config_option(B, "model_size"),
    epochs: Optional[int] = config_option(B, "epochs", default=None),
    max_steps: Optional[int] = config_option(B, "max_steps"),
    batch_size: Optional[int] = data_option("batch_size"),
    lr: Optional[float] = config_option(O, "lr", note="(the centre of the sweep grid)"),
    seq_len: Optional[int] = data_option("seq_len", default=BENCH_DEFAULTS["seq_len"]),
    output: Path = typer.Option(Path("benchmark_report.json"), help="JSON report path."),
    seeds: Optional[int] = config_option(B, "seeds"),
    seed: Optional[int] = config_option(B, "seed"),
    optimizers: Optional[str] = config_option(B, "optimizers"),
    lr_sweep: Optional[bool] = config_option(B, "lr_sweep", flag=True),
    val_fraction: Optional[float] = data_option("val_fraction", default=BENCH_DEFAULTS["val_fraction"]),
    val_tokens: Optional[int] = config_option(B, "val_tokens"),
    dtype: Optional[str] = config_option(B, "dtype"),
    device: Optional[str] = config_option(B, "device"),
    loss: Optional[str] = config_option(B, "loss"),
    warmup_steps: Optional[int] = config_option(O, "warmup_steps"),
    lr_schedule: Optional[str] = config_option(O, "lr_schedule"),
    min_lr_ratio: Optional[float] = config_option(O, "min_lr_ratio"),
    weight_decay: Optional[float] = config_option(O, "weight_decay"),
    max_grad_norm: Optional[float] = config_option(O, "max_grad_norm"),
    velvet_rules: Optional[str] = config_option(O, "velvet_rules"),
    entropy_signal: Optional[str] = config_option(O, "entropy_signal", default=None),
    entropy_target: Optional[float] = config_option(O, "entropy_target", default=None),
    perplexity_target: Optional[float] = config_option(O, "perplexity_target", default=None),
    lr_combine: Optional[str] = config_option(O, "lr_combine", default=None),
    hypergradient_rate: Optional[float] = config_option(O, "hypergradient_rate", default=None),
    entropy_adaptive: Optional[bool] = config_option(O, "entropy_adaptive", "--entropy-adaptive/--no-entropy-adaptive"),
    perplexity_guided: Optional[bool] = config_option(O, "perplexity_guided", "--perplexity-guided/--no-perplexity-guided"),
    sparse_aware: Optional[bool] = config_option(O, "sparse_aware", flag=True),
    sparse_params: Optional[str] = config_option(O, "sparse_params"),
    backend: Optional[str] = config_option(O, "backend"),
    plot: bool = typer.Option(False, "--plot", help="Also write the four graphs as OUTPUT with a .png suffix."),
    json_out: bool = typer.Option(False, "--json", help="Print the report JSON on stdout instead of the table."),
) -> None:
    from vesper_core.atomic import write_json_atomic
    from vesper_cli.engine.benchmark import BenchmarkInterrupted, run_benchmark

    settings = given(dataset=dataset, format=format, text_field=text_field, tokenizer=tokenizer, model_size=model_size,
                     epochs=epochs, max_steps=max_steps, batch_size=batch_size, lr=lr, seq_len=seq_len, seeds=seeds,
                     seed=seed, optimizers=optimizers, lr_sweep=lr_sweep, val_fraction=val_fraction,
                     val_tokens=val_tokens, dtype=dtype, device=device, loss=loss, warmup_steps=warmup_steps,
                     lr_schedule=lr_schedule, min_lr_ratio=min_lr_ratio, weight_decay=weight_decay,
                     max_grad_norm=max_grad_norm, velvet_rules=velvet_rules, entropy_signal=entropy_signal,
                     entropy_target=entropy_target, perplexity_target=perplexity_target, lr_combine=lr_combine,
                     hypergradient_rate=hypergradient_rate,
                     entropy_adaptive=entropy_adaptive, perplexity_guided=perplexity_guided,
                     sparse_aware=sparse_aware, sparse_params=sparse_params, backend=backend)
    cfg = BenchConfig.from_flat(**settings)
    _check_writable(output)  # fail before the runs, not after them
    if plot:
        from vesper_cli.plots import _pyplot

        _pyplot()
    try:
        report = run_benchmark(cfg, progress=_ProgressPrinter())
    except BenchmarkInterrupted as stop:
        output.parent.mkdir(parents=True, exist_ok=True)
        write_json_atomic(output, stop.report)
        info(f"interrupted: partial report with {len(stop.report['completed_runs'])} finished run(s) in {output}")
        raise typer.Exit(130) from None
    output.parent.mkdir(parents=True, exist_ok=True)
    write_json_atomic(output, report)
    info(f"report: {output}")
    if plot:
        from vesper_cli.plots import plot_benchmark

        png = output.with_suffix(".png")
        plot_benchmark(report, png)
        info(f"plot: {png}")
    if json_out:
        typer.echo(json.dumps(report, indent=2))
    else:
        render_table(report)

"""Training progress: a rich bar on a TTY, plain periodic lines otherwise (CI, files, pipes)."""

from __future__ import annotations

from pathlib import Path

from rich.progress import BarColumn, Progress, TextColumn

from vesper_cli.engine.observer import RunInfo, StepMetrics, TrainObserver, TrainResult
from vesper_cli.output import err_console, human_count, info, is_rank_zero, stderr_is_tty


def describe_run(run: RunInfo) -> list[str]:
    total = "until the data runs out" if run.total_steps is None else f"{run.total_steps} steps"
    lines = [
        f"Model: {run.model_size} ({human_count(run.num_params)} params), vocab {run.vocab_size}",
        f"Device: {run.device}, precision {run.dtype}, optimizer {run.optimizer}",
        f"Tokenizer: {run.tokenizer}",
        f"Data: {human_count(run.num_train_tokens)} tokens, {run.batches_per_epoch} batches/epoch, {total}",
    ]
    if run.start_step:
        lines.append(f"Starting at step {run.start_step}")
    return lines + list(run.notes)


def _metrics_text(m: StepMetrics) -> str:
    meta = f"| conf {m.metacog['confidence']:.3f} (acc {m.metacog['accuracy']:.3f}) " if m.metacog else ""
    return (f"loss {m.loss:.4f} | ppl {m.ppl:.1f} | lr {m.lr:.2e} | gnorm {m.grad_norm:.2f} "
            f"{meta}| {m.tokens_per_sec:,.0f} tok/s")


def clock(seconds: float | None) -> str:
    """``H:MM:SS`` (``M:SS`` under an hour); ``?`` when unknown."""
    if seconds is None or seconds != seconds or seconds == float("inf"):
        return "?"
    seconds = int(round(seconds))
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes}:{secs:02d}"


def step_of(m: StepMetrics) -> str:
    return f"{m.step}/{m.total_steps}" if m.total_steps else str(m.step)


def timing_text(m: StepMetrics) -> str:
    eta = f" | eta {clock(m.eta_s)}" if m.total_steps else ""
    return f"{clock(m.elapsed_s)} elapsed{eta}"


def bar_text(m: StepMetrics, width: int) -> str:
    """The bar's text: step/total, loss, tok/s, elapsed and ETA always; more when the terminal is wide."""
    core = (f"{step_of(m)} loss {m.loss:.4f} {human_count(m.tokens_per_sec)} tok/s "
            f"{clock(m.elapsed_s)}" + (f" eta {clock(m.eta_s)}" if m.total_steps else ""))
    extra = f" | ppl {m.ppl:.1f} lr {m.lr:.2e} gnorm {m.grad_norm:.2f}"
    if m.metacog:
        extra += f" conf {m.metacog['confidence']:.3f}"
    return core + extra if len(core) + len(extra) + BAR_WIDTH + 8 <= width else core


BAR_WIDTH = 12


class ConsoleTrainObserver(TrainObserver):
    """Renders a run for a person. Only rank 0 prints."""

    def __init__(self, log_every: int = 10, *, force_plain: bool = False, console=None):
        self.log_every = log_every
        self.enabled = is_rank_zero()
        self.console = console or err_console
        self.use_bar = self.enabled and (console is not None or stderr_is_tty()) and not force_plain
        self._progress: Progress | None = None
        self._task = None
        self._last_plain = 0.0

    def on_start(self, run: RunInfo) -> None:
        for line in describe_run(run):
            info(line)
        if self.use_bar:
            self._progress = Progress(
                BarColumn(bar_width=BAR_WIDTH), TextColumn("{task.fields[metrics]}"),
                console=self.console, transient=False,
            )
            self._progress.start()
            self._task = self._progress.add_task("train", total=run.total_steps, completed=run.start_step,
                                                 metrics="")

    def on_step(self, m: StepMetrics) -> None:
        if not self.enabled:
            return
        if self._progress is not None:
            self._progress.update(self._task, completed=m.step, metrics=bar_text(m, self.console.width))
        elif m.step % self.log_every == 0 or m.step == 1:
            info(f"step {step_of(m)} | epoch {m.epoch} | {_metrics_text(m)} | {timing_text(m)}")

    def on_epoch_end(self, epoch: int, mean_loss: float) -> None:
        self._print(f"epoch {epoch} done: mean loss {mean_loss:.4f}")

    def on_checkpoint(self, path: Path) -> None:
        self._print(f"saved {path}")

    def on_message(self, message: str) -> None:
        self._print(message)

    def _print(self, message: str) -> None:
        if not self.enabled:
            return
        if self._progress is not None:
            self._progress.console.print(message, markup=False)
        else:
            info(message)

    def on_end(self, result: TrainResult) -> None:
        if self._progress is not None:
            self._progress.stop()
            self._progress = None
        first = "n/a" if result.first_loss is None else f"{result.first_loss:.4f}"
        final = "n/a" if result.final_loss is None else f"{result.final_loss:.4f}"
        if result.stopped_by is not None:
            info(f"stopped by {result.stopped_by} at step {result.steps} after {result.elapsed_s:.1f} s, "
                 f"loss {first} -> {final}")
            if result.final_checkpoint is None:
                info("stopped before the first step: nothing was written")
            else:
                info(f"emergency checkpoint: {result.final_checkpoint}")
                info(f"continue with: vesper train --resume {result.output_dir}")
        else:
            info(f"done: {result.steps} steps in {result.elapsed_s:.1f} s, loss {first} -> {final}")
            info(f"final checkpoint: {result.final_checkpoint}")
        info(f"training log: {result.log_path}")

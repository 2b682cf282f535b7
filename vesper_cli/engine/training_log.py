"""``training_log.json``: the Rust keys (optimizer, model_size, steps[{step, loss, ppl}]) plus our metrics."""

from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from vesper_core.atomic import write_json_atomic
from vesper_cli.engine.observer import StepMetrics

LOG_FILE = "training_log.json"
EVENTS_FILE = "events.jsonl"  # one JSON object a line, appended live: start, step (every log step), eval, checkpoint, end


@dataclass
class TrainingLog:
    path: Path
    optimizer: str
    model_size: str
    steps: list[dict[str, Any]] = field(default_factory=list)
    evals: list[dict[str, Any]] = field(default_factory=list)
    skipped_steps: list[dict[str, Any]] = field(default_factory=list)
    events_path: Path | None = None  # set by start_events(): the live JSONL log beside the JSON one

    @classmethod
    def open(cls, output_dir: Path, *, optimizer: str, model_size: str, resume_step: int = 0) -> "TrainingLog":
        """A new log, or (when resuming) the existing one cut back to ``resume_step``: no duplicate steps."""
        path = output_dir / LOG_FILE
        log = cls(path=path, optimizer=optimizer, model_size=model_size)
        if resume_step > 0 and path.is_file():
            try:
                old = json.loads(path.read_text(encoding="utf-8"))
                for key in ("steps", "evals"):
                    setattr(log, key, [e for e in old.get(key, []) if int(e.get("step", 0)) <= resume_step])
                log.skipped_steps = [e for e in old.get("skipped_steps", []) if int(e.get("after_step", 0)) < resume_step]
            except (json.JSONDecodeError, OSError, TypeError, ValueError, AttributeError):
                pass  # an unreadable old log is not worth failing a resume for: start a new one
        return log

    def start_events(self, *, fresh: bool) -> None:
        """Open the live event log (a new run starts it over; a resumed one appends)."""
        self.events_path = self.path.parent / EVENTS_FILE
        if fresh:
            self.events_path.write_text("", encoding="utf-8")

    def event(self, kind: str, **data: Any) -> None:
        """Append one event line (flushed at once, so a watcher sees it while the run goes on)."""
        if self.events_path is None:
            return
        line = json.dumps(_nulls({"event": kind, "time": round(time.time(), 3), **data}), default=str)
        with open(self.events_path, "a", encoding="utf-8") as f:
            f.write(line + "\n")

    def append(self, metrics: StepMetrics) -> None:
        self.steps.append(metrics.log_entry())

    def evaluation(self, step: int, metrics: dict[str, float]) -> None:
        self.evals.append({"step": step, **metrics})
        self.event("eval", step=step, **metrics)

    def skipped(self, after_step: int, reason: str, loss: float, grad_norm: float) -> None:
        self.skipped_steps.append({"after_step": after_step, "reason": reason,
                                   "loss": loss if math.isfinite(loss) else None,
                                   "grad_norm": grad_norm if math.isfinite(grad_norm) else None})

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"optimizer": self.optimizer, "model_size": self.model_size, "steps": self.steps}
        if self.evals:
            out["evals"] = self.evals
        if self.skipped_steps:
            out["skipped_steps"] = self.skipped_steps
        return out

    def write(self) -> None:
        write_json_atomic(self.path, self.to_dict())


def _nulls(data: Any) -> Any:
    if isinstance(data, float) and not math.isfinite(data):
        return None
    if isinstance(data, dict):
        return {k: _nulls(v) for k, v in data.items()}
    if isinstance(data, (list, tuple)):
        return [_nulls(v) for v in data]
    return data

"""Training runs and benchmark reports found in a workspace, read from the files the trainer writes live."""

from __future__ import annotations

import json
import os
from pathlib import Path

RUN_MARKERS = ("events.jsonl", "training_log.json")
MAX_DEPTH = 3


def find_runs(workspace: Path) -> list[Path]:
    """Folders (up to 3 levels deep, hidden ones skipped) holding events.jsonl or training_log.json."""
    root = workspace.resolve()
    found = []
    for folder, dirs, files in os.walk(root):
        depth = len(Path(folder).relative_to(root).parts)
        dirs[:] = sorted(d for d in dirs if not d.startswith(".") and d != "__pycache__" and depth < MAX_DEPTH)
        if any(m in files for m in RUN_MARKERS):
            found.append(Path(folder))
    return found


def read_events(folder: Path, offset: int = 0) -> tuple[list[dict], int]:
    """Complete events.jsonl lines from byte ``offset``; returns (events, the offset to ask from next)."""
    path = folder / "events.jsonl"
    if not path.is_file():
        return [], 0
    with path.open("rb") as fh:
        size = path.stat().st_size
        if offset > size:
            offset = 0  # the file was replaced (--overwrite): start again
        fh.seek(offset)
        data = fh.read()
    end = data.rfind(b"\n") + 1
    events = []
    for line in data[:end].splitlines():
        try:
            events.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return events, offset + end


def _log_steps(folder: Path) -> list[dict]:
    """training_log.json steps for runs without events.jsonl (older runs)."""
    try:
        data = json.loads((folder / "training_log.json").read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        return []
    return [dict(s, event="step") for s in data.get("steps", []) if isinstance(s, dict)]


def checkpoints(folder: Path) -> list[dict]:
    out = []
    for path in sorted(folder.glob("checkpoint-*.safetensors"), key=lambda p: p.stat().st_mtime):
        if path.name.endswith(".state.safetensors"):
            continue
        out.append({"name": path.name, "size": path.stat().st_size, "emergency": "emergency" in path.name,
                    "resumable": path.with_name(path.name.replace(".safetensors", ".state.json")).is_file()})
    return out


def summarize_run(folder: Path) -> dict:
    """Status, progress, throughput and ETA of one run from its files."""
    events, _ = read_events(folder)
    if not events:
        events = _log_steps(folder)
    start = next((e for e in reversed(events) if e.get("event") == "start"), {})
    steps = [e for e in events if e.get("event") == "step"]
    evals = [e for e in events if e.get("event") == "eval"]
    end = next((e for e in reversed(events) if e.get("event") == "end"), None)
    last = steps[-1] if steps else {}
    total = start.get("total_steps")
    step = last.get("step", 0)
    eta = None
    if total and step and last.get("elapsed_s") and end is None:
        first = next((s for s in steps if s.get("elapsed_s")), last)
        rate = (last["elapsed_s"] - first["elapsed_s"]) / max(1, step - first["step"]) if step > first["step"] \
            else last["elapsed_s"] / step
        eta = max(0.0, (total - step) * rate)
    if end is not None:
        status = f"stopped ({end['stopped_by']})" if end.get("stopped_by") else "finished"
    elif steps or start:
        status = "incomplete"
    else:
        status = "empty"
    cps = checkpoints(folder)
    return {"status": status, "step": step, "total_steps": total, "loss": last.get("loss"),
            "tokens_per_sec": last.get("tokens_per_sec"), "eta_s": eta, "val_loss": evals[-1]["val_loss"] if evals else None,
            "run_config": start.get("run_config"), "checkpoints": cps,
            "emergency": [c["name"] for c in cps if c["emergency"]],
            "final_checkpoint": (end or {}).get("final_checkpoint")}


def find_reports(workspace: Path, folder_name: str = "benchmarks") -> list[Path]:
    root = workspace.resolve() / folder_name
    if not root.is_dir():
        return []
    return sorted(root.glob("*/report.json"), key=lambda p: p.stat().st_mtime, reverse=True)


def read_report(path: Path) -> dict | None:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        return None
    return data if isinstance(data, dict) else None

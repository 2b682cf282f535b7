"""One results schema for every benchmark script: benchmarks/results/<stem>.json, written atomically.

    {
      "benchmark": "optimizer",                 # the script's name for itself
      "schema": 1,
      "command": "python benchmarks/bench_optimizer.py --preset small",   # exactly what was run
      "environment": {"date", "device", "torch", "python", "threads", "cpu_count", "platform",
                      "git_commit", "git_dirty", + "cuda"/"triton"/"cupy" versions when present},
      "results": [{...}, ...],                  # one flat row per measured thing (a variant, a size)
      "notes": ["..."],                         # what was measured and how, caveats
      "computed": ["ratio_vs_adamw_fused"]      # row keys derived from other numbers, not measured
    }

Scripts call :func:`write_results`; :func:`load_results` reads a file back and checks the shape.
"""

from __future__ import annotations

import datetime as dt
import importlib.metadata
import os
import platform
import shlex
import statistics
import subprocess
import sys
from pathlib import Path
from typing import Any, Iterable, Sequence

import torch

from vesper_core.atomic import write_json_atomic

RESULTS = Path(__file__).resolve().parent / "results"
ROOT = RESULTS.parents[1]
SCHEMA_VERSION = 1
KEYS = ("benchmark", "schema", "command", "environment", "results", "notes", "computed")


def device_name(device: torch.device | str | None = None) -> str:
    """``NVIDIA H100 80GB HBM3`` for a GPU, ``cpu (x86_64, 2 threads)`` for the CPU."""
    device = torch.device(device) if device is not None else torch.device("cpu")
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"{device.type} ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)"


def _git(*args: str) -> str | None:
    try:
        out = subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() if out.returncode == 0 else None


def _version(dist: str) -> str | None:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return None


def environment(device: torch.device | str | None = None) -> dict[str, Any]:
    """Where and with what the numbers were taken. ``device``: a torch device, or a name already made."""
    name = device if isinstance(device, str) and device.split(":")[0] not in ("cpu", "cuda") else device_name(device)
    env: dict[str, Any] = {
        "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"), "device": name,
        "torch": torch.__version__, "python": platform.python_version(), "threads": torch.get_num_threads(),
        "cpu_count": os.cpu_count(), "platform": platform.platform(),
        "git_commit": _git("rev-parse", "--short", "HEAD"),
        "git_dirty": bool(_git("status", "--porcelain", "--untracked-files=no")),
    }
    if torch.cuda.is_available():
        env["cuda"] = torch.version.cuda
    for dist in ("triton", "cupy-cuda12x", "numpy"):
        version = _version(dist)
        if version is not None:
            env[dist] = version
    return env


def command_line(argv: Sequence[str] | None = None) -> str:
    """The command as typed from the repository root: ``python benchmarks/x.py --flag value``."""
    argv = list(sys.argv if argv is None else argv)
    script = Path(argv[0]).resolve() if argv else Path("?")
    try:
        script_text = str(script.relative_to(ROOT))
    except ValueError:
        script_text = argv[0] if argv else "?"
    return shlex.join(["python", script_text, *argv[1:]])


def spread(values: Iterable[float]) -> dict[str, float]:
    """Median and spread of repeated measurements: median, p20, p80, min, max, n."""
    xs = sorted(values)
    if not xs:
        raise ValueError("no measurements")
    q = statistics.quantiles(xs, n=5, method="inclusive") if len(xs) > 1 else [xs[0]] * 4
    return {"median": statistics.median(xs), "p20": q[0], "p80": q[3], "min": xs[0], "max": xs[-1], "n": len(xs)}


def write_results(benchmark: str, results: list[dict[str, Any]], *, notes: Sequence[str] = (),
                  computed: Sequence[str] = (), device: torch.device | str | None = None,
                  stem: str | None = None, argv: Sequence[str] | None = None) -> Path:
    """Write one results file in the schema above; returns its path (``stem`` defaults to bench_<benchmark>)."""
    if not isinstance(results, list) or not all(isinstance(r, dict) for r in results):
        raise TypeError("results must be a list of dicts (one flat row per measured thing)")
    unknown = sorted(set(computed) - {k for r in results for k in r})
    if unknown:
        raise ValueError(f"computed names {unknown} are not keys of any result row")
    payload = {"benchmark": benchmark, "schema": SCHEMA_VERSION, "command": command_line(argv),
               "environment": environment(device), "results": results, "notes": list(notes),
               "computed": list(computed)}
    RESULTS.mkdir(exist_ok=True)
    path = RESULTS / f"{stem or 'bench_' + benchmark}.json"
    write_json_atomic(path, payload)
    return path


def load_results(path: str | Path) -> dict[str, Any]:
    """A results file, checked to have the schema's keys."""
    import json

    data = json.loads(Path(path).read_text())
    missing = [k for k in KEYS if k not in data]
    if missing:
        raise ValueError(f"{path}: not a results file of schema {SCHEMA_VERSION} (missing {missing})")
    return data

"""What every benchmark records with its numbers, and where: benchmarks/results/<name>.json (atomic)."""

from __future__ import annotations

import datetime as dt
import platform
from pathlib import Path
from typing import Any

import torch

from vesper_core.atomic import write_json_atomic

RESULTS = Path(__file__).resolve().parent / "results"


def environment(device_name: str) -> dict[str, Any]:
    return {"date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"), "device": device_name,
            "torch": torch.__version__, "python": platform.python_version()}


def save_result(name: str, row: dict[str, Any]) -> Path:
    RESULTS.mkdir(exist_ok=True)
    path = RESULTS / f"{name}.json"
    write_json_atomic(path, row)
    return path

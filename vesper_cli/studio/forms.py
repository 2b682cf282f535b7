"""Validated job arguments from the studio's JSON forms: every value checked, every path kept in the workspace."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from vesper_cli.studio.security import StudioError, check_name, relative_to_workspace, resolve_inside

DATA_SUFFIXES = (".txt", ".jsonl", ".ndjson", ".json", ".parquet", ".arrow", ".md", ".csv")
DTYPES = ("f32", "bf16", "f16")
SCHEDULES = ("constant", "cosine")
RUNS_DIR, BENCH_DIR, CACHE_DIR, DOWNLOAD_DIR = "runs", "benchmarks", "caches", "downloads"


def _int(body: dict, key: str, default: int, lo: int, hi: int) -> int:
    value = body.get(key, default)
    if value in (None, ""):
        value = default
    try:
        number = int(str(value).strip())
    except ValueError:
        raise StudioError(f"{key} must be a whole number, got {value!r}") from None
    if not lo <= number <= hi:
        raise StudioError(f"{key} must be between {lo} and {hi}, got {number}")
    return number


def _float(body: dict, key: str, default: float, lo: float, hi: float) -> float:
    value = body.get(key, default)
    if value in (None, ""):
        value = default
    try:
        number = float(str(value).strip())
    except ValueError:
        raise StudioError(f"{key} must be a number, got {value!r}") from None
    if not math.isfinite(number) or not lo <= number <= hi:
        raise StudioError(f"{key} must be between {lo:g} and {hi:g}, got {value!r}")
    return number


def _choice(body: dict, key: str, default: str, choices) -> str:
    value = body.get(key) or default
    if value not in choices:
        raise StudioError(f"{key} {value!r} is not one of: {', '.join(choices)}")
    return value


def dataset_arg(workspace: Path, value: Any) -> str:
    if value == "demo":
        return "demo"
    path = resolve_inside(workspace, value, "dataset")
    if not path.is_file():
        raise StudioError(f"dataset {value!r} is not a file in the workspace")
    return relative_to_workspace(workspace, path)


def tokenizer_arg(workspace: Path, value: Any) -> str:
    if value in (None, "", "auto", "byte"):
        return value or "auto"
    path = resolve_inside(workspace, value, "tokenizer")
    if not (path.is_file() and path.suffix == ".json"):
        raise StudioError(f"tokenizer {value!r} is not a tokenizer .json file in the workspace")
    return relative_to_workspace(workspace, path)


def _names(registry) -> list[str]:
    return list(registry.names())


def train_args(workspace: Path, body: dict) -> tuple[Path, list[str]]:
    from vesper_core.presets import PRESETS
    from vesper_optim.registry import OPTIMIZERS

    name = check_name(body.get("name"), "run name")
    folder = resolve_inside(workspace, f"{RUNS_DIR}/{name}", "run folder")
    if (folder / "events.jsonl").exists() or any(folder.glob("checkpoint-*.safetensors")):
        raise StudioError(f"run {name!r} already exists; pick another name or resume it from the Runs page", 409)
    args = ["train", "--dataset", dataset_arg(workspace, body.get("dataset")),
            "--tokenizer", tokenizer_arg(workspace, body.get("tokenizer")),
            "--model-size", _choice(body, "model_size", "nano", _names(PRESETS)),
            "--optimizer", _choice(body, "optimizer", "velvet", _names(OPTIMIZERS)),
            "--lr", repr(_float(body, "lr", 3e-4, 1e-7, 1.0)),
            "--batch-size", str(_int(body, "batch_size", 4, 1, 4096)),
            "--seq-len", str(_int(body, "seq_len", 128, 2, 131072)),
            "--max-steps", str(_int(body, "max_steps", 100, 1, 10_000_000)),
            "--save-every", str(_int(body, "save_every", 0, 0, 10_000_000)),
            "--log-every", str(_int(body, "log_every", 1, 1, 100_000)),
            "--warmup-steps", str(_int(body, "warmup_steps", 0, 0, 10_000_000)),
            "--lr-schedule", _choice(body, "lr_schedule", "constant", SCHEDULES),
            "--dtype", _choice(body, "dtype", "f32", DTYPES),
            "--seed", str(_int(body, "seed", 0, 0, 2**31 - 1)),
            "--output-dir", relative_to_workspace(workspace, folder)]
    val_fraction = _float(body, "val_fraction", 0.0, 0.0, 0.5)
    if val_fraction > 0:
        args += ["--val-fraction", repr(val_fraction),
                 "--eval-every", str(_int(body, "eval_every", 0, 0, 10_000_000))]
    return folder, args


def resume_args(workspace: Path, run: Any) -> tuple[Path, list[str]]:
    folder = resolve_inside(workspace, run, "run")
    if not folder.is_dir():
        raise StudioError(f"run {run!r} not found", 404)
    if not any(folder.glob("checkpoint-*.state.json")):
        raise StudioError(f"run {run!r} has no resumable checkpoint yet")
    return folder, ["train", "--resume", relative_to_workspace(workspace, folder)]


def benchmark_args(workspace: Path, body: dict) -> tuple[Path, list[str]]:
    from vesper_core.presets import PRESETS
    from vesper_optim.registry import OPTIMIZERS

    name = check_name(body.get("name"), "report name")
    folder = resolve_inside(workspace, f"{BENCH_DIR}/{name}", "report folder")
    if (folder / "report.json").exists():
        raise StudioError(f"report {name!r} already exists; pick another name", 409)
    optimizers = body.get("optimizers") or ["velvet", "adamw"]
    if isinstance(optimizers, str):
        optimizers = [o.strip() for o in optimizers.split(",") if o.strip()]
    known = _names(OPTIMIZERS)
    if not isinstance(optimizers, list) or len(optimizers) < 1 or any(o not in known for o in optimizers):
        raise StudioError(f"optimizers must be names among: {', '.join(known)}")
    args = ["benchmark", "--dataset", dataset_arg(workspace, body.get("dataset")),
            "--tokenizer", tokenizer_arg(workspace, body.get("tokenizer")),
            "--model-size", _choice(body, "model_size", "nano", _names(PRESETS)),
            "--optimizers", ",".join(optimizers),
            "--lr", repr(_float(body, "lr", 3e-4, 1e-7, 1.0)),
            "--batch-size", str(_int(body, "batch_size", 4, 1, 4096)),
            "--seq-len", str(_int(body, "seq_len", 128, 2, 131072)),
            "--max-steps", str(_int(body, "max_steps", 50, 1, 10_000_000)),
            "--seeds", str(_int(body, "seeds", 1, 1, 16)),
            "--output", relative_to_workspace(workspace, folder / "report.json")]
    return folder, args


def cache_args(workspace: Path, body: dict) -> tuple[Path, list[str]]:
    folder = resolve_inside(workspace, CACHE_DIR, "cache folder")
    args = ["cache", "build", "--dataset", dataset_arg(workspace, body.get("dataset")),
            "--tokenizer", tokenizer_arg(workspace, body.get("tokenizer") or "byte"),
            "--seq-len", str(_int(body, "seq_len", 512, 2, 131072)),
            "--output-dir", relative_to_workspace(workspace, folder)]
    text_field = body.get("text_field")
    if text_field:
        args += ["--text-field", check_name(text_field, "text field")]
    return folder, args


def download_args(workspace: Path, body: dict) -> tuple[Path, list[str]]:
    import re

    name = body.get("name")
    if not isinstance(name, str) or not re.fullmatch(r"[\w.\-]+(/[\w.\-]+)?", name):
        raise StudioError(f"dataset id {name!r} is not a Hugging Face id (owner/name)")
    folder = resolve_inside(workspace, DOWNLOAD_DIR, "download folder")
    stem = name.replace("/", "_")
    args = ["data", "download", name]
    tokens = body.get("tokens")
    if tokens:
        from vesper_cli.engine.scale import parse_token_count

        args += ["--tokens", str(parse_token_count(str(tokens), "tokens"))]
        output = folder / f"{stem}.txt"
    else:
        args += ["--max-rows", str(_int(body, "max_rows", 1000, 1, 10_000_000))]
        output = folder / f"{stem}.jsonl"
    for key in ("config", "split"):
        if body.get(key):
            args += [f"--{key}", check_name(body[key], key)]
    args += ["--output", relative_to_workspace(workspace, output)]
    return folder, args


def list_files(workspace: Path, suffixes=DATA_SUFFIXES, *, skip=("runs", "benchmarks", "caches"),
               limit: int = 500) -> list[str]:
    """Workspace files with these suffixes (hidden folders and job outputs skipped), relative paths."""
    import os

    root = workspace.resolve()
    out = []
    for folder, dirs, files in os.walk(root):
        rel = Path(folder).relative_to(root)
        dirs[:] = sorted(d for d in dirs if not d.startswith(".") and not (rel == Path(".") and d in skip))
        for f in sorted(files):
            path = Path(folder) / f
            if f.endswith(suffixes) and not f.startswith(".") and path.resolve().is_relative_to(root):
                out.append((rel / f).as_posix())
                if len(out) >= limit:
                    return out
    return out


def list_tokenizers(workspace: Path) -> list[str]:
    root = workspace.resolve()
    return sorted(p.relative_to(root).as_posix() for p in root.glob("**/tokenizer.json")
                  if not any(part.startswith(".") for part in p.relative_to(root).parts))[:200]

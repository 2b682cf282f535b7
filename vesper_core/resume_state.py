"""Full resume state beside a weights file: ``<ckpt>.state.safetensors`` (tensors) + ``<ckpt>.state.json``.

Holds everything a run needs to continue bit-identically: optimizer state (moments, step counts,
Velvet's scales), RNG states (python, numpy, torch CPU and every CUDA device), the data position,
the GradScaler, and loop counters. safetensors + JSON only: no pickle.
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from vesper_core.atomic import write_json_atomic, write_with_atomic
from vesper_core import __version__
from vesper_core.errors import CheckpointError

STATE_FORMAT_VERSION = 1
_TUPLE_KEYS = {"betas", "scale_bounds"}


def state_paths(weights_path: str | Path) -> tuple[Path, Path]:
    weights_path = Path(weights_path)
    stem = weights_path.name.removesuffix(".safetensors")
    return (weights_path.with_name(f"{stem}.state.safetensors"), weights_path.with_name(f"{stem}.state.json"))


@dataclass
class ResumeState:
    step: int
    loader: dict[str, Any]
    counters: dict[str, Any] = field(default_factory=dict)  # best loss, bad steps, tokens seen, ...
    optimizer: dict[str, Any] | None = None
    scaler: dict[str, Any] | None = None
    rng: dict[str, Any] | None = None
    run_config: dict[str, Any] | None = None


# -- RNG -------------------------------------------------------------------------------------
def capture_rng() -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """(JSON part, tensor part) of every random generator the loop may touch."""
    py_version, py_state, py_gauss = random.getstate()
    np_kind, np_keys, np_pos, np_has_gauss, np_gauss = np.random.get_state()
    meta = {"python": [py_version, list(py_state), py_gauss],
            "numpy": {"kind": np_kind, "pos": int(np_pos), "has_gauss": int(np_has_gauss), "gauss": float(np_gauss)},
            "num_cuda": torch.cuda.device_count() if torch.cuda.is_available() else 0}
    tensors = {"rng.torch_cpu": torch.get_rng_state(),
               "rng.numpy_keys": torch.from_numpy(np.asarray(np_keys, dtype=np.uint32).astype(np.int64))}
    for i in range(meta["num_cuda"]):
        tensors[f"rng.cuda.{i}"] = torch.cuda.get_rng_state(i)
    return meta, tensors


def restore_rng(meta: dict[str, Any], tensors: dict[str, torch.Tensor]) -> None:
    version, state, gauss = meta["python"]
    random.setstate((version, tuple(state), gauss))
    np_meta = meta["numpy"]
    keys = tensors["rng.numpy_keys"].numpy().astype(np.uint32)
    np.random.set_state((np_meta["kind"], keys, np_meta["pos"], np_meta["has_gauss"], np_meta["gauss"]))
    torch.set_rng_state(tensors["rng.torch_cpu"])
    if torch.cuda.is_available():
        for i in range(min(meta.get("num_cuda", 0), torch.cuda.device_count())):
            torch.cuda.set_rng_state(tensors[f"rng.cuda.{i}"], i)


# -- optimizer ---------------------------------------------------------------------------------
def _split_optimizer(sd: dict[str, Any]) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    tensors: dict[str, torch.Tensor] = {}
    scalars: dict[str, dict[str, Any]] = {}
    for index, entry in sd["state"].items():
        for key, value in entry.items():
            if isinstance(value, torch.Tensor):
                tensors[f"optim.{index}.{key}"] = value.detach().contiguous().cpu()
            else:
                scalars.setdefault(str(index), {})[key] = value
    groups = [{k: (list(v) if isinstance(v, tuple) else v) for k, v in g.items()} for g in sd["param_groups"]]
    return {"param_groups": groups, "scalars": scalars, "indices": [str(i) for i in sd["state"]]}, tensors


def _join_optimizer(meta: dict[str, Any], tensors: dict[str, torch.Tensor]) -> dict[str, Any]:
    state: dict[int, dict[str, Any]] = {}
    for index in meta["indices"]:
        state[int(index)] = dict(meta["scalars"].get(index, {}))
    for name, tensor in tensors.items():
        if name.startswith("optim."):
            _, index, key = name.split(".", 2)
            state.setdefault(int(index), {})[key] = tensor
    groups = [{k: (tuple(v) if k in _TUPLE_KEYS and isinstance(v, list) else v) for k, v in g.items()}
              for g in meta["param_groups"]]
    return {"state": state, "param_groups": groups}


# -- save / load -------------------------------------------------------------------------------
def save_resume_state(weights_path: str | Path, state: ResumeState, optimizer_state: dict[str, Any],
                      optimizer_class: str, scaler: torch.amp.GradScaler | None) -> tuple[Path, Path]:
    tensor_path, json_path = state_paths(weights_path)
    optim_meta, tensors = _split_optimizer(optimizer_state)
    rng_meta, rng_tensors = capture_rng()
    tensors.update(rng_tensors)
    meta = {
        "vesper_state_format": STATE_FORMAT_VERSION, "vesper_version": __version__,
        "weights_file": Path(weights_path).name, "step": state.step, "loader": state.loader,
        "counters": state.counters, "optimizer": optim_meta, "optimizer_class": optimizer_class,
        "scaler": scaler.state_dict() if scaler is not None and scaler.is_enabled() else None,
        "rng": rng_meta, "run_config": state.run_config,
    }
    # tensors first, then the JSON that points at them: a JSON file is only ever next to complete tensors
    write_with_atomic(tensor_path, lambda tmp: save_file(tensors, str(tmp)))
    write_json_atomic(json_path, meta)
    return tensor_path, json_path


@dataclass
class LoadedResumeState:
    meta: dict[str, Any]
    tensors: dict[str, torch.Tensor]

    @property
    def step(self) -> int:
        return int(self.meta["step"])

    def optimizer_state_dict(self) -> dict[str, Any]:
        return _join_optimizer(self.meta["optimizer"], self.tensors)

    def restore_rng(self) -> None:
        restore_rng(self.meta["rng"], self.tensors)


def load_resume_state(weights_path: str | Path) -> LoadedResumeState | None:
    """The resume state beside ``weights_path``, or None when there is none (a Rust-style weights file)."""
    tensor_path, json_path = state_paths(weights_path)
    if not json_path.is_file():
        return None
    try:
        meta = json.loads(json_path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, OSError) as exc:
        raise CheckpointError(f"resume state {json_path} is unreadable ({exc}); resume from another checkpoint") from exc
    version = meta.get("vesper_state_format")
    if version != STATE_FORMAT_VERSION:
        raise CheckpointError(
            f"resume state {json_path} has format {version!r} (written by Vesper {meta.get('vesper_version', '?')}); "
            f"this Vesper {__version__} reads format {STATE_FORMAT_VERSION}. Resume with that version, or start "
            f"from the weights alone by moving the .state files away"
        )
    if not tensor_path.is_file():
        raise CheckpointError(f"{json_path} exists but {tensor_path.name} is missing; the checkpoint is incomplete")
    try:
        tensors = load_file(str(tensor_path))
    except (SafetensorError, OSError) as exc:
        raise CheckpointError(f"resume state {tensor_path} is not readable safetensors ({exc})") from exc
    return LoadedResumeState(meta=meta, tensors=tensors)

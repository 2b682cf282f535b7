"""Weights checkpoints: safetensors with the model config in the metadata, so a file loads alone.

File names follow the Rust CLI (``checkpoint-{step}``, ``checkpoint-epoch{e}``, ``checkpoint-final``,
``checkpoint-emergency-step{N}`` + ``.safetensors``). Tensors are the f32 master weights; the tied
LM head is stored once (as ``embeddings.weight``). A meta head trained with ``--metacog`` is stored in
the same file under ``metacog.*`` with its MetacogConfig in the metadata (``metacog_config``);
``read_checkpoint`` splits it out into ``LoadedCheckpoint.metacog_state`` (``vesper_metacog.load_head``
builds the head from it).

An adapter checkpoint (``--finetune lora|flylora``) holds only the adapters' tensors, their
AdapterConfig (``adapter_config``), and the base checkpoint it was trained on: its path
(``base_checkpoint``, absolute, plus ``base_checkpoint_relative`` to the adapter file's folder) and the
base file's sha256 (``base_sha256``). ``read_checkpoint`` resolves it transparently: it finds and verifies
the base, and ``LoadedCheckpoint.build_model()`` returns the base with the adapters attached, while
``state_dict`` holds the merged (plain) weights, so every consumer works without knowing.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file

from vesper_core.atomic import write_with_atomic
from vesper_core import __version__
from vesper_core.config import ModelConfig
from vesper_core.errors import CheckpointError, ConfigError
from vesper_core.layers.adapters import (AdapterConfig, adapter_config_of, adapter_state_dict, attach_adapters,
                                         load_adapter_state_dict, merged_state_dict)
from vesper_core.model import METACOG_PREFIX, VesperLM
from vesper_core.vocab import GROWTH_KEY, grow_vocabulary

FORMAT_VERSION = "1"
TOKENIZER_FILE = "tokenizer.json"
ADAPTER_KIND = "adapter"  # metadata "checkpoint_kind" of an adapter-only file


def save_weights(path: str | Path, model: VesperLM, *, state_dict: dict[str, torch.Tensor] | None = None,
                 extra: dict[str, Any] | None = None) -> Path:
    """Write ``model``'s weights (or ``state_dict``, already gathered) + config atomically to ``path``."""
    path = Path(path)
    source = model.export_state_dict() if state_dict is None else state_dict
    state = {k: v.detach().contiguous().cpu() for k, v in source.items()}
    metadata = {
        "format": "vesper",
        "vesper_format_version": FORMAT_VERSION,
        "vesper_version": __version__,
        "model_config": json.dumps(model.config.to_dict()),
    }
    for key, value in (extra or {}).items():
        metadata[key] = value if isinstance(value, str) else json.dumps(value)
    write_with_atomic(path, lambda tmp: save_file(state, str(tmp), metadata=metadata))
    return path


def file_sha256(path: str | Path, chunk: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def save_adapter_weights(path: str | Path, model: VesperLM, *, base_path: str | Path, base_sha256: str,
                         extra: dict[str, Any] | None = None) -> Path:
    """Write only ``model``'s adapter tensors + their config + a pointer to (and hash of) the base, atomically."""
    path = Path(path)
    config = adapter_config_of(model)
    if config is None:
        raise CheckpointError("save_adapter_weights: the model carries no adapters (attach_adapters first)")
    base = Path(base_path).resolve()
    extra = {**(extra or {}), "checkpoint_kind": ADAPTER_KIND, "adapter_config": config.to_dict(),
             "base_checkpoint": str(base), "base_sha256": base_sha256,
             "base_checkpoint_relative": os.path.relpath(base, path.resolve().parent)}
    return save_weights(path, model, state_dict=adapter_state_dict(model), extra=extra)


@dataclass
class AdapterWeights:
    """The adapter part of an adapter checkpoint, and the verified base it applies to."""

    config: AdapterConfig
    state_dict: dict[str, torch.Tensor]
    base_path: Path
    base_sha256: str
    base_state_dict: dict[str, torch.Tensor]


@dataclass
class LoadedCheckpoint:
    path: Path
    config: ModelConfig
    state_dict: dict[str, torch.Tensor]
    metadata: dict[str, str]
    metacog_state: dict[str, torch.Tensor] = field(default_factory=dict)  # meta head, prefix stripped
    adapter: AdapterWeights | None = None  # an adapter checkpoint: state_dict is then the merged weights

    @property
    def has_metacog(self) -> bool:
        return bool(self.metacog_state)

    @property
    def is_adapter(self) -> bool:
        return self.adapter is not None

    def build_model(self, device: torch.device | str = "cpu") -> VesperLM:
        """The model as trained: for an adapter checkpoint, its base with the adapters attached."""
        if self.adapter is not None:
            return build_adapted_model(self.config, self.adapter).to(device)
        model = VesperLM(self.config)
        model.load_exported_state_dict(self.state_dict)
        return model.to(device)

    def meta(self, key: str, default: Any = None) -> Any:
        raw = self.metadata.get(key)
        if raw is None:
            return default
        try:
            return json.loads(raw)
        except json.JSONDecodeError:
            return raw

    def tokenizer_candidates(self) -> list[Path]:
        """Where the tokenizer saved with this checkpoint may be: beside it, then its run folder."""
        return [self.path.parent / TOKENIZER_FILE, self.path.with_suffix(".tokenizer.json")]


def read_checkpoint(path: str | Path, *, config_override: ModelConfig | None = None,
                    verify: bool = True) -> LoadedCheckpoint:
    """Read a weights file; the model config comes from its metadata unless overridden.

    ``verify`` (the default) refuses weights that are not all finite: such a checkpoint can neither
    generate nor continue training.
    """
    path = Path(path)
    if path.is_dir():
        path = newest_checkpoint(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} not found; pass a .safetensors file written by `vesper train`")
    try:
        state = load_file(str(path))
        with safe_open(str(path), framework="pt") as f:
            metadata = dict(f.metadata() or {})
    except (SafetensorError, OSError, ValueError) as exc:
        raise CheckpointError(f"{path} is not a readable safetensors file ({exc}); pass a checkpoint written by `vesper train`") from exc
    config = config_override
    if config is None:
        raw = metadata.get("model_config")
        if raw is None:
            raise CheckpointError(
                f"{path} has no model config in its metadata (a Rust-written checkpoint?); pass --model-size "
                f"(and --tokenizer) so Vesper knows the architecture"
            )
        try:
            config = ModelConfig.from_dict(json.loads(raw))
        except (json.JSONDecodeError, ConfigError) as exc:
            raise CheckpointError(f"{path}: model config in the metadata is invalid: {exc}") from exc
    if verify:
        check_finite(path, state)
    if metadata.get("checkpoint_kind") == ADAPTER_KIND:
        adapter = _read_adapter(path, state, metadata, config, verify)
        merged = merged_state_dict(build_adapted_model(config, adapter))
        return LoadedCheckpoint(path=path, config=config, state_dict=merged, metadata=metadata, adapter=adapter)
    metacog = {k[len(METACOG_PREFIX):]: state.pop(k) for k in [k for k in state if k.startswith(METACOG_PREFIX)]}
    return LoadedCheckpoint(path=path, config=config, state_dict=state, metadata=metadata, metacog_state=metacog)


def build_adapted_model(config: ModelConfig, adapter: AdapterWeights) -> VesperLM:
    """The base model with ``adapter`` attached and loaded (base frozen, adapters trainable)."""
    model = VesperLM(config)
    model.load_exported_state_dict(adapter.base_state_dict)
    attach_adapters(model, adapter.config)
    load_adapter_state_dict(model, adapter.state_dict)
    return model


def _read_adapter(path: Path, state: dict[str, torch.Tensor], metadata: dict[str, str], config: ModelConfig,
                  verify: bool) -> AdapterWeights:
    """Find, verify and read the base checkpoint of the adapter file ``path``."""
    try:
        adapter_config = AdapterConfig.from_dict(json.loads(metadata["adapter_config"]))
        recorded, sha = metadata["base_checkpoint"], metadata["base_sha256"]
    except (KeyError, json.JSONDecodeError, TypeError, ConfigError) as exc:
        raise CheckpointError(f"{path} is an adapter checkpoint with incomplete metadata ({exc}); "
                              f"it cannot be loaded, use another checkpoint of the run") from exc
    candidates = [Path(recorded)]
    if metadata.get("base_checkpoint_relative"):
        candidates.append(path.resolve().parent / metadata["base_checkpoint_relative"])
    existing = list(dict.fromkeys(p.resolve() for p in candidates if p.is_file()))
    if not existing:
        raise CheckpointError(f"adapter checkpoint {path} needs its base model {recorded} (sha256 {sha[:12]}...), "
                              f"which is missing; put that checkpoint back at that path, or merge the adapters "
                              f"where the base exists (vesper merge)")
    hashes = {p: file_sha256(p) for p in existing}
    base = next((p for p in existing if hashes[p] == sha), None)
    if base is None:
        base, actual = existing[0], hashes[existing[0]]
        raise CheckpointError(f"base model {base} has changed since adapter checkpoint {path.name} was trained on it "
                              f"(sha256 {actual[:12]}... vs recorded {sha[:12]}...); restore the original base "
                              f"checkpoint (adapters only fit the exact weights they were trained on)")
    actual = sha
    loaded = read_checkpoint(base, verify=verify)
    if loaded.is_adapter:
        raise CheckpointError(f"{path}: its base {base} is itself an adapter checkpoint; merge that one first "
                              f"(vesper merge) and train on the merged model")
    base_state = loaded.state_dict
    if GROWTH_KEY in metadata and config.vocab_size > loaded.config.vocab_size:
        # the run added tokens (a chat template's): their rows are the base's mean row, frozen like the base
        base_state, _ = grow_vocabulary(base_state, config.vocab_size)
        loaded.config = dataclasses.replace(loaded.config, vocab_size=config.vocab_size)
    if {**loaded.config.to_dict(), "gradient_checkpointing": None} != {**config.to_dict(), "gradient_checkpointing": None}:
        raise CheckpointError(f"adapter checkpoint {path} records a model config different from its base {base}; "
                              f"the files do not belong together")
    return AdapterWeights(config=adapter_config, state_dict=state, base_path=base, base_sha256=actual,
                          base_state_dict=base_state)


def check_finite(path: str | Path, state: dict[str, torch.Tensor]) -> None:
    """CheckpointError when any floating-point tensor of ``state`` holds NaN or infinity."""
    bad = [k for k, v in state.items() if v.is_floating_point() and not bool(torch.isfinite(v).all())]
    if bad:
        raise CheckpointError(
            f"{path} holds non-finite weights (NaN/inf in {len(bad)} of {len(state)} tensors, e.g. {bad[0]}); "
            f"it cannot generate or continue training. Use an earlier checkpoint of the run")


def check_tokenizer(ckpt: LoadedCheckpoint, sha256: str, name: str) -> None:
    """CheckpointError when the checkpoint records a tokenizer hash and ``sha256`` is not it."""
    recorded = ckpt.meta("tokenizer_sha256")
    if recorded and str(recorded) != sha256:
        raise CheckpointError(
            f"tokenizer {name} is not the one {ckpt.path.name} was trained with (sha256 {sha256[:12]}... vs "
            f"{str(recorded)[:12]}...); use the run's own tokenizer.json (drop --tokenizer) or the original one")


_STEP_PATTERNS = (re.compile(r"^checkpoint-(\d+)$"), re.compile(r"^checkpoint-emergency-step(\d+)$"))


def step_from_name(path: str | Path) -> int:
    """The Rust rule: ``checkpoint-<N>`` / ``checkpoint-emergency-step<N>`` -> N, anything else -> 0."""
    stem = Path(path).name.removesuffix(".safetensors")
    for pattern in _STEP_PATTERNS:
        match = pattern.match(stem)
        if match:
            return int(match.group(1))
    return 0


def checkpoint_step(path: str | Path) -> int:
    """The step a checkpoint was written at: its metadata, else the Rust file-name rule."""
    try:
        with safe_open(str(path), framework="pt") as f:
            raw = (f.metadata() or {}).get("step")
        if raw is not None:
            return int(raw)
    except (SafetensorError, OSError, ValueError):
        pass
    return step_from_name(path)


def newest_checkpoint(folder: str | Path) -> Path:
    """The checkpoint of a run folder with the highest step (final last when steps tie)."""
    folder = Path(folder)
    files = [p for p in folder.glob("checkpoint-*.safetensors") if not p.name.endswith(".state.safetensors")]
    if not files:
        raise CheckpointError(f"no checkpoint-*.safetensors in {folder}; pass a checkpoint file")

    def key(p: Path) -> tuple[int, float]:
        return (checkpoint_step(p), p.stat().st_mtime)

    return max(files, key=key)

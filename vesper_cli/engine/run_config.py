"""RunConfig: everything one training run needs, from flags and/or a YAML run file.

Precedence: explicit CLI flag > YAML file > dataclass default. A YAML file uses the flag names
(``lr: 1e-3``, ``model_size: tiny``, ``seq_len: 128`` -- dashes or underscores) and may hold a
``model:`` mapping of ModelConfig fields to override the preset (``model: {era_gamma: 0.2}``).
Unknown keys are an error that lists the valid ones.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from vesper_core.config import ModelConfig
from vesper_core.device import DEVICE_CHOICES, parse_dtype
from vesper_core.errors import ConfigError
from vesper_core.kernels.cross_entropy import LOSS_IMPLS
from vesper_core.presets import model_config
from vesper_data.config import DataConfig
from vesper_optim.config import OptimConfig


@dataclass(kw_only=True)
class ModelSpec:
    """Which model to build: a preset plus overrides (the vocabulary comes from the tokenizer)."""

    model_size: str = "small"
    """Preset: nano, tiny, small, medium, large, xlarge (1b), tiny-moe, medium-moe, large-moe, or a plugin's."""
    moe: bool = False
    """Turn Mixture of Experts on for any preset."""
    num_experts: int = 8
    """Experts with --moe."""
    top_k: int = 2
    """Experts per token with --moe (MoE routing, not sampling: that is generate's --top-k)."""
    gradient_checkpointing: bool = False
    """Recompute each block in backward to save memory."""
    overrides: dict[str, Any] = field(default_factory=dict)
    """ModelConfig fields that override the preset (the YAML ``model:`` mapping)."""
    def __post_init__(self) -> None:
        valid = {f.name for f in dataclasses.fields(ModelConfig)}
        unknown = sorted(set(self.overrides) - valid)
        if unknown:
            raise ConfigError(
                f"unknown model field(s) {', '.join(unknown)} in 'model:'; valid: {', '.join(sorted(valid))}"
            )
        if self.moe and (self.num_experts < 2 or not 1 <= self.top_k <= self.num_experts):
            raise ConfigError(
                f"--moe needs --num-experts >= 2 and 1 <= --top-k <= num-experts, "
                f"got {self.num_experts} experts, top-k {self.top_k}"
            )

    def build(self, vocab_size: int) -> ModelConfig:
        """Resolve the preset into a validated ModelConfig for ``vocab_size`` tokens."""
        extra: dict[str, Any] = {"vocab_size": vocab_size}
        if self.moe:
            extra.update(moe_enabled=True, moe_num_experts=self.num_experts, moe_top_k=self.top_k)
        if self.gradient_checkpointing:
            extra["gradient_checkpointing"] = True
        return model_config(self.model_size, **{**extra, **self.overrides})


@dataclass(kw_only=True)
class TrainConfig:
    """The loop: length, precision, device, outputs."""

    epochs: int | None = None
    """Passes over the data (none given: 3, or unlimited when --max-steps is set)."""
    max_steps: int = 0
    """Stop at this global step, 0 = no limit."""
    save_every: int = 500
    """Checkpoint every N steps, 0 = only epoch/final."""
    log_every: int = 10
    """Plain log line every N steps (non-TTY)."""
    output_dir: str = "checkpoints"
    """Where checkpoints and training_log.json go."""
    seed: int = 0
    """Seed for weights, shuffling and sampling."""
    device: str = "auto"
    """auto | cpu | cuda."""
    dtype: str = "bf16"
    """f32 | bf16 | f16 (autocast over f32 weights)."""
    resume: str | None = None
    """Checkpoint (or run folder) to continue from exactly, with the run's recorded settings."""
    init_from: str | None = None
    """Start a new run from a checkpoint's weights and tokenizer (or a run folder's newest): fresh optimizer, schedule and data order; the model's architecture is the checkpoint's."""
    overwrite: bool = False
    """Replace the run already in --output-dir (its checkpoints, logs and tokenizer are deleted)."""
    loss: str = "auto"
    """LM loss: standard | chunked (fused linear + CE, no full logits) | auto (chunked from a 32k vocabulary)."""
    grad_accum: int = 1
    """Micro-batches per optimizer step."""
    keep_last: int = 0
    """Keep only the newest K periodic checkpoints, 0 = all (the Rust behaviour)."""
    max_bad_steps: int = 10
    """Stop after N consecutive non-finite steps."""
    eval_every: int = 0
    """Evaluate every N steps (needs --val-dataset or --val-fraction), 0 = only at the end."""
    eval_batches: int = 50
    """Batches per evaluation, 0 = the whole validation set."""
    compile: bool = False
    """torch.compile the model (checkpoints stay uncompiled)."""
    fsdp: bool = False
    """Shard the model over torchrun ranks (FSDP2) for models too big for one device."""
    wandb: bool = False
    """Log to Weights & Biases (needs the wandb extra)."""
    wandb_project: str = "vesper-training"
    """W&B project."""
    wandb_run: str | None = None
    """W&B run name (none given: vesper-SIZE-DTYPE)."""
    tensorboard: bool = False
    """Write TensorBoard event files to OUTPUT_DIR/tensorboard (needs the tensorboard package)."""
    metacog: bool = False
    """Also train a meta head (confidence, errors, termination) on the final hidden states."""
    metacog_only: bool = False
    """Train only the meta head on the frozen --resume model."""
    metacog_weight: float = 0.1
    """Weight of the metacog loss with --metacog."""
    def __post_init__(self) -> None:
        for name in ("epochs", "max_steps", "save_every"):
            if (getattr(self, name) or 0) < 0:
                raise ConfigError(f"--{name.replace('_', '-')} must be >= 0, got {getattr(self, name)}")
        if self.grad_accum <= 0:
            raise ConfigError(f"--grad-accum must be a positive number of micro-batches, got {self.grad_accum}")
        if self.max_bad_steps <= 0:
            raise ConfigError(f"--max-bad-steps must be positive, got {self.max_bad_steps}")
        for name in ("keep_last", "eval_every", "eval_batches"):
            if getattr(self, name) < 0:
                raise ConfigError(f"--{name.replace('_', '-')} must be >= 0, got {getattr(self, name)}")
        if self.log_every <= 0:
            raise ConfigError(f"--log-every must be positive, got {self.log_every}")
        if self.epochs == 0 and self.max_steps == 0:
            raise ConfigError("--epochs 0 with --max-steps 0 would train nothing; set one of them")
        if self.device not in DEVICE_CHOICES and not self.device.startswith(("cuda:", "cpu:")):
            raise ConfigError(f"unknown --device {self.device!r}; choices: {', '.join(DEVICE_CHOICES)}")
        parse_dtype(self.dtype)
        if self.loss not in LOSS_IMPLS:
            raise ConfigError(f"--loss must be one of {', '.join(LOSS_IMPLS)}, got {self.loss!r}")
        if not (isinstance(self.metacog_weight, (int, float)) and self.metacog_weight >= 0):
            raise ConfigError(f"--metacog-weight must be a number >= 0, got {self.metacog_weight!r}")
        if self.metacog_only and not self.resume:
            raise ConfigError("--metacog-only trains a meta head on a trained model: pass --resume CKPT (the model)")
        if self.metacog and self.metacog_only:
            raise ConfigError("give one of --metacog (joint training) or --metacog-only (frozen model), not both")


@dataclass(kw_only=True)
class RunConfig:
    model: ModelSpec = field(default_factory=ModelSpec)
    data: DataConfig = field(default_factory=DataConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    notes: list[str] = field(default_factory=list, compare=False)
    """What building the config noticed (a resumed run's changed settings); not serialised."""

    def to_dict(self) -> dict[str, Any]:
        return {
            "model": dataclasses.asdict(self.model),
            "data": self.data.to_dict(),
            "optim": self.optim.to_dict(),
            "train": dataclasses.asdict(self.train),
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "RunConfig":
        train = {k: v for k, v in d.get("train", {}).items() if k in _field_names(TrainConfig)}
        return cls(
            model=ModelSpec(**d.get("model", {})),
            data=DataConfig.from_dict(d.get("data", {})),
            optim=OptimConfig.from_dict(d.get("optim", {})),
            train=TrainConfig(**train),
        )


# flag name (underscored) -> (section, field). Flags whose names differ from fields are mapped here.
_SECTIONS = {"model": ModelSpec, "data": DataConfig, "optim": OptimConfig, "train": TrainConfig}
_RENAMES = {"optimizer": ("optim", "name")}


def _flat_keys() -> dict[str, tuple[str, str]]:
    keys: dict[str, tuple[str, str]] = dict(_RENAMES)
    for section, cls in _SECTIONS.items():
        for f in dataclasses.fields(cls):
            if f.name == "overrides" or (section, f.name) in _RENAMES.values():
                continue
            keys.setdefault(f.name, (section, f.name))
    return keys


FLAT_KEYS = _flat_keys()


def _field_names(cls: type) -> set[str]:
    return {f.name for f in dataclasses.fields(cls)}


# settings of a run that never carry over to its continuation: where to write, what to resume, --overwrite
_NOT_INHERITED = {("train", "resume"), ("train", "output_dir"), ("train", "overwrite")}


def recorded_run_config(resume: str) -> tuple[Path, dict[str, dict[str, Any]]] | None:
    """(checkpoint, the run config recorded in its resume state), or None when it has no state beside it."""
    from vesper_core.checkpoint import newest_checkpoint
    from vesper_core.resume_state import state_paths

    path = Path(resume)
    if path.is_dir():
        path = newest_checkpoint(path)
    json_path = state_paths(path)[1]
    if not json_path.is_file():
        return None
    import json

    try:
        recorded = json.loads(json_path.read_text(encoding="utf-8")).get("run_config") or {}
    except (OSError, ValueError):
        return None  # the trainer reports an unreadable state file when it loads it
    return path, recorded if isinstance(recorded, dict) else {}


def build_run_config(flags: dict[str, Any], config_file: str | Path | None = None) -> RunConfig:
    """Merge YAML values and explicitly given flags (``None`` = not given) into a RunConfig.

    With ``resume`` (a flag or a YAML key) the run's recorded config is the base: ``--resume DIR`` alone
    continues the run as it was set up, in its own folder; any given setting that differs is kept and
    reported in ``RunConfig.notes``.
    """
    values: dict[str, dict[str, Any]] = {s: {} for s in _SECTIONS}
    given: dict[tuple[str, str], tuple[str, Any]] = {}  # (section, field) -> (how the user named it, value)
    if config_file is not None:
        for key, value in load_yaml(config_file).items():
            if key == "model" and isinstance(value, dict):
                values["model"]["overrides"] = dict(value)
                continue
            section, name = _lookup(key, source=str(config_file))
            values[section][name] = _coerce(section, name, value, key)
            given[(section, name)] = (f"{key} in {Path(config_file).name}", values[section][name])
    for key, value in flags.items():
        if value is None:
            continue
        section, name = _lookup(key, source="flags")
        values[section][name] = value
        given[(section, name)] = ("--" + key.replace("_", "-"), value)
    if "name" in values["optim"]:
        values["optim"]["name"] = str(values["optim"]["name"]).lower()
    notes: list[str] = []
    resume = values["train"].get("resume")
    if resume and values["train"].get("init_from") and ("train", "init_from") in given:
        raise ConfigError("give one of --init-from (a new run from a checkpoint's weights) or --resume (continue a run "
                          "exactly), not both")
    if resume:
        values, notes = _inherit_recorded(values, given, str(resume))
    if float(values["optim"].get("lr", 1.0)) <= 0:
        raise ConfigError(f"--lr must be positive, got {values['optim']['lr']}")
    try:
        return RunConfig(
            model=ModelSpec(**values["model"]),
            data=DataConfig(**values["data"]),
            optim=OptimConfig(**values["optim"]),
            train=TrainConfig(**values["train"]),
            notes=notes,
        )
    except TypeError as exc:  # wrong value type in a YAML file
        raise ConfigError(f"invalid run configuration: {exc}") from exc


def _inherit_recorded(values: dict[str, dict[str, Any]], given: dict[tuple[str, str], tuple[str, Any]],
                      resume: str) -> tuple[dict[str, dict[str, Any]], list[str]]:
    found = recorded_run_config(resume)
    if found is None:  # a weights-only (Rust) checkpoint or no checkpoint: the flags alone say what to do
        return values, []
    checkpoint, recorded = found
    if values["train"].get("metacog_only") and not ((recorded.get("train") or {}).get("metacog_only")):
        return values, []  # a new meta-head run on a trained model: its own settings
    merged: dict[str, dict[str, Any]] = {}
    notes = []
    for section, cls in _SECTIONS.items():
        names = _field_names(cls)
        base = {k: v for k, v in (recorded.get(section) or {}).items()
                if k in names and (section, k) not in _NOT_INHERITED}
        merged[section] = {**base, **values[section]}
        for name, value in values[section].items():
            if name in base and (section, name) in given and _differs(base[name], value):
                label = given[(section, name)][0]
                notes.append(f"{label} {_show(value)} changes the run (it was trained with {_show(base[name])})")
    merged["train"].setdefault("output_dir", str(checkpoint.parent))
    if notes:
        notes.insert(0, f"resuming {checkpoint.name} with its recorded settings; changed:")
    return merged, notes


def _differs(a: Any, b: Any) -> bool:
    if isinstance(a, (int, float)) and isinstance(b, (int, float)) and not isinstance(a, bool):
        return float(a) != float(b)
    if isinstance(a, list) and isinstance(b, tuple) or isinstance(a, tuple) and isinstance(b, list):
        return list(a) != list(b)
    return a != b


def _show(value: Any) -> str:
    return "none" if value is None else str(value)


def _coerce(section: str, name: str, value: Any, key: str) -> Any:
    """YAML 1.1 reads ``1e-3`` as a string: numbers written that way become the field's number type;
    a value of the wrong kind for a number or a switch is refused here, naming the key."""
    kind = next(f.type for f in dataclasses.fields(_SECTIONS[section]) if f.name == name)
    kinds = set(str(getattr(kind, "__name__", kind)).replace("|", " ").replace(",", " ").split())
    if value is None or kinds & {"Any", "str"} and not kinds & {"int", "float", "bool"}:
        return value
    if "bool" in kinds:
        if isinstance(value, bool):
            return value
        raise ConfigError(f"{key}: {value!r} in the config file is not true or false")
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        if kinds & {"int", "float"}:
            raise ConfigError(f"{key}: {value!r} in the config file is not a number")
        return value
    if "int" in kinds:
        try:
            number = float(value)
        except ValueError:
            number = None
        if number is not None and number.is_integer():
            return int(number)
        if "float" not in kinds:
            raise ConfigError(f"{key}: {value!r} in the config file is not a whole number") from None
    if "float" in kinds:
        try:
            return float(value)
        except ValueError:
            raise ConfigError(f"{key}: {value!r} in the config file is not a number") from None
    return value


def _lookup(key: str, *, source: str) -> tuple[str, str]:
    name = key.replace("-", "_")
    if name not in FLAT_KEYS:
        raise ConfigError(
            f"unknown key {key!r} in {source}; valid keys: model (mapping), {', '.join(sorted(FLAT_KEYS))}"
        )
    return FLAT_KEYS[name]


def load_yaml(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file {path} not found; pass an existing YAML run file to --config")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        raise ConfigError(f"config file {path} is not valid YAML: {str(exc).splitlines()[0]}") from exc
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"config file {path} must hold a mapping of keys to values, got {type(data).__name__}")
    return data

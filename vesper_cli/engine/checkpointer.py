"""Writing a run's checkpoints (weights + full resume state) and restoring a run from one.

File names follow the Rust CLI (``checkpoint-{step}``, ``checkpoint-epoch{e}``, ``checkpoint-final``,
``checkpoint-emergency-step{N}``, ``checkpoint-best``); the formats are vesper_core's
(``checkpoint.save_weights`` + ``resume_state.save_resume_state``). The benchmark uses
:class:`NullCheckpointer`: its runs write nothing.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from vesper_core.checkpoint import TOKENIZER_FILE, save_weights
from vesper_core.device import dtype_name
from vesper_core.distributed import DistInfo, full_model_state, full_optimizer_state, shard_optimizer_state
from vesper_core.errors import CheckpointError, ConfigError
from vesper_core.resume_state import LoadedResumeState, ResumeState, save_resume_state, state_paths
from vesper_metacog.training import METACOG_CONFIG_KEY, adapt_optimizer_state, head_state

if TYPE_CHECKING:
    from vesper_cli.engine.run_config import RunConfig
    from vesper_cli.engine.trainer import TrainingRun

_PERIODIC = re.compile(r"^checkpoint-(\d+)\.safetensors$")
EVENTS_FILE = "events.jsonl"
RUN_LOG_FILES = ("training_log.json", EVENTS_FILE)


def run_files(folder: Path) -> list[Path]:
    """The files of a Vesper run in ``folder``: checkpoints (with state), logs, the tokenizer."""
    if not folder.is_dir():
        return []
    names = {TOKENIZER_FILE, *RUN_LOG_FILES}
    return sorted(p for p in folder.iterdir()
                  if p.is_file() and (p.name in names or (p.name.startswith("checkpoint-") and ".safetensors" in p.name)
                                      or (p.name.startswith("checkpoint-") and p.name.endswith(".state.json"))))


def check_output_dir(output_dir: Path, *, continuing: bool, overwrite: bool) -> None:
    """Refuse an output folder that cannot be written or that holds another run; writes nothing.

    ``continuing``: this run resumes the run already in ``output_dir`` (its own folder).
    """
    from vesper_cli.engine.paths import check_writable

    check_writable(output_dir, "--output-dir", folder=True)
    if continuing or overwrite:
        return
    found = run_files(output_dir)
    if found:
        weights = [p for p in found if p.name.endswith(".safetensors") and ".state." not in p.name]
        others = [p.name for p in found if not p.name.startswith("checkpoint-")]
        shown = ", ".join(([f"{len(weights)} checkpoint(s)"] if weights else []) + others)
        raise ConfigError(
            f"--output-dir {output_dir} already holds a run ({shown}); continue it with --resume {output_dir}, "
            f"pass --overwrite to replace it, or choose another --output-dir")


class Checkpointer:
    """Checkpoints of one run folder (rank 0 writes; every rank joins the FSDP gathers)."""

    def __init__(self, output_dir: Path, *, cfg: "RunConfig", dist: DistInfo, tokenizer, dtype: torch.dtype):
        self.output_dir = Path(output_dir)
        self.cfg = cfg
        self.dist = dist
        self.tokenizer = tokenizer
        self.dtype = dtype

    def begin(self, run: "TrainingRun", *, overwrite: bool = False) -> None:
        """The first write of a run, once every check passed: the folder, (with --overwrite) the old run's
        files removed, the tokenizer."""
        if not self.dist.is_main:
            return
        self.output_dir.mkdir(parents=True, exist_ok=True)
        if overwrite:
            for path in run_files(self.output_dir):
                path.unlink(missing_ok=True)
        tok_path = self.output_dir / TOKENIZER_FILE
        if not (tok_path.is_file() and _same_tokenizer(tok_path, self.tokenizer)):
            self.tokenizer.save(tok_path)

    def save(self, run: "TrainingRun", name: str, *, full_state: bool = True) -> Path:
        path = self.output_dir / name
        weights = full_model_state(run.model)  # with FSDP every rank takes part in gathering the full tensors
        extra = {}
        if run.head is not None:
            weights.update(head_state(run.head))
            extra[METACOG_CONFIG_KEY] = run.head.config.to_dict()
        optimizer_state = full_optimizer_state(run.optimizer) if full_state else None
        if not self.dist.is_main:
            return path
        if full_state:
            save_resume_state(path, ResumeState(step=run.step, loader=run.loader.state_dict(), counters=run.counters,
                                                run_config=self.cfg.to_dict()), optimizer_state,
                              type(run.optimizer).__name__, run.scaler)
        save_weights(path, run.model, state_dict=weights, extra={
            "step": str(run.step), "model_size": self.cfg.model.model_size, "optimizer": self.cfg.optim.name,
            "tokenizer_sha256": self.tokenizer.sha256(), "dtype": dtype_name(self.dtype),
            **getattr(run, "extra_meta", {}), **extra,
        })
        if run.log is not None:
            run.log.write()
        return path

    def rotate(self, keep_last: int) -> None:
        """Keep only the newest ``keep_last`` periodic checkpoint-{N} files (with their state)."""
        if keep_last <= 0 or not self.dist.is_main:
            return
        periodic = sorted((int(m.group(1)), p) for p in self.output_dir.iterdir() if (m := _PERIODIC.match(p.name)))
        for _, path in periodic[:-keep_last]:
            for file in (path, *state_paths(path)):
                file.unlink(missing_ok=True)

    def restore(self, run: "TrainingRun", state: LoadedResumeState) -> None:
        """Optimizer, scaler, data position, counters and RNG: the run continues as if never stopped."""
        meta = state.meta
        if meta.get("optimizer_class") != type(run.optimizer).__name__:
            recorded = ((meta.get("run_config") or {}).get("optim") or {}).get("name") or meta.get("optimizer_class")
            raise CheckpointError(
                f"the checkpoint was trained with --optimizer {recorded}, this run asks for --optimizer "
                f"{self.cfg.optim.name}; its optimizer state fits only the same optimizer: pass --optimizer "
                f"{recorded} (or drop --optimizer to continue as recorded)")
        try:
            saved, note = adapt_optimizer_state(state.optimizer_state_dict(), run.optimizer)
            if note:
                run.notes.append(note)
            run.optimizer.load_state_dict(saved)
        except (ValueError, KeyError, RuntimeError) as exc:
            raise CheckpointError(f"optimizer state in the checkpoint does not fit this model: {exc}") from exc
        if self.cfg.train.fsdp:
            shard_optimizer_state(run.optimizer)
        if meta.get("scaler") and run.scaler.is_enabled():
            run.scaler.load_state_dict(meta["scaler"])
        run.loader.load_state_dict(meta["loader"])
        run.counters.update(meta.get("counters", {}))
        run.step = state.step
        state.restore_rng()


def _same_tokenizer(path: Path, tokenizer) -> bool:
    from vesper_data.tokenizers import VesperTokenizer

    try:
        return VesperTokenizer.from_file(path).sha256() == tokenizer.sha256()
    except Exception:  # an unreadable file is replaced
        return False


class NullCheckpointer:
    """Writes nothing (benchmark arms); restoring is not possible."""

    output_dir = None

    def begin(self, run, *, overwrite: bool = False) -> None:
        return None

    def save(self, run, name: str, *, full_state: bool = True) -> None:
        return None

    def rotate(self, keep_last: int) -> None:
        return None

    def restore(self, run, state) -> None:
        raise CheckpointError("this run keeps no checkpoints, so it cannot resume")

"""``vesper eval``: a checkpoint's perplexity on files, its scores on local task files and on lm-eval tasks.

``evaluate_checkpoint(EvalConfig(...))`` checks every input first (files exist, task files parse,
lm-eval importable), then loads the checkpoint once and runs each part. Nothing is written.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from vesper_core.device import parse_dtype, resolve_device
from vesper_core.errors import ConfigError
from vesper_data.sources import check_source, detect_format
from vesper_cli.engine.eval_tasks import SkippedRecord, TaskResult, read_task_file, run_tasks
from vesper_cli.engine.generation import load_generator
from vesper_cli.engine.loglikelihood import LikelihoodScorer
from vesper_cli.engine.perplexity import PerplexityResult, WindowSettings, file_perplexity
from vesper_cli.engine.step import autocast_factory


@dataclass(kw_only=True)
class EvalConfig:
    """What ``vesper eval`` measures (the docstrings are the command's help)."""

    model: str
    """Checkpoint (.safetensors) or a run folder (its newest checkpoint)."""
    data: tuple[str, ...] = ()
    """Text / JSONL file to measure perplexity on (repeatable)."""
    tasks: tuple[str, ...] = ()
    """Task file in Vesper's JSONL task format (repeatable; see the README)."""
    lm_eval_tasks: tuple[str, ...] = ()
    """lm-evaluation-harness task names (repeatable or comma-separated; needs the lm-eval extra)."""
    include_path: str | None = None
    """Folder of extra lm-eval task YAMLs (local tasks)."""
    format: str = "auto"
    """Format of --data: auto (by extension and first record) | text | jsonl | squad | chat."""
    text_field: str = "text"
    """JSONL field holding the document in --data."""
    chat_template: str | None = None
    """Conversations in --data: the chat template (default: the one the checkpoint was fine-tuned with, else ChatML)."""
    seq_len: int | None = None
    """Tokens per perplexity window (default: the run's --seq-len, else the model's context)."""
    batch_size: int | None = None
    """Sequences per forward pass (default: the run's --batch-size, else 8)."""
    max_batches: int = 0
    """Perplexity over the first N batches of each file only (as train's eval_batches setting), 0 = the whole file."""
    val_fraction: float = 0.0
    """Score only the last fraction of each --data file: the tail that train's val_fraction setting held out."""
    dtype: str | None = None
    """f32 | bf16 | f16 autocast (default: the dtype the checkpoint was trained with), or int8 (weight-only, torchao)."""
    max_tokens: int = 32
    """New tokens at most for a generation task record without its own max_tokens."""
    limit: int = 0
    """Records per task file (examples per lm-eval task), 0 = all."""
    num_fewshot: int | None = None
    """Few-shot examples for lm-eval tasks (default: the task's own)."""
    tokenizer: str | None = None
    """Override the tokenizer saved with the checkpoint."""
    device: str = "auto"
    """auto | cpu | cuda."""

    def __post_init__(self) -> None:
        self.data, self.tasks = tuple(self.data), tuple(self.tasks)
        self.lm_eval_tasks = tuple(n.strip() for item in self.lm_eval_tasks for n in item.split(",") if n.strip())
        if not (self.data or self.tasks or self.lm_eval_tasks):
            raise ConfigError("nothing to evaluate: pass --data FILE (perplexity), --tasks FILE.jsonl (local tasks) "
                              "and/or --lm-eval-tasks NAMES")
        if self.include_path and not self.lm_eval_tasks:
            raise ConfigError("--include-path adds lm-eval task definitions: pass --lm-eval-tasks NAMES with it")
        for name in ("max_batches", "limit"):
            if getattr(self, name) < 0:
                raise ConfigError(f"--{name.replace('_', '-')} must be >= 0, got {getattr(self, name)}")
        if self.max_tokens <= 0:
            raise ConfigError(f"--max-tokens must be positive, got {self.max_tokens}")
        if self.batch_size is not None and self.batch_size <= 0:
            raise ConfigError(f"--batch-size must be positive, got {self.batch_size}")
        if self.seq_len is not None and self.seq_len <= 0:
            raise ConfigError(f"--seq-len must be positive, got {self.seq_len}")
        if self.num_fewshot is not None and self.num_fewshot < 0:
            raise ConfigError(f"--num-fewshot must be >= 0, got {self.num_fewshot}")
        if self.dtype is not None and self.dtype != "int8":
            parse_dtype(self.dtype)


@dataclass
class EvalReport:
    model: str
    tokenizer: str
    device: str
    perplexity: list[PerplexityResult] = field(default_factory=list)
    tasks: list[TaskResult] = field(default_factory=list)
    skipped: list[SkippedRecord] = field(default_factory=list)
    lm_eval: dict[str, dict[str, Any]] = field(default_factory=dict)  # task -> {metric: value}

    def to_dict(self) -> dict[str, Any]:
        return {"model": self.model, "tokenizer": self.tokenizer, "device": self.device,
                "perplexity": [p.to_dict() for p in self.perplexity],
                "tasks": [t.to_dict() for t in self.tasks],
                "skipped": [{"file": s.file, "line": s.line, "reason": s.reason} for s in self.skipped],
                "lm_eval": self.lm_eval}


def evaluate_checkpoint(cfg: EvalConfig, on_message: Callable[[str], None] | None = None) -> EvalReport:
    """Run every part of ``cfg``; ``on_message`` gets progress lines (nothing is printed here)."""
    say = on_message or (lambda _m: None)
    for path in cfg.data:  # fail on a bad input before the checkpoint is loaded
        check_source(path, detect_format(path, cfg.format))
    if cfg.chat_template:
        from vesper_data.chat import load_chat_template

        load_chat_template(cfg.chat_template)
    task_files = [read_task_file(path, limit=cfg.limit) for path in cfg.tasks]
    if cfg.lm_eval_tasks:
        from vesper_cli.engine.lm_eval_adapter import require_lm_eval

        require_lm_eval()
        if cfg.include_path and not Path(cfg.include_path).is_dir():
            raise ConfigError(f"--include-path {cfg.include_path} is not a folder; pass the folder of task YAMLs")
    device = resolve_device(cfg.device)
    int8 = cfg.dtype == "int8"  # int8 changes the weights; the others are the autocast that train evaluates with
    gen = load_generator(cfg.model, tokenizer=cfg.tokenizer, device=device, dtype="int8" if int8 else "f32")
    report = EvalReport(model=str(gen.checkpoint.path), tokenizer=gen.tokenizer.name, device=str(device))

    settings = WindowSettings(seq_len=cfg.seq_len, batch_size=cfg.batch_size, dtype="f32" if int8 else cfg.dtype,
                              max_batches=cfg.max_batches, val_fraction=cfg.val_fraction, format=cfg.format,
                              text_field=cfg.text_field, chat_template=cfg.chat_template).resolve(gen.checkpoint)
    for path in cfg.data:
        say(f"perplexity of {path} (seq_len {settings.seq_len}, batch {settings.batch_size}, {settings.dtype})")
        result = file_perplexity(path, gen, settings, on_warning=say)
        if int8:
            result.dtype = "int8"
        report.perplexity.append(result)

    autocast = autocast_factory(device, parse_dtype(settings.dtype))
    if task_files:
        scorer = LikelihoodScorer(gen.model, gen.tokenizer, device, batch_size=settings.batch_size, autocast=autocast)
        for task_file in task_files:
            say(f"tasks of {task_file.path} ({len(task_file.records)} records)")
            task_report = run_tasks(task_file, gen, scorer, default_max_tokens=cfg.max_tokens)
            report.tasks.extend(task_report.results)
            report.skipped.extend(task_report.skipped)
    if cfg.lm_eval_tasks:
        from vesper_cli.engine.lm_eval_adapter import VesperEvalLM, run_lm_eval

        say(f"lm-eval tasks {', '.join(cfg.lm_eval_tasks)}")
        lm = VesperEvalLM.from_generator(gen, batch_size=settings.batch_size, autocast=autocast,
                                     max_gen_toks=cfg.max_tokens)
        report.lm_eval = run_lm_eval(lm, list(cfg.lm_eval_tasks), include_path=cfg.include_path,
                                     limit=cfg.limit or None, num_fewshot=cfg.num_fewshot)
    return report

"""Evaluate a checkpoint: perplexity on files (--data), local JSONL tasks (--tasks), lm-eval tasks (--lm-eval-tasks).

Perplexity uses train's windows, batches and loss, with the run's recorded --seq-len, --batch-size and
--dtype unless given, so the run's held-out file gives the validation loss of its training log.
Task file records (JSONL, one per line):
{"type": "multiple_choice", "context": "...", "choices": [" a", " b"], "answer": 0} scores each choice by
log-likelihood (acc, and acc_norm per character); {"type": "generate", "prompt": "...", "answer": "...",
"stop": ["\\n"], "max_tokens": 16} decodes greedily (exact_match after stripping whitespace). Optional
"task" groups records. Bad records are skipped and reported. Results on stdout (a table, or --json).
"""

from __future__ import annotations

import json
import sys
from typing import List, Optional

import typer

from vesper_cli.commands.options import config_option, given, help_for
from vesper_cli.engine.checkpoint_eval import EvalConfig
from vesper_cli.output import console, info, warn

E = EvalConfig

MAX_SKIPS_SHOWN = 5


def _list_option(name: str, *decls: str):
    return typer.Option(None, *decls, help=help_for(E, name, default=None), show_default=False)


def _print_table(table) -> None:
    if console.is_terminal:
        console.print(table)
    else:  # a pipe or a file has no width: never cut the table to rich's default 80 columns
        from rich.console import Console

        Console(file=sys.stdout, width=1000, highlight=False).print(table)


def render_report(report) -> None:
    from rich import box
    from rich.table import Table

    if report.perplexity:
        table = Table(title="perplexity", box=box.SIMPLE_HEAD)
        for column in ("file", "loss", "ppl", "tokens", "windows", "seq_len", "dtype"):
            table.add_column(column, justify="left" if column == "file" else "right", no_wrap=True)
        for p in report.perplexity:
            table.add_row(p.file, f"{p.loss:.4f}", f"{p.perplexity:.2f}", str(p.num_tokens), str(p.num_windows),
                          str(p.seq_len), p.dtype)
        _print_table(table)
    if report.tasks:
        table = Table(title="tasks", box=box.SIMPLE_HEAD)
        for column in ("task", "type", "n", "metric", "value"):
            table.add_column(column, justify="left" if column in ("task", "type", "metric") else "right",
                             no_wrap=True)
        for t in report.tasks:
            for i, (metric, value) in enumerate(t.metrics.items()):
                table.add_row(t.task if i == 0 else "", t.type if i == 0 else "", str(t.count) if i == 0 else "",
                              metric, f"{value:.4f}")
        _print_table(table)
    if report.lm_eval:
        table = Table(title="lm-eval", box=box.SIMPLE_HEAD)
        for column in ("task", "metric", "value"):
            table.add_column(column, justify="right" if column == "value" else "left", no_wrap=True)
        for task, metrics in report.lm_eval.items():
            for i, (metric, value) in enumerate(metrics.items()):
                shown = f"{value:.4f}" if isinstance(value, float) else str(value)
                table.add_row(task if i == 0 else "", metric, shown)
        _print_table(table)


def eval_command(
    model: str = typer.Option(..., help=help_for(E, "model")),
    data: Optional[List[str]] = _list_option("data", "--data"),
    tasks: Optional[List[str]] = _list_option("tasks", "--tasks"),
    lm_eval_tasks: Optional[List[str]] = _list_option("lm_eval_tasks", "--lm-eval-tasks"),
    include_path: Optional[str] = config_option(E, "include_path"),
    format: Optional[str] = config_option(E, "format", "--format"),
    text_field: Optional[str] = config_option(E, "text_field"),
    chat_template: Optional[str] = config_option(E, "chat_template"),
    seq_len: Optional[int] = config_option(E, "seq_len"),
    batch_size: Optional[int] = config_option(E, "batch_size"),
    max_batches: Optional[int] = config_option(E, "max_batches"),
    val_fraction: Optional[float] = config_option(E, "val_fraction"),
    dtype: Optional[str] = config_option(E, "dtype"),
    max_tokens: Optional[int] = config_option(E, "max_tokens"),
    limit: Optional[int] = config_option(E, "limit"),
    num_fewshot: Optional[int] = config_option(E, "num_fewshot"),
    tokenizer: Optional[str] = config_option(E, "tokenizer"),
    device: Optional[str] = config_option(E, "device"),
    json_out: bool = typer.Option(False, "--json", help="Print the report as JSON on stdout instead of tables."),
) -> None:
    from vesper_cli.engine.checkpoint_eval import evaluate_checkpoint

    cfg = EvalConfig(model=model, data=tuple(data or ()), tasks=tuple(tasks or ()),
                     lm_eval_tasks=tuple(lm_eval_tasks or ()),
                     **given(include_path=include_path, format=format, text_field=text_field, chat_template=chat_template,
                             seq_len=seq_len,
                             batch_size=batch_size, max_batches=max_batches, val_fraction=val_fraction, dtype=dtype,
                             max_tokens=max_tokens, limit=limit, num_fewshot=num_fewshot, tokenizer=tokenizer,
                             device=device))
    report = evaluate_checkpoint(cfg, on_message=info)
    if report.skipped:
        shown = "; ".join(f"{s.file}:{s.line}: {s.reason}" for s in report.skipped[:MAX_SKIPS_SHOWN])
        more = f" (+{len(report.skipped) - MAX_SKIPS_SHOWN} more)" if len(report.skipped) > MAX_SKIPS_SHOWN else ""
        warn(f"{len(report.skipped)} task record(s) skipped: {shown}{more}")
    if json_out:
        typer.echo(json.dumps(report.to_dict(), indent=2))
    else:
        render_report(report)

"""Look at and fetch datasets (`vesper data inspect`, `vesper data download`, `vesper data search`)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import typer

from vesper_cli.output import console, human_count, info

data_app = typer.Typer(help=__doc__, no_args_is_help=True, add_completion=False, rich_markup_mode=None)
Opt = typer.Option


@data_app.command("inspect")
def inspect_command(
    file: Path = typer.Argument(..., help="A local .txt, .jsonl, SQuAD .json, .parquet or .arrow file."),
    tokenizer: str = Opt("byte", help="Tokenizer for the token count: byte | PATH/tokenizer.json | folder | "
                                      "HF hub id | none."),
    format: str = Opt("auto", "--format", help="auto (by extension) | text | jsonl | squad | hf."),
    text_field: Optional[str] = Opt(None, help="Column holding the text  [default: the suggested one]"),
    samples: int = Opt(3, help="Sample records to show."),
    as_json: bool = Opt(False, "--json", help="Print the report as JSON."),
) -> None:
    """Detected format, sample records, the suggested text column, characters and tokens of a local file."""
    from vesper_core.errors import ConfigError
    from vesper_data.inspect import inspect_dataset
    from vesper_data.tokenizers.resolve import load_tokenizer

    if samples < 0:
        raise ConfigError(f"--samples must be >= 0, got {samples}")
    if tokenizer == "auto":
        raise ConfigError("--tokenizer auto trains a BPE on the data at train time, so it has no count yet; "
                          "pass byte, a tokenizer.json, or none")
    tok = None if tokenizer == "none" else load_tokenizer(tokenizer)
    report = inspect_dataset(file, fmt=format, text_field=text_field, tokenizer=tok, num_samples=samples)
    if as_json:
        console.print_json(json.dumps(report.to_dict()))
        return
    about = "≈" if report.estimated else ""
    column = (f"conversation ({report.conversation[0]} / {report.conversation[1]})" if report.conversation
              else report.text_column or "- (plain text)")
    rows = [("file", report.path), ("format", report.format), ("size", f"{report.size_bytes:,} bytes"),
            ("records", "?" if report.num_records is None else f"{report.num_records:,}"),
            ("columns", ", ".join(report.columns) or "-"), ("text column", column),
            ("characters", f"{about}{report.num_chars:,}")]
    if report.num_tokens is not None:
        ratio = report.num_chars / max(1, report.num_tokens)
        rows.append(("tokens", f"{about}{report.num_tokens:,} with {report.tokenizer} ({ratio:.2f} chars/token)"))
    for key, value in rows:
        console.print(f"{key + ':':<13}{value}", markup=False)
    for i, sample in enumerate(report.samples, start=1):
        text = sample if isinstance(sample, str) else json.dumps(sample, ensure_ascii=False)
        console.print(f"sample {i}:   {text}", markup=False)


@data_app.command("download")
def download_command(
    name: str = typer.Argument(..., help="Hugging Face dataset id, or fineweb-edu (HuggingFaceFW/fineweb-edu)."),
    config: Optional[str] = Opt(None, help="Dataset config (fineweb-edu: sample-10BT)."),
    split: str = Opt("train", help="Split to stream."),
    max_rows: int = Opt(10_000, help="Rows to write as JSONL (ignored with --tokens)."),
    tokens: Optional[str] = Opt(None, help="Token budget for a plain-text download (100M, 2.5B, 50K; 4 chars a "
                                          "token); fineweb-edu defaults to 100M."),
    text_field: Optional[str] = Opt(None, help="Column holding the text  [default: detected]"),
    output: Optional[Path] = Opt(None, help="Output file  [default: <name>.jsonl, fineweb-edu.txt with --tokens]"),
) -> None:
    """Stream a Hugging Face dataset into a local JSONL (N rows) or text file (a token budget)."""
    from vesper_cli.engine.paths import check_writable
    from vesper_cli.engine.scale import parse_token_count
    from vesper_data.download import FINEWEB_ALIASES, download_dataset

    budget = parse_token_count(tokens) if tokens is not None else None
    text_output = budget is not None or name in FINEWEB_ALIASES
    if output is None:
        stem = "fineweb-edu" if name in FINEWEB_ALIASES else name.replace("/", "_")
        output = Path(f"{stem}.txt" if text_output else f"{stem}.jsonl")
    check_writable(output, "--output")

    def progress(rows: int, chars: int) -> None:
        info(f"{rows:,} rows, ~{human_count(chars // 4)} tokens")

    result = download_dataset(name, output, config=config, split=split, max_rows=max_rows, tokens=budget,
                              text_field=text_field, on_progress=progress)
    console.print(f"wrote {result.output}: {result.num_rows:,} {'documents' if result.kind == 'text' else 'rows'}, "
                  f"{result.num_chars:,} characters (~{human_count(result.approx_tokens)} tokens)", markup=False)


@data_app.command("search")
def search_command(
    query: str = typer.Argument(..., help="Words to look for in dataset names."),
    limit: int = Opt(20, help="How many results."),
) -> None:
    """Hugging Face datasets matching a query, most downloaded first."""
    from vesper_data.download import search_datasets

    for hit in search_datasets(query, limit):
        console.print(f"{hit.id}  ({hit.downloads or 0:,} downloads)", markup=False)

"""Build and inspect VSPR binary token caches (`vesper cache build`, `vesper cache info`)."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Optional

import typer

from vesper_cli.output import console, human_count, info, stderr_is_tty, warn

cache_app = typer.Typer(help=__doc__, no_args_is_help=True, add_completion=False, rich_markup_mode=None)
Opt = typer.Option


def _source_bytes(dataset: str) -> int | None:
    path = Path(dataset)
    return path.stat().st_size if path.is_file() else None


class _BuildProgress:
    """A rich bar (bytes and tokens) on a TTY; otherwise a plain line every ``every_s`` seconds."""

    def __init__(self, total_bytes: int | None, every_s: float = 10.0):
        self.total, self.every_s = total_bytes, every_s
        self._last = time.perf_counter()
        self._bar = None
        if stderr_is_tty():
            from rich.progress import (BarColumn, DownloadColumn, Progress, TextColumn, TimeElapsedColumn,
                                       TransferSpeedColumn)

            from vesper_cli.output import err_console

            self._bar = Progress(TextColumn("[bold]cache"), BarColumn(bar_width=30), DownloadColumn(),
                                 TransferSpeedColumn(), TextColumn("{task.fields[tokens]} tokens"),
                                 TimeElapsedColumn(), console=err_console)
            self._task = self._bar.add_task("cache", total=total_bytes, tokens="0")

    def __enter__(self) -> "_BuildProgress":
        if self._bar is not None:
            self._bar.start()
        return self

    def __call__(self, done_bytes: int, tokens: int) -> None:
        if self._bar is not None:
            self._bar.update(self._task, completed=done_bytes, tokens=human_count(tokens))
        elif time.perf_counter() - self._last >= self.every_s:
            self._last = time.perf_counter()
            share = f" ({100 * done_bytes / self.total:.0f}%)" if self.total else ""
            info(f"cache: {done_bytes / 2**20:,.0f} MiB{share}, {human_count(tokens)} tokens")

    def __exit__(self, *exc) -> None:
        if self._bar is not None:
            self._bar.stop()


@cache_app.command("build")
def build_command(
    dataset: str = Opt(..., help="Input: .txt, .jsonl, SQuAD .json, .parquet/.arrow, or hf:NAME[:CONFIG][@SPLIT]."),
    tokenizer: str = Opt("auto", help="auto | byte | PATH/tokenizer.json | HF hub id (auto: a BPE trained on the "
                                      "data, the same offline and online)."),
    seq_len: int = Opt(512, help="Training window length recorded in the header (any --seq-len can train)."),
    output_dir: Path = Opt(Path(".vesper_cache"), help="Where <name>.bin/.idx/.meta.json are written."),
    layout: str = Opt("auto", "--layout", help="Cache layout: auto | compact (uint16 tokens when the vocabulary "
                                                 "fits, VSPR v2) | v1 (Rust-compatible u32)."),
    format: str = Opt("auto", "--format", "--input-format",
                      help="Dataset format, as in `vesper train`: auto (by extension and first record) | text | "
                           "jsonl | squad | hf | chat."),
    text_field: str = Opt("text", help="JSONL / HF column holding the text."),
    chat_template: str = Opt("default", help="Chat data (--format chat, or autodetected): default (ChatML) | a "
                                             "tokenizer folder, tokenizer_config.json or .jinja file."),
    name: Optional[str] = Opt(None, help="Cache file name without extension  [default: <stem>_<16 hex>]"),
    as_json: bool = Opt(False, "--json", help="Print the result as JSON."),
) -> None:
    """Tokenize a dataset into <output-dir>/<name>.bin + .idx (VSPR), streaming, with bounded memory."""
    from vesper_data.pipeline import prepare_tokenizer
    from vesper_data.cache import build_cache
    from vesper_data.cache.format import choose_token_bytes
    from vesper_data.config import DataConfig

    from vesper_core.errors import ConfigError
    from vesper_cli.engine.paths import check_writable

    if format in ("compact", "v1", "v2"):
        raise ConfigError(f"--format {format} is a cache layout: use --layout {format} (--format is the dataset's "
                          f"format, as in `vesper train`)")
    input_format = format
    format = layout
    choose_token_bytes(0, format)  # reject an unknown --layout before loading anything
    cfg = DataConfig(dataset=dataset, format=input_format, text_field=text_field, tokenizer=tokenizer, seq_len=seq_len)
    check_writable(output_dir, "--output-dir", folder=True)
    from vesper_data.chat.data import is_chat_data

    chat = is_chat_data(cfg)
    template = None
    if chat:
        from vesper_data.chat import add_chat_tokens, load_chat_template

        template = load_chat_template(chat_template)  # a bad template fails before any tokenizer training
    tok, notice = prepare_tokenizer(cfg, saved_candidates=[])
    if notice:
        info(notice)
    with _BuildProgress(_source_bytes(dataset)) as progress:
        if template is not None:
            from vesper_data.chat.cache import build_chat_cache

            added = add_chat_tokens(tok, template)
            if added:
                info(f"added the chat template's special token(s) {', '.join(added)} (vocab {tok.vocab_size})")
            built = build_chat_cache([dataset], tok, template, output_dir, seq_len=seq_len, layout=format, name=name,
                                     on_warning=warn)
        else:
            built = build_cache([dataset], tok, output_dir, fmt=input_format, text_field=text_field, seq_len=seq_len,
                                layout=format, name=name, progress=progress, on_warning=warn)
    h = built.header
    result = {"bin": str(built.bin_path), "idx": str(built.idx_path),
              "sidecar": None if built.sidecar_path is None else str(built.sidecar_path),
              "version": h.version, "token_dtype": h.dtype.name, "num_sequences": h.num_sequences,
              "total_tokens": h.total_tokens, "vocab_size": h.vocab_size, "max_seq_len": h.max_seq_len,
              "tokenizer": tok.name, "source_bytes": built.source_bytes, "seconds": round(built.elapsed_s, 3),
              "tokens_per_sec": round(built.tokens_per_sec, 1)}
    if as_json:
        console.print_json(json.dumps(result))
        return
    console.print(f"cache: {built.bin_path}", markup=False)
    console.print(f"index: {built.idx_path}", markup=False)
    console.print(f"{h.num_sequences:,} sequences, {h.total_tokens:,} tokens, vocab {h.vocab_size}, "
                  f"VSPR v{h.version} ({h.dtype.name}), tokenizer {tok.name}", markup=False)
    console.print(f"built in {built.elapsed_s:.1f} s ({human_count(built.tokens_per_sec)} tokens/s)", markup=False)


@cache_app.command("info")
def info_command(
    cache: Path = Opt(..., "--cache", help="The cache's .bin file."),
    as_json: bool = Opt(False, "--json", help="Print the result as JSON."),
) -> None:
    """Describe a cache from its header, index and sidecar (the tokens are not read)."""
    from vesper_data.cache import cache_info

    result = cache_info(cache, on_warning=warn)
    if as_json:
        console.print_json(json.dumps(result))
        return
    rows = [("path", result["path"]), ("format", f"VSPR v{result['version']} ({result['token_dtype']} tokens)"),
            ("sequences", f"{result['num_sequences']:,}"), ("total tokens", f"{result['total_tokens']:,}"),
            ("vocab size", result["vocab_size"]), ("max_seq_len", result["max_seq_len"]),
            ("file size", f"{result['file_size_mib']:.1f} MiB")]
    if "tokenizer" in result:
        rows += [("tokenizer", f"{result['tokenizer']} (sha256 {str(result['tokenizer_sha256'])[:16]}...)"),
                 ("source", ", ".join(result["source"] or [])), ("created", result["created_at"])]
    for key, value in rows:
        console.print(f"{key + ':':<14}{value}", markup=False)

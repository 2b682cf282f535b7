"""Train a byte-level BPE tokenizer on a dataset (`vesper tokenizer train`)."""

from __future__ import annotations

import json
import time
from pathlib import Path

import typer

from vesper_cli.output import console, info, warn

tokenizer_app = typer.Typer(help=__doc__, no_args_is_help=True, add_completion=False, rich_markup_mode=None)
Opt = typer.Option


@tokenizer_app.command("train")
def train_command(
    dataset: str = Opt(..., help="Training text: .txt, .jsonl, SQuAD .json, .parquet/.arrow, or hf:NAME."),
    vocab_size: int = Opt(..., help="Vocabulary size (at least 257: 256 bytes + <|endoftext|>)."),
    output: Path = Opt(Path("tokenizer.json"), help="Where to write tokenizer.json (atomically)."),
    format: str = Opt("auto", "--format", help="auto | text | jsonl | squad | hf"),
    text_field: str = Opt("text", help="JSONL / HF column holding the text."),
    min_frequency: int = Opt(2, help="Merges seen fewer times than this are not learned."),
    max_mb: int = Opt(0, help="Train on at most this many MiB of text, 0 = all."),
    as_json: bool = Opt(False, "--json", help="Print the result as JSON."),
) -> None:
    """Byte-level BPE with Hugging Face tokenizers (all cores); <|endoftext|> is the EOS token."""
    from vesper_data.sources import read_documents, split_text
    from vesper_data.tokenizers import train_bpe

    from vesper_cli.engine.paths import check_writable

    check_writable(output, "--output")  # before the training, not after it
    budget = max_mb << 20 if max_mb > 0 else None
    seen = {"chars": 0}

    def texts():
        for doc in read_documents(dataset, format, text_field=text_field, on_warning=warn):
            for piece in split_text(doc):
                if budget is not None and seen["chars"] >= budget:
                    return
                seen["chars"] += len(piece)
                yield piece

    start = time.perf_counter()
    tok = train_bpe(texts(), vocab_size, min_frequency=min_frequency)
    tok.save(output)
    seconds = time.perf_counter() - start
    result = {"output": str(output), "vocab_size": tok.vocab_size, "eos_id": tok.eos_id, "sha256": tok.sha256(),
              "characters": seen["chars"], "seconds": round(seconds, 3)}
    if tok.vocab_size < vocab_size:
        info(f"the data has fewer merges than asked: vocabulary {tok.vocab_size} < {vocab_size}")
    if as_json:
        console.print_json(json.dumps(result))
        return
    console.print(f"tokenizer: {output} (vocab {tok.vocab_size}, trained on {seen['chars'] / 1e6:.1f} M characters "
                  f"in {seconds:.1f} s)", markup=False)

"""Hugging Face datasets to local files, streamed: N rows to JSONL, or a FineWeb-Edu text with a token budget.

Nothing downloads a whole split: rows come from ``datasets.load_dataset(..., streaming=True)`` and the
loop stops at the row or character budget. Exchange rows (instruction/response and the like) become
``{"messages": [{"role": "user", ...}, {"role": "assistant", ...}]}`` conversations; other rows keep
their text column as ``{"text": ...}``. The output appears only when the download finished (atomic rename).
Offline (``HF_HUB_OFFLINE=1`` or no route to the hub) every entry point raises one clear DataError.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable, Iterable

from vesper_core.atomic import atomic_path
from vesper_core.errors import ConfigError, DataError
from vesper_data.inspect import CONVERSATION_PAIRS, suggest_text_column
from vesper_data.tokenizers.hub import hub_offline, hub_reachable

FINEWEB_EDU = "HuggingFaceFW/fineweb-edu"
FINEWEB_ALIASES = ("fineweb-edu", FINEWEB_EDU)
FINEWEB_DEFAULT_CONFIG = "sample-10BT"
CHARS_PER_TOKEN = 4  # upstream's estimate (UPSTREAM_SPEC §9.2)
MIN_DOCUMENT_CHARS = 50

Progress = Callable[[int, int], None]  # (rows written, characters written)


@dataclass(frozen=True)
class DownloadResult:
    name: str
    output: str
    num_rows: int
    num_chars: int
    approx_tokens: int
    kind: str  # "jsonl" or "text"

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class DatasetHit:
    id: str
    downloads: int | None
    likes: int | None


def check_online(what: str) -> None:
    """DataError (one line) unless the Hugging Face hub can be reached."""
    if hub_offline():
        raise DataError(f"{what} needs the Hugging Face hub, but HF_HUB_OFFLINE is set (offline mode); "
                        f"unset it on a connected machine, or inspect a local file instead")
    if not hub_reachable():
        raise DataError(f"{what} needs the Hugging Face hub, which is unreachable from here (offline?); "
                        f"run it on a connected machine, or inspect a local file instead")


def _datasets():
    try:
        import datasets
    except ImportError:
        raise DataError("downloading datasets needs the datasets package: pip install 'vesper[hf]'") from None
    return datasets


def search_datasets(query: str, limit: int = 20) -> list[DatasetHit]:
    """Hub datasets matching ``query``, most downloaded first."""
    if not query.strip():
        raise ConfigError("search: give a word to search for")
    check_online("searching Hugging Face datasets")
    from huggingface_hub import HfApi

    try:
        found = HfApi().list_datasets(search=query, sort="downloads", limit=limit)
        return [DatasetHit(d.id, getattr(d, "downloads", None), getattr(d, "likes", None)) for d in found]
    except Exception as exc:  # network and HTTP errors of the hub client
        raise DataError(f"searching Hugging Face datasets for {query!r} failed: {exc}") from None


def row_record(row: dict, text_field: str | None) -> dict | None:
    """One output record: a conversation for exchange rows, else {"text": ...}; None for an empty row."""
    for user_key, assistant_key in CONVERSATION_PAIRS:
        if isinstance(row.get(user_key), str) and isinstance(row.get(assistant_key), str):
            user = row[user_key]
            if user_key == "instruction" and isinstance(row.get("input"), str) and row["input"].strip():
                user = f"{user}\n\n{row['input']}"
            return {"messages": [{"role": "user", "content": user},
                                 {"role": "assistant", "content": row[assistant_key]}]}
    if isinstance(row.get("messages"), list):
        return {"messages": row["messages"]}
    field = text_field or suggest_text_column([row])[0]
    value = row.get(field) if field else None
    if not isinstance(value, str) or not value.strip():
        return None
    return {"text": value}


def _record_chars(record: dict) -> int:
    if "text" in record:
        return len(record["text"])
    return sum(len(str(m.get("content", ""))) for m in record["messages"] if isinstance(m, dict))


def write_rows(rows: Iterable[dict], output: Path, *, max_rows: int, text_field: str | None = None,
               on_progress: Progress | None = None) -> tuple[int, int]:
    """Write up to ``max_rows`` records as JSONL (atomically); returns (rows, characters)."""
    count = chars = 0
    with atomic_path(output) as tmp, tmp.open("w", encoding="utf-8") as fh:
        for row in rows:
            record = row_record(row, text_field)
            if record is None:
                continue
            fh.write(json.dumps(record, ensure_ascii=False) + "\n")
            count, chars = count + 1, chars + _record_chars(record)
            if on_progress is not None and count % 1000 == 0:
                on_progress(count, chars)
            if count >= max_rows:
                break
        if count == 0:
            raise DataError(f"no usable rows (no text column{f' {text_field!r}' if text_field else ''}); "
                            f"pass --text-field NAME")
    return count, chars


def write_text_budget(texts: Iterable[str], output: Path, *, max_chars: int,
                      on_progress: Progress | None = None) -> tuple[int, int]:
    """Documents of at least 50 characters, one per line group, until ``max_chars`` (as §9.2)."""
    count = chars = 0
    with atomic_path(output) as tmp, tmp.open("w", encoding="utf-8") as fh:
        for text in texts:
            if not isinstance(text, str) or len(text) < MIN_DOCUMENT_CHARS:
                continue
            fh.write(text + "\n")
            count, chars = count + 1, chars + len(text)
            if on_progress is not None and count % 10_000 == 0:
                on_progress(count, chars)
            if chars >= max_chars:
                break
    return count, chars


def _stream(name: str, config: str | None, split: str):
    datasets = _datasets()
    try:
        return datasets.load_dataset(name, config, split=split, streaming=True)
    except Exception as exc:  # unknown dataset/config/split, auth, network: the library's own message
        raise DataError(f"cannot stream {name}{f' ({config})' if config else ''} split {split!r}: {exc}") from None


def download_dataset(name: str, output: str | Path, *, config: str | None = None, split: str = "train",
                     max_rows: int = 10_000, tokens: int | None = None, text_field: str | None = None,
                     on_progress: Progress | None = None) -> DownloadResult:
    """Stream ``name`` into ``output``: a row-capped JSONL, or (``tokens`` given) a text file of that budget."""
    if max_rows <= 0:
        raise ConfigError(f"--max-rows must be positive, got {max_rows}")
    output = Path(output)
    if output.is_dir():
        raise ConfigError(f"--output {output} is a folder; give a file name")
    if name in FINEWEB_ALIASES:
        name, config = FINEWEB_EDU, config or FINEWEB_DEFAULT_CONFIG
        tokens = tokens or 100_000_000
    check_online(f"downloading {name}")
    rows = _stream(name, config, split)
    output.parent.mkdir(parents=True, exist_ok=True)
    if tokens is not None:
        texts = (row.get(text_field or "text") for row in rows)
        count, chars = write_text_budget(texts, output, max_chars=tokens * CHARS_PER_TOKEN, on_progress=on_progress)
        kind = "text"
    else:
        count, chars = write_rows(rows, output, max_rows=max_rows, text_field=text_field, on_progress=on_progress)
        kind = "jsonl"
    return DownloadResult(name, os.fspath(output), count, chars, chars // CHARS_PER_TOKEN, kind)

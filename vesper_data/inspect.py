"""Look inside a local dataset file before training on it: format, sample records, the text column, size.

``inspect_dataset`` reads at most ``max_chars`` characters of documents; beyond that the character and token
counts are extrapolated from the bytes read and marked ``estimated``.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from itertools import islice
from pathlib import Path
from typing import Any, Iterable, Iterator

from vesper_core.errors import DataError
from vesper_data.sources import check_source, detect_format, is_hf_spec, read_documents, split_text

CONVERSATION_PAIRS = (("user", "assistant"), ("instruction", "response"), ("instruction", "output"),
                      ("prompt", "completion"), ("question", "answer"))
SAMPLE_CHARS = 400  # a sample record is cut to this many characters for display


@dataclass
class DatasetReport:
    path: str
    format: str
    size_bytes: int
    num_records: int | None  # lines (text), objects (jsonl), paragraphs (squad), rows (parquet/arrow)
    columns: list[str] = field(default_factory=list)
    text_column: str | None = None  # what --text-field to pass (None: the format needs none)
    conversation: tuple[str, str] | None = None  # the role columns when records are exchanges
    samples: list[Any] = field(default_factory=list)
    num_chars: int = 0
    num_tokens: int | None = None
    tokenizer: str | None = None
    estimated: bool = False  # counts extrapolated from a prefix of the file

    def to_dict(self) -> dict:
        return asdict(self)


def _short(value: Any) -> Any:
    if isinstance(value, str) and len(value) > SAMPLE_CHARS:
        return value[:SAMPLE_CHARS] + "…"
    if isinstance(value, dict):
        return {k: _short(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_short(v) for v in value[:8]]
    return value


def suggest_text_column(rows: list[dict]) -> tuple[str | None, tuple[str, str] | None]:
    """("text" or the longest string column, None) or (None, (user_key, assistant_key)) for exchanges."""
    if not rows:
        return None, None
    keys = {k for row in rows for k in row}
    if "text" in keys:
        return "text", None
    for a, b in CONVERSATION_PAIRS:
        if a in keys and b in keys:
            return None, (a, b)
    if "messages" in keys or "conversations" in keys:
        return ("messages" if "messages" in keys else "conversations"), None
    lengths: dict[str, list[int]] = {}
    for row in rows:
        for k, v in row.items():
            if isinstance(v, str):
                lengths.setdefault(k, []).append(len(v))
    if not lengths:
        return None, None
    return max(lengths, key=lambda k: sum(lengths[k]) / len(lengths[k])), None


def _jsonl_rows(path: Path, limit: int) -> tuple[list[dict], int]:
    rows, count = [], 0
    with path.open("rb") as fh:
        for number, raw in enumerate(fh, start=1):
            line = raw.decode("utf-8", errors="replace").removeprefix("\ufeff").strip()
            if not line:
                continue
            count += 1
            if len(rows) < limit:
                try:
                    obj = json.loads(line)
                except json.JSONDecodeError as exc:
                    raise DataError(f"{path.name} line {number}: invalid JSON ({exc.msg}); fix or remove the line") from None
                if isinstance(obj, dict):
                    rows.append(obj)
    return rows, count


def _table_rows(path: Path, limit: int) -> tuple[list[dict], int | None, list[str]]:
    try:
        import pyarrow.dataset as pa_ds
    except ImportError:
        raise DataError(f"inspecting {path.suffix} files needs pyarrow: pip install 'vesper[hf]'") from None
    fmt = "parquet" if path.suffix.lower() == ".parquet" or path.is_dir() else "ipc"
    try:
        table = pa_ds.dataset(str(path), format=fmt)
        head = table.head(limit).to_pylist()
        return head, table.count_rows(), list(table.schema.names)
    except Exception as exc:  # pyarrow's errors for a damaged or wrong-kind file
        raise DataError(f"cannot read {path} as {fmt}: {exc}") from None


def _exchanges(path: Path, user_key: str, assistant_key: str) -> Iterator[str]:
    """Exchange rows as the text a chat conversion makes of them ("User: …\\nAssistant: …")."""
    with path.open("rb") as fh:
        for raw in fh:
            line = raw.decode("utf-8", errors="replace").removeprefix("\ufeff").strip()
            obj = json.loads(line) if line else None
            if isinstance(obj, dict):
                yield f"User: {obj.get(user_key, '')}\nAssistant: {obj.get(assistant_key, '')}"


def _count(docs: Iterable[str], tokenizer, max_chars: int) -> tuple[int, int | None, bool]:
    chars, tokens, truncated = 0, 0 if tokenizer is not None else None, False
    for doc in docs:
        take = doc[: max_chars - chars]
        chars += len(take)
        if tokenizer is not None:
            tokens += sum(len(ids) for ids in tokenizer.encode_batch(split_text(take)))
        if chars >= max_chars:
            truncated = True
            break
    return chars, tokens, truncated


def inspect_dataset(path: str | Path, *, fmt: str = "auto", text_field: str | None = None, tokenizer=None,
                    num_samples: int = 3, max_chars: int = 20_000_000) -> DatasetReport:
    """Report on one local dataset file; ``tokenizer`` (a VesperTokenizer) adds the token count."""
    if is_hf_spec(path):
        raise DataError(f"{path} is a Hugging Face dataset, and inspect reads local files; download rows first "
                        f"(vesper data download NAME --max-rows 1000) and inspect that file")
    path = Path(path)
    name = detect_format(path, fmt)
    check_source(path, name)
    size = path.stat().st_size if path.is_file() else sum(p.stat().st_size for p in path.rglob("*") if p.is_file())
    report = DatasetReport(str(path), name, size, None, tokenizer=getattr(tokenizer, "name", None))
    if name == "jsonl" or (name == "chat" and path.suffix == ".jsonl"):
        rows, report.num_records = _jsonl_rows(path, max(num_samples, 100))
        report.columns = sorted({k for r in rows for k in r})
        report.text_column, report.conversation = suggest_text_column(rows)
        report.samples = [_short(r) for r in rows[:num_samples]]
    elif name == "hf":
        rows, report.num_records, report.columns = _table_rows(path, max(num_samples, 100))
        report.text_column, report.conversation = suggest_text_column(rows)
        report.samples = [_short(r) for r in rows[:num_samples]]
    else:
        docs = read_documents(path, name)
        if name == "text":
            with path.open("rb") as fh:
                lines = (raw.decode("utf-8", errors="replace").strip() for raw in fh)
                report.num_records = 0
                for line in lines:
                    if line:
                        report.num_records += 1
                        if len(report.samples) < num_samples:
                            report.samples.append(_short(line.removeprefix("\ufeff")))
        else:
            report.samples = [_short(d) for d in islice(docs, num_samples)]
            report.num_records = sum(1 for _ in read_documents(path, name))
    field_name = text_field or report.text_column or "text"
    if name in ("jsonl", "hf") and report.text_column is None and report.conversation is None and not text_field:
        raise DataError(f"{path}: no string column to train on (columns: {', '.join(report.columns) or 'none'}); "
                        f"pass a text field")
    if name == "chat":  # what training reads: each conversation through the default chat template
        docs = read_documents(path, name)
    elif report.conversation and not text_field and name == "jsonl":
        docs = _exchanges(path, *report.conversation)
    else:
        docs = read_documents(path, name, text_field=field_name)
    chars, tokens, truncated = _count(docs, tokenizer, max_chars)
    if truncated and path.is_file():
        read_share = min(1.0, max_chars / max(1, size))
        chars, tokens = int(chars / read_share), (None if tokens is None else int(tokens / read_share))
        report.estimated = True
    report.num_chars, report.num_tokens = chars, tokens
    return report

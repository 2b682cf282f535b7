"""Hugging Face datasets as documents: local parquet/arrow files or folders, or ``hf:NAME[:CONFIG][@SPLIT]``.

Local files are read batch by batch with pyarrow (bounded memory, no copy into the HF cache).
A hub name goes through ``datasets.load_dataset``; ``HF_HUB_OFFLINE``/``HF_DATASETS_OFFLINE`` and a
short reachability probe make an offline machine fail in seconds with one line, never hang.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Iterator

from vesper_core.errors import DataError

BATCH_ROWS = 1024
_TRUE = {"1", "true", "yes", "on"}


@dataclass(frozen=True)
class HFSpec:
    """``hf:NAME[:CONFIG][@SPLIT]`` parsed; NAME may be a local file or folder."""

    name: str
    config: str | None = None
    split: str | None = None

    @classmethod
    def parse(cls, spec: str) -> "HFSpec":
        body = spec.removeprefix("hf:")
        body, _, split = body.partition("@")
        if Path(body).exists():  # a local path may itself contain ':'
            name, config = body, ""
        else:
            name, _, config = body.partition(":")
        if not name:
            raise DataError(f"{spec!r}: expected hf:NAME[:CONFIG][@SPLIT], e.g. hf:wikitext:wikitext-2-raw-v1@train")
        return cls(name, config or None, split or None)


def _row_text(row: dict, text_field: str, where: str) -> str:
    if text_field in row:
        value = row[text_field]
    elif "user" in row and "assistant" in row:
        value = f"User: {row['user']}\nAssistant: {row['assistant']}"
    else:
        raise DataError(f"{where}: no {text_field!r} column (columns: {', '.join(map(str, row)) or 'none'}); "
                        f"pass --text-field NAME")
    return "" if value is None else str(value)


# -- local files (pyarrow) ----------------------------------------------------------------------
def _local_files(path: Path, split: str | None) -> list[Path]:
    if path.is_file():
        return [path]
    folder = path / split if split and (path / split).is_dir() else path
    files = sorted(folder.rglob("*.parquet")) + sorted(folder.rglob("*.arrow"))
    files = [f for f in files if "cache-" not in f.name]  # datasets' map() caches are not data
    if not files:
        raise DataError(f"{path} holds no .parquet or .arrow files; pass a dataset folder saved with "
                        f"save_to_disk, or parquet/arrow files")
    return files


def _arrow_batches(path: Path, columns: list[str] | None) -> Iterator:
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        if path.suffix.lower() == ".parquet":
            yield from pq.ParquetFile(path).iter_batches(batch_size=BATCH_ROWS, columns=columns)
            return
        with pa.memory_map(str(path)) as source:
            try:
                reader = pa.ipc.open_stream(source)  # what datasets writes
            except pa.ArrowInvalid:
                source.seek(0)
                reader = pa.ipc.open_file(source)
                for i in range(reader.num_record_batches):
                    yield reader.get_batch(i)
                return
            yield from reader
    except (pa.ArrowException, OSError) as exc:
        raise DataError(f"{path}: cannot read as {path.suffix.lstrip('.')} ({str(exc).splitlines()[0]})") from None


def _columns(path: Path, text_field: str) -> list[str] | None:
    """The columns to read (all when the text field is absent, to fall back to user/assistant)."""
    if path.suffix.lower() != ".parquet":
        return None
    import pyarrow.parquet as pq

    try:
        names = pq.ParquetFile(path).schema_arrow.names
    except Exception as exc:
        raise DataError(f"{path}: not a readable parquet file ({str(exc).splitlines()[0]})") from None
    return [text_field] if text_field in names else None


def _local_documents(path: Path, split: str | None, text_field: str) -> Iterator[str]:
    for file in _local_files(path, split):
        for batch in _arrow_batches(file, _columns(file, text_field)):
            for row in batch.to_pylist():
                text = _row_text(row, text_field, file.name)
                if text:
                    yield text


# -- the hub (datasets) -------------------------------------------------------------------------
def _offline() -> bool:
    keys = ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "TRANSFORMERS_OFFLINE")
    return any(os.environ.get(k, "").strip().lower() in _TRUE for k in keys)


def _hub_rows(spec: HFSpec) -> Iterable[dict]:
    from vesper_data.tokenizers.hub import hub_reachable

    where = f"hf:{spec.name}"
    if _offline():
        raise DataError(f"{where}: not a local file or folder, and HF_HUB_OFFLINE is set; pass a local "
                        f".parquet/.arrow file or folder, or unset HF_HUB_OFFLINE")
    if not hub_reachable():
        raise DataError(f"{where}: not a local file or folder, and the Hugging Face hub is unreachable "
                        f"(offline?); pass a local .parquet/.arrow file or folder")
    try:
        import datasets

        return datasets.load_dataset(spec.name, spec.config, split=spec.split or "train")
    except Exception as exc:
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise DataError(f"{where}: Hugging Face datasets could not load it ({reason[:200]})") from None


def read_hf_documents(spec_text: str, *, text_field: str = "text") -> Iterator[str]:
    """Each row's ``text_field`` (else "User: ...\\nAssistant: ...") is one document; empty rows skipped."""
    spec = HFSpec.parse(spec_text)
    local = Path(spec.name).expanduser()
    found = False
    if local.exists():
        rows: Iterable[str] = _local_documents(local, spec.split, text_field)
    else:
        rows = (_row_text(r, text_field, f"hf:{spec.name}") for r in _hub_rows(spec))
    for text in rows:
        if text:
            found = True
            yield text
    if not found:
        raise DataError(f"{spec_text} has no documents (every row's {text_field!r} is empty)")

"""DataConfig: where the text comes from and how it is cut into batches."""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from typing import Any

from vesper_core.errors import ConfigError


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


@dataclass(kw_only=True)
class DataConfig:
    dataset: str | None = None  # a .txt/.jsonl path, or "demo"
    format: str = "auto"  # auto (by extension), text, jsonl, or a plugin format
    text_field: str = "text"  # jsonl field holding the document
    tokenizer: str = "auto"  # auto, byte, a tokenizer.json path, or a Hugging Face id
    seq_len: int = 512
    batch_size: int = 4
    vocab_size: int = 0  # 0: the tokenizer's vocabulary size
    val_dataset: str | None = None
    shuffle: bool = True
    num_workers: int = 0
    cache: str | None = None  # a VSPR .bin written by `vesper cache build` (or Rust): train from its memory map
    streaming: bool = False  # tokenize --dataset chunk by chunk in a background thread (files > memory)
    chunk_mb: int = 50  # streaming chunk size in MiB

    def __post_init__(self) -> None:
        for name in ("seq_len", "batch_size", "vocab_size", "num_workers", "chunk_mb"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int):
                raise ConfigError(f"{_flag(name)} must be an integer, got {value!r}")
        for name in ("seq_len", "batch_size", "chunk_mb"):
            if getattr(self, name) <= 0:
                raise ConfigError(f"{_flag(name)} must be positive, got {getattr(self, name)}")
        if self.vocab_size < 0:
            raise ConfigError(f"--vocab-size must be 0 (the tokenizer's size) or positive, got {self.vocab_size}")
        if self.num_workers < 0:
            raise ConfigError(f"--num-workers must be 0 or more, got {self.num_workers}")
        for name in ("shuffle", "streaming"):
            if not isinstance(getattr(self, name), bool):
                raise ConfigError(f"{name} must be true or false, got {getattr(self, name)!r}")
        for name in ("format", "text_field", "tokenizer"):
            value = getattr(self, name)
            if not isinstance(value, str) or not value:
                raise ConfigError(f"{_flag(name)} must be a non-empty string, got {value!r}")
        for name in ("dataset", "val_dataset", "cache"):
            value = getattr(self, name)
            if value is not None and (not isinstance(value, str) or not value):
                raise ConfigError(f"{_flag(name)} must be a path or 'demo', got {value!r}")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> "DataConfig":
        valid = [f.name for f in fields(cls)]
        unknown = sorted(set(values) - set(valid))
        if unknown:
            raise ConfigError(f"unknown data setting(s) {', '.join(unknown)}; valid keys: {', '.join(valid)}")
        return cls(**values)

"""DataConfig: where the text comes from and how it is cut into batches."""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from typing import Any

from vesper_core.errors import ConfigError


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


@dataclass(kw_only=True)
class DataConfig:
    dataset: str | None = None
    """Training file (.txt, .jsonl, SQuAD .json, .parquet/.arrow), hf:NAME[:CONFIG][@SPLIT], or 'demo'."""
    format: str = "auto"
    """Data format: auto (by extension and first record) | text | jsonl | squad | hf | chat, or a plugin format."""
    text_field: str = "text"
    """JSONL / HF column holding the document."""
    tokenizer: str = "auto"
    """auto | byte | PATH/tokenizer.json | folder | HF hub id."""
    seq_len: int = 512
    """Tokens per training window."""
    batch_size: int = 4
    """Sequences per micro-batch."""
    vocab_size: int = 0
    """Model vocabulary, 0 = the tokenizer's."""
    val_dataset: str | None = None
    """Held-out file for validation loss/perplexity."""
    val_fraction: float = 0.0
    """Hold out the last fraction of the token stream for validation (text held in memory), 0 = none."""
    shuffle: bool = True
    """Visit the windows in a seeded random order each epoch."""
    num_workers: int = 0
    """Chunks tokenized ahead with --streaming (at least 2)."""
    cache: str | None = None
    """Train from a VSPR .bin token cache (`vesper cache build`); --dataset not needed."""
    streaming: bool = False
    """Tokenize --dataset chunk by chunk in the background (files larger than memory)."""
    chunk_mb: int = 50
    """Streaming chunk size in MiB."""
    chat_template: str = "auto"
    """Chat data: auto (a chat cache's or the checkpoint's, else the default ChatML) | default | a tokenizer folder, tokenizer_config.json or .jinja file."""
    train_on_prompt: bool = False
    """Chat data: put the prompt tokens in the loss too (by default only the assistant's tokens)."""
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
        if isinstance(self.val_fraction, bool) or not isinstance(self.val_fraction, (int, float)) \
                or not 0.0 <= self.val_fraction < 1.0:
            raise ConfigError(f"--val-fraction must be in [0, 1), got {self.val_fraction!r}")
        if self.num_workers < 0:
            raise ConfigError(f"--num-workers must be 0 or more, got {self.num_workers}")
        for name in ("shuffle", "streaming", "train_on_prompt"):
            if not isinstance(getattr(self, name), bool):
                raise ConfigError(f"{name} must be true or false, got {getattr(self, name)!r}")
        for name in ("format", "text_field", "tokenizer", "chat_template"):
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

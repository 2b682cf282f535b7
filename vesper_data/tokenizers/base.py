"""VesperTokenizer: a thin, picklable wrapper over a Hugging Face ``tokenizers.Tokenizer``."""

from __future__ import annotations

import hashlib
from pathlib import Path

import tokenizers

from vesper_core.atomic import write_text_atomic
from vesper_core.errors import DataError

EOS_CANDIDATES = ("<|endoftext|>", "</s>", "<eos>", "<|end_of_text|>")


class VesperTokenizer:
    """Text <-> ids with the few operations training and generation need.

    ``name`` says how it was resolved ("byte", a file path, a hub id, "bpe-trained").
    """

    def __init__(self, tokenizer: tokenizers.Tokenizer, name: str):
        self.tokenizer = tokenizer
        self.name = name
        self.vocab_size: int = tokenizer.get_vocab_size(with_added_tokens=True)
        self.eos_id: int | None = self._find_eos()

    def _find_eos(self) -> int | None:
        for token in EOS_CANDIDATES:
            token_id = self.tokenizer.token_to_id(token)
            if token_id is not None:  # id 0 is a real id
                return token_id
        return None

    # -- text <-> ids --------------------------------------------------------------------
    def encode(self, text: str) -> list[int]:
        return self.tokenizer.encode(text, add_special_tokens=False).ids

    def encode_batch(self, texts: list[str]) -> list[list[int]]:
        """Encode many texts on all cores (Hugging Face's thread pool)."""
        texts = list(texts)
        fast = getattr(self.tokenizer, "encode_batch_fast", None)  # tokenizers >= 0.20: skips offsets
        encodings = (fast or self.tokenizer.encode_batch)(texts, add_special_tokens=False)
        return [e.ids for e in encodings]

    def decode(self, ids, skip_special_tokens: bool = True) -> str:
        return self.tokenizer.decode([int(i) for i in ids], skip_special_tokens=skip_special_tokens)

    def add_special_tokens(self, tokens) -> list[str]:
        """Add the ``tokens`` this tokenizer lacks as special tokens (ids after the current vocabulary).

        Returns the tokens added, in id order; the vocabulary size (and EOS) are updated.
        """
        missing = [t for t in dict.fromkeys(tokens) if t and self.tokenizer.token_to_id(t) is None]
        if missing:
            self.tokenizer.add_special_tokens(missing)
            self.vocab_size = self.tokenizer.get_vocab_size(with_added_tokens=True)
            self.eos_id = self._find_eos()
        return missing

    # -- files ---------------------------------------------------------------------------
    def to_str(self) -> str:
        """The tokenizer.json text."""
        return self.tokenizer.to_str()

    def sha256(self) -> str:
        return hashlib.sha256(self.to_str().encode("utf-8")).hexdigest()

    def save(self, path: str | Path) -> None:
        """Write tokenizer.json atomically (temp file in the same folder, fsync, rename)."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        write_text_atomic(path, self.to_str())

    @classmethod
    def from_file(cls, path: str | Path) -> "VesperTokenizer":
        path = Path(path)
        try:
            text = path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise DataError(f"cannot read tokenizer file {path}: {exc}") from exc
        return cls.from_str(text, str(path))

    @classmethod
    def from_str(cls, json_text: str, name: str) -> "VesperTokenizer":
        try:
            return cls(tokenizers.Tokenizer.from_str(json_text), name)
        except Exception as exc:  # the Rust side raises plain Exception
            reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            raise DataError(f"{name} is not a valid tokenizer.json ({reason})") from exc

    def __repr__(self) -> str:
        return f"VesperTokenizer(name={self.name!r}, vocab_size={self.vocab_size}, eos_id={self.eos_id})"

"""Turn a ``--tokenizer`` value into a VesperTokenizer (including ``auto``)."""

from __future__ import annotations

import re
import time
from pathlib import Path
from typing import Callable, Iterable, Iterator, Sequence

from vesper_core.errors import ConfigError, DataError
from vesper_data.sources import read_documents, split_text
from vesper_data.tokenizers.base import VesperTokenizer
from vesper_data.tokenizers.builtin import TOKENIZERS, train_bpe
from vesper_data.tokenizers.hub import HubUnavailable, load_from_hub

AUTO = "auto"
AUTO_HUB_ID = "gpt2"
BPE_SAMPLE_BYTES = 50 << 20
_HUB_ID = re.compile(r"[\w.\-]+(/[\w.\-]+)?")
_CHOICES = "pass a tokenizer.json path, 'byte', or 'auto'"


def _looks_like_path(spec: str) -> bool:
    return spec.endswith(".json") or spec.startswith(("./", "../", "/", "~", ".\\")) or "\\" in spec


def load_tokenizer(spec: str) -> VesperTokenizer:
    """A registered name, a tokenizer.json file, a folder holding one, or a Hugging Face hub id."""
    if spec == AUTO:
        raise ConfigError("tokenizer 'auto' depends on the training data; use resolve_auto_tokenizer()")
    if spec in TOKENIZERS:
        return TOKENIZERS.get(spec)()
    path = Path(spec).expanduser()
    if path.is_file():
        return VesperTokenizer.from_file(path)
    if path.is_dir():
        if (path / "tokenizer.json").is_file():
            return VesperTokenizer.from_file(path / "tokenizer.json")
        gpt2_style = gpt2_bpe_files(path)
        if gpt2_style is not None:
            return gpt2_bpe_tokenizer(*gpt2_style, name=str(path))
        raise DataError(f"tokenizer folder {path} has neither tokenizer.json nor GPT-2 BPE files "
                        f"(encoder.json/vocab.json + vocab.bpe/merges.txt); pass a tokenizer.json")
    if _looks_like_path(spec):
        raise DataError(f"tokenizer file not found: {spec}; {_CHOICES}")
    if not _HUB_ID.fullmatch(spec):
        raise DataError(f"cannot load tokenizer {spec!r}: not a file, folder, registered name "
                        f"({', '.join(TOKENIZERS.names())}) or Hugging Face repo id; {_CHOICES}")
    try:
        return VesperTokenizer(load_from_hub(spec), spec)
    except HubUnavailable as exc:
        if exc.unreachable:
            raise DataError(f"cannot load tokenizer {spec!r}: not a file, folder or registered name, and the "
                            f"Hugging Face hub is unreachable (offline?); {_CHOICES}") from None
        raise DataError(f"cannot load tokenizer {spec!r}: not a file, folder or registered name, and the "
                        f"Hugging Face hub did not provide it ({exc}); {_CHOICES}") from None


def gpt2_bpe_files(folder: Path) -> tuple[Path, Path] | None:
    """(vocab, merges) when ``folder`` holds a GPT-2 style BPE (OpenAI's or Hugging Face's file names)."""
    vocab = next((folder / n for n in ("encoder.json", "vocab.json") if (folder / n).is_file()), None)
    merges = next((folder / n for n in ("vocab.bpe", "merges.txt") if (folder / n).is_file()), None)
    return (vocab, merges) if vocab and merges else None


def gpt2_bpe_tokenizer(vocab: Path, merges: Path, *, name: str) -> VesperTokenizer:
    """A byte-level BPE from GPT-2's two files, as a tokenizers.Tokenizer (savable as tokenizer.json)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers

    try:
        model = models.BPE.from_file(str(vocab), str(merges))
    except Exception as exc:  # tokenizers raises plain Exception subclasses for unreadable files
        raise DataError(f"cannot read GPT-2 BPE files {vocab} + {merges}: {exc}") from exc
    tok = Tokenizer(model)
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    if tok.token_to_id("<|endoftext|>") is not None:
        tok.add_special_tokens(["<|endoftext|>"])
    return VesperTokenizer(tok, name)


# -- auto ---------------------------------------------------------------------------------------
def _candidates(saved: str | Path | Sequence[str | Path] | None) -> list[Path]:
    if saved is None:
        return []
    if isinstance(saved, (str, Path)):
        return [Path(saved)]
    return [Path(p) for p in saved]


def _bounded(docs: Iterable[str], max_chars: int) -> Iterator[str]:
    """At most ``max_chars`` of ``docs``, in pieces small enough to train on in parallel."""
    left = max_chars
    for doc in docs:
        for piece in split_text(doc):
            if left <= 0:
                return
            yield piece[:left]
            left -= len(piece)


def _describe(files: Sequence[Path]) -> str:
    names = [f.name for f in files]
    return ", ".join(names) if len(names) <= 3 else f"{', '.join(names[:3])} and {len(names) - 3} more"


def resolve_auto_tokenizer(*, saved: str | Path | Sequence[str | Path] | None = None,
                           training_files: Sequence[Path | str] = (),
                           texts: Callable[[], Iterable[str]] | Iterable[str] | None = None,
                           vocab_size: int = 8192, try_hub: bool = False, fmt: str = "auto",
                           text_field: str = "text",
                           sample_bytes: int = BPE_SAMPLE_BYTES) -> tuple[VesperTokenizer, str]:
    """``--tokenizer auto``: a saved tokenizer, else a BPE trained here on the data.

    The result does not depend on the network (the same run gives the same numbers on- and offline);
    ``try_hub=True`` restores the old order (Hugging Face gpt2 before training a BPE). An explicit hub
    id (``--tokenizer gpt2``) still loads from the hub.

    The BPE is trained on the first ``sample_bytes`` of ``training_files`` (read with ``fmt`` /
    ``text_field``) or of ``texts`` (documents, or a function returning them). Returns the
    tokenizer and a one-line notice saying what was chosen.
    """
    for candidate in _candidates(saved):
        if candidate.is_file():
            return VesperTokenizer.from_file(candidate), f"using tokenizer saved with the checkpoint: {candidate}"

    hub_note = ""
    if try_hub:
        try:
            tok = VesperTokenizer(load_from_hub(AUTO_HUB_ID), AUTO_HUB_ID)
            return tok, f"using Hugging Face {AUTO_HUB_ID} (vocab {tok.vocab_size})"
        except HubUnavailable as exc:
            hub_note = (f"Hugging Face {AUTO_HUB_ID} unreachable (offline?)" if exc.unreachable
                        else f"Hugging Face {AUTO_HUB_ID} unavailable: {exc}")

    files = [Path(f) for f in training_files]
    if files:
        docs: Iterable[str] = (d for f in files for d in read_documents(f, fmt, text_field=text_field))
        source = _describe(files)
    elif texts is not None:
        docs = texts() if callable(texts) else texts
        source = "the training text"
    else:
        raise ConfigError(f"tokenizer 'auto' found no saved tokenizer{', ' + hub_note if hub_note else ''} and "
                          f"no training text to train a BPE on; pass --tokenizer byte or a tokenizer.json path")

    counted = {"chars": 0}

    def sample() -> Iterator[str]:
        for piece in _bounded(docs, sample_bytes):
            counted["chars"] += len(piece)
            yield piece

    start = time.perf_counter()
    tok = train_bpe(sample(), vocab_size)
    seconds = time.perf_counter() - start
    size = f"{counted['chars'] / 1e6:.1f} M characters"
    if counted["chars"] >= sample_bytes:
        size = f"the first {size}"
    notice = f"trained a byte-level BPE (vocab {tok.vocab_size}) on {source} ({size}) in {seconds:.1f} s"
    return tok, f"{notice}; {hub_note}" if hub_note else notice

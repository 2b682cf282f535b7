"""Tokenizers that need no files: the byte tokenizer and BPE trained on the fly."""

from __future__ import annotations

from typing import Callable, Iterable

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

from vesper_core.errors import ConfigError
from vesper_core.registry import Registry
from vesper_data.tokenizers.base import VesperTokenizer

EOS_TOKEN = "<|endoftext|>"

TOKENIZERS: Registry[Callable[[], VesperTokenizer]] = Registry("tokenizer", "vesper.tokenizers")


def byte_symbols() -> list[str]:
    """The printable character standing for each byte 0..255 in byte-level BPE.

    Bytes that are visible Latin-1 characters stand for themselves; the others (controls,
    space, a few invisible ones) are moved to code points 256 and up, in byte order.
    """
    visible = set(range(ord("!"), ord("~") + 1)) | set(range(0xA1, 0xAC + 1)) | set(range(0xAE, 0xFF + 1))
    symbols, shifted = [], 0
    for byte in range(256):
        if byte in visible:
            symbols.append(chr(byte))
        else:
            symbols.append(chr(256 + shifted))
            shifted += 1
    return symbols


def _byte_level_parts(tokenizer: Tokenizer, *, use_regex: bool) -> None:
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=use_regex)
    tokenizer.decoder = decoders.ByteLevel()


@TOKENIZERS.register("byte")
def byte_tokenizer() -> VesperTokenizer:
    """256 byte tokens (id = byte value) plus <|endoftext|> (id 256): any UTF-8 text, no files."""
    vocab = {symbol: byte for byte, symbol in enumerate(byte_symbols())}
    tokenizer = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    _byte_level_parts(tokenizer, use_regex=False)
    tokenizer.add_special_tokens([EOS_TOKEN])
    return VesperTokenizer(tokenizer, "byte")


def train_bpe(texts: Iterable[str], vocab_size: int, *, min_frequency: int = 2,
              special_tokens: tuple[str, ...] = (EOS_TOKEN,)) -> VesperTokenizer:
    """Train a byte-level BPE (GPT-2 style pre-tokenization) on ``texts``; multi-threaded."""
    smallest = 256 + len(special_tokens)
    if vocab_size < smallest:
        raise ConfigError(f"--vocab-size {vocab_size} is too small for a byte-level BPE; use at least {smallest}")
    tokenizer = Tokenizer(models.BPE())
    _byte_level_parts(tokenizer, use_regex=True)
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, min_frequency=min_frequency, special_tokens=list(special_tokens),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False,
    )
    tokenizer.train_from_iterator(texts, trainer=trainer)
    return VesperTokenizer(tokenizer, "bpe-trained")

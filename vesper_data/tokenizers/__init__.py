"""Tokenizers: the wrapper, the registry (built-in "byte"), BPE training and name resolution."""

from vesper_data.tokenizers.base import VesperTokenizer
from vesper_data.tokenizers.builtin import EOS_TOKEN, TOKENIZERS, byte_tokenizer, train_bpe
from vesper_data.tokenizers.resolve import load_tokenizer, resolve_auto_tokenizer

__all__ = ["EOS_TOKEN", "TOKENIZERS", "VesperTokenizer", "byte_tokenizer", "load_tokenizer",
           "resolve_auto_tokenizer", "train_bpe"]

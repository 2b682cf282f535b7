"""Vesper data: tokenizers, dataset readers, the demo corpus, windows and batch loading.

Depends only on vesper_core's base (errors, registry), numpy, torch and tokenizers.
"""

from vesper_data.config import DataConfig
from vesper_data.demo import DEMO_NAME, demo_corpus
from vesper_data.loader import BatchLoader, TokenWindows
from vesper_data.sources import FORMATS, detect_format, load_token_ids, read_documents, tokenize_documents
from vesper_data.tokenizers import (TOKENIZERS, VesperTokenizer, load_tokenizer, resolve_auto_tokenizer,
                                    train_bpe)

__all__ = [
    "BatchLoader", "DEMO_NAME", "DataConfig", "FORMATS", "TOKENIZERS", "TokenWindows", "VesperTokenizer",
    "demo_corpus", "detect_format", "load_token_ids", "load_tokenizer", "read_documents",
    "resolve_auto_tokenizer", "tokenize_documents", "train_bpe",
]

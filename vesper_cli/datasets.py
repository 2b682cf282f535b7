"""Resolve ``--dataset`` and ``--tokenizer`` into a tokenizer and a token array (including ``demo``)."""

from __future__ import annotations

from pathlib import Path
from typing import Callable

import numpy as np

from vesper_core.errors import DataError
from vesper_data.config import DataConfig
from vesper_data.demo import DEMO_NAME, demo_corpus
from vesper_data.sources import load_token_ids, read_documents, tokenize_documents
from vesper_data.tokenizers import VesperTokenizer, load_tokenizer, resolve_auto_tokenizer


def _dataset_files(cfg: DataConfig) -> list[Path]:
    if cfg.dataset is None:
        raise DataError("no training data: pass --dataset PATH (a .txt or .jsonl file) or --dataset demo")
    return [Path(cfg.dataset)]


def dataset_texts(cfg: DataConfig, on_warning: Callable[[str], None] | None = None):
    """The training documents (used to train a tokenizer when none is available)."""
    if cfg.dataset == DEMO_NAME:
        return [demo_corpus()]
    return read_documents(Path(cfg.dataset), cfg.format, text_field=cfg.text_field, on_warning=on_warning)


def prepare_tokenizer(cfg: DataConfig, *, saved_candidates: list[Path]) -> tuple[VesperTokenizer, str | None]:
    """``--tokenizer auto`` -> saved tokenizer, else HF gpt2, else BPE trained on the data; else load it."""
    if cfg.tokenizer != "auto":
        return load_tokenizer(cfg.tokenizer), None
    if cfg.dataset != DEMO_NAME:
        _dataset_files(cfg)
    return resolve_auto_tokenizer(saved=saved_candidates, texts=lambda: dataset_texts(cfg))


def load_tokens(dataset: str | None, cfg: DataConfig, tokenizer: VesperTokenizer,
                on_warning: Callable[[str], None] | None = None) -> np.ndarray:
    """Token ids of ``dataset`` (the training or the validation set), documents separated by EOS."""
    if dataset == DEMO_NAME:
        return tokenize_documents([demo_corpus()], tokenizer)
    if dataset is None:
        raise DataError("no training data: pass --dataset PATH (a .txt or .jsonl file) or --dataset demo")
    return load_token_ids([Path(dataset)], tokenizer, cfg.format, text_field=cfg.text_field, on_warning=on_warning)

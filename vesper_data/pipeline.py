"""Resolve ``--dataset``/``--cache``/``--streaming`` and ``--tokenizer`` into a tokenizer and a batch loader."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np

from vesper_core.errors import ConfigError, DataError
from vesper_data.cache import TokenCache
from vesper_data.config import DataConfig
from vesper_data.demo import DEMO_NAME, demo_corpus
from vesper_data.loader import BatchLoader, TokenWindows
from vesper_data.sources import detect_format, load_token_ids, read_documents, tokenize_documents
from vesper_data.streaming import StreamingLoader
from vesper_data.tokenizers import VesperTokenizer, load_tokenizer, resolve_auto_tokenizer

STREAM_PREFETCH = 2  # chunks tokenized ahead by the streaming loader's background thread


def _dataset_files(cfg: DataConfig) -> list[Path]:
    if cfg.dataset is None:
        raise DataError("no training data: pass --dataset PATH (a .txt, .jsonl, .json or hf:NAME), "
                        "--cache X.bin, or --dataset demo")
    return [Path(cfg.dataset)]


def dataset_texts(cfg: DataConfig, on_warning: Callable[[str], None] | None = None):
    """The training documents (used to train a tokenizer when none is available)."""
    if cfg.dataset == DEMO_NAME:
        return [demo_corpus()]
    return read_documents(cfg.dataset, cfg.format, text_field=cfg.text_field, on_warning=on_warning)


# -- tokenizer ------------------------------------------------------------------------------------
def _cache_tokenizer(cfg: DataConfig, saved_candidates: list[Path]) -> tuple[VesperTokenizer, str | None]:
    """--cache: the tokenizer recorded in its sidecar (auto), or --tokenizer; checked against the cache."""
    cache = TokenCache.open(cfg.cache)
    recorded = (cache.sidecar or {}).get("tokenizer") or {}
    notice = None
    if cfg.tokenizer != "auto":
        tok = load_tokenizer(cfg.tokenizer)
    elif cache.sidecar and cache.sidecar.get("tokenizer_json"):
        tok = VesperTokenizer.from_str(cache.sidecar["tokenizer_json"], str(recorded.get("name", "cache tokenizer")))
        notice = f"using the tokenizer recorded with the cache: {tok.name} (vocab {tok.vocab_size})"
    else:
        tok, notice = resolve_auto_tokenizer(saved=saved_candidates, texts=None)
    check_cache_tokenizer(cache, tok)
    return tok, notice


def check_cache_tokenizer(cache: TokenCache, tok: VesperTokenizer) -> None:
    """ConfigError when ``tok`` is not the tokenizer the cache was built with (vocabulary, then hash)."""
    header_vocab = cache.header.vocab_size
    if header_vocab and tok.vocab_size != header_vocab:
        raise ConfigError(f"tokenizer {tok.name} has a vocabulary of {tok.vocab_size}, but {cache.path} was built "
                          f"with {header_vocab}; pass the tokenizer the cache was built with (--tokenizer auto uses "
                          f"the one recorded beside a Vesper-built cache)")
    sha = ((cache.sidecar or {}).get("tokenizer") or {}).get("sha256")
    if sha and tok.sha256() != sha:
        raise ConfigError(f"tokenizer {tok.name} is not the one {cache.path} was built with (sha256 {tok.sha256()[:12]}"
                          f"... vs {sha[:12]}...); use --tokenizer auto to take the recorded one")


def prepare_tokenizer(cfg: DataConfig, *, saved_candidates: list[Path]) -> tuple[VesperTokenizer, str | None]:
    """``--tokenizer auto`` -> the cache's, a saved one, else BPE trained on the data (never the hub); else load it."""
    if cfg.cache:
        return _cache_tokenizer(cfg, saved_candidates)
    if cfg.tokenizer != "auto":
        return load_tokenizer(cfg.tokenizer), None
    if cfg.dataset != DEMO_NAME:
        _dataset_files(cfg)
    return resolve_auto_tokenizer(saved=saved_candidates, texts=lambda: dataset_texts(cfg))


# -- tokens and loaders ---------------------------------------------------------------------------
def load_tokens(dataset: str | None, cfg: DataConfig, tokenizer: VesperTokenizer,
                on_warning: Callable[[str], None] | None = None) -> np.ndarray:
    """Token ids of ``dataset`` (the training or the validation set), documents separated by EOS."""
    if dataset == DEMO_NAME:
        return tokenize_documents([demo_corpus()], tokenizer)
    if dataset is None:
        raise DataError("no training data: pass --dataset PATH (a .txt, .jsonl, .json or hf:NAME), "
                        "--cache X.bin, or --dataset demo")
    return load_token_ids([dataset], tokenizer, cfg.format, text_field=cfg.text_field, on_warning=on_warning)


@dataclass
class TrainingData:
    loader: BatchLoader | StreamingLoader
    num_tokens: int  # an estimate when streaming
    notes: list[str] = field(default_factory=list)
    val_windows: TokenWindows | None = None  # the held-out tail with --val-fraction


def split_validation(ids: np.ndarray, val_fraction: float, seq_len: int) -> tuple[np.ndarray, np.ndarray | None]:
    """(train, held-out) token arrays: the last ``val_fraction`` of the stream is never trained on."""
    ids = np.asarray(ids)
    num_val = int(len(ids) * val_fraction)
    if val_fraction <= 0:
        return ids, None
    if num_val < seq_len + 1:
        raise DataError(
            f"--val-fraction {val_fraction} holds out {num_val} of {len(ids)} tokens, fewer than one window "
            f"of seq_len+1={seq_len + 1}; raise --val-fraction, lower --seq-len, or add data")
    return ids[:len(ids) - num_val], ids[len(ids) - num_val:]


def open_training_data(cfg: DataConfig, tokenizer: VesperTokenizer, *, seed: int = 0, rank: int = 0,
                       world_size: int = 1, on_warning: Callable[[str], None] | None = None,
                       chat_template=None) -> TrainingData:
    """The training batches: from a cache's memory map, a streamed file, or tokens held in memory.

    A cache trains on windows of seq_len + 1 over its whole token region (each stored document
    ends with EOS, so windows may cross documents exactly as in-memory training does).
    With ``chat_template`` (a ChatTemplate) the data are conversations: one padded row each, the
    loss on the assistant tokens only (vesper_data.chat).
    """
    notes: list[str] = []
    if cfg.val_fraction and (cfg.cache or cfg.streaming):
        raise ConfigError("--val-fraction splits text held in memory; with --cache or --streaming pass a "
                          "held-out file as --val-dataset instead")
    if cfg.val_fraction and cfg.val_dataset:
        raise ConfigError("give one of --val-dataset (a held-out file) or --val-fraction (the data's tail), not both")
    shard = dict(batch_size=cfg.batch_size, shuffle=cfg.shuffle, seed=seed, rank=rank, world_size=world_size)
    if chat_template is not None:
        from vesper_data.chat.data import open_chat_training

        if cfg.dataset in (None, DEMO_NAME) and not cfg.cache:
            raise ConfigError("chat training reads a conversations file: pass --dataset PATH.jsonl or a chat --cache")
        if cfg.cache and cfg.dataset:
            notes.append(f"--dataset {cfg.dataset} ignored: training from --cache {cfg.cache}")
        loader, num_tokens, chat_notes, val = open_chat_training(
            cfg, tokenizer, chat_template, shard=shard, prefetch=max(STREAM_PREFETCH, cfg.num_workers),
            on_warning=on_warning)
        return TrainingData(loader, num_tokens, notes + chat_notes, val)
    if cfg.cache:
        if cfg.dataset or cfg.streaming:
            ignored = " and ".join(x for x in (cfg.dataset and f"--dataset {cfg.dataset}",
                                                cfg.streaming and "--streaming") if x)
            notes.append(f"{ignored} ignored: training from --cache {cfg.cache}")
        cache = TokenCache.open(cfg.cache, on_warning=on_warning)
        cache.check_vocab(tokenizer.vocab_size)
        loader = BatchLoader(TokenWindows(cache.tokens, cfg.seq_len), **shard)
        return TrainingData(loader, int(cache.header.total_tokens), notes)
    if cfg.streaming:
        if cfg.dataset in (None, DEMO_NAME):
            raise ConfigError("--streaming reads a text or jsonl file: pass --dataset PATH")
        fmt = detect_format(cfg.dataset, cfg.format)
        loader = StreamingLoader(cfg.dataset, tokenizer, cfg.seq_len, chunk_bytes=cfg.chunk_mb << 20, fmt=fmt,
                                 text_field=cfg.text_field, prefetch=max(STREAM_PREFETCH, cfg.num_workers),
                                 on_warning=on_warning, **shard)
        notes.append(f"streaming {cfg.dataset} in {cfg.chunk_mb} MiB chunks (token count estimated from the "
                     f"first MiB; an epoch ends when the file does)")
        return TrainingData(loader, loader.estimated_tokens, notes)
    ids, val_ids = split_validation(load_tokens(cfg.dataset, cfg, tokenizer, on_warning=on_warning),
                                    cfg.val_fraction, cfg.seq_len)
    val = TokenWindows(val_ids, cfg.seq_len) if val_ids is not None else None
    return TrainingData(BatchLoader(TokenWindows(ids, cfg.seq_len), **shard), int(len(ids)), notes, val)

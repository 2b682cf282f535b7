"""Chat data for training and evaluation: which template, and the loader over masked, padded rows.

Called by ``vesper_data.pipeline.open_training_data`` when the data is conversations (``--format
chat``, autodetected for .jsonl/.json files with ``messages``/``conversations``/``instruction``
records, or a chat cache), and by evaluation (``open_chat_validation``), so that a held-out loss is
the same masked loss whoever computes it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable

from vesper_core.errors import ConfigError, DataError
from vesper_data.chat.cache import cache_examples, cache_template
from vesper_data.chat.examples import ChatWindows, load_chat_examples
from vesper_data.chat.streaming import ChatStreamingLoader
from vesper_data.chat.template import ChatTemplate, default_template, load_chat_template
from vesper_data.config import DataConfig
from vesper_data.demo import DEMO_NAME


def is_chat_data(cfg: DataConfig) -> bool:
    """Whether ``cfg`` trains on conversations (the format, or a cache built from them)."""
    if cfg.cache:
        from vesper_data.cache.reader import read_sidecar

        sidecar = read_sidecar(Path(cfg.cache)) if Path(cfg.cache).is_file() else None
        return bool((sidecar or {}).get("chat"))
    if not cfg.dataset or cfg.dataset == DEMO_NAME:
        return False
    from vesper_data.sources import detect_format, is_hf_spec

    if cfg.format == "auto" and (is_hf_spec(cfg.dataset) or not Path(cfg.dataset).is_file()):
        return False
    return detect_format(cfg.dataset, cfg.format) == "chat"


def resolve_chat_template(cfg: DataConfig, *recorded: ChatTemplate | None) -> tuple[ChatTemplate, str]:
    """The template to train with, and where it came from.

    ``--chat-template`` when given; else a chat cache's own; else the first ``recorded`` one (the
    resumed checkpoint's, then the --init-from checkpoint's); else a ``chat_template`` of the
    ``--tokenizer`` folder; else the default. A given template that differs from the cache's is refused.
    """
    from_cache = None
    if cfg.cache:
        from vesper_data.cache import TokenCache

        from_cache = cache_template(TokenCache.open(cfg.cache))
    if cfg.chat_template != "auto":
        template = load_chat_template(cfg.chat_template)
        if from_cache is not None and not template.same_as(from_cache):
            raise ConfigError(f"--chat-template {cfg.chat_template} is not the template {cfg.cache} was built with "
                              f"({from_cache.name}); drop --chat-template or rebuild the cache with it")
        return template, f"--chat-template {cfg.chat_template}"
    if from_cache is not None:
        return from_cache, f"the cache's ({from_cache.name})"
    for template in recorded:
        if template is not None:
            return template, f"the checkpoint's ({template.name})"
    tok_dir = Path(cfg.tokenizer).expanduser()
    if cfg.tokenizer not in ("auto", "byte") and (tok_dir.is_dir() or tok_dir.name == "tokenizer_config.json"):
        template = load_chat_template(tok_dir)
        return template, f"the tokenizer folder's ({template.name})"
    return default_template(), "the default (ChatML)"


def open_chat_windows(path: str, tokenizer, template: ChatTemplate, seq_len: int, *, train_on_prompt: bool = False,
                      on_warning: Callable[[str], None] | None = None) -> ChatWindows:
    """Padded, masked rows of the conversations in ``path`` (held-out data: the same mask as training)."""
    examples = load_chat_examples([path], template, tokenizer)
    windows = ChatWindows(examples, seq_len, pad_id=tokenizer.eos_id or 0, train_on_prompt=train_on_prompt,
                          source=path)
    note = windows.notice(Path(path).name)
    if note and on_warning is not None:
        on_warning(note)
    return windows


def open_chat_validation(cfg: DataConfig, path: str, tokenizer, template: ChatTemplate,
                         on_warning: Callable[[str], None] | None = None) -> ChatWindows:
    return open_chat_windows(path, tokenizer, template, cfg.seq_len, train_on_prompt=cfg.train_on_prompt,
                             on_warning=on_warning)


def open_chat_training(cfg: DataConfig, tokenizer, template: ChatTemplate, *, shard: dict, prefetch: int,
                       on_warning: Callable[[str], None] | None = None):
    """(loader, number of tokens, notes, held-out rows or None) for conversations."""
    from vesper_data.loader import BatchLoader

    notes: list[str] = []
    pad_id = tokenizer.eos_id or 0
    template.check_tokenizer(tokenizer)
    if cfg.cache:
        from vesper_data.cache import TokenCache

        cache = TokenCache.open(cfg.cache, on_warning=on_warning)
        cache.check_vocab(tokenizer.vocab_size)
        windows = ChatWindows(cache_examples(cache), cfg.seq_len, pad_id=pad_id, train_on_prompt=cfg.train_on_prompt,
                              source=str(cfg.cache))
        if windows.notice(cache.path.name):
            notes.append(windows.notice(cache.path.name))
        return BatchLoader(windows, **shard), int(cache.header.total_tokens), notes, None
    if cfg.streaming:
        loader = ChatStreamingLoader(cfg.dataset, tokenizer, template, cfg.seq_len, chunk_bytes=cfg.chunk_mb << 20,
                                     prefetch=prefetch, train_on_prompt=cfg.train_on_prompt, on_warning=on_warning,
                                     **shard)
        notes.append(f"streaming conversations from {cfg.dataset} in {cfg.chunk_mb} MiB chunks (batches per epoch "
                     f"estimated from the first MiB)")
        return loader, loader.estimated_tokens, notes, None
    examples = load_chat_examples([cfg.dataset], template, tokenizer)
    train, val = examples.split(cfg.val_fraction)
    name = Path(cfg.dataset).name
    windows = ChatWindows(train, cfg.seq_len, pad_id=pad_id, train_on_prompt=cfg.train_on_prompt, source=cfg.dataset)
    if windows.notice(name):
        notes.append(windows.notice(name))
    val_windows = None
    if val is not None:
        val_windows = ChatWindows(val, cfg.seq_len, pad_id=pad_id, train_on_prompt=cfg.train_on_prompt,
                                  source=f"{cfg.dataset} (held-out part)")
    if not len(windows):
        raise DataError(f"{cfg.dataset}: no conversations left to train on")
    return BatchLoader(windows, **shard), int(len(train.tokens)), notes, val_windows

"""Chat data in a VSPR cache: one sequence per conversation, the loss mask in ``<name>.mask``.

The ``.bin``/``.idx`` pair is an ordinary VSPR cache (byte-compatible; a reader that ignores the
mask sees each conversation's rendered tokens). The sidecar's ``chat`` entry records the template
and the skip counts; the tokenizer recorded there includes the template's special tokens.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Callable, Sequence

from vesper_core.errors import ConfigError, DataError
from vesper_data.cache.format import cache_name, idx_path, mask_path, sidecar_path
from vesper_data.cache.reader import TokenCache
from vesper_data.cache.writer import BuiltCache, CacheWriter, _sidecar
from vesper_data.chat.examples import ChatExamples, encode_all
from vesper_data.chat.formats import SkipCounter, read_conversations
from vesper_data.chat.template import ChatTemplate


def build_chat_cache(sources: Sequence[str | Path], tokenizer, template: ChatTemplate, output_dir: str | Path, *,
                     seq_len: int = 512, layout: str = "auto", name: str | None = None,
                     on_warning: Callable[[str], None] | None = None,
                     progress: Callable[[int, int], None] | None = None) -> BuiltCache:
    """Encode the conversations of ``sources`` into ``<output_dir>/<name>.bin/.idx/.mask/.meta.json``.

    ``tokenizer`` must already hold the template's special tokens (``add_chat_tokens``).
    """
    sources = [str(s) for s in sources]
    if not sources:
        raise DataError("no dataset given; pass --dataset PATH")
    template.check_tokenizer(tokenizer)
    readers = [read_conversations(s) for s in sources]  # every file checked before anything is written
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    bin_path = output_dir / f"{name or cache_name(sources[0])}.bin"
    start = time.perf_counter()
    total = SkipCounter()
    source_bytes = sum(Path(s).stat().st_size for s in sources)
    with CacheWriter(bin_path, vocab_size=tokenizer.vocab_size, max_seq_len=seq_len, layout=layout,
                     with_mask=True) as writer:
        for source, (conversations, counter) in zip(sources, readers):
            for tokens, mask in encode_all(conversations, template, tokenizer, counter):
                writer.append(tokens, mask)
                writer.end_document()
                if progress is not None and writer.num_sequences % 1000 == 0:
                    progress(0, writer.total_tokens)
            total.merge(counter)
            if counter.num_skipped and on_warning is not None:
                on_warning(counter.summary(Path(source).name))
        if writer.num_sequences == 0:
            raise DataError(f"{', '.join(sources)}: no usable conversations to cache ({total.summary() or 'no records'})")
        meta = _sidecar(tokenizer, sources, "chat", "", writer.header, source_bytes, eos=False)
        meta["chat"] = {"template": template.to_dict(), "mask": mask_path(bin_path).name,
                        "conversations": writer.num_sequences, "skipped": dict(total.skipped)}
        header = writer.commit(meta)
    return BuiltCache(bin_path, idx_path(bin_path), sidecar_path(bin_path), header, source_bytes,
                      time.perf_counter() - start)


def cache_examples(cache: TokenCache) -> ChatExamples:
    """A chat cache's conversations (memory-mapped tokens, mask and offsets)."""
    if cache.mask is None:
        raise ConfigError(f"{cache.path} is a text cache (no loss mask); build a chat cache with "
                          f"`vesper cache build --format chat`, or train on it without --format chat")
    return ChatExamples(cache.tokens, cache.mask, cache.offsets)


def cache_template(cache: TokenCache) -> ChatTemplate:
    """The chat template a chat cache was rendered with (recorded in its sidecar)."""
    return ChatTemplate.from_dict(((cache.sidecar or {}).get("chat") or {}).get("template"), str(cache.path))

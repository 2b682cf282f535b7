"""`vesper generate --metacog`: regulated generation with the checkpoint's meta head, shown with its confidence.

``metacog_generate`` (vesper_metacog) produces tokens span by span, a span being a sentence or a line
(at most 32 tokens); the regulator re-samples a weak span (mean confidence under the regulation threshold,
or an error) from its first flagged position, at most ``max_iterations`` times, and stops at satisficing
termination (mean span confidence above ``confidence_threshold`` with no error, or the head's
termination probability above 0.5 on a sound span). Here the events become text: pieces decoded without
splitting UTF-8 characters, each carrying the confidence of its last token, and a summary.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Collection, Iterator, Mapping, Sequence

import torch

from vesper_cli.engine.generation import Generator, SamplingConfig, stop_index
from vesper_metacog.training import load_head
from vesper_metacog import MetacognitiveRegulator, metacog_generate, sentence_boundary_ids


@dataclass(frozen=True)
class Piece:
    text: str
    confidence: float  # the head's confidence at the piece's last token
    resampled: bool  # some token of the piece came from a re-drawn span


@dataclass
class MetacogSummary:
    tokens: int = 0
    resampled: int = 0  # tokens that came from a re-drawn span
    stop_reason: str = "max_tokens"  # eos | stop | stop_token | satisficed | termination | max_tokens
    seconds: float = 0.0
    confidences: list[float] = field(default_factory=list)

    @property
    def mean_confidence(self) -> float:
        return sum(self.confidences) / len(self.confidences) if self.confidences else float("nan")

    def line(self) -> str:
        return (f"metacog: {self.tokens} tokens, mean confidence {self.mean_confidence:.3f}, "
                f"{self.resampled} resampled, stopped: {self.stop_reason} ({self.seconds:.2f} s)")


_REASONS = {"max_new_tokens": "max_tokens"}


def metacog_stream(gen: Generator, prompt: str | None, sampling: SamplingConfig, summary: MetacogSummary,
                   generator: torch.Generator | None = None,
                   overrides: Mapping[str, float] | None = None,
                   boundary_ids: frozenset[int] | None = None, *,
                   prompt_ids: Sequence[int] | None = None, stop_token_ids: Collection[int] = ()) -> Iterator[Piece]:
    """Yield decoded pieces of one regulated completion of ``prompt``; fills ``summary`` as it goes.

    ``overrides`` replace regulator settings of the head's config (e.g. ``confidence_threshold``).
    ``boundary_ids`` (the tokens that end a span) defaults to ``sentence_ends(gen.tokenizer)``.
    ``prompt_ids`` replaces ``prompt`` with token ids (a chat template's); the completion also ends at
    any of ``stop_token_ids`` (an end-of-turn token, never emitted; stop reason ``stop_token``)."""
    head = load_head(gen.checkpoint, gen.device).eval()
    config = head.config.replace(**(overrides or {}))
    ids = torch.tensor([list(prompt_ids) if prompt_ids is not None else gen._ids(prompt)], dtype=torch.long,
                       device=gen.device)
    stop_tokens = frozenset(stop_token_ids)
    if generator is None and sampling.seed is not None:
        generator = torch.Generator(device=gen.device).manual_seed(sampling.seed)
    eos_id = gen.tokenizer.eos_id if sampling.stop_at_eos else None
    tokens: list[int] = []
    emitted = ""
    pending_resampled = False
    start = time.perf_counter()
    events = metacog_generate(gen.model, head, ids, max_new_tokens=sampling.max_tokens,
                              temperature=sampling.temperature, top_k=sampling.top_k, top_p=sampling.top_p,
                              repetition_penalty=sampling.repetition_penalty,
                              regulator=MetacognitiveRegulator(config), eos_id=eos_id,
                              boundary_ids=sentence_ends(gen.tokenizer) if boundary_ids is None
                              else boundary_ids,
                              generator=generator)
    try:
        for event in events:
            summary.tokens += 1
            summary.confidences.append(event.confidence)
            summary.resampled += int(event.resampled)
            if event.stop_reason is not None:
                summary.stop_reason = _REASONS.get(event.stop_reason, event.stop_reason)
            if eos_id is not None and event.token_id == eos_id:
                break
            if event.token_id in stop_tokens:
                summary.stop_reason = "stop_token"
                break
            tokens.append(event.token_id)
            pending_resampled |= event.resampled
            text = gen.tokenizer.decode(tokens)
            cut = stop_index(text, sampling.stop) if sampling.stop else None
            if cut is not None:
                text = text[:cut]
                summary.stop_reason = "stop"
            elif text.endswith("\ufffd"):
                continue  # an incomplete UTF-8 sequence: wait for the next token
            if len(text) > len(emitted):
                yield Piece(text[len(emitted):], event.confidence, pending_resampled)
                emitted, pending_resampled = text, False
            if cut is not None:
                break
    finally:
        events.close()
        summary.seconds = time.perf_counter() - start


def sentence_ends(tokenizer) -> frozenset[int]:
    """The ids whose text ends a sentence or a line (one decode per vocabulary entry)."""
    return sentence_boundary_ids(tokenizer.decode, range(tokenizer.vocab_size))

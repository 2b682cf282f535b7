"""Generation regulated by the meta head: resample low-confidence spans, stop when satisficed.

Tokens are produced in spans: a span ends after a token of ``boundary_ids`` (the CLI passes the
tokens that end a sentence or a line, see ``sentence_boundary_ids``) once it holds some other token,
at ``eos_id``, or after ``span`` tokens (default 32). So the regulator judges whole sentences - "in
the garden." rather than 8 tokens that straddle two sentences and mix a confident ending with the next
sentence's open choices - and the newline after a full stop starts the next sentence's span instead
of being a span of its own. Each token is
sampled with the samplers of ``vesper_core.generation`` (repetition penalty, temperature, top-k,
top-p); its *confidence* is the head's output on the final hidden state of that token, i.e. the
head's estimate (trained as in ``targets``) that the model's next top-1 prediction after it is right:
low means the text became hard to continue once this token was written. (The hidden state that
*predicted* a token depends only on the prefix, so a score read there could never change by
re-drawing the token.) The forward pass that reads it also gives the logits of the next token, so
there is one forward per token. At the end of a span ``MetacognitiveRegulator.step`` decides:

* **resample** - truncate back to the first flagged position and draw the rest of the span again.
  The token first drawn there is banned at that position, so the draw differs even when greedy;
  when the span holds nothing before that position, boundary tokens are banned there too (a repair
  must write something: otherwise the most confident repair is often an empty "." sentence).
  With planning enabled, ``planning_candidates`` re-draws are made (each also banning the previous
  candidates' first token) and ``plan`` keeps the most confident one. At most ``max_iterations``
  resamples per span; after that the span is accepted.
* **stop** - satisficing termination (``stop_reason`` "satisficed" or "termination"), only at the
  end of a sentence (a span cut at ``span`` tokens is not ``finished``) when boundaries are given;
* **continue** - next span.

Events are yielded once their span is accepted, so a consumer never has to retract text; tokens that
came from a re-draw have ``resampled=True``. The last event carries ``stop_reason``: "eos",
"satisficed", "termination" or "max_new_tokens".

With a VesperLM (it has ``config`` and ``embeddings``) a KV cache is used when the whole generation
fits in ``max_position_embeddings``; a resample rewinds it by lowering ``KVCache.length``. Otherwise
each token runs a full forward over the last ``max_position_embeddings`` ids (any model whose
``forward(ids, return_hidden=True)`` returns ``.logits`` and ``.hidden_states`` works).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Collection, Iterable, Iterator

import torch
from torch import Tensor, nn

from vesper_core.errors import ConfigError
from vesper_core.generation import KVCache, apply_repetition_penalty, sample_next
from vesper_metacog.head import MetaHead
from vesper_metacog.regulator import (RESAMPLE, STOP, CandidateScore, MetacognitiveRegulator,
                                      MetaWindow)


@dataclass(frozen=True)
class TokenEvent:
    token_id: int
    confidence: float  # head confidence read from this token's final hidden state
    resampled: bool  # produced by a re-draw of a low-confidence span
    stop_reason: str | None = None  # set on the last event only


@dataclass
class _Span:
    tokens: list[int] = field(default_factory=list)
    confidence: list[float] = field(default_factory=list)
    errors: list[Tensor] = field(default_factory=list)  # (E,) each
    termination: list[float] = field(default_factory=list)
    resampled: list[bool] = field(default_factory=list)

    def head(self, n: int) -> "_Span":
        return _Span(self.tokens[:n], self.confidence[:n], self.errors[:n], self.termination[:n],
                     self.resampled[:n])

    def extend(self, other: "_Span") -> "_Span":
        return _Span(self.tokens + other.tokens, self.confidence + other.confidence,
                     self.errors + other.errors, self.termination + other.termination,
                     self.resampled + other.resampled)

    def window(self, finished: bool) -> MetaWindow:
        return MetaWindow(confidence=torch.tensor(self.confidence),
                          error_probs=torch.stack(self.errors),
                          termination_prob=torch.tensor(self.termination), finished=finished)


class _Decoder:
    """The running sequence (1, N), with an optional KV cache that lags it."""

    def __init__(self, model: nn.Module, head: MetaHead, ids: Tensor, max_new_tokens: int,
                 use_cache: bool):
        self.model, self.head, self.ids = model, head, ids
        config = getattr(model, "config", None)
        self.window = getattr(config, "max_position_embeddings", None)
        self.cache = None
        capacity = ids.shape[1] + max_new_tokens
        if (use_cache and hasattr(model, "embeddings") and config is not None
                and (self.window is None or capacity <= self.window)):
            self.cache = KVCache.for_model(model, batch=1, max_len=capacity)

        self._memo: dict[int, tuple] = {}  # next_meta() by sequence length, for the current prefix

    @property
    def length(self) -> int:
        return self.ids.shape[1]

    def truncate(self, n: int) -> None:
        if n < self.length:
            self.ids = self.ids[:, :n]
            self._memo = {k: v for k, v in self._memo.items() if k <= n}
        if self.cache is not None:
            self.cache.length = min(self.cache.length, n)

    def append(self, tokens: list[int]) -> None:
        new = torch.tensor([tokens], dtype=self.ids.dtype, device=self.ids.device)
        self.ids = torch.cat([self.ids, new], dim=1)

    def forget_before(self, n: int) -> None:
        """Drop memoised results for lengths below ``n`` (no rewind will go there)."""
        self._memo = {k: v for k, v in self._memo.items() if k >= n}

    def next_meta(self) -> tuple[Tensor, float, Tensor, float]:
        """At the last position: next-token logits (1, V) float32 and the head's confidence,
        error probs (E,) and termination prob for the last token (memoised per prefix length)."""
        if self.length not in self._memo:
            self._memo[self.length] = self._forward()
        return self._memo[self.length]

    def _forward(self) -> tuple[Tensor, float, Tensor, float]:
        if self.cache is None:
            context = self.ids if self.window is None else self.ids[:, -self.window:]
            out = self.model(context, return_hidden=True)
        else:
            if self.cache.length >= self.length:  # rewound onto a known position: recompute it
                self.cache.length = self.length - 1
            out = self.model(self.ids[:, self.cache.length:], kv_cache=self.cache,
                             return_hidden=True)
        if out.hidden_states is None:
            raise ConfigError("metacog generation needs a model that returns hidden_states")
        meta = self.head(out.hidden_states[:, -1:])  # (1, 1, ...)
        return (out.logits[:, -1].float(), float(meta.confidence[0, -1]),
                meta.error_probs[0, -1].float().cpu(), float(meta.termination_prob[0, -1]))


@torch.no_grad()
def metacog_generate(model: nn.Module, head: MetaHead, input_ids: Tensor, *, max_new_tokens: int,
                     temperature: float = 0.8, top_k: int = 0, top_p: float = 1.0,
                     repetition_penalty: float = 1.0,
                     regulator: MetacognitiveRegulator | None = None, eos_id: int | None = None,
                     span: int = 32, boundary_ids: Collection[int] = (), use_cache: bool = True,
                     generator: torch.Generator | None = None) -> Iterator[TokenEvent]:
    """Yield TokenEvents for up to ``max_new_tokens`` new tokens after ``input_ids`` (1, T) or (T,).

    ``regulator`` defaults to one built from ``head.config``. ``generator`` must live on the model's
    device. Put the model and head in eval mode first.
    """
    if max_new_tokens < 0 or span < 1:
        raise ConfigError(f"max_new_tokens must be >= 0 and span >= 1, got {max_new_tokens}, {span}")
    if top_k < 0 or not 0.0 < top_p <= 1.0 or repetition_penalty <= 0:
        raise ConfigError(f"bad sampling settings: top_k={top_k}, top_p={top_p}, "
                          f"repetition_penalty={repetition_penalty}")
    ids = input_ids[None] if input_ids.dim() == 1 else input_ids
    if ids.dim() != 2 or ids.shape[0] != 1 or ids.shape[1] == 0:
        raise ConfigError(f"metacog generation needs one non-empty prompt (1, T), got "
                          f"{tuple(input_ids.shape)}")
    regulator = regulator or MetacognitiveRegulator(head.config)
    device = next(iter(model.parameters()), ids).device
    dec = _Decoder(model, head, ids.long().to(device), max_new_tokens, use_cache)
    boundaries = frozenset(boundary_ids)

    def draw(n: int, banned: set[int], resampled: bool, has_content: bool) -> _Span:
        """Up to ``n`` tokens; ``banned`` ids are excluded at the first one. ``has_content``: the
        span already holds a non-boundary token (leading boundaries, like the newline after a full
        stop, join the sentence that follows instead of making a span of their own)."""
        out = _Span()
        for i in range(n):
            logits = dec.next_meta()[0].clone()
            logits = apply_repetition_penalty(logits, dec.ids, repetition_penalty)
            ban = set(banned)
            if i == 0 and resampled and not has_content:
                ban |= boundaries  # a repair must write something, not end an empty sentence
            if i == 0 and ban and len(ban) < logits.shape[-1]:
                logits[0, sorted(ban)] = float("-inf")
            token = int(sample_next(logits, temperature=temperature, top_k=top_k, top_p=top_p,
                                    generator=generator)[0])
            dec.append([token])
            _, conf, errs, term = dec.next_meta()  # this token's hidden state
            out.tokens.append(token)
            out.confidence.append(conf)
            out.errors.append(errs)
            out.termination.append(term)
            out.resampled.append(resampled)
            if token == eos_id or (token in boundaries and has_content):
                break
            has_content |= token not in boundaries
        return out

    produced = 0
    while produced < max_new_tokens:
        base = dec.length
        dec.forget_before(base)
        size = min(span, max_new_tokens - produced)
        current = draw(size, set(), False, False)
        iteration = 0
        banned: dict[int, set[int]] = {}
        while True:
            ending = current.tokens[-1]
            finished = not boundaries or ending in boundaries or ending == eos_id
            step = regulator.step(current.window(finished), iteration)
            if step.action != RESAMPLE:
                break
            iteration = step.iteration
            at = step.resample_from
            banned = {q: s for q, s in banned.items() if q <= at}  # later bans had another prefix
            tried = banned.setdefault(at, set())
            tried.add(current.tokens[at])
            has_content = any(t not in boundaries for t in current.tokens[:at])
            num_candidates = (regulator.config.planning_candidates
                              if regulator.config.enable_planning else 1)
            candidates = []
            for _ in range(num_candidates):
                dec.truncate(base + at)
                candidates.append(draw(size - at, set(tried), True, has_content))
                tried.add(candidates[-1].tokens[0])
            best = regulator.plan([CandidateScore(sum(c.confidence) / len(c.confidence))
                                   for c in candidates])
            if best != len(candidates) - 1:
                dec.truncate(base + at)
                dec.append(candidates[best].tokens)
            current = current.head(at).extend(candidates[best])

        produced += len(current.tokens)
        if current.tokens[-1] == eos_id:
            reason = "eos"
        elif step.action == STOP:
            reason = step.reason
        elif produced >= max_new_tokens:
            reason = "max_new_tokens"
        else:
            reason = None
        for i, token in enumerate(current.tokens):
            last = i == len(current.tokens) - 1
            yield TokenEvent(token_id=token, confidence=current.confidence[i],
                             resampled=current.resampled[i], stop_reason=reason if last else None)
        if reason is not None:
            return


SENTENCE_ENDS = ".!?"
_CLOSERS = "\"')]}»”’"


def is_sentence_boundary(text: str) -> bool:
    """True for a token's text that ends a sentence or a line: ``"."``, ``" ?"``, ``".\""``, ``"\n"``."""
    if "\n" in text:
        return True
    core = text.rstrip().rstrip(_CLOSERS)
    return bool(core) and core[-1] in SENTENCE_ENDS


def sentence_boundary_ids(decode: Callable[[list[int]], str], vocab: Iterable[int]) -> frozenset[int]:
    """The ids of ``vocab`` whose text, decoded alone, ends a sentence or a line."""
    return frozenset(i for i in vocab if is_sentence_boundary(decode([i])))

"""Log-likelihood of text under a VesperLM: a continuation given a context, or a whole document.

``vesper eval``'s multiple-choice tasks and the lm-evaluation-harness adapter both score through
:class:`LikelihoodScorer`, so the two agree on the same model.

* Tokenization follows lm-evaluation-harness: trailing whitespace of the context moves to the
  continuation; ``context + continuation`` is encoded once and split after the context's own
  tokens (so a BPE merge across the boundary is scored as the model would see the joined text).
  An empty context is conditioned on the end-of-text token, the separator the model was trained
  with between documents.
* A sequence longer than the context window keeps its last ``window + 1`` tokens.
* Rows of a batch are right-padded: attention is causal, so the padding never reaches a scored
  position (the model has no padding mask, and needs none for that).
* A document (``rolling``) is cut into disjoint target chunks of ``window`` tokens, each token
  predicted exactly once; the last chunk gets a full window of context.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Callable, Sequence

import torch

from vesper_core.errors import ConfigError, DataError
from vesper_core.model import VesperLM
from vesper_data.tokenizers import VesperTokenizer

TokenPair = tuple[list[int], list[int]]  # (context ids, continuation ids)


@dataclass(frozen=True)
class Scored:
    logprob: float  # sum of the continuation tokens' log-probabilities (natural log)
    is_greedy: bool  # every continuation token is the argmax of its prediction
    num_tokens: int  # continuation tokens scored


class LikelihoodScorer:
    """Scores continuations with ``model`` (eval mode, no gradients), ``batch_size`` sequences at a time."""

    def __init__(self, model: VesperLM, tokenizer: VesperTokenizer, device: torch.device | str, *,
                 batch_size: int = 8, autocast: Callable[[], contextlib.AbstractContextManager] = contextlib.nullcontext):
        if batch_size <= 0:
            raise ConfigError(f"--batch-size must be positive, got {batch_size}")
        self.model = model
        self.tokenizer = tokenizer
        self.device = torch.device(device)
        self.batch_size = batch_size
        self.autocast = autocast
        self.window = model.config.max_position_embeddings

    @property
    def prefix_id(self) -> int:
        """The token an empty context stands for (the document separator)."""
        if self.tokenizer.eos_id is None:
            raise ConfigError(f"tokenizer {self.tokenizer.name} has no end-of-text token to condition an empty "
                              f"context on; give every request a non-empty context")
        return self.tokenizer.eos_id

    # -- text -> token pairs ---------------------------------------------------------------------
    def split(self, context: str, continuation: str) -> TokenPair:
        """(context ids, continuation ids) as described in the module docstring."""
        stripped = context.rstrip()
        if stripped != context:
            continuation = context[len(stripped):] + continuation
            context = stripped
        whole = self.tokenizer.encode(context + continuation)
        context_ids = self.tokenizer.encode(context) if context else []
        continuation_ids = whole[len(context_ids):]
        if not continuation_ids:
            raise DataError(f"continuation {continuation!r} is empty after tokenization; nothing to score")
        return (context_ids or [self.prefix_id]), continuation_ids

    def loglikelihood(self, requests: Sequence[tuple[str, str]]) -> list[Scored]:
        """log P(continuation | context) for each (context, continuation)."""
        return self.score_tokens([self.split(c, x) for c, x in requests])

    def rolling(self, text: str) -> Scored:
        """log P(text) given only the separator before it, every token predicted once."""
        ids = self.tokenizer.encode(text)
        if not ids:
            return Scored(0.0, True, 0)
        sequence = [self.prefix_id, *ids]
        pairs = []
        for start in range(0, len(ids), self.window):
            end = min(start + self.window, len(ids))
            # targets ids[start:end] = sequence[start+1:end+1]; context: up to a window before them
            pairs.append((sequence[max(0, end - self.window):start + 1], ids[start:end]))
        parts = self.score_tokens(pairs)
        return Scored(sum(p.logprob for p in parts), all(p.is_greedy for p in parts), sum(p.num_tokens for p in parts))

    # -- the forward passes ----------------------------------------------------------------------
    @torch.no_grad()
    def score_tokens(self, pairs: Sequence[TokenPair]) -> list[Scored]:
        """Score token pairs in batches (longest first, results in the input order)."""
        rows = []
        for context_ids, continuation_ids in pairs:
            if not context_ids or not continuation_ids:
                raise DataError("a scored pair needs at least one context token and one continuation token")
            sequence = (list(context_ids) + list(continuation_ids))[-(self.window + 1):]
            rows.append((sequence, min(len(continuation_ids), len(sequence) - 1)))
        order = sorted(range(len(rows)), key=lambda i: -len(rows[i][0]))
        results: list[Scored | None] = [None] * len(rows)
        was_training = self.model.training
        self.model.eval()
        try:
            for first in range(0, len(order), self.batch_size):
                members = order[first:first + self.batch_size]
                for i, scored in zip(members, self._score_batch([rows[i] for i in members])):
                    results[i] = scored
        finally:
            self.model.train(was_training)
        return results  # type: ignore[return-value]

    def _score_batch(self, rows: list[tuple[list[int], int]]) -> list[Scored]:
        lengths = [len(seq) - 1 for seq, _ in rows]
        width = max(lengths)
        inputs = torch.zeros(len(rows), width, dtype=torch.long)  # (B, T), right-padded
        for r, (seq, _) in enumerate(rows):
            inputs[r, :len(seq) - 1] = torch.tensor(seq[:-1])
        with self.autocast():
            logits = self.model(inputs.to(self.device)).logits  # (B, T, V)
        logprobs = torch.log_softmax(logits.float(), dim=-1)
        out = []
        for r, (seq, num_scored) in enumerate(rows):
            end = lengths[r]
            targets = torch.tensor(seq[end - num_scored + 1:end + 1], device=self.device)  # (n,)
            predicted = logprobs[r, end - num_scored:end]  # (n, V): positions that predict the targets
            token_lp = predicted.gather(-1, targets[:, None]).squeeze(-1)  # (n,)
            greedy = bool((predicted.argmax(-1) == targets).all())
            out.append(Scored(float(token_lp.double().sum()), greedy, num_scored))
        return out

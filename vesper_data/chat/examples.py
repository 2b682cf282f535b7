"""Encoded conversations and the padded training windows made of them.

Storage (:class:`ChatExamples`): every conversation's tokens back to back (``tokens``), one byte per
token saying whether it is an assistant token the loss covers (``mask``, 1 = trained), and
``num + 1`` token ``offsets`` -- exactly a VSPR cache's token region and index, with the mask as a
sidecar file. ``--train-on-prompt`` is applied when windows are cut, so one cache serves both.

Windows (:class:`ChatWindows`): **one conversation per row, right-padded**, never packed. Row ``i``
holds conversation ``i``'s tokens ``t[0..n-1]``: inputs ``t[0..n-2]`` then padding, labels
``t[1..n-1]`` where trained, ``IGNORE_INDEX`` elsewhere (prompt tokens and every padded position).
Attention is causal, so a padded tail never changes the real positions' outputs, and no
conversation attends to another's tokens. A conversation longer than ``seq_len + 1`` tokens is
skipped and counted (``num_too_long``), never cut: a cut turn would teach the model to stop mid-answer.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Iterable, Sequence

import numpy as np
import torch

from vesper_core.errors import ConfigError, DataError
from vesper_core.kernels.cross_entropy import IGNORE_INDEX
from vesper_data.chat.formats import SkipCounter
from vesper_data.chat.template import ChatTemplate, Message

MASK_DTYPE = np.uint8


def encode_conversation(template: ChatTemplate, tokenizer, messages: Sequence[Message]) -> tuple[np.ndarray, np.ndarray]:
    """(tokens uint32, mask uint8) of one conversation; the mask marks the assistant tokens."""
    ids, labels = template.encode(tokenizer, messages)
    return np.asarray(ids, np.uint32), (np.asarray(labels) != IGNORE_INDEX).astype(MASK_DTYPE)


def encode_all(conversations: Iterable[Sequence[Message]], template: ChatTemplate, tokenizer,
               counter: SkipCounter, where: str = "conversation") -> Iterable[tuple[np.ndarray, np.ndarray]]:
    """Encoded conversations; one the template refuses is counted in ``counter`` and skipped."""
    template.check_tokenizer(tokenizer)
    for n, messages in enumerate(conversations, start=1):
        try:
            tokens, mask = encode_conversation(template, tokenizer, messages)
        except DataError as exc:
            counter.skip("refused by the chat template", f"{where} {n}: {str(exc)[:80]}")
            continue
        yield tokens, mask


@dataclass
class ChatExamples:
    tokens: np.ndarray  # (total,) uint32 (or a cache's memmap)
    mask: np.ndarray  # (total,) uint8, 1 = assistant token
    offsets: np.ndarray  # (num + 1,) token offsets
    skipped: SkipCounter = field(default_factory=SkipCounter)

    def __len__(self) -> int:
        return len(self.offsets) - 1

    @classmethod
    def from_pairs(cls, pairs: Iterable[tuple[np.ndarray, np.ndarray]], skipped: SkipCounter | None = None
                   ) -> "ChatExamples":
        tokens, masks, lengths = [], [], [0]
        for t, m in pairs:
            tokens.append(t)
            masks.append(m)
            lengths.append(len(t))
        empty = np.zeros(0, np.uint32)
        return cls(np.concatenate(tokens) if tokens else empty,
                   np.concatenate(masks) if masks else empty.astype(MASK_DTYPE),
                   np.cumsum(lengths, dtype=np.int64), skipped or SkipCounter())

    def example(self, i: int) -> tuple[np.ndarray, np.ndarray]:
        lo, hi = int(self.offsets[i]), int(self.offsets[i + 1])
        return self.tokens[lo:hi], self.mask[lo:hi]

    def split(self, val_fraction: float, min_val: int = 1) -> tuple["ChatExamples", "ChatExamples | None"]:
        """(train, held-out): the last ``val_fraction`` of the conversations is never trained on."""
        if val_fraction <= 0:
            return self, None
        num_val = int(len(self) * val_fraction)
        if num_val < min_val:
            raise DataError(f"--val-fraction {val_fraction} holds out {num_val} of {len(self)} conversations; "
                            f"raise it or add data")
        cut = len(self) - num_val
        at = int(self.offsets[cut])
        train = ChatExamples(self.tokens[:at], self.mask[:at], self.offsets[:cut + 1], self.skipped)
        val = ChatExamples(self.tokens[at:], self.mask[at:], self.offsets[cut:] - at)
        return train, val


def pad_examples(examples: Sequence[tuple[np.ndarray, np.ndarray]], seq_len: int, pad_id: int,
                 train_on_prompt: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """(input_ids, labels), each (len(examples), seq_len) int64, one conversation per row (see the module)."""
    inputs = np.full((len(examples), seq_len), pad_id, dtype=np.int64)
    labels = np.full((len(examples), seq_len), IGNORE_INDEX, dtype=np.int64)
    for row, (tokens, mask) in enumerate(examples):
        n = len(tokens) - 1  # predictions in this conversation
        inputs[row, :n] = tokens[:-1]
        targets = np.asarray(tokens[1:], dtype=np.int64)
        labels[row, :n] = targets if train_on_prompt else np.where(np.asarray(mask[1:]) != 0, targets, IGNORE_INDEX)
    return torch.from_numpy(inputs), torch.from_numpy(labels)


class ChatWindows:
    """TokenWindows' interface (``len``, ``[i]``, ``get_batch``) over conversations, one per padded row."""

    def __init__(self, examples: ChatExamples, seq_len: int, *, pad_id: int = 0, train_on_prompt: bool = False,
                 source: str = "the chat data"):
        if seq_len <= 0:
            raise ConfigError(f"--seq-len must be positive, got {seq_len}")
        self.examples, self.seq_len, self.pad_id = examples, seq_len, pad_id
        self.train_on_prompt = train_on_prompt
        lengths = np.diff(np.asarray(examples.offsets, dtype=np.int64))
        fits = (lengths >= 2) & (lengths <= seq_len + 1)
        self.index = np.flatnonzero(fits)
        self.num_too_long = int((lengths > seq_len + 1).sum())
        self.longest = int(lengths.max()) if len(lengths) else 0
        if not len(self.index):
            if self.num_too_long:
                raise DataError(f"{source}: every conversation is longer than a window of --seq-len + 1 = "
                                f"{seq_len + 1} tokens (longest {self.longest}); raise --seq-len")
            raise DataError(f"{source} has no conversations to train on "
                            f"({examples.skipped.summary() or 'no usable records'})")

    def notice(self, source: str) -> str:
        """One line about what was left out, or ''."""
        parts = []
        if self.num_too_long:
            parts.append(f"{self.num_too_long} conversation(s) longer than --seq-len + 1 = {self.seq_len + 1} tokens "
                         f"skipped (longest {self.longest})")
        summary = self.examples.skipped.summary()
        if summary:
            parts.append(summary)
        return f"{source}: " + "; ".join(parts) if parts else ""

    def __len__(self) -> int:
        return len(self.index)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        if not -len(self) <= i < len(self):
            raise IndexError(f"conversation {i} out of range for {len(self)} conversations")
        ids, labels = self.get_batch([i % len(self)])
        return ids[0], labels[0]

    def get_batch(self, indices) -> tuple[torch.Tensor, torch.Tensor]:
        """Conversations ``indices`` (positions among the usable ones) padded: (input_ids, labels), (B, S)."""
        rows = [self.examples.example(int(self.index[int(i)])) for i in np.asarray(indices).reshape(-1)]
        return pad_examples(rows, self.seq_len, self.pad_id, self.train_on_prompt)


def load_chat_examples(paths: Sequence[str], template: ChatTemplate, tokenizer,
                       on_warning: Callable[[str], None] | None = None) -> ChatExamples:
    """Read, normalise and encode every conversation of ``paths`` (in memory)."""
    from vesper_data.chat.formats import read_conversations

    total = SkipCounter()
    pairs = []
    for path in paths:
        conversations, counter = read_conversations(path)
        pairs.extend(encode_all(conversations, template, tokenizer, counter))
        total.merge(counter)
    return ChatExamples.from_pairs(pairs, total)

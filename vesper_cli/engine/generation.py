"""Text generation from a checkpoint: find its config and tokenizer, stream decoded text.

Sampling is ``vesper_core.generation`` (UPSTREAM_SPEC §7.2 order: repetition penalty, temperature,
top-k, top-p, multinomial; greedy at temperature 0). On top of it this module adds what a person
needs: text streaming that never splits a UTF-8 character, stop strings (never printed), several
samples, and batches of prompts.

Batching: rows (prompt x sample) whose prompts encode to the same number of tokens run together as
one batch (the model has no padding mask, so prompts of different lengths run in separate batches).
A batch ends when every row has met EOS, a stop string, or ``max_tokens``.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator, Sequence

import torch

from vesper_core.checkpoint import check_tokenizer, LoadedCheckpoint, read_checkpoint
from vesper_core.errors import CheckpointError, ConfigError
from vesper_core.generation import generate_tokens
from vesper_core.model import VesperLM
from vesper_core.precision import parse_inference_dtype, prepare_for_inference
from vesper_core.presets import model_config
from vesper_data.tokenizers import VesperTokenizer, load_tokenizer


@dataclass(kw_only=True)
class SamplingConfig:
    max_tokens: int = 100
    temperature: float = 0.8
    top_k: int = 0
    top_p: float = 1.0
    repetition_penalty: float = 1.0
    seed: int | None = None
    stop_at_eos: bool = True
    stop: tuple[str, ...] = ()  # stop strings: generation ends before the first one (never emitted)

    def __post_init__(self) -> None:
        self.stop = tuple(self.stop or ())
        if any(not s for s in self.stop):
            raise ConfigError("--stop strings must not be empty")
        if self.max_tokens < 0:
            raise ConfigError(f"--max-tokens must be >= 0, got {self.max_tokens}")
        if self.temperature < 0:
            raise ConfigError(f"--temperature must be >= 0 (0 = greedy), got {self.temperature}")
        if self.top_k < 0:
            raise ConfigError(f"--top-k must be >= 0 (0 = off), got {self.top_k}")
        if not 0 < self.top_p <= 1:
            raise ConfigError(f"--top-p must be in (0, 1], got {self.top_p}")
        if self.repetition_penalty <= 0:
            raise ConfigError(f"--repetition-penalty must be positive (1 = off), got {self.repetition_penalty}")


@dataclass
class Generator:
    model: VesperLM
    tokenizer: VesperTokenizer
    device: torch.device
    checkpoint: LoadedCheckpoint
    stats: dict = field(default_factory=dict)

    def _ids(self, prompt: str, max_tokens: int | None = None) -> list[int]:
        ids = self.tokenizer.encode(prompt)
        if not ids:
            raise ConfigError(f"prompt {prompt!r} is empty after tokenization; give some text")
        context = self.model.config.max_position_embeddings
        if max_tokens is not None and len(ids) + max_tokens > context:
            room = context - len(ids)
            fix = (f"lower --max-tokens to {room} or less" if room > 0 else "shorten the prompt")
            raise ConfigError(f"--max-tokens {max_tokens} plus the prompt's {len(ids)} tokens exceed the model's "
                              f"context of {context} positions; {fix}")
        return ids

    def check(self, prompt: str, sampling: SamplingConfig) -> None:
        """ConfigError before anything is printed when ``prompt`` cannot be completed as asked."""
        self._ids(prompt, sampling.max_tokens)

    def _generator(self, sampling: SamplingConfig) -> torch.Generator | None:
        if sampling.seed is None:
            return None
        return torch.Generator(device=self.device).manual_seed(sampling.seed)

    def _tokens(self, ids: torch.Tensor, sampling: SamplingConfig, gen: torch.Generator | None,
                stop_token_ids: Sequence[int] = ()):
        return generate_tokens(
            self.model, ids, max_new_tokens=sampling.max_tokens, temperature=sampling.temperature,
            top_k=sampling.top_k, top_p=sampling.top_p, repetition_penalty=sampling.repetition_penalty,
            eos_token_id=self.tokenizer.eos_id if sampling.stop_at_eos else None, stop_ids=stop_token_ids or None,
            generator=gen,
        )

    def stream(self, prompt: str, sampling: SamplingConfig,
               generator: torch.Generator | None = None) -> Iterator[str]:
        """Yield decoded text pieces as tokens are produced (multi-byte characters are never split).

        Text that could be the start of a stop string is held back until it is known not to be one.
        ``generator`` (default: a new one from ``sampling.seed``) lets several calls share one stream
        of random numbers. ``self.stats`` holds new_tokens, seconds, tokens_per_sec and stopped_by.
        """
        yield from self.stream_ids(self._ids(prompt, sampling.max_tokens), sampling, generator)

    def stream_ids(self, prompt_ids: Sequence[int], sampling: SamplingConfig,
                   generator: torch.Generator | None = None, *,
                   stop_token_ids: Sequence[int] = ()) -> Iterator[str]:
        """``stream`` for a prompt that is already token ids (a chat template's, a truncated context).

        Generation also ends at any of ``stop_token_ids`` (an end-of-turn token: never emitted;
        ``stats["stopped_by"]`` is then ``"stop_token"``). The caller keeps ``prompt_ids`` plus
        ``sampling.max_tokens`` within the model's context.
        """
        ids = torch.tensor([list(prompt_ids)], dtype=torch.long, device=self.device)  # (1, T)
        gen = generator if generator is not None else self._generator(sampling)
        row = _Row(self.tokenizer, sampling, stop_token_ids)
        start = time.perf_counter()
        for token in self._tokens(ids, sampling, gen, stop_token_ids):
            row.add(int(token[0]))
            piece = row.take()
            if piece:
                yield piece
            if row.stopped_by:
                break
        piece = row.finish()
        if piece:
            yield piece
        self.stats = _stats(row.num_tokens, time.perf_counter() - start, row.stopped_by or "max_tokens")

    def generate_batch(self, prompts: Sequence[str], sampling: SamplingConfig,
                       num_samples: int = 1) -> list["Completion"]:
        """``num_samples`` completions of every prompt, in (prompt, sample) order, batched by prompt length."""
        if num_samples <= 0:
            raise ConfigError(f"--num-samples must be positive, got {num_samples}")
        encoded = [self._ids(p, sampling.max_tokens) for p in prompts]
        rows = [(i, s) for i in range(len(prompts)) for s in range(num_samples)]
        groups: dict[int, list[tuple[int, int]]] = {}
        for i, s in rows:
            groups.setdefault(len(encoded[i]), []).append((i, s))
        gen = self._generator(sampling)
        results: dict[tuple[int, int], Completion] = {}
        total_tokens, start = 0, time.perf_counter()
        for members in groups.values():
            ids = torch.tensor([encoded[i] for i, _ in members], dtype=torch.long, device=self.device)  # (B, T)
            states = [_Row(self.tokenizer, sampling) for _ in members]
            for token in self._tokens(ids, sampling, gen):  # (B,)
                for state, t in zip(states, token.tolist()):
                    if not state.stopped_by:
                        state.add(int(t))
                if all(state.stopped_by for state in states):
                    break
            for (i, s), state in zip(members, states):
                state.take()
                state.finish()
                total_tokens += state.num_tokens
                results[(i, s)] = Completion(prompt=prompts[i], prompt_index=i, sample=s, text=state.emitted,
                                             num_tokens=state.num_tokens,
                                             stopped_by=state.stopped_by or "max_tokens")
        self.stats = _stats(total_tokens, time.perf_counter() - start, "batch")
        self.stats["num_batches"] = len(groups)
        return [results[key] for key in rows]


@dataclass
class Completion:
    prompt: str
    prompt_index: int
    sample: int
    text: str  # the new text only (the prompt is not repeated)
    num_tokens: int
    stopped_by: str  # "eos" | "stop" | "stop_token" | "max_tokens"


def _stats(num_tokens: int, seconds: float, stopped_by: str) -> dict:
    return {"new_tokens": num_tokens, "seconds": seconds,
            "tokens_per_sec": num_tokens / seconds if seconds > 0 else 0.0, "stopped_by": stopped_by}


def stop_index(text: str, stops: Sequence[str]) -> int | None:
    """Where the earliest stop string starts in ``text``, or None."""
    found = [i for i in (text.find(s) for s in stops) if i >= 0]
    return min(found) if found else None


def held_back(text: str, stops: Sequence[str]) -> int:
    """Length of the longest end of ``text`` that is the beginning of some stop string."""
    best = 0
    for s in stops:
        for n in range(min(len(s) - 1, len(text)), best, -1):
            if text.endswith(s[:n]):
                best = n
                break
    return best


class _Row:
    """One sequence's decoded text: what is safe to emit, and whether it has stopped."""

    def __init__(self, tokenizer: VesperTokenizer, sampling: SamplingConfig, stop_token_ids: Sequence[int] = ()):
        self.tokenizer = tokenizer
        self.eos_id = tokenizer.eos_id if sampling.stop_at_eos else None
        self.stop_token_ids = frozenset(stop_token_ids)
        self.stops = sampling.stop
        self.ids: list[int] = []
        self.emitted = ""
        self.stopped_by: str | None = None
        self._final: str | None = None  # the whole text once a stop string was found

    @property
    def num_tokens(self) -> int:
        return len(self.ids)

    def add(self, token_id: int) -> None:
        if self.eos_id is not None and token_id == self.eos_id:
            self.stopped_by = "eos"
            return
        if token_id in self.stop_token_ids:
            self.stopped_by = "stop_token"
            return
        self.ids.append(token_id)
        if self.stops:
            text = self.tokenizer.decode(self.ids)
            cut = stop_index(text, self.stops)
            if cut is not None:
                self.stopped_by = "stop"
                self._final = text[:cut]

    def take(self) -> str:
        """The text that can be shown now."""
        if self._final is not None:
            text, safe = self._final, len(self._final)
        else:
            text = self.tokenizer.decode(self.ids)
            if text.endswith("\ufffd"):
                return ""  # an incomplete UTF-8 sequence: wait for the next token
            safe = len(text) - held_back(text, self.stops)
        safe = min(safe, len(text.rstrip()))  # trailing whitespace waits for text after it (or is dropped)
        if safe <= len(self.emitted):
            return ""
        piece = text[len(self.emitted):safe]
        self.emitted = text[:safe]
        return piece

    def finish(self) -> str:
        """Whatever is left once generation ended (held-back text that turned out not to be a stop); trailing
        whitespace is dropped, so a model that pads its answer with newlines does not pad the output."""
        text = (self._final if self._final is not None else self.tokenizer.decode(self.ids)).rstrip()
        piece = text[len(self.emitted):] if len(text) > len(self.emitted) else ""
        self.emitted = text if len(text) > len(self.emitted) else self.emitted
        return piece


def load_generator(model_path: str | Path, *, tokenizer: str | None = None, model_size: str | None = None,
                   device: torch.device | str = "cpu", dtype: str = "f32") -> Generator:
    """Load a checkpoint for sampling; --tokenizer / --model-size only override what it records.

    ``dtype``: ``f32`` | ``bf16`` | ``f16`` | ``int8`` (weight-only, torchao), see vesper_core.precision.
    """
    dtype = parse_inference_dtype(dtype)  # refuse a bad name before reading anything
    override = None
    tok: VesperTokenizer | None = load_tokenizer(tokenizer) if tokenizer else None
    if model_size is not None:
        if tok is None:
            raise ConfigError("--model-size overrides the checkpoint's config and then needs --tokenizer too")
        override = model_config(model_size, vocab_size=tok.vocab_size)
    ckpt = read_checkpoint(model_path, config_override=override)
    tok = checkpoint_tokenizer(ckpt, tok)
    model = prepare_for_inference(ckpt.build_model(device), dtype)
    return Generator(model=model, tokenizer=tok, device=torch.device(device), checkpoint=ckpt)


def checkpoint_tokenizer(ckpt: LoadedCheckpoint, tokenizer: VesperTokenizer | str | None = None) -> VesperTokenizer:
    """The tokenizer saved with ``ckpt`` (or ``tokenizer``, a spec or an instance), checked against the hash
    it records and the model's vocabulary."""
    tok = load_tokenizer(tokenizer) if isinstance(tokenizer, str) else tokenizer
    if tok is None:
        found = [p for p in ckpt.tokenizer_candidates() if p.is_file()]
        if not found:
            raise CheckpointError(
                f"no tokenizer.json next to {ckpt.path}; pass --tokenizer PATH (the one used for training)"
            )
        recorded = ckpt.meta("tokenizer_sha256")
        loaded = [load_tokenizer(str(p)) for p in found]
        tok = next((t for t in loaded if not recorded or t.sha256() == str(recorded)), loaded[0])
    check_tokenizer(ckpt, tok.sha256(), tok.name)
    if tok.vocab_size > ckpt.config.vocab_size:
        raise CheckpointError(
            f"tokenizer {tok.name} has {tok.vocab_size} tokens but the model only {ckpt.config.vocab_size}; "
            f"pass the tokenizer the model was trained with"
        )
    return tok

"""Text generation from a checkpoint: find its config and tokenizer, stream decoded text."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

import torch

from vesper_cli.checkpoint import LoadedCheckpoint, read_checkpoint
from vesper_core.errors import CheckpointError, ConfigError
from vesper_core.generation import generate_tokens
from vesper_core.model import VesperLM
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

    def __post_init__(self) -> None:
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

    def stream(self, prompt: str, sampling: SamplingConfig) -> Iterator[str]:
        """Yield decoded text pieces as tokens are produced (multi-byte characters are never split)."""
        prompt_ids = self.tokenizer.encode(prompt)
        if not prompt_ids:
            raise ConfigError("--prompt is empty after tokenization; give some text")
        ids = torch.tensor([prompt_ids], dtype=torch.long, device=self.device)
        gen = None
        if sampling.seed is not None:
            gen = torch.Generator(device=self.device).manual_seed(sampling.seed)
        new_ids: list[int] = []
        emitted = ""
        start = time.perf_counter()
        for token in generate_tokens(
            self.model, ids, max_new_tokens=sampling.max_tokens, temperature=sampling.temperature,
            top_k=sampling.top_k, top_p=sampling.top_p, repetition_penalty=sampling.repetition_penalty,
            eos_token_id=self.tokenizer.eos_id if sampling.stop_at_eos else None, generator=gen,
        ):
            token_id = int(token[0])
            if sampling.stop_at_eos and token_id == self.tokenizer.eos_id:
                break
            new_ids.append(token_id)
            text = self.tokenizer.decode(new_ids)
            if text.endswith("\ufffd"):
                continue  # an incomplete UTF-8 sequence: wait for the next token
            yield text[len(emitted):]
            emitted = text
        text = self.tokenizer.decode(new_ids)
        if len(text) > len(emitted):
            yield text[len(emitted):]
        elapsed = time.perf_counter() - start
        self.stats = {"new_tokens": len(new_ids), "seconds": elapsed,
                      "tokens_per_sec": len(new_ids) / elapsed if elapsed > 0 else 0.0}


def load_generator(model_path: str | Path, *, tokenizer: str | None = None, model_size: str | None = None,
                   device: torch.device | str = "cpu") -> Generator:
    """Load a checkpoint for sampling; --tokenizer / --model-size only override what it records."""
    override = None
    tok: VesperTokenizer | None = load_tokenizer(tokenizer) if tokenizer else None
    if model_size is not None:
        if tok is None:
            raise ConfigError("--model-size overrides the checkpoint's config and then needs --tokenizer too")
        override = model_config(model_size, vocab_size=tok.vocab_size)
    ckpt = read_checkpoint(model_path, config_override=override)
    if tok is None:
        found = [p for p in ckpt.tokenizer_candidates() if p.is_file()]
        if not found:
            raise CheckpointError(
                f"no tokenizer.json next to {ckpt.path}; pass --tokenizer PATH (the one used for training)"
            )
        tok = load_tokenizer(str(found[0]))
    if tok.vocab_size > ckpt.config.vocab_size:
        raise CheckpointError(
            f"tokenizer {tok.name} has {tok.vocab_size} tokens but the model only {ckpt.config.vocab_size}; "
            f"pass the tokenizer the model was trained with"
        )
    model = ckpt.build_model(device)
    model.eval()
    return Generator(model=model, tokenizer=tok, device=torch.device(device), checkpoint=ckpt)

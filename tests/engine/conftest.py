"""A tiny untrained VesperLM + the byte tokenizer, wrapped as a Generator (no checkpoint, no training)."""

from __future__ import annotations

import pytest
import torch

from vesper_core.model import VesperLM
from vesper_core.presets import model_config
from vesper_data.tokenizers import load_tokenizer
from vesper_cli.engine.generation import Generator


def make_generator(context: int = 64, seed: int = 0) -> Generator:
    tokenizer = load_tokenizer("byte")
    torch.manual_seed(seed)
    config = model_config("nano", vocab_size=tokenizer.vocab_size, max_position_embeddings=context)
    model = VesperLM(config).eval()
    return Generator(model=model, tokenizer=tokenizer, device=torch.device("cpu"), checkpoint=None)


@pytest.fixture(scope="module")
def tiny_gen() -> Generator:
    return make_generator()


def token_logprobs(model: VesperLM, ids: list[int]) -> list[float]:
    """log P(ids[i] | ids[:i]) for i >= 1, from one plain forward pass (the reference)."""
    with torch.no_grad():
        logits = model(torch.tensor([ids[:-1]])).logits[0].float()  # (T, V)
    logprobs = torch.log_softmax(logits, dim=-1)
    return [float(logprobs[i, ids[i + 1]]) for i in range(len(ids) - 1)]

"""Tiny checkpoints for the export and precision tests: random weights (every branch non-zero), saved like
`vesper train` saves them (weights + config metadata, tokenizer.json beside)."""

from __future__ import annotations

from pathlib import Path

import torch

from vesper_core.checkpoint import save_weights
from vesper_core.config import ModelConfig
from vesper_core.model import VesperLM
from vesper_data.tokenizers import VesperTokenizer, byte_tokenizer, train_bpe

TEXT = ("the cat sees the red house every morning. a dog likes the small boat. "
        "our teacher paints the quiet river; my friend remembers an open window. ") * 20


def tiny_config(vocab_size: int, **changes) -> ModelConfig:
    base = dict(vocab_size=vocab_size, hidden_size=32, num_layers=2, num_heads=4, intermediate_size=64,
                flylora_rank=4, flylora_alpha=8.0, max_position_embeddings=64)
    return ModelConfig(**{**base, **changes})


def random_model(config: ModelConfig, seed: int = 0) -> VesperLM:
    """A VesperLM whose weights are all random (the FlyLoRA up projections too, unlike a fresh init), so
    every part of the forward pass shapes the logits."""
    torch.manual_seed(seed)
    model = VesperLM(config)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name:
                p.copy_(1.0 + 0.1 * torch.randn_like(p))
            elif name == "embeddings.weight":
                p.normal_(0.0, 1.0)
            else:
                p.normal_(0.0, 0.15)
    return model.eval()


def bpe_tokenizer(vocab_size: int = 300) -> VesperTokenizer:
    return train_bpe([TEXT], vocab_size, min_frequency=2)


def write_checkpoint(folder: Path, config: ModelConfig, tokenizer: VesperTokenizer, seed: int = 0) -> Path:
    """checkpoint-final.safetensors + tokenizer.json in ``folder``; returns the checkpoint path."""
    folder.mkdir(parents=True, exist_ok=True)
    model = random_model(config, seed)
    path = save_weights(folder / "checkpoint-final.safetensors", model,
                        extra={"tokenizer_sha256": tokenizer.sha256()})
    tokenizer.save(folder / "tokenizer.json")
    return path


def byte_checkpoint(folder: Path, **changes) -> Path:
    tok = byte_tokenizer()
    return write_checkpoint(folder, tiny_config(tok.vocab_size, **changes), tok)

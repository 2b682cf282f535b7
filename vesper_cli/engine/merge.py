"""``vesper merge``: fold a LoRA / FlyLoRA adapter checkpoint into a plain checkpoint.

The result has the normal checkpoint format (the base's architecture, the merged f32 weights, the
adapter run's metadata: step, tokenizer hash, chat template, ...), so every consumer loads it without the base file. Before
writing, the merged model is compared with the adapted one on a probe batch: the largest absolute
logit difference is part of the result (it is ~1e-6; above ``MAX_LOGIT_DIFF`` nothing is written).
The tokenizer travels with it: ``tokenizer.json`` in the output folder when that is free (or the same
file), else ``<output>.tokenizer.json`` beside it.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from vesper_core.checkpoint import TOKENIZER_FILE, read_checkpoint, save_weights
from vesper_core.errors import CheckpointError, ConfigError
from vesper_core.layers.adapters import merge_adapters
from vesper_cli.engine.paths import check_writable

MAX_LOGIT_DIFF = 1e-5
# metadata that describes the adapter file itself (save_weights writes the format keys anew); the rest
# (step, model size, tokenizer hash, chat template, vocabulary growth, ...) is carried over
_NOT_CARRIED = {"format", "vesper_format_version", "vesper_version", "model_config", "checkpoint_kind",
                "adapter_config", "base_checkpoint", "base_checkpoint_relative", "base_sha256"}


@dataclass
class MergeResult:
    output: Path
    source: Path
    base: Path
    kind: str
    num_adapted: int
    max_logit_diff: float
    tokenizer: Path | None  # where the tokenizer was written (None: the adapter run had none)


def _tokenizer_of(ckpt):
    from vesper_data.tokenizers import VesperTokenizer

    recorded = ckpt.meta("tokenizer_sha256")
    for path in ckpt.tokenizer_candidates():
        if path.is_file():
            tok = VesperTokenizer.from_file(path)
            if not recorded or tok.sha256() == str(recorded):
                return tok
    return None


def _same_file(a: Path, b: Path) -> bool:
    try:
        return a.resolve() == b.resolve()
    except OSError:
        return False


@torch.no_grad()
def max_logit_difference(a: torch.nn.Module, b: torch.nn.Module, vocab_size: int, context: int, seed: int = 0) -> float:
    """Largest |logits_a - logits_b| on a seeded random batch of token ids (2 x up to 64 tokens)."""
    gen = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, vocab_size, (2, min(64, context)), generator=gen)
    return float((a(ids).logits.double() - b(ids).logits.double()).abs().max())


def merge_checkpoint(model: str | Path, output: str | Path, *, overwrite: bool = False) -> MergeResult:
    """Write ``model`` (an adapter checkpoint) with its adapters folded in to ``output``; validates first."""
    output = Path(output)
    if output.suffix != ".safetensors":
        raise ConfigError(f"--output {output} must end in .safetensors (a checkpoint file)")
    check_writable(output, "--output")
    if output.exists() and not overwrite:
        raise ConfigError(f"--output {output} already exists; pass --overwrite to replace it, or choose another name")
    ckpt = read_checkpoint(model)
    if not ckpt.is_adapter:
        raise ConfigError(f"--model {ckpt.path} is a plain checkpoint (no adapters) and needs no merging; pass "
                          f"a checkpoint of a --finetune lora/flylora run")
    if _same_file(output, ckpt.path) or _same_file(output, ckpt.adapter.base_path):
        raise ConfigError(f"--output {output} is the adapter checkpoint or its base; write the merged model to "
                          f"another file")
    adapted = ckpt.build_model().eval()
    merged = merge_adapters(adapted).eval()  # refuses routed (top-k) FlyLoRA adapters
    diff = max_logit_difference(adapted, merged, ckpt.config.vocab_size, ckpt.config.max_position_embeddings)
    if not diff <= MAX_LOGIT_DIFF:
        raise CheckpointError(f"the merged model's logits differ from the adapted model's by {diff:.3g} "
                              f"(> {MAX_LOGIT_DIFF:g}); nothing was written (please report this)")
    tokenizer = _tokenizer_of(ckpt)
    tok_path = None
    if tokenizer is not None:
        tok_path = output.parent / TOKENIZER_FILE
        if tok_path.exists() and _tokenizer_sha(tok_path) != tokenizer.sha256():
            tok_path = output.with_suffix(".tokenizer.json")
            if tok_path.exists() and not overwrite and _tokenizer_sha(tok_path) != tokenizer.sha256():
                raise ConfigError(f"{tok_path} (where the merged model's tokenizer would go) holds another "
                                  f"tokenizer; pass --overwrite to replace it, or choose another --output")
    extra = {k: v for k, v in ckpt.metadata.items() if k not in _NOT_CARRIED}
    extra.update(merged_from=str(ckpt.path.resolve()), merged_base_sha256=ckpt.adapter.base_sha256,
                 merged_adapter_config=ckpt.adapter.config.to_dict())
    output.parent.mkdir(parents=True, exist_ok=True)
    save_weights(output, merged, extra=extra)
    if tokenizer is not None:
        tokenizer.save(tok_path)
    return MergeResult(output=output, source=ckpt.path, base=ckpt.adapter.base_path, kind=ckpt.adapter.config.kind,
                       num_adapted=len(ckpt.adapter.state_dict) // 2, max_logit_diff=diff, tokenizer=tok_path)


def _tokenizer_sha(path: Path) -> str | None:
    from vesper_data.tokenizers import VesperTokenizer

    try:
        return VesperTokenizer.from_file(path).sha256()
    except Exception:  # an unreadable file counts as a different tokenizer
        return None

"""VesperLM: a pre-norm decoder-only transformer (UPSTREAM_SPEC §2.3).

``ids -> Embedding -> [Block x L] -> final_norm -> lm_head (tied to the embedding, no bias) -> logits``.
Parameter names match the upstream checkpoints (§2.9): ``layers.{i}.attention.q_proj``,
``layers.{i}.ffn.gate_proj.base``, ``layers.{i}.ffn.router``, ``layers.{i}.ffn.experts.{j}...``.

Initialisation: every Linear weight and the embedding ~ N(0, init_std), biases 0, LayerNorm 1/0, then
each FlyLoRA ``lora_up`` back to zero so the LoRA branch starts silent (upstream overwrote it, bug 20).
Unlike upstream, the residual output projections (``o_proj``, ``down_proj``) use
``init_std / sqrt(2 * num_layers)`` (GPT-2), which keeps the residual stream's variance independent of
depth.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Mapping

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from vesper_core.config import ModelConfig
from vesper_core.errors import CheckpointError, ConfigError
from vesper_core.layers import Attention, FlyLoRALinear, GLUFeedForward, MoEFeedForward, RotaryEmbedding
from vesper_core.kernels.cross_entropy import IGNORE_INDEX, chunked_cross_entropy, normalized_entropy, uses_chunked_loss
from vesper_core.layers.attention import LayerCache

if TYPE_CHECKING:
    from vesper_core.generation import KVCache

TIED_KEY = "lm_head.weight"
_WRAPPER_PREFIX = "_orig_mod."  # added by torch.compile (upstream bug 24)
METACOG_PREFIX = "metacog."  # meta head tensors saved in the same file (vesper_metacog)


@dataclass
class ModelOutput:
    logits: Tensor | None  # (B, T, V); None when a chunked loss was computed without them
    aux_loss: Tensor | None = None  # MoE load-balancing loss summed over layers; None when dense
    hidden_states: Tensor | None = None  # final normed hidden (B, T, H) when return_hidden
    loss: Tensor | None = None  # cross-entropy against ``labels`` (mean or sum over non-ignored labels), f32
    entropy: Tensor | None = None  # detached mean normalised entropy of the predictions, with return_entropy


class Block(nn.Module):
    """``x + attention(norm(x))`` then ``+ ffn(norm(.))``; returns (x, MoE aux loss or None)."""

    def __init__(self, config: ModelConfig):
        super().__init__()
        H, eps = config.hidden_size, config.layer_norm_eps
        self.attention_norm = nn.LayerNorm(H, eps=eps)
        self.attention = Attention(config)
        self.ffn_norm = nn.LayerNorm(H, eps=eps)
        self.ffn = MoEFeedForward(config) if config.moe_enabled else GLUFeedForward(config)

    def forward(self, x: Tensor, cos: Tensor, sin: Tensor, cache: LayerCache | None = None,
                start: int = 0, key_mask: Tensor | None = None) -> tuple[Tensor, Tensor | None]:
        x = x + self.attention(self.attention_norm(x), cos, sin, cache, start, key_mask)  # (B, T, H)
        mixed = self.ffn(self.ffn_norm(x))
        if isinstance(mixed, tuple):  # MoE returns (out, aux)
            mixed, aux = mixed
        else:
            aux = None
        return x + mixed, aux


class VesperLM(nn.Module):
    def __init__(self, config: ModelConfig):
        super().__init__()
        self.config = config
        self.embeddings = nn.Embedding(config.vocab_size, config.hidden_size)
        self.rope = RotaryEmbedding(config.head_dim, config.rope_theta)  # no state
        self.layers = nn.ModuleList(Block(config) for _ in range(config.num_layers))
        self.final_norm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=False)
        self.lm_head.weight = self.embeddings.weight  # tied
        self.gradient_checkpointing = config.gradient_checkpointing
        self.reset_parameters()

    # -- set-up ------------------------------------------------------------------------
    @torch.no_grad()
    def reset_parameters(self) -> None:
        std = self.config.init_std
        residual_std = std / math.sqrt(2 * self.config.num_layers)
        for name, module in self.named_modules():
            if isinstance(module, nn.Linear):
                is_output = name.endswith(("o_proj", "down_proj"))
                nn.init.normal_(module.weight, 0.0, residual_std if is_output else std)
                if module.bias is not None:
                    nn.init.zeros_(module.bias)
            elif isinstance(module, nn.Embedding):
                nn.init.normal_(module.weight, 0.0, std)
            elif isinstance(module, nn.LayerNorm):
                nn.init.ones_(module.weight)
                nn.init.zeros_(module.bias)
        for module in self.modules():
            if isinstance(module, FlyLoRALinear):
                module.zero_lora_branch()

    def set_gradient_checkpointing(self, enabled: bool) -> None:
        """Recompute each block in backward instead of storing its activations (training only)."""
        self.gradient_checkpointing = bool(enabled)

    def num_parameters(self) -> int:
        """Unique trainable parameters (the tied head counts once); equals config.num_params()."""
        return sum(p.numel() for p in self.parameters() if p.requires_grad)

    # -- forward -----------------------------------------------------------------------
    def forward(self, input_ids: Tensor, labels: Tensor | None = None, *, kv_cache: "KVCache | None" = None,
                return_hidden: bool = False, compute_logits: bool | None = None, loss_impl: str = "auto",
                loss_reduction: str = "mean", return_entropy: bool = False,
                ignore_index: int = IGNORE_INDEX, key_mask: Tensor | None = None) -> ModelOutput:
        """Logits, and with ``labels`` (B, T) the cross-entropy loss computed here.

        ``loss_impl``: ``standard`` (full logits, then CE), ``chunked`` (fused linear + CE over row
        chunks: the (B*T, V) f32 logits never exist, no logits are returned unless ``compute_logits``)
        or ``auto`` (chunked from a 32k vocabulary). ``loss_reduction``: ``mean`` over non-ignored
        labels or ``sum``. ``return_entropy``: also the detached mean normalised entropy of the
        predictions (Velvet's logits signal), from the same pass. ``compute_logits=False`` without
        labels skips the LM head (the caller then uses ``hidden_states``). ``key_mask`` (B, cache length after
        this call; with ``kv_cache`` only): False on cache slots a row must not attend to, so that rows starting
        at different slots share one cache (RoPE scores depend only on the distance between positions).
        """
        if input_ids.dim() != 2:
            raise ConfigError(f"input_ids must be (batch, seq_len), got shape {tuple(input_ids.shape)}")
        B, T = input_ids.shape
        start = 0
        if key_mask is not None and kv_cache is None:
            raise ConfigError("key_mask needs a kv_cache (it hides cache slots)")
        if kv_cache is not None:
            kv_cache.check_room(B, T)
            start = kv_cache.length
        cos, sin = self.rope(start, T, input_ids.device)  # (T, D/2) f32 each
        recompute = (self.gradient_checkpointing and self.training and kv_cache is None
                     and torch.is_grad_enabled())

        x = self.embeddings(input_ids)  # (B, T, H)
        aux_total: Tensor | None = None
        for i, block in enumerate(self.layers):
            if recompute:
                x, aux = checkpoint(block, x, cos, sin, use_reentrant=False)
            else:
                cache = kv_cache.layers[i] if kv_cache is not None else None
                x, aux = block(x, cos, sin, cache, start, key_mask)
            if aux is not None:
                aux_total = aux if aux_total is None else aux_total + aux
        if kv_cache is not None:
            kv_cache.advance(T)

        hidden = self.final_norm(x)  # (B, T, H)
        out = ModelOutput(logits=None, aux_loss=aux_total, hidden_states=hidden if return_hidden else None)
        if labels is None:
            if compute_logits is False:
                out.hidden_states = hidden
            else:
                out.logits = self.lm_head(hidden)  # (B, T, V)
            return out
        if labels.shape != input_ids.shape:
            raise ConfigError(f"labels must have the shape of input_ids {tuple(input_ids.shape)}, "
                              f"got {tuple(labels.shape)}")
        if uses_chunked_loss(loss_impl, self.config.vocab_size):
            # fused linear + CE (under autocast its matmuls run in the autocast dtype, f32 inside each chunk)
            result = chunked_cross_entropy(hidden, self.lm_head.weight, labels, ignore_index=ignore_index,
                                           reduction=loss_reduction, return_entropy=return_entropy)
            out.loss, out.entropy = result if return_entropy else (result, None)
            if compute_logits:
                out.logits = self.lm_head(hidden)
        else:
            out.logits = self.lm_head(hidden)  # (B, T, V)
            out.loss = F.cross_entropy(out.logits.float().flatten(0, 1), labels.flatten(),
                                       ignore_index=ignore_index, reduction=loss_reduction)
            if return_entropy:
                out.entropy = normalized_entropy(out.logits.detach())
        return out

    # -- weights on disk -----------------------------------------------------------------
    def export_state_dict(self) -> dict[str, Tensor]:
        """State dict for safetensors: contiguous, detached, without the tied ``lm_head.weight``."""
        return {k: v.detach().contiguous() for k, v in self.state_dict().items() if k != TIED_KEY}

    def load_exported_state_dict(self, state_dict: Mapping[str, Tensor], strict: bool = True) -> None:
        """Load weights from ``export_state_dict`` (or a full state dict) with one-line errors.

        ``lm_head.weight`` may be present only as a copy of ``embeddings.weight``. A
        ``_orig_mod.`` prefix left by torch.compile is removed, and ``metacog.*`` tensors (a meta
        head saved in the same file) are ignored. Shape mismatches always raise; missing and
        unexpected keys raise when ``strict``.
        """
        given = {_strip_prefix(k): v for k, v in state_dict.items() if not k.startswith(METACOG_PREFIX)}
        head = given.pop(TIED_KEY, None)
        if head is not None and "embeddings.weight" in given:
            if not torch.equal(head, given["embeddings.weight"]):
                raise CheckpointError(
                    "checkpoint has an lm_head.weight different from embeddings.weight (an untied "
                    "head); VesperLM ties them, so this checkpoint cannot be loaded"
                )
        expected = {k: v for k, v in self.state_dict().items() if k != TIED_KEY}
        problems = _mismatches(expected, given, strict)
        if problems:
            raise CheckpointError(f"checkpoint does not match the model: {'; '.join(problems)}")
        self.load_state_dict(given, strict=False)


def _strip_prefix(key: str) -> str:
    return key[len(_WRAPPER_PREFIX):] if key.startswith(_WRAPPER_PREFIX) else key


def _mismatches(expected: Mapping[str, Tensor], given: Mapping[str, Tensor], strict: bool,
                show: int = 3) -> list[str]:
    def listing(keys: list[str]) -> str:
        more = f", ... ({len(keys) - show} more)" if len(keys) > show else ""
        return ", ".join(keys[:show]) + more

    problems = []
    if strict:
        missing = sorted(k for k in expected if k not in given)
        unexpected = sorted(k for k in given if k not in expected)
        if missing:
            problems.append(f"missing {len(missing)} key(s): {listing(missing)}")
        if unexpected:
            problems.append(f"unexpected {len(unexpected)} key(s): {listing(unexpected)}")
    wrong = [f"{k} checkpoint {list(given[k].shape)} vs model {list(v.shape)}"
             for k, v in expected.items() if k in given and given[k].shape != v.shape]
    if wrong:
        problems.append(f"{len(wrong)} shape mismatch(es): {listing(wrong)}")
    return problems

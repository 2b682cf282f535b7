"""An ONNX graph of VesperLM with an explicit KV cache, exported with torch's ONNX exporter (dynamo).

One graph serves prefill and decoding::

    input_ids (B, T) int64, past_keys / past_values (L, B, NH, P, D) float32
        -> logits (B, T, V), present_keys / present_values (L, B, NH, P + T, D)

P = 0 is the prefill (give empty past tensors); the new positions are P .. P+T-1 and each new query sees
every past key and the new keys up to itself, so any chunk size works. The Mixture of Experts runs every
expert on every token and weights the outputs with the (mostly zero) top-k routing weights: the same
result as Vesper's sparse dispatch, with no data-dependent shapes in the graph. ``onnx_runner`` drives
the graph with onnxruntime (greedy generation).
"""

from __future__ import annotations

import contextlib
import io
import logging
import warnings
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from vesper_core.atomic import write_json_atomic
from vesper_core.errors import BackendUnavailableError
from vesper_core.layers import MoEFeedForward
from vesper_core.layers.rope import apply_rotary
from vesper_core.model import VesperLM

from vesper_core.export.onnx_runner import ONNX_FILE, ONNX_META_FILE
INPUT_NAMES = ["input_ids", "past_keys", "past_values"]
OUTPUT_NAMES = ["logits", "present_keys", "present_values"]
EXPORT_EXTRA = "pip install 'vesper[export]'"


class CachedDecoder(nn.Module):
    """VesperLM's forward with the KV cache as stacked input and output tensors (for tracing)."""

    def __init__(self, model: VesperLM):
        super().__init__()
        self.model = model
        self.num_heads = model.config.num_heads
        self.head_dim = model.config.head_dim

    def forward(self, input_ids: Tensor, past_keys: Tensor, past_values: Tensor
                ) -> tuple[Tensor, Tensor, Tensor]:
        model = self.model
        B, T = input_ids.shape
        P = past_keys.shape[3]
        positions = torch.arange(T, device=input_ids.device, dtype=torch.float32) + P  # (T,)
        angles = positions[:, None] * model.rope.inv_freq(input_ids.device)[None, :]  # (T, D/2)
        cos, sin = angles.cos(), angles.sin()
        keys_seen = torch.arange(T, device=input_ids.device)[:, None] + P  # (T, 1) position of each query
        mask = torch.arange(P + T, device=input_ids.device)[None, :] <= keys_seen  # (T, P + T)

        x = model.embeddings(input_ids)  # (B, T, H)
        presents_k, presents_v = [], []
        for i, block in enumerate(model.layers):
            attention = block.attention
            h = block.attention_norm(x)
            q = self._heads(attention.q_proj(h))  # (B, NH, T, D)
            k = self._heads(attention.k_proj(h))
            v = self._heads(attention.v_proj(h))
            q, k = apply_rotary(q, cos, sin), apply_rotary(k, cos, sin)
            k = torch.cat([past_keys[i], k], dim=2)  # (B, NH, P + T, D)
            v = torch.cat([past_values[i], v], dim=2)
            presents_k.append(k)
            presents_v.append(v)
            out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)  # (B, NH, T, D)
            x = x + attention.o_proj(out.transpose(1, 2).reshape(B, T, -1))
            x = x + self._ffn(block.ffn, block.ffn_norm(x))
        logits = model.lm_head(model.final_norm(x))  # (B, T, V)
        return logits, torch.stack(presents_k), torch.stack(presents_v)

    def _heads(self, x: Tensor) -> Tensor:  # (B, T, H) -> (B, NH, T, D)
        B, T, _ = x.shape
        return x.view(B, T, self.num_heads, self.head_dim).transpose(1, 2)

    @staticmethod
    def _ffn(ffn: nn.Module, x: Tensor) -> Tensor:
        if not isinstance(ffn, MoEFeedForward):
            return ffn(x)  # the GLU feed-forward as Vesper runs it
        tokens = x.reshape(-1, x.shape[-1])  # (N, H)
        _, top_experts, weights = ffn.route(tokens)  # (N, K) each
        gates = torch.zeros(tokens.shape[0], ffn.num_experts, dtype=torch.float32, device=x.device)
        gates = gates.scatter_add(1, top_experts, weights)  # (N, E), zero outside each token's top k
        out = torch.zeros(tokens.shape, dtype=torch.float32, device=x.device)
        for e, expert in enumerate(ffn.experts):
            out = out + gates[:, e:e + 1] * expert(tokens).float()
        return out.to(x.dtype).view(x.shape)


@contextlib.contextmanager
def _quiet_exporter():
    """The exporter warns about optional torchvision ops and axis names; none of it concerns this graph."""
    loggers = [logging.getLogger(n) for n in ("torch.onnx", "torch.export", "onnxscript", "torch._dynamo")]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
            warnings.simplefilter("ignore")
            yield
    finally:
        for lg, level in zip(loggers, levels):
            lg.setLevel(level)


def empty_cache(model: VesperLM, batch: int = 1, length: int = 0) -> tuple[Tensor, Tensor]:
    c = model.config
    shape = (c.num_layers, batch, c.num_heads, length, c.head_dim)
    return torch.zeros(shape), torch.zeros(shape)


def check_onnx_exporter() -> None:
    """BackendUnavailableError with the install line when torch's dynamo ONNX exporter cannot run."""
    from vesper_core.device import has_module

    missing = [name for name in ("onnx", "onnxscript") if not has_module(name)]
    if missing:
        raise BackendUnavailableError(
            f"--format onnx needs {' and '.join(missing)} (torch's ONNX exporter); {EXPORT_EXTRA}")


def export_onnx(model: VesperLM, folder: str | Path, *, eos_token_id: int | None, opset: int = 18,
                dynamo: bool = True) -> list[Path]:
    """Write ``model.onnx`` (the graph above, float32, weights inside) and ``vesper_onnx.json`` (its shapes and
    the EOS id) into the existing ``folder``; returns the files written."""
    check_onnx_exporter()
    folder = Path(folder)
    model = model.float().eval()
    decoder = CachedDecoder(model).eval()
    ids = torch.zeros(1, 3, dtype=torch.long)
    past_k, past_v = empty_cache(model, 1, 2)
    batch, new, past = torch.export.Dim("batch"), torch.export.Dim("new_tokens"), torch.export.Dim("past_tokens")
    cache_shape = {1: batch, 3: past}
    target = folder / ONNX_FILE
    with torch.no_grad(), _quiet_exporter():
        program = torch.onnx.export(
            decoder, (ids, past_k, past_v), dynamo=dynamo, opset_version=opset, input_names=INPUT_NAMES,
            output_names=OUTPUT_NAMES, dynamic_shapes=({0: batch, 1: new}, cache_shape, cache_shape),
            external_data=False, optimize=True, verbose=False)
    program.save(str(target))
    c = model.config
    meta: dict[str, Any] = {"format": "vesper-onnx-kv", "version": 1, "num_layers": c.num_layers,
                            "num_heads": c.num_heads, "head_dim": c.head_dim, "vocab_size": c.vocab_size,
                            "max_position_embeddings": c.max_position_embeddings, "eos_token_id": eos_token_id,
                            "inputs": INPUT_NAMES, "outputs": OUTPUT_NAMES, "opset": opset}
    write_json_atomic(folder / ONNX_META_FILE, meta)
    return [target, folder / ONNX_META_FILE]

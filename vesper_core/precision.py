"""Inference precision: run a trained (f32) VesperLM in f32, bf16, f16 or weight-only int8.

``prepare_for_inference(model, "bf16")`` casts every parameter (RoPE tables, ERA, softmax routing and
the sampler's logits stay float32 inside the layers, as in training). ``"int8"`` keeps activations in
float32 and replaces the weight of every ``nn.Linear`` except the tied LM head with a per-row int8
tensor through torchao's weight-only int8 quantisation (``Int8WeightOnlyConfig``); the embedding and
the head it is tied to stay float32, so tying survives. torchao is an optional extra
(``pip install 'vesper[quant]'``).

bf16 and f16 run on CPU with torch >= 2.1 (matmul, SDPA and layer norm have CPU kernels for both); they
are slower than f32 on most CPUs, which the benchmark (benchmarks/bench_inference_dtype.py) shows.
"""

from __future__ import annotations

import difflib
import logging

import torch
from torch import Tensor, nn

from vesper_core.errors import BackendUnavailableError, ConfigError

#: the names ``--dtype`` accepts, in the order the CLI lists them
INFERENCE_DTYPES = ("f32", "bf16", "f16", "int8")
_ALIASES = {"float32": "f32", "fp32": "f32", "bfloat16": "bf16", "float16": "f16", "fp16": "f16",
            "half": "f16", "qint8": "int8"}
_FLOAT_DTYPES = {"f32": torch.float32, "bf16": torch.bfloat16, "f16": torch.float16}
QUANT_EXTRA = "pip install 'vesper[quant]'"


def parse_inference_dtype(name: str) -> str:
    """The canonical name (``f32`` | ``bf16`` | ``f16`` | ``int8``) of ``name``; aliases like bfloat16 work."""
    key = str(name).strip().lower()
    key = _ALIASES.get(key, key)
    if key not in INFERENCE_DTYPES:
        close = difflib.get_close_matches(key, INFERENCE_DTYPES + tuple(_ALIASES), n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        raise ConfigError(f"unknown --dtype {name!r}{hint}; choices: {', '.join(INFERENCE_DTYPES)}")
    return key


def torch_dtype(name: str) -> torch.dtype:
    """The dtype of the activations (and of the KV cache) for ``name``: float32 for int8 weight-only."""
    return _FLOAT_DTYPES.get(parse_inference_dtype(name), torch.float32)


def prepare_for_inference(model: nn.Module, dtype: str = "f32") -> nn.Module:
    """Put ``model`` in eval mode, without gradients, in ``dtype``; returns the same module, changed in place.

    Call it on a model loaded in float32 (``read_checkpoint(...).build_model()``); the weights are
    rounded once. int8 raises BackendUnavailableError with the install line when torchao is missing.
    """
    name = parse_inference_dtype(dtype)
    model.eval()
    model.requires_grad_(False)
    if name in _FLOAT_DTYPES:
        return model.to(_FLOAT_DTYPES[name])
    _quantize_int8_weight_only(model)
    return model


def _quantize_int8_weight_only(model: nn.Module) -> None:
    quantize_, config = _torchao_int8()
    head = getattr(model, "lm_head", None)
    tied = head.weight if head is not None else None

    def is_quantized_linear(module: nn.Module, fqn: str) -> bool:
        # the LM head shares its weight with the embedding lookup, which needs a plain tensor
        return isinstance(module, nn.Linear) and module.weight is not tied

    model.to(torch.float32)
    quantize_(model, config, filter_fn=is_quantized_linear)


def _torchao_int8():
    """(quantize_, Int8WeightOnlyConfig()) from torchao, or BackendUnavailableError."""
    # torchao logs a warning per optional CUDA extension it cannot load; on CPU that is expected noise
    logger = logging.getLogger("torchao")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        from torchao.quantization import Int8WeightOnlyConfig, quantize_
    except ImportError as exc:
        raise BackendUnavailableError(
            f"--dtype int8 needs torchao (weight-only int8 quantisation), which is not importable ({exc}); "
            f"{QUANT_EXTRA}, or use --dtype bf16 / f16") from None
    finally:
        logger.setLevel(level)
    return quantize_, Int8WeightOnlyConfig()


def tensor_bytes(t: Tensor) -> int:
    """Bytes held by ``t``; a tensor subclass (torchao's Int8Tensor) counts its inner tensors."""
    flatten = getattr(type(t), "__tensor_flatten__", None)
    if flatten is not None:
        names, _ = t.__tensor_flatten__()
        inner = [getattr(t, n) for n in names]
        return sum(tensor_bytes(x) for x in inner if isinstance(x, Tensor))
    return t.numel() * t.element_size()


def model_memory_bytes(model: nn.Module) -> int:
    """Bytes of the unique parameters and buffers of ``model`` (a tied weight counts once)."""
    seen: set[int] = set()
    total = 0
    for t in list(model.parameters()) + list(model.buffers()):
        if id(t) in seen:
            continue
        seen.add(id(t))
        total += tensor_bytes(t)
    return total

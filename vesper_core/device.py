"""What this machine can run: device resolution and optional-dependency probes."""

from __future__ import annotations

import functools
import importlib.util
import os

import torch

from vesper_core.errors import ConfigError

DEVICE_CHOICES = ("auto", "cpu", "cuda")


def has_cuda() -> bool:
    return torch.cuda.is_available()


def resolve_device(name: str = "auto") -> torch.device:
    """``auto`` -> cuda when available else cpu; ``cuda`` without a GPU is an error."""
    if name == "auto":
        return torch.device("cuda" if has_cuda() else "cpu")
    if name == "cpu" or name.startswith("cpu:"):
        return torch.device(name)
    if name == "cuda" or name.startswith("cuda:"):
        if not has_cuda():
            raise ConfigError(
                f"--device {name} requested but no CUDA GPU is visible to torch "
                f"(torch {torch.__version__}); use --device cpu or auto"
            )
        return torch.device(name)
    raise ConfigError(f"unknown device {name!r}; choices: {', '.join(DEVICE_CHOICES)}")


@functools.cache
def has_module(name: str) -> bool:
    return importlib.util.find_spec(name) is not None


def has_triton() -> bool:
    """Triton is importable and can launch: on a GPU, or on CPU under TRITON_INTERPRET=1."""
    return has_module("triton") and (has_cuda() or os.environ.get("TRITON_INTERPRET") == "1")


def has_cupy() -> bool:
    return has_module("cupy") and has_cuda()


def supports_bf16(device: torch.device) -> bool:
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    return True  # CPU autocast supports bf16 everywhere (fast with AVX512-BF16)


DTYPES = {
    "f32": torch.float32, "fp32": torch.float32, "float32": torch.float32,
    "bf16": torch.bfloat16, "bfloat16": torch.bfloat16,
    "f16": torch.float16, "fp16": torch.float16, "float16": torch.float16,
}


def parse_dtype(name: str) -> torch.dtype:
    try:
        return DTYPES[name.lower()]
    except KeyError:
        raise ConfigError(f"unknown dtype {name!r}; choices: f32, bf16, f16") from None


def dtype_name(dtype: torch.dtype) -> str:
    return {torch.float32: "f32", torch.bfloat16: "bf16", torch.float16: "f16"}[dtype]

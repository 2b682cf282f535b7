"""What ``vesper serve`` loads before it listens: the generator (with --dtype) and the chat template."""

from __future__ import annotations

import inspect
from pathlib import Path
from typing import Any

from vesper_cli.engine.generation import Generator, load_generator
from vesper_core.device import resolve_device
from vesper_core.errors import ConfigError, NotImplementedFeatureError

DTYPES = ("f32", "bf16", "f16", "int8")


def load_serving_generator(model: str | Path, *, tokenizer: str | None = None, dtype: str | None = None,
                           device: str = "auto") -> Generator:
    if dtype is not None and dtype not in DTYPES:
        raise ConfigError(f"--dtype must be one of {', '.join(DTYPES)}, got {dtype!r}")
    kwargs: dict[str, Any] = {"tokenizer": tokenizer, "device": resolve_device(device)}
    if dtype not in (None, "f32"):
        if "dtype" not in inspect.signature(load_generator).parameters:
            raise NotImplementedFeatureError(f"--dtype {dtype} needs load_generator(dtype=...), which this build "
                                             f"does not have yet; serve in f32")
        kwargs["dtype"] = dtype
    generator = load_generator(model, **kwargs)
    generator.model.requires_grad_(False)
    return generator


def load_chat_template(generator: Generator, source: str | None) -> tuple[Any | None, str | None]:
    """(template, None), or (None, why chat is unavailable) when no template can be had."""
    try:
        from vesper_data.chat.template import load_chat_template as load
    except ImportError:
        if source is not None:
            raise NotImplementedFeatureError("--chat-template needs vesper_data.chat, which this build does not "
                                             "have yet") from None
        return None, "this build has no chat templates (vesper_data.chat is missing)"
    return load(source), None

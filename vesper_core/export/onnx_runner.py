"""Run an exported Vesper ONNX model with onnxruntime: one forward step, and greedy generation.

::

    from vesper_core.export.onnx_runner import OnnxLM
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file("exported/tokenizer.json")
    lm = OnnxLM("exported")                                   # model.onnx + vesper_onnx.json
    ids = lm.generate_greedy(tok.encode("Once upon a time").ids, max_new_tokens=50)
    print(tok.decode(ids))

The prompt is prefilled in one call (empty past), then each new token is one call with the cache the
previous call returned. Only numpy and onnxruntime are needed (no torch).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Sequence

import numpy as np

from vesper_core.errors import BackendUnavailableError, ConfigError

ONNX_FILE = "model.onnx"
ONNX_META_FILE = "vesper_onnx.json"


class OnnxLM:
    """An onnxruntime session over ``folder/model.onnx`` with the shapes recorded in ``vesper_onnx.json``."""

    def __init__(self, folder: str | Path, providers: Sequence[str] = ("CPUExecutionProvider",)):
        try:
            import onnxruntime as ort
        except ImportError:
            raise BackendUnavailableError(
                "running an ONNX export needs onnxruntime; pip install 'vesper[export]'") from None
        folder = Path(folder)
        meta_path = folder / ONNX_META_FILE
        if not meta_path.is_file():
            raise ConfigError(f"{folder} has no {ONNX_META_FILE}; pass a folder written by `vesper export --format onnx`")
        self.meta = json.loads(meta_path.read_text(encoding="utf-8"))
        self.session = ort.InferenceSession(str(folder / ONNX_FILE), providers=list(providers))
        self.eos_token_id = self.meta.get("eos_token_id")
        self.context = int(self.meta["max_position_embeddings"])

    def empty_cache(self, batch: int = 1) -> tuple[np.ndarray, np.ndarray]:
        m = self.meta
        shape = (m["num_layers"], batch, m["num_heads"], 0, m["head_dim"])
        return np.zeros(shape, np.float32), np.zeros(shape, np.float32)

    def forward(self, input_ids: np.ndarray, cache: tuple[np.ndarray, np.ndarray]
                ) -> tuple[np.ndarray, tuple[np.ndarray, np.ndarray]]:
        """Logits (B, T, V) for the new ``input_ids`` (B, T) after ``cache``, and the cache including them."""
        logits, keys, values = self.session.run(None, {
            "input_ids": np.ascontiguousarray(input_ids, dtype=np.int64),
            "past_keys": cache[0], "past_values": cache[1]})
        return logits, (keys, values)

    def generate_greedy(self, prompt_ids: Sequence[int], max_new_tokens: int,
                        eos_token_id: int | None = -1) -> list[int]:
        """The new token ids (argmax each step), ending with EOS when it comes (``eos_token_id`` -1: the
        exported model's own EOS; None: never stop early). Stays within the model's context window."""
        if not prompt_ids:
            raise ConfigError("generation needs a non-empty prompt")
        if len(prompt_ids) + max_new_tokens > self.context:
            raise ConfigError(f"{len(prompt_ids)} prompt tokens + {max_new_tokens} new ones exceed the model's context "
                              f"of {self.context}")
        eos = self.eos_token_id if eos_token_id == -1 else eos_token_id
        cache = self.empty_cache(1)
        step = np.asarray([prompt_ids], dtype=np.int64)  # (1, T): the prefill
        new: list[int] = []
        for _ in range(max_new_tokens):
            logits, cache = self.forward(step, cache)
            token = int(logits[0, -1].argmax())
            new.append(token)
            if eos is not None and token == eos:
                break
            step = np.asarray([[token]], dtype=np.int64)
        return new

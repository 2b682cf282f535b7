"""Inference precision: f32 / bf16 / f16 casts and torchao weight-only int8, their memory and accuracy."""

from __future__ import annotations

import pytest
import torch

from export_helpers import byte_checkpoint, random_model, tiny_config
from vesper_cli.engine.generation import SamplingConfig, load_generator
from vesper_core.errors import ConfigError
from vesper_core.generation import generate
from vesper_core.precision import (INFERENCE_DTYPES, model_memory_bytes, parse_inference_dtype,
                                   tensor_bytes,
                                   prepare_for_inference, torch_dtype)


def test_dtype_names_and_aliases():
    assert INFERENCE_DTYPES == ("f32", "bf16", "f16", "int8")
    assert parse_inference_dtype("bfloat16") == "bf16"
    assert parse_inference_dtype("FP16") == "f16"
    assert torch_dtype("int8") is torch.float32 and torch_dtype("bf16") is torch.bfloat16
    with pytest.raises(ConfigError, match=r"unknown --dtype 'bf61'.*choices: f32, bf16, f16, int8"):
        parse_inference_dtype("bf61")


def _logits(model, ids):
    with torch.no_grad():
        return model(ids).logits.float()


@pytest.mark.parametrize("dtype,torch_dt,tol", [("bf16", torch.bfloat16, 0.3), ("f16", torch.float16, 0.05)])
def test_float_casts_run_close_to_f32(dtype, torch_dt, tol):
    config = tiny_config(97)
    ids = torch.randint(0, 97, (2, 12), generator=torch.Generator().manual_seed(0))
    reference = _logits(random_model(config), ids)
    model = prepare_for_inference(random_model(config), dtype)
    assert {p.dtype for p in model.parameters()} == {torch_dt}
    assert not model.training and not any(p.requires_grad for p in model.parameters())
    assert (_logits(model, ids) - reference).abs().max() < tol * reference.abs().max()
    f32_bytes = model_memory_bytes(random_model(config))
    assert model_memory_bytes(model) * 2 == f32_bytes
    out = generate(model, ids[0], max_new_tokens=4, temperature=0)  # the KV cache follows the model's dtype
    assert out.shape == (16,)


def test_int8_weight_only_quantizes_linears_but_not_the_tied_head():
    pytest.importorskip("torchao")
    config = tiny_config(97, moe_enabled=True, moe_num_experts=3, moe_top_k=2)
    ids = torch.randint(0, 97, (1, 10), generator=torch.Generator().manual_seed(1))
    f32 = random_model(config)
    reference = _logits(f32, ids)
    model = prepare_for_inference(random_model(config), "int8")
    q = model.layers[0].attention.q_proj.weight
    assert tensor_bytes(q) < 2 * q.numel()  # int8 values + one scale per row, not 4 bytes per weight
    assert model.lm_head.weight is model.embeddings.weight and model.embeddings.weight.dtype is torch.float32
    linear_bytes = sum(m.weight.numel() for m in f32.modules()
                       if isinstance(m, torch.nn.Linear) and m is not f32.lm_head)
    saved = model_memory_bytes(f32) - model_memory_bytes(model)
    assert saved >= 0.7 * linear_bytes * 3  # 4 -> 1 byte per weight, plus a small per-row scale
    error = (_logits(model, ids) - reference).abs().max()
    assert 0 < error < 0.05 * reference.abs().max()
    generate(model, ids, max_new_tokens=3, temperature=0)


def test_load_generator_dtype(tmp_path):
    ckpt = byte_checkpoint(tmp_path / "run")
    greedy = SamplingConfig(max_tokens=6, temperature=0, stop_at_eos=False)
    gen = load_generator(ckpt, dtype="bf16")
    assert gen.model.embeddings.weight.dtype is torch.bfloat16
    assert isinstance("".join(gen.stream("the cat", greedy)), str)
    with pytest.raises(ConfigError, match="unknown --dtype"):
        load_generator(ckpt, dtype="int4")

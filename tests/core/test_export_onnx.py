"""ONNX export: the KV-cache graph's logic in eager torch (fast), and onnxruntime against Vesper (slow: exporting
takes tens of seconds on a small CPU)."""

from __future__ import annotations

import pytest
import torch

from export_helpers import random_model, tiny_config, write_checkpoint, TEXT
from vesper_core.export.onnx import CachedDecoder, empty_cache
from vesper_core.generation import generate


@pytest.mark.parametrize("moe", [False, True])
def test_cached_decoder_matches_vesper_in_eager_torch(moe):
    model = random_model(tiny_config(97, moe_enabled=moe, moe_num_experts=4, moe_top_k=2))
    decoder = CachedDecoder(model)
    ids = torch.randint(0, 97, (2, 9), generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        expected = model(ids).logits
        logits, keys, values = decoder(ids, *empty_cache(model, batch=2))
        assert keys.shape == (2, 2, 4, 9, 8)  # (L, B, NH, P + T, D)
        assert (logits - expected).abs().max() <= 1e-5
        # a chunk of 3 and then one token after a cached prefix of 5
        chunk, k, v = decoder(ids[:, 5:8], keys[:, :, :, :5], values[:, :, :, :5])
        assert (chunk - expected[:, 5:8]).abs().max() <= 1e-5
        last, _, _ = decoder(ids[:, 8:], k, v)
        assert (last - expected[:, 8:]).abs().max() <= 1e-5


@pytest.mark.slow
@pytest.mark.parametrize("moe", [False, True])
def test_onnxruntime_matches_vesper(tmp_path, moe):
    pytest.importorskip("onnxruntime")
    pytest.importorskip("onnxscript")
    from vesper_cli.engine.export import export_checkpoint
    from vesper_core.checkpoint import read_checkpoint
    from vesper_core.export.onnx_runner import OnnxLM
    from export_helpers import bpe_tokenizer
    from vesper_data.tokenizers import byte_tokenizer

    tokenizer = bpe_tokenizer() if moe else byte_tokenizer()
    config = tiny_config(tokenizer.vocab_size, moe_enabled=moe, moe_num_experts=3, moe_top_k=2)
    ckpt = write_checkpoint(tmp_path / "run", config, tokenizer)
    result = export_checkpoint(ckpt, fmt="onnx", output=tmp_path / "onnx", verify=False)
    assert sorted(p.name for p in result.output.iterdir()) == ["model.onnx", "tokenizer.json", "vesper_onnx.json"]
    vesper = read_checkpoint(ckpt).build_model().eval()
    lm = OnnxLM(result.output)
    prompts = torch.tensor([tokenizer.encode(TEXT)[:20], tokenizer.encode(TEXT[9:])[:20]])
    logits, (keys, _) = lm.forward(prompts.numpy(), lm.empty_cache(batch=2))
    assert keys.shape[3] == 20
    with torch.no_grad():
        assert (torch.from_numpy(logits) - vesper(prompts).logits).abs().max() <= 1e-4
    for prompt in prompts:
        expected = generate(vesper, prompt, max_new_tokens=20, temperature=0, eos_token_id=tokenizer.eos_id)
        assert lm.generate_greedy(prompt.tolist(), max_new_tokens=20) == expected[len(prompt):].tolist()

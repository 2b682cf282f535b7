import math

import pytest
import torch

from vesper_core.errors import ConfigError
from vesper_core.generation import (KVCache, apply_repetition_penalty, apply_top_k, apply_top_p,
                                    generate, generate_tokens, sample_next)

NEG_INF = float("-inf")


# -- KV cache ---------------------------------------------------------------------------------
@pytest.mark.parametrize("which", ["nano_config", "moe_config"])
def test_incremental_decoding_matches_full_forward(which, request, make_model, make_ids):
    config = request.getfixturevalue(which)
    model = make_model(config)
    ids = make_ids(2, 12)
    full = model(ids).logits  # (B, T, V)
    cache = KVCache.for_model(model, batch=2, max_len=12)
    pieces = [model(ids[:, :4], kv_cache=cache).logits,  # prefill
              model(ids[:, 4:7], kv_cache=cache).logits]  # chunk onto a non-empty cache
    pieces += [model(ids[:, t:t + 1], kv_cache=cache).logits for t in range(7, 12)]
    assert cache.length == 12
    torch.testing.assert_close(torch.cat(pieces, dim=1), full, atol=1e-5, rtol=1e-4)


def test_cache_refuses_overflow_and_wrong_batch(make_model, nano_config, make_ids):
    model = make_model(nano_config)
    cache = KVCache.for_model(model, batch=1, max_len=4)
    model(make_ids(1, 3), kv_cache=cache)
    with pytest.raises(ConfigError, match="KV cache full"):
        model(make_ids(1, 2), kv_cache=cache)
    with pytest.raises(ConfigError, match="batch 1"):
        model(make_ids(2, 1), kv_cache=cache)
    cache.reset()
    model(make_ids(1, 4), kv_cache=cache)


@pytest.mark.parametrize("which", ["nano_config", "moe_config"])
def test_greedy_same_with_and_without_cache(which, request, make_model, make_ids):
    model = make_model(request.getfixturevalue(which))
    prompt = make_ids(2, 5)
    cached = generate(model, prompt, max_new_tokens=12, temperature=0.0)
    uncached = generate(model, prompt, max_new_tokens=12, temperature=0.0, use_cache=False)
    assert cached.shape == (2, 17)
    assert torch.equal(cached, uncached) and torch.equal(cached[:, :5], prompt)


def test_context_longer_than_window(make_model, nano_config, make_ids):
    model = make_model(nano_config.replace(max_position_embeddings=8))
    prompt = make_ids(1, 11)  # already longer than the window
    for use_cache in (True, False):
        out = generate(model, prompt, max_new_tokens=20, temperature=0.0, use_cache=use_cache)
        assert out.shape == (1, 31)
    uncached = generate(model, prompt, max_new_tokens=3, temperature=0.0, use_cache=False)
    windowed = [model(prompt[:, -8:]).logits[0, -1].argmax().item()]
    assert uncached[0, 11].item() == windowed[0]


# -- logit processing -------------------------------------------------------------------------
def test_repetition_penalty_divides_positive_and_multiplies_others():
    logits = torch.tensor([[2.0, -2.0, 0.0, 1.0, 3.0]])
    seen = torch.tensor([[0, 1, 2, 0, 1]])  # duplicates penalise once
    out = apply_repetition_penalty(logits, seen, 2.0)
    torch.testing.assert_close(out, torch.tensor([[1.0, -4.0, 0.0, 1.0, 3.0]]))
    assert apply_repetition_penalty(logits, seen, 1.0) is logits


def test_top_k_keeps_ties():
    logits = torch.tensor([[1.0, 3.0, 2.0, 2.0, 0.5]])
    out = apply_top_k(logits, 2)
    assert torch.equal(out, torch.tensor([[NEG_INF, 3.0, 2.0, 2.0, NEG_INF]]))
    assert torch.equal(apply_top_k(logits, 0), logits) and torch.equal(apply_top_k(logits, 9), logits)


@pytest.mark.parametrize("p, kept", [(0.4, {2}), (0.75, {2, 0}), (0.81, {2, 0, 3}), (1.0, {0, 1, 2, 3})])
def test_top_p_keeps_smallest_prefix_reaching_p(p, kept):
    probs = torch.tensor([[0.3, 0.05, 0.5, 0.15]])
    out = apply_top_p(probs.log(), p)
    assert {i for i in range(4) if math.isfinite(out[0, i])} == kept
    finite = torch.isfinite(out)
    torch.testing.assert_close(out[finite], probs.log()[finite])


def test_sample_next_greedy_and_filtered():
    logits = torch.tensor([[0.1, 5.0, 0.2], [3.0, 0.0, -1.0]])
    assert sample_next(logits, temperature=0.0).tolist() == [1, 0]
    g = torch.Generator().manual_seed(0)
    draws = {sample_next(logits[:1], temperature=5.0, top_k=1, generator=g).item() for _ in range(20)}
    assert draws == {1}


# -- the loop ---------------------------------------------------------------------------------
def test_seeded_sampling_is_reproducible(make_model, nano_config, make_ids):
    model = make_model(nano_config)
    prompt = make_ids(2, 4)
    settings = dict(max_new_tokens=10, temperature=1.0, top_k=20, top_p=0.9, repetition_penalty=1.3)
    a = generate(model, prompt, generator=torch.Generator().manual_seed(7), **settings)
    b = generate(model, prompt, generator=torch.Generator().manual_seed(7), **settings)
    c = generate(model, prompt, generator=torch.Generator().manual_seed(8), use_cache=False, **settings)
    assert torch.equal(a, b) and a.shape == c.shape == (2, 14)


def test_streaming_yields_one_id_per_row(make_model, nano_config, make_ids):
    steps = list(generate_tokens(make_model(nano_config), make_ids(3, 4), max_new_tokens=5))
    assert len(steps) == 5 and all(s.shape == (3,) and s.dtype == torch.long for s in steps)


def test_eos_stops_greedy_decoding(make_model, nano_config, make_ids):
    model = make_model(nano_config)
    prompt = make_ids(1, 6)[0]  # 1-D prompt comes back 1-D
    free = generate(model, prompt, max_new_tokens=6, temperature=0.0)
    eos = free[8].item()  # the third greedy token
    stopped = generate(model, prompt, max_new_tokens=6, temperature=0.0, eos_token_id=eos)
    first = free[6:].tolist().index(eos)
    assert stopped.dim() == 1 and torch.equal(stopped, free[:6 + first + 1])
    via_stop_ids = generate(model, prompt, max_new_tokens=6, temperature=0.0, stop_ids=[eos])
    assert torch.equal(via_stop_ids, stopped)


def test_finished_rows_repeat_their_stop_id(make_model, nano_config, make_ids):
    model = make_model(nano_config)
    prompt = make_ids(2, 6)
    free = generate(model, prompt, max_new_tokens=5, temperature=0.0)
    eos = free[0, 6].item()  # row 0 stops at once
    out = generate(model, prompt, max_new_tokens=5, temperature=0.0, eos_token_id=eos)
    assert (out[0, 6:] == eos).all()
    if eos not in free[1, 6:].tolist():
        torch.testing.assert_close(out[1], free[1])


@pytest.mark.parametrize("bad", [dict(top_p=0.0), dict(top_k=-1), dict(repetition_penalty=0.0),
                                 dict(max_new_tokens=-1)])
def test_invalid_settings_raise_config_error(bad, make_model, nano_config, make_ids):
    kwargs = dict(max_new_tokens=2) | bad
    with pytest.raises(ConfigError):
        generate(make_model(nano_config), make_ids(1, 3), **kwargs)
    with pytest.raises(ConfigError, match="non-empty prompt"):
        generate(make_model(nano_config), torch.zeros(1, 0, dtype=torch.long), max_new_tokens=1)

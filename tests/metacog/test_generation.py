from types import SimpleNamespace

import pytest
import torch
from torch import nn

from vesper_metacog import MetacogConfig, MetaHead, MetacognitiveRegulator, metacog_generate

V, H = 10, 4


class FakeLM(nn.Module):
    """Prefers token 3, then 4, 5, ...; hidden state = a constant vector."""

    def __init__(self):
        super().__init__()
        self.anchor = nn.Parameter(torch.zeros(()))  # gives the module a device
        self.calls = 0

    def forward(self, input_ids, *, kv_cache=None, return_hidden=False):
        self.calls += 1
        B, T = input_ids.shape
        logits = -torch.arange(V, dtype=torch.float32).roll(3).repeat(B, T, 1) * 3.0  # argmax 3
        hidden = torch.ones(B, T, H)
        return SimpleNamespace(logits=logits, hidden_states=hidden if return_hidden else None)


def head_with(confidence_bias, termination_bias=-6.0, **config):
    head = MetaHead(MetacogConfig(hidden_size=H, **config))
    with torch.no_grad():
        for layer in (head.confidence_proj, head.termination_proj, head.error_classifier):
            layer.weight.zero_()
        head.confidence_proj.bias.fill_(confidence_bias)
        head.termination_proj.bias.fill_(termination_bias)
        head.error_classifier.bias.fill_(-6.0)
    return head


PROMPT = torch.tensor([[1, 2]])


def run(head, **kwargs):
    kwargs.setdefault("max_new_tokens", 40)
    return list(metacog_generate(FakeLM(), head, PROMPT, generator=torch.Generator().manual_seed(0),
                                 **kwargs))


def test_stops_early_when_confident():
    events = run(head_with(6.0), span=8)
    assert len(events) == 8
    assert events[-1].stop_reason == "satisficed"
    assert all(e.stop_reason is None for e in events[:-1])
    assert all(e.confidence > 0.99 and not e.resampled for e in events)


def test_runs_to_max_tokens_when_unconfident():
    events = run(head_with(-6.0), span=8, max_new_tokens=16)
    assert len(events) == 16
    assert events[-1].stop_reason == "max_new_tokens"
    assert all(e.resampled for e in events)  # every span was re-drawn from its first token


def test_greedy_resample_bans_previous_draws_and_respects_max_iterations():
    head = head_with(-6.0, max_iterations=3, planning_candidates=3)
    model = FakeLM()
    events = list(metacog_generate(model, head, PROMPT, max_new_tokens=4, span=4, temperature=0.0))
    # every token tried at position 0 is banned there afterwards (the model prefers 3, 4, ..., 9, 0):
    # iteration 1 tries 4, 5, 6 and keeps 4 (ties -> first); 2 tries 7, 8, 9; 3 tries 0, 1, 2
    assert [e.token_id for e in events] == [0, 3, 3, 3]
    assert events[-1].stop_reason == "max_new_tokens"
    # prompt + 4 tokens, then 3 iterations x 3 candidates x 4 tokens (the rewind point is memoised)
    assert model.calls == 1 + 4 + 3 * 3 * 4


def test_without_regulation_or_planning():
    head = head_with(-6.0, enable_regulation=False)
    events = run(head, max_new_tokens=5, temperature=0.0)
    assert [e.token_id for e in events] == [3] * 5 and not any(e.resampled for e in events)
    no_plan = head_with(-6.0, enable_planning=False, max_iterations=1)
    model = FakeLM()
    list(metacog_generate(model, no_plan, PROMPT, max_new_tokens=4, span=4, temperature=0.0))
    assert model.calls == 1 + 4 + 4


def test_eos_and_termination_head_stop():
    events = run(head_with(0.0), eos_id=3, temperature=0.0,
                 regulator=MetacognitiveRegulator(MetacogConfig(hidden_size=H,
                                                                enable_regulation=False)))
    assert [(e.token_id, e.stop_reason) for e in events] == [(3, "eos")]
    ending = run(head_with(0.0, termination_bias=6.0), span=4)
    assert len(ending) == 4 and ending[-1].stop_reason == "termination"


def test_with_a_tiny_vesper_lm():
    model_module = pytest.importorskip("vesper_core.model")
    from vesper_core.presets import model_config

    torch.manual_seed(0)
    config = model_config("nano", vocab_size=50, max_position_embeddings=64)
    model = model_module.VesperLM(config).eval()
    meta_config = MetacogConfig.for_model(config, regulation_threshold=0.99,  # always resample
                                          max_iterations=2, planning_candidates=2)
    head = MetaHead(meta_config).eval()
    prompt = torch.tensor([[1, 2, 3]])
    for use_cache in (True, False):
        events = list(metacog_generate(model, head, prompt, max_new_tokens=10, span=4,
                                       temperature=0.0, use_cache=use_cache))
        assert 1 <= len(events) <= 10
        assert all(0.0 <= e.confidence <= 1.0 for e in events)
        assert events[-1].stop_reason is not None
        assert any(e.resampled for e in events)
        if use_cache:
            cached = [e.token_id for e in events]
    assert [e.token_id for e in events] == cached  # cache rewinds give the same greedy text

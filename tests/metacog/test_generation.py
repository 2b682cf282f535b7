from types import SimpleNamespace

import pytest
import torch
from torch import nn

from vesper_metacog import MetacogConfig, MetaHead, MetacognitiveRegulator, metacog_generate
from vesper_metacog.generation import is_sentence_boundary, sentence_boundary_ids

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


class CountingLM(nn.Module):
    """Prefers the last token + 1 (mod V), then + 2, ...; the hidden state is the token one-hot."""

    def __init__(self):
        super().__init__()
        self.anchor = nn.Parameter(torch.zeros(()))

    def forward(self, input_ids, *, kv_cache=None, return_hidden=False):
        preferred = (input_ids + 1) % V  # (B, T)
        rank = (torch.arange(V)[None, None, :] - preferred[..., None]) % V  # (B, T, V)
        hidden = nn.functional.one_hot(input_ids, V).float()  # (B, T, V)
        return SimpleNamespace(logits=-3.0 * rank.float(), hidden_states=hidden)


def counting_head(unsure_after=(), **config):
    """Confident (0.998) after every token but those of ``unsure_after`` (0.002); no errors or end."""
    head = MetaHead(MetacogConfig(hidden_size=V, **config))
    with torch.no_grad():
        for layer in (head.confidence_proj, head.termination_proj, head.error_classifier):
            layer.weight.zero_()
        head.confidence_proj.bias.fill_(6.0)
        for token in unsure_after:
            head.confidence_proj.weight[0, token] = -12.0
        head.termination_proj.bias.fill_(-6.0)
        head.error_classifier.bias.fill_(-6.0)
    return head


def count(head, **kwargs):
    events = metacog_generate(CountingLM(), head, PROMPT, max_new_tokens=10, temperature=0.0, **kwargs)
    return [(e.token_id, e.resampled, e.stop_reason) for e in events]


def test_spans_end_at_boundary_tokens_after_some_content():
    # greedy writes 3, 4, 5, ...: a confident head satisfices at the end of the first span
    assert len(count(counting_head(), span=8)) == 8
    assert count(counting_head(), span=8, boundary_ids={5}) == [
        (3, False, None), (4, False, None), (5, False, "satisficed")]
    # a leading boundary (3, like the newline after a full stop) joins the sentence that follows
    assert count(counting_head(), span=8, boundary_ids={3, 5})[-1] == (5, False, "satisficed")


def test_a_confident_redraw_is_accepted_but_the_next_span_decides_the_stop():
    # greedy draws 3 (weak) -> re-drawn as 4 (confident, but a repair: continue) -> 5 satisfices
    assert count(counting_head(unsure_after=[3], planning_candidates=1), span=1) == [
        (4, True, None), (5, False, "satisficed")]


def test_a_redraw_of_an_empty_span_does_not_start_with_a_boundary():
    # 3 is weak and 4 would end the span before it holds anything: the repair skips both
    events = count(counting_head(unsure_after=[3], planning_candidates=1), span=1, boundary_ids={4})
    assert events[0] == (5, True, None)


@pytest.mark.parametrize("text, expected", [
    (".", True), (" ?", True), ("!", True), ('."', True), ("\n", True), (" end.\n", True),
    (" the", False), (",", False), ("", False), ("...)", True), ("\ufffd", False), (" Mr", False),
])
def test_sentence_boundaries(text, expected):
    assert is_sentence_boundary(text) is expected


def test_sentence_boundary_ids_decode_each_id_alone():
    texts = {0: "a", 1: ".", 2: " b", 3: "\n"}
    assert sentence_boundary_ids(lambda ids: texts[ids[0]], texts) == {1, 3}


def test_a_span_cut_at_the_length_limit_does_not_satisfice():
    # spans of at most 2 tokens: 3 4 is cut at the limit, 5 6 ends at the boundary 6
    assert count(counting_head(), span=2, boundary_ids={6}) == [
        (3, False, None), (4, False, None), (5, False, None), (6, False, "satisficed")]

"""Velvet's rules as settings: VelvetRules, its presets (``upstream`` = UPSTREAM_SPEC §3.3 exactly),
per-group values in state_dict, OptimConfig's preset + overrides, and their flag-named errors."""

from __future__ import annotations

import copy
import dataclasses
import json
import math

import pytest
import torch

from optim_helpers import make_mlp, train
from vesper_core.errors import ConfigError, UnknownNameError
from vesper_optim import VELVET_RULES, OptimConfig, VelvetRules, build_optimizer
from vesper_optim import Velvet as _Velvet
from vesper_optim import signals
from vesper_optim.config import flag


def Velvet(*args, **kwargs):  # noqa: N802 - these tests check the upstream formulas (UPSTREAM_SPEC §3.3)
    """Velvet with the ``upstream`` rules unless a test picks others (the product default is tested apart)."""
    kwargs.setdefault("rules", "upstream")
    return _Velvet(*args, **kwargs)


LOSSES = [x / 4 for x in range(0, 61)] + [20.0, 25.0, 30.0, 100.0, 1e6, -0.5]  # 0 .. 15 in 0.25 steps
VOCABS = [50257, 8192, 1000, 2]
NON_FINITE = [float("nan"), float("inf"), -float("inf")]


def _clamp(x, lo, hi):
    return min(max(x, lo), hi)


# -- the formulas of UPSTREAM_SPEC §3.3, written out literally --------------------------------------
def spec_py(loss, vocab):
    """Row "Py set_loss_metrics": s_e, s_p and beta1_e for beta1 = 0.9."""
    if not math.isfinite(loss):
        return 1.0, 1.0, 0.9 * 1.0 if 0.5 <= 0.9 <= 0.999 else None
    ln_v = math.log(vocab)
    s_e = _clamp((min(loss, ln_v) / ln_v) / 0.5, 0.7, 1.3)
    s_p = _clamp(40 / max(math.exp(min(loss, 20)), 1), 0.7, 1.3)
    return s_e, s_p, _clamp(0.9 * s_p, 0.5, 0.999)


def spec_rust(loss, vocab):
    """Row "Rust/Candle train": clamp((clamp(min(l, lnV)/lnV, 0, 1)) / 0.5, 0.5, 2), 40/max(exp(l), 1)."""
    if not math.isfinite(loss):
        return 1.0, 1.0, 0.9
    ln_v = math.log(vocab)
    s_e = _clamp(_clamp(min(loss, ln_v) / ln_v, 0.0, 1.0) / 0.5, 0.5, 2.0)
    perplexity = math.exp(loss) if loss < 700 else math.inf  # f32 exp overflows to inf, 40/inf = 0
    s_p = _clamp(40 / max(perplexity, 1), 0.5, 2.0)
    return s_e, s_p, _clamp(0.9 * s_p, 0.5, 0.999)


@pytest.mark.parametrize("preset,spec", [("upstream", spec_py), ("upstream_rust", spec_rust)])
@pytest.mark.parametrize("vocab", VOCABS)
def test_upstream_presets_reproduce_the_spec_formulas(preset, spec, vocab):
    p = torch.nn.Parameter(torch.zeros(2))
    opt = Velvet([p], lr=0.1, rules=preset, vocab_size=vocab)
    for loss in LOSSES + NON_FINITE:
        opt.set_signals(loss)
        s_e, s_p, beta1_e = spec(loss, vocab)
        g = opt.param_groups[0]
        assert g["entropy_scale"] == pytest.approx(s_e, rel=1e-15, abs=1e-15), loss
        assert g["ppl_scale"] == pytest.approx(s_p, rel=1e-15, abs=1e-15), loss
        assert opt.effective_beta1() == pytest.approx(beta1_e, rel=1e-15), loss
        assert opt.effective_lr() == pytest.approx(0.1 * s_e, rel=1e-15), loss


def test_rust_benchmark_preset_uses_the_logits_entropy():
    rules = VelvetRules.preset("upstream_rust_benchmark")
    assert rules.entropy_signal == "logits"
    for h in [0.0, 0.1, 0.24, 0.25, 0.5, 0.77, 1.0]:  # §3.3 row 4: clamp(H / 0.5, 0.5, 2.0)
        assert rules.entropy_scale(3.0, normalized_entropy=h) == pytest.approx(_clamp(h / 0.5, 0.5, 2.0), rel=1e-15)


def test_upstream_behavioural_reading_of_the_spec():
    """§3.3's worked reading for V = 50257 (ln V = 10.825)."""
    rules = VelvetRules.preset("upstream")
    s_e = lambda loss: rules.entropy_scale(loss, vocab_size=50257)  # noqa: E731
    assert s_e(7.04) == 1.3 and s_e(3.78) == 0.7 and 0.7 < s_e(5.0) < 1.3  # the spec rounds: 7.036, 3.789
    assert rules.perplexity_scale(4.05) == 0.7 and rules.effective_beta1(0.9, 0.7) == pytest.approx(0.63)
    assert rules.effective_beta1(0.9, rules.perplexity_scale(math.log(36))) == 0.999
    assert rules.perplexity_scale(math.log(30.7)) == 1.3  # the spec says 30.8 (40 / 1.3 = 30.77)


def test_presets_and_defaults():
    assert {"default", "upstream", "upstream_rust", "upstream_rust_benchmark"} <= set(VELVET_RULES.names())
    assert isinstance(VelvetRules.preset("default"), VelvetRules)
    assert signals.resolve_rules(None) == VelvetRules.preset("default")
    p = torch.nn.Parameter(torch.zeros(1))
    assert Velvet([p]).param_groups[0]["entropy_target"] == VelvetRules.preset("default").entropy_target
    with pytest.raises(UnknownNameError, match="did you mean 'upstream'"):
        Velvet([p], rules="upstreem")


def test_rules_round_trip_and_validation():
    rules = VelvetRules.preset("upstream")
    data = rules.to_dict()
    assert data["entropy_bounds"] == [0.7, 1.3] and json.loads(json.dumps(data)) == data
    assert VelvetRules.from_dict(data) == rules
    assert VelvetRules.from_dict({"entropy_target": 0.6}, base="upstream") == rules.replace(entropy_target=0.6)
    with pytest.raises(ConfigError, match="miss"):
        VelvetRules.from_dict({"entropy_target": 0.6})
    with pytest.raises(ConfigError, match="unknown Velvet rule.*valid: entropy_signal"):
        VelvetRules.from_dict({"entropy_targt": 0.6}, base="upstream")
    bad = {
        "entropy_signal": ("entropy", "entropy_signal must be one of loss, logits"),
        "entropy_target": (0.0, "entropy_target must be a finite number > 0"),
        "entropy_bounds": ((1.3, 0.7), "entropy_bounds must satisfy 0 < lo <= hi"),
        "perplexity_target": (float("inf"), "perplexity_target must be a finite number > 0"),
        "perplexity_bounds": ((0.0, 1.0), "perplexity_bounds must satisfy 0 < lo <= hi"),
        "beta1_range": ((0.5, 1.0), "beta1_range must satisfy 0 <= lo <= hi < 1"),
        "max_log_perplexity": (1000.0, "max_log_perplexity must be a number in"),
        "lr_combine": ("add", "lr_combine must be one of multiply"),
        "hypergradient_rate": (2.0, "hypergradient_rate must be a number in \\[0, 1\\]"),
        "hypergradient_bounds": ((4.0, 0.25), "hypergradient_bounds must satisfy 0 < lo <= hi"),
    }
    assert set(bad) == set(signals.RULE_FIELDS)  # every field is validated
    for name, (value, message) in bad.items():
        with pytest.raises(ConfigError, match=message):
            rules.replace(**{name: value})


def test_every_rule_changes_the_scales():
    base = VelvetRules.preset("upstream").replace(entropy_bounds=(1e-3, 1e3), perplexity_bounds=(1e-12, 1e3))
    loss, vocab = 3.0, 1000
    h = loss / math.log(vocab)
    assert base.replace(entropy_target=0.25).entropy_scale(loss, vocab_size=vocab) == pytest.approx(h / 0.25)
    assert base.replace(entropy_bounds=(0.9, 1.1)).entropy_scale(loss, vocab_size=vocab) == 0.9
    assert base.replace(perplexity_target=80.0).perplexity_scale(loss) == pytest.approx(80 / math.exp(3))
    assert base.replace(perplexity_bounds=(0.95, 1.05)).perplexity_scale(loss) == 1.05
    assert base.replace(max_log_perplexity=2.0).perplexity_scale(loss) == pytest.approx(40 / math.exp(2))
    assert base.replace(beta1_range=(0.6, 0.95)).effective_beta1(0.9, 1.3) == 0.95
    assert base.replace(beta1_range=(0.6, 0.95)).effective_beta1(0.9, 0.5) == 0.6
    assert base.entropy_scale(loss, normalized_entropy=0.3) == pytest.approx(0.6)


def test_lr_combine_is_a_rule(monkeypatch):
    monkeypatch.setitem(signals.LR_COMBINES, "test_sqrt", lambda lr, s: lr * math.sqrt(s))
    p = torch.nn.Parameter(torch.zeros(2))
    opt = Velvet([p], lr=0.1, vocab_size=1000, rules={"lr_combine": "test_sqrt"})
    opt.set_signals(5.0)
    s_e = opt.param_groups[0]["entropy_scale"]
    assert opt.effective_lr() == pytest.approx(0.1 * math.sqrt(s_e))
    assert opt.step_metrics()["lr_effective"] == opt.effective_lr()


def test_beta1_span_covers_what_steps_can_apply():
    rules = VelvetRules.preset("upstream")
    assert rules.beta1_span(0.9, True) == (0.63, 0.999)
    assert rules.beta1_span(0.9, False) == (0.9, 0.9)
    narrow = rules.replace(perplexity_bounds=(1.1, 1.2))  # s_p = 1.0 still happens (first step, NaN loss)
    assert narrow.beta1_span(0.6, True) == (0.6, pytest.approx(0.72))


def test_rules_live_in_each_group_and_in_the_state_dict():
    a, b = torch.nn.Parameter(torch.zeros(2)), torch.nn.Parameter(torch.zeros(2))
    opt = Velvet([{"params": [a]}, {"params": [b], "entropy_target": 0.25, "perplexity_bounds": [0.5, 2.0]}],
                 rules="upstream", vocab_size=1000)
    g0, g1 = opt.param_groups
    assert g0["entropy_target"] == 0.5 and g1["entropy_target"] == 0.25
    assert g1["perplexity_bounds"] == (0.5, 2.0)  # lists become pairs, like betas
    opt.set_signals(3.0)
    assert g1["entropy_scale"] == 1.3 and g0["entropy_scale"] == pytest.approx(2 * 3.0 / math.log(1000))
    with pytest.raises(ConfigError, match="entropy_target must be a finite number > 0"):
        Velvet([{"params": [a], "entropy_target": -1.0}])
    sd = opt.state_dict()
    assert all(sd["param_groups"][1][f] == opt.param_groups[1][f] for f in signals.RULE_FIELDS)
    fresh = Velvet([{"params": [torch.nn.Parameter(torch.zeros(2))]}, {"params": [torch.nn.Parameter(torch.zeros(2))]}],
                   vocab_size=1000)
    fresh.load_state_dict(json.loads(json.dumps({"state": {}, "param_groups": sd["param_groups"]})))
    assert fresh.param_groups[1]["entropy_target"] == 0.25
    assert fresh.param_groups[1]["perplexity_bounds"] == (0.5, 2.0)  # tuples again after JSON


def test_resume_with_custom_rules_is_bit_identical():
    rules = VelvetRules.preset("upstream").replace(entropy_target=0.4, perplexity_target=30.0, beta1_range=(0.6, 0.99))
    losses = [7.5, 5.2, 4.4, 3.9, 3.7, 3.65, 3.5, 3.2]
    whole = make_mlp()
    train(whole, Velvet(whole.parameters(), lr=1e-2, vocab_size=1000, rules=rules), 10, losses=losses)
    first = make_mlp()
    opt = Velvet(first.parameters(), lr=1e-2, vocab_size=1000, rules=rules)
    train(first, opt, 5, losses=losses)
    saved_opt, saved_model = copy.deepcopy(opt.state_dict()), copy.deepcopy(first.state_dict())
    resumed = make_mlp(seed=7)
    resumed.load_state_dict(saved_model)
    opt2 = Velvet(resumed.parameters(), lr=1e-2, vocab_size=1000)  # default rules: the checkpoint's win
    opt2.load_state_dict(saved_opt)
    assert opt2.param_groups[0]["entropy_target"] == 0.4
    train(resumed, opt2, 5, losses=losses, start=5)
    for x, y in zip(whole.parameters(), resumed.parameters()):
        assert torch.equal(x, y)


def test_entropy_signal_logits_asks_for_and_needs_the_entropy():
    p = torch.nn.Parameter(torch.zeros(2))
    opt = Velvet([p], vocab_size=1000, rules=signals.UPSTREAM.replace(entropy_signal="logits"))
    assert opt.training_signals() == frozenset({"loss", "entropy"})
    with pytest.raises(ConfigError, match="entropy_signal='logits' but set_signals got no normalized_entropy"):
        opt.set_signals(3.0)
    opt.set_signals(3.0, normalized_entropy=0.4)
    assert opt.param_groups[0]["entropy_scale"] == pytest.approx(0.8)
    off = Velvet([p], entropy_adaptive=False, rules={"entropy_signal": "logits"})
    assert off.training_signals() == frozenset({"loss"})
    off.set_signals(3.0)  # no entropy scale: nothing needed


# -- OptimConfig --------------------------------------------------------------------------------------
def test_optim_config_has_an_override_for_every_rule():
    fields = {f.name: f for f in dataclasses.fields(OptimConfig)}
    for name in signals.RULE_FIELDS:
        assert name in fields and fields[name].default is None, name


def test_optim_config_preset_plus_overrides_builds_velvet():
    cfg = OptimConfig(velvet_rules="upstream_rust", entropy_target=0.4, beta1_range=[0.6, 0.99],
                      entropy_signal="logits", backend="foreach")
    assert cfg.rules() == VelvetRules.preset("upstream_rust").replace(
        entropy_target=0.4, beta1_range=(0.6, 0.99), entropy_signal="logits")
    assert cfg.beta1_range == (0.6, 0.99)
    assert OptimConfig.from_dict(json.loads(json.dumps(cfg.to_dict()))) == cfg
    opt = build_optimizer([torch.nn.Parameter(torch.zeros(2))], cfg, vocab_size=100)
    group = opt.param_groups[0]
    for name, value in cfg.rules().to_dict().items():
        assert group[name] == (tuple(value) if isinstance(value, list) else value), name
    assert opt.training_signals() == frozenset({"loss", "entropy"})


@pytest.mark.parametrize("kwargs,message", [
    ({"velvet_rules": "upstreem"}, "--velvet-rules: unknown Velvet rules preset 'upstreem'; did you mean 'upstream'"),
    ({"entropy_signal": "entropy"}, "--entropy-signal must be one of loss, logits, got 'entropy'"),
    ({"entropy_target": -1.0}, "--entropy-target must be a finite number > 0, got -1.0"),
    ({"entropy_bounds": (2.0, 1.0)}, r"--entropy-bounds must satisfy 0 < lo <= hi"),
    ({"perplexity_target": 0}, "--perplexity-target must be a finite number > 0"),
    ({"perplexity_bounds": "wide"}, r"--perplexity-bounds must be two numbers \(lo, hi\)"),
    ({"beta1_range": (0.5, 1.0)}, "--beta1-range must satisfy 0 <= lo <= hi < 1"),
    ({"max_log_perplexity": 800.0}, "--max-log-perplexity must be a number in"),
    ({"lr_combine": "add"}, "--lr-combine must be one of multiply"),
])
def test_optim_config_errors_name_the_flag(kwargs, message):
    with pytest.raises(ConfigError, match=message) as err:
        OptimConfig(**kwargs)
    text = str(err.value)
    assert "OptimConfig" not in text and "VelvetRules" not in text and "\n" not in text
    assert flag(next(iter(kwargs))) in text


def test_optim_config_reads_older_configs():
    old = {"name": "velvet", "lr": 1e-3, "scale_bounds": [0.6, 1.4]}  # before the two bounds
    cfg = OptimConfig.from_dict(old)
    assert cfg.entropy_bounds == cfg.perplexity_bounds == (0.6, 1.4)
    assert OptimConfig.from_dict({**old, "entropy_bounds": [0.5, 2.0]}).entropy_bounds == (0.5, 2.0)

"""LR schedule, param groups, OptimConfig and the optimizer registry."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from vesper_core.errors import ConfigError
from vesper_optim import (OPTIMIZERS, OptimConfig, Velvet, VelvetRules, build_optimizer,
                          build_param_groups, lr_at, set_lr)


def test_warmup_starts_above_zero_and_reaches_base():
    kw = dict(base_lr=1.0, schedule="constant", warmup_steps=10, max_steps=100)
    assert lr_at(0, **kw) == pytest.approx(0.1)
    assert lr_at(4, **kw) == pytest.approx(0.5)
    assert lr_at(9, **kw) == pytest.approx(1.0)
    assert lr_at(10, **kw) == lr_at(500, **kw) == 1.0


def test_cosine_key_steps():
    kw = dict(base_lr=1.0, schedule="cosine", warmup_steps=10, max_steps=110, min_lr_ratio=0.1)
    assert lr_at(10, **kw) == pytest.approx(1.0)
    assert lr_at(60, **kw) == pytest.approx(0.55)  # halfway: min + (base - min) / 2
    assert lr_at(110, **kw) == pytest.approx(0.1)
    assert lr_at(1000, **kw) == pytest.approx(0.1)
    assert lr_at(5, base_lr=1.0, schedule="cosine", max_steps=0) == 1.0  # no max_steps: constant
    assert lr_at(0, base_lr=2.0, schedule="cosine", max_steps=10, min_lr_ratio=0.0) == 2.0


def test_schedule_errors_and_set_lr():
    with pytest.raises(ConfigError, match="choices: constant, cosine"):
        lr_at(0, base_lr=1.0, schedule="linear")
    with pytest.raises(ConfigError):
        lr_at(-1, base_lr=1.0)
    opt = Velvet([torch.nn.Parameter(torch.zeros(1))], entropy_adaptive=False)
    set_lr(opt, 0.123)
    assert opt.param_groups[0]["lr"] == 0.123 and opt.effective_lr() == 0.123


class Tiny(nn.Module):
    def __init__(self):
        super().__init__()
        self.wte = nn.Embedding(10, 4)
        self.proj = nn.Linear(4, 4)
        self.norm = nn.LayerNorm(4)
        self.head = nn.Linear(4, 10, bias=False)
        self.head.weight = self.wte.weight  # tied


def test_build_param_groups_counts():
    model = Tiny()
    groups = build_param_groups(model, 0.1)
    assert len(groups) == 2
    decay, no_decay = groups
    assert decay["param_names"] == ["wte.weight", "proj.weight"] and decay["weight_decay"] == 0.1
    assert sorted(no_decay["param_names"]) == ["norm.bias", "norm.weight", "proj.bias"]
    assert no_decay["weight_decay"] == 0.0
    total = sum(p.numel() for g in groups for p in g["params"])
    assert total == sum(p.numel() for p in model.parameters())  # tied weight counted once

    groups = build_param_groups(model, 0.1, sparse_param_names=["proj.weight"])
    assert len(groups) == 3 and groups[2]["sparse"] is True
    assert groups[2]["param_names"] == ["proj.weight"] and groups[0]["param_names"] == ["wte.weight"]
    opt = Velvet(groups, sparse_aware=True)
    assert [g["sparse"] for g in opt.param_groups] == [False, False, True]
    with pytest.raises(ConfigError, match="did you mean 'proj.weight'"):
        build_param_groups(model, 0.1, sparse_param_names=["proj.weigth"])


def test_optim_config_defaults_round_trip_and_errors():
    cfg = OptimConfig()
    assert (cfg.name, cfg.lr, cfg.betas, cfg.velvet_rules) == ("velvet", 3e-4, (0.9, 0.999), "default")
    assert cfg.rules() == VelvetRules.preset("default")
    custom = OptimConfig(lr=1e-3, lr_schedule="cosine", warmup_steps=5, entropy_bounds=[0.5, 2.0])
    data = custom.to_dict()
    assert data["entropy_bounds"] == [0.5, 2.0] and data["perplexity_bounds"] is None
    assert OptimConfig.from_dict(data) == custom
    with pytest.raises(ConfigError, match="valid: name, lr"):
        OptimConfig.from_dict({"learning_rate": 1.0})
    for kwargs, message in [({"lr": -1.0}, "--lr must be a finite number >= 0, got -1.0"),
                            ({"beta2": 1.0}, "--beta2 must be a number in"),
                            ({"name": "adamx"}, "--optimizer: .*adamw"),
                            ({"backend": "trition"}, "--backend: .*triton"),
                            ({"lr_schedule": "step"}, "--lr-schedule"),
                            ({"warmup_steps": -1}, "--warmup-steps"),
                            ({"min_lr_ratio": 2.0}, "--min-lr-ratio"),
                            ({"entropy_adaptive": "yes"}, "--entropy-adaptive must be true or false")]:
        with pytest.raises(ConfigError, match=message) as err:
            OptimConfig(**kwargs)
        assert "OptimConfig" not in str(err.value) and "\n" not in str(err.value)


def test_registry_and_build_optimizer():
    assert {"velvet", "adamw"} <= set(OPTIMIZERS.names())
    model = Tiny()
    cfg = OptimConfig(lr=1e-3, weight_decay=0.05, backend="reference", sparse_aware=True)
    opt = build_optimizer(build_param_groups(model, cfg.weight_decay), cfg, vocab_size=10)
    assert isinstance(opt, Velvet) and opt.backend == "reference" and opt.vocab_size == 10
    assert opt.param_groups[0]["lr"] == 1e-3 and opt.param_groups[0]["sparse_aware"] is True
    adamw = build_optimizer(model.parameters(), OptimConfig(name="adamw", lr=1e-3), vocab_size=10)
    assert isinstance(adamw, torch.optim.AdamW)
    assert adamw.param_groups[0]["fused"] is True and adamw.param_groups[0]["betas"] == (0.9, 0.999)

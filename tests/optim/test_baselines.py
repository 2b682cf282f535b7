"""The registered baselines (muon, lion, schedulefree_adamw) on a nano VesperLM, CPU."""

from __future__ import annotations

import copy
import json
import sys

import pytest
import torch

from vesper_core.errors import BackendUnavailableError, ConfigError
from vesper_core.model import VesperLM
from vesper_core.presets import model_config
from vesper_optim.baselines import MuonAdamW, is_muon_param
from vesper_optim.config import OptimConfig
from vesper_optim.param_groups import build_param_groups
from vesper_optim.registry import OPTIMIZERS, build_optimizer
from vesper_optim.schedules import lr_at

VOCAB = 64
# per-optimizer settings that learn the toy task in 20 steps (Lion: smaller LR, larger decay, beta2 0.99)
SETTINGS = {
    "muon": dict(lr=1e-2, weight_decay=0.1),
    "lion": dict(lr=2e-3, weight_decay=0.3, beta2=0.99),
    "schedulefree_adamw": dict(lr=1e-2, weight_decay=0.01),
}
PACKAGES = {"lion": "lion_pytorch", "schedulefree_adamw": "schedulefree"}


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """A nano model is too small for two threads: they only contend (10x slower on a busy 2-core box)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _model(seed: int = 0) -> VesperLM:
    torch.manual_seed(seed)
    return VesperLM(model_config("nano", vocab_size=VOCAB))


def _build(name: str, model: VesperLM, **overrides):
    if name in PACKAGES:
        pytest.importorskip(PACKAGES[name])
    cfg = OptimConfig(name=name, **{**SETTINGS[name], **overrides})
    return build_optimizer(build_param_groups(model, cfg.weight_decay), cfg)


def _batch(step: int) -> torch.Tensor:
    """Deterministic per step: counting sequences mod VOCAB with random starts (learnable)."""
    gen = torch.Generator().manual_seed(1000 + step)
    starts = torch.randint(0, VOCAB, (4, 1), generator=gen)
    return (starts + torch.arange(33)) % VOCAB  # (B, T+1)


def _train(model, opt, steps: range) -> list[float]:
    losses = []
    for step in steps:
        ids = _batch(step)
        logits = model(ids[:, :-1]).logits  # (B, T, V)
        loss = torch.nn.functional.cross_entropy(logits.flatten(0, 1), ids[:, 1:].flatten())
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        losses.append(loss.item())
    return losses


def _persist(sd: dict) -> dict:
    """What a resume file keeps: param groups through JSON (tuples become lists), tensors copied."""
    groups = json.loads(json.dumps(sd["param_groups"]))
    state = {int(i): {k: (v.clone() if torch.is_tensor(v) else v) for k, v in entry.items()}
             for i, entry in sd["state"].items()}
    return {"state": state, "param_groups": groups}


def _params(model) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in model.named_parameters()}


def test_registered_and_valid_in_config():
    for name in ("muon", "lion", "schedulefree_adamw"):
        assert name in OPTIMIZERS.names()
        assert OptimConfig(name=name).name == name


@pytest.mark.parametrize("name", sorted(SETTINGS))
def test_loss_decreases(name):
    model = _model()
    opt = _build(name, model)
    losses = _train(model, opt, range(20))
    assert all(map(torch.isfinite, torch.tensor(losses)))
    assert sum(losses[-3:]) / 3 < 0.8 * sum(losses[:3]) / 3, losses


@pytest.mark.parametrize("name", sorted(SETTINGS))
def test_state_dict_round_trip_continues_bit_identically(name):
    model = _model()
    opt = _build(name, model)
    _train(model, opt, range(10))
    switched = callable(getattr(opt, "eval", None))
    if switched:  # the contract: eval() before saving, train() before stepping again
        opt.eval()
    saved_state, saved_weights = _persist(opt.state_dict()), copy.deepcopy(model.state_dict())
    if switched:
        opt.train()
    _train(model, opt, range(10, 20))

    fresh = _model(seed=123)  # different init: everything must come from the saved state
    fresh.load_state_dict(saved_weights)
    fresh_opt = _build(name, fresh)
    fresh_opt.load_state_dict(saved_state)
    if switched:
        fresh_opt.train()
    _train(fresh, fresh_opt, range(10, 20))
    expected, got = _params(model), _params(fresh)
    assert all(torch.equal(expected[n], got[n]) for n in expected)


def test_muon_gets_exactly_the_hidden_matrices():
    model = _model()
    opt = _build("muon", model)
    assert isinstance(opt, MuonAdamW) and isinstance(opt.muon, torch.optim.Muon)
    assert isinstance(opt.adamw, torch.optim.AdamW)
    by_algorithm = {"muon": set(), "adamw": set()}
    for group in opt.param_groups:
        by_algorithm[group["algorithm"]].update(group["param_names"])
    names = dict(model.named_parameters())
    hidden = {n for n, p in names.items() if p.ndim == 2 and n != "embeddings.weight"}
    assert by_algorithm["muon"] == hidden
    assert by_algorithm["adamw"] == set(names) - hidden
    assert "embeddings.weight" in by_algorithm["adamw"]  # also the tied LM head
    assert {"layers.0.attention.q_proj.weight", "layers.1.ffn.down_proj.weight",
            "layers.0.ffn.gate_proj.lora_up.weight"} <= by_algorithm["muon"]
    # the children step exactly these groups, with the same dicts (so the trainer's lr writes reach them)
    assert [id(g) for g in opt.muon.param_groups] == [id(g) for g in opt.param_groups if g["algorithm"] == "muon"]
    assert all(g["adjust_lr_fn"] == "match_rms_adamw" for g in opt.muon.param_groups)
    # decay / no-decay kept: hidden matrices and the embedding decay, biases and norms do not
    assert {g["weight_decay"] for g in opt.param_groups if g["algorithm"] == "muon"} == {0.1}


@pytest.mark.parametrize("name, shape, expected", [
    ("layers.0.attention.o_proj.weight", (64, 64), True),
    ("embeddings.weight", (64, 64), False),
    ("lm_head.weight", (64, 64), False),
    ("transformer.wte.weight", (64, 64), False),
    ("metacog.error_classifier.weight", (3, 64), False),
    ("metacog.confidence_proj.weight", (1, 64), False),  # a vector in disguise
    ("metacog.error_proj.weight", (32, 64), True),
    ("layers.0.ffn_norm.weight", (64,), False),
    ("experts.weight", (8, 64, 64), False),
])
def test_split_rule(name, shape, expected):
    assert is_muon_param(name, torch.empty(shape)) is expected


def test_muon_lr_written_after_load_reaches_both_halves():
    model = _model()
    opt = _build("muon", model)
    _train(model, opt, range(3))
    opt.load_state_dict(_persist(opt.state_dict()))
    for group in opt.param_groups:  # what the trainer does each step
        group["lr"] = 0.0
    before = _params(model)
    _train(model, opt, range(3, 4))
    after = _params(model)
    assert all(torch.equal(before[n], after[n]) for n in before)


def test_muon_refuses_unnamed_params_and_mismatched_state():
    model = _model()
    with pytest.raises(ConfigError, match="splits parameters by name"):
        build_optimizer(list(model.parameters()), OptimConfig(name="muon"))
    assert isinstance(build_optimizer(list(model.named_parameters()), OptimConfig(name="muon")), MuonAdamW)
    opt = _build("muon", model)
    sd = opt.state_dict()
    sd["param_groups"][0]["algorithm"] = "adamw"
    with pytest.raises(ValueError, match="saved param groups"):
        opt.load_state_dict(sd)


def test_muon_add_param_group_and_deepcopy_keep_the_children_in_step():
    model, extra = _model(), torch.nn.Linear(64, 32)
    opt = _build("muon", model)
    opt.add_param_group({"params": list(extra.parameters()), "param_names": ["extra.weight", "extra.bias"],
                         "weight_decay": 0.0})
    assert opt.param_groups[-2]["algorithm"] == "muon" and opt.param_groups[-2]["param_names"] == ["extra.weight"]
    assert opt.muon.param_groups[-1] is opt.param_groups[-2] and opt.adamw.param_groups[-1] is opt.param_groups[-1]
    before = {n: p.detach().clone() for n, p in extra.named_parameters()}
    extra(torch.randn(3, 64)).square().sum().backward()
    opt.step()
    assert all(not torch.equal(before[n], p) for n, p in extra.named_parameters())
    clone = copy.deepcopy(opt)
    assert clone.muon.state is clone.state and clone.adamw.param_groups[0] is clone.param_groups[1]
    assert torch.equal(clone.state[clone.param_groups[-2]["params"][0]]["momentum_buffer"],
                       opt.state[extra.weight]["momentum_buffer"])


@pytest.mark.parametrize("name, module, install", [
    ("lion", "lion_pytorch", "pip install 'vesper[lion]'"),
    ("schedulefree_adamw", "schedulefree", "pip install 'vesper[schedulefree]'"),
])
def test_missing_package_names_the_install_command(monkeypatch, name, module, install):
    monkeypatch.setitem(sys.modules, module, None)  # import fails as if not installed
    with pytest.raises(BackendUnavailableError) as info:
        build_optimizer(build_param_groups(_model(), 0.0), OptimConfig(name=name))
    message = str(info.value)
    assert install in message and "\n" not in message


def test_only_schedulefree_has_the_train_eval_switch():
    model = _model()
    muon = _build("muon", model)
    assert not hasattr(muon, "train") and not hasattr(muon, "eval")
    lion = _build("lion", model)  # skips without lion-pytorch
    assert not hasattr(lion, "train") and not hasattr(lion, "eval")


def test_schedulefree_train_eval_switch():
    pytest.importorskip("schedulefree")
    model = _model()
    opt = _build("schedulefree_adamw", model)
    assert callable(opt.train) and callable(opt.eval)
    assert all(g["train_mode"] for g in opt.param_groups)  # built ready to step
    assert all(g["warmup_steps"] == 0 for g in opt.param_groups)
    _train(model, opt, range(5))
    beta1 = opt.param_groups[0]["betas"][0]
    y = _params(model)
    z = {n: opt.state[p]["z"].clone() for n, p in model.named_parameters()}
    opt.eval()  # parameters become the average x, with y = beta1 * x + (1 - beta1) * z
    x = _params(model)
    assert not all(g["train_mode"] for g in opt.param_groups)
    assert any(not torch.equal(x[n], y[n]) for n in y)
    for n in y:
        torch.testing.assert_close(beta1 * x[n] + (1 - beta1) * z[n], y[n], rtol=0, atol=1e-6)
    opt.eval()  # idempotent
    assert all(torch.equal(x[n], p) for n, p in model.named_parameters())
    opt.train()  # back to y, to rounding
    assert all(g["train_mode"] for g in opt.param_groups)
    for n, p in model.named_parameters():
        torch.testing.assert_close(p.detach(), y[n], rtol=0, atol=1e-6)


def test_schedulefree_trainer_warmup_equals_its_own_warmup():
    """Why the factory sets warmup_steps=0: the trainer's lr_at warm-up is schedule-free's own formula."""
    pytest.importorskip("schedulefree")
    from schedulefree import AdamWScheduleFree

    warmup, lr = 5, 1e-2
    own_model = _model()
    own = AdamWScheduleFree(build_param_groups(own_model, 0.01), lr=lr, warmup_steps=warmup)
    own.train()
    _train(own_model, own, range(8))

    model = _model()
    opt = _build("schedulefree_adamw", model, lr=lr)
    for step in range(8):
        for group in opt.param_groups:
            group["lr"] = lr_at(step, base_lr=lr, warmup_steps=warmup)
        _train(model, opt, range(step, step + 1))
    for n, p in model.named_parameters():
        torch.testing.assert_close(p, dict(own_model.named_parameters())[n], rtol=1e-5, atol=1e-6)

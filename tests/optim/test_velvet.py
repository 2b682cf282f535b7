"""Velvet end to end: AdamW equivalence, hand-computed steps, state_dict, sparse, bf16, clipping."""

from __future__ import annotations

import copy
import math

import pytest
import torch

from optim_helpers import make_mlp, train
from vesper_core.errors import ConfigError, UnknownNameError, VesperError
from vesper_optim import Velvet as _Velvet, VelvetRules


def Velvet(*args, **kwargs):  # noqa: N802 - these tests check the upstream formulas (UPSTREAM_SPEC §3.3)
    """Velvet with the ``upstream`` rules unless a test picks others (the product default is tested apart)."""
    kwargs.setdefault("rules", "upstream")
    return _Velvet(*args, **kwargs)


BACKENDS = ["reference", "foreach"]
LOSSES = [7.5, 5.2, 4.4, 3.9, 3.7, 3.65, 3.5, 3.2]  # walks both scales through their ranges
VOCAB = 1000


def plain(params, backend="foreach", **kw):
    """Velvet with every Velvet feature off: must be AdamW."""
    return Velvet(params, entropy_adaptive=False, perplexity_guided=False, sparse_aware=False,
                  max_grad_norm=0.0, backend=backend, **kw)


@pytest.mark.parametrize("backend", BACKENDS)
def test_features_off_equals_torch_adamw(backend):
    hp = dict(lr=1e-2, betas=(0.85, 0.99), eps=1e-7, weight_decay=0.05)
    ref, ours = make_mlp(), make_mlp()
    train(ref, torch.optim.AdamW(ref.parameters(), **hp), 50)
    train(ours, plain(ours.parameters(), backend=backend, **hp), 50)
    for a, b in zip(ref.parameters(), ours.parameters()):
        torch.testing.assert_close(b, a, atol=1e-6, rtol=0)


def test_one_step_with_scales_matches_hand_computation():
    lr, wd, beta1, beta2, eps, loss = 0.1, 0.01, 0.9, 0.999, 1e-8, 3.8
    p0 = torch.tensor([0.5, -1.0, 2.0, 0.0, 3.0], dtype=torch.float64)
    g = torch.tensor([0.1, -0.2, 0.3, 0.4, -0.5], dtype=torch.float64)
    p = torch.nn.Parameter(p0.float())
    opt = Velvet([p], lr=lr, weight_decay=wd, max_grad_norm=0.0, vocab_size=VOCAB)
    opt.set_signals(loss)
    s_e = (loss / math.log(VOCAB)) / 0.5  # 1.100: inside the bounds
    s_p = 40 / math.exp(loss)  # 0.895: inside the bounds
    lr_e, b1 = lr * s_e, beta1 * s_p
    assert opt.effective_lr() == pytest.approx(lr_e, rel=1e-12)
    assert opt.effective_beta1() == pytest.approx(b1, rel=1e-12)
    p.grad = g.float()
    opt.step()
    m, v = (1 - b1) * g, (1 - beta2) * g * g
    expected = p0 * (1 - lr_e * wd) - lr_e * (m / (1 - b1)) / ((v / (1 - beta2)).sqrt() + eps)
    torch.testing.assert_close(p.detach().double(), expected, atol=1e-6, rtol=0)
    state = opt.state[p]
    assert state["step"].item() == 1 and state["beta1_prod"].item() == pytest.approx(b1, rel=1e-15)


@pytest.mark.parametrize("backend", BACKENDS)
def test_bias_correction_exact_when_beta1_changes(backend):
    beta1, beta2, lr, eps = 0.9, 0.999, 0.05, 1e-8
    p0 = torch.tensor([1.0, -2.0, 0.5], dtype=torch.float64)
    g1 = torch.tensor([0.3, 0.1, -0.2], dtype=torch.float64)
    g2 = torch.tensor([-0.1, 0.4, 0.2], dtype=torch.float64)
    p = torch.nn.Parameter(p0.float())
    opt = Velvet([p], lr=lr, weight_decay=0.0, max_grad_norm=0.0, entropy_adaptive=False,
                 backend=backend)
    b = []
    for loss, g in ((3.8, g1), (3.6, g2)):  # s_p = 0.895 then 1.093
        opt.set_signals(loss)
        b.append(min(max(beta1 * 40 / math.exp(loss), 0.5), 0.999))
        p.grad = g.float()
        opt.step()
    m = b[1] * (1 - b[0]) * g1 + (1 - b[1]) * g2
    v = beta2 * (1 - beta2) * g1**2 + (1 - beta2) * g2**2
    m1 = (1 - b[0]) * g1
    v1 = (1 - beta2) * g1**2
    p1 = p0 - lr * (m1 / (1 - b[0])) / ((v1 / (1 - beta2)).sqrt() + eps)
    p2 = p1 - lr * (m / (1 - b[0] * b[1])) / ((v / (1 - beta2**2)).sqrt() + eps)
    torch.testing.assert_close(p.detach().double(), p2, atol=1e-6, rtol=0)
    assert opt.state[p]["beta1_prod"].item() == pytest.approx(b[0] * b[1], rel=1e-15)


def _velvet(params, backend):
    return Velvet(params, lr=1e-2, vocab_size=VOCAB, backend=backend)


@pytest.mark.parametrize("save_backend,load_backend",
                         [("reference", "reference"), ("foreach", "foreach"),
                          ("foreach", "reference"), ("reference", "foreach")])
def test_state_dict_resume_is_bit_identical(save_backend, load_backend):
    whole = make_mlp()
    train(whole, _velvet(whole.parameters(), load_backend), 12, losses=LOSSES)

    first = make_mlp()
    opt = _velvet(first.parameters(), save_backend)
    train(first, opt, 6, losses=LOSSES)
    saved_opt, saved_model = copy.deepcopy(opt.state_dict()), copy.deepcopy(first.state_dict())
    group = saved_opt["param_groups"][0]
    assert group["entropy_scale"] != 1.0 and group["ppl_scale"] != 1.0 and group["grad_norm"] > 0
    assert all(torch.is_tensor(v) for s in saved_opt["state"].values() for v in s.values())

    resumed = make_mlp(seed=123)  # different init: everything must come from the checkpoint
    resumed.load_state_dict(saved_model)
    opt2 = _velvet(resumed.parameters(), load_backend)
    opt2.load_state_dict(saved_opt)
    assert opt2.param_groups[0]["entropy_scale"] == group["entropy_scale"]
    train(resumed, opt2, 6, losses=LOSSES, start=6)
    for a, b in zip(whole.parameters(), resumed.parameters()):
        assert torch.equal(a, b)


def test_load_state_dict_keeps_f32_moments_and_cpu_counters_for_bf16():
    model = make_mlp(dtype=torch.bfloat16)
    opt = _velvet(model.parameters(), "foreach")
    train(model, opt, 2, losses=LOSSES)
    opt2 = _velvet(model.parameters(), "foreach")
    opt2.load_state_dict(opt.state_dict())
    for p in model.parameters():
        st, st2 = opt.state[p], opt2.state[p]
        assert st2["exp_avg"].dtype == st2["exp_avg_sq"].dtype == torch.float32
        assert st2["beta1_prod"].dtype == torch.float64 and st2["step"].dtype == torch.float32
        assert torch.equal(st["exp_avg_sq"], st2["exp_avg_sq"])
        assert st2["step"] is not st["step"]  # no aliasing with the source state


def test_setstate_backfills_new_keys():
    model = make_mlp()
    opt = _velvet(model.parameters(), "foreach")
    train(model, opt, 1, losses=LOSSES)
    sd = opt.state_dict()
    rule_keys = list(VelvetRules.preset("default").to_dict())
    for group in sd["param_groups"]:
        for key in ("entropy_scale", "ppl_scale", "grad_norm", "sparse", *rule_keys):
            del group[key]
        group["scale_bounds"] = [0.6, 1.4]  # a checkpoint from before the two bounds (lists: via JSON)
    for state in sd["state"].values():
        del state["beta1_prod"]
    opt2 = Velvet(model.parameters(), lr=1e-2, vocab_size=VOCAB, rules="upstream_rust", backend="foreach")
    opt2.load_state_dict(sd)
    g = opt2.param_groups[0]
    assert (g["entropy_scale"], g["ppl_scale"], g["grad_norm"], g["sparse"]) == (1.0, 1.0, 0.0, False)
    assert "scale_bounds" not in g
    assert g["entropy_bounds"] == g["perplexity_bounds"] == (0.6, 1.4)
    default = VelvetRules.preset("default")  # other rules: the default preset, not the constructor's
    assert (g["entropy_target"], g["beta1_range"]) == (default.entropy_target, default.beta1_range)
    first = next(iter(model.parameters()))
    assert opt2.state[first]["beta1_prod"].item() == pytest.approx(0.9, rel=1e-12)


@pytest.mark.parametrize("backend", BACKENDS)
def test_sparse_aware_only_touches_marked_groups(backend):
    torch.manual_seed(0)
    weight = torch.nn.Parameter(torch.randn(6, 9) * (torch.rand(6, 9) > 0.5))
    marked_bias = torch.nn.Parameter(torch.zeros(6))  # not marked: must train
    unmarked_weight = torch.nn.Parameter(weight.detach().clone())
    zeros = weight.detach() == 0
    opt = Velvet([{"params": [weight], "sparse": True}, {"params": [marked_bias, unmarked_weight]}],
                 lr=1e-2, weight_decay=0.1, sparse_aware=True, vocab_size=VOCAB, backend=backend)
    before = weight.detach().clone()
    for i in range(5):
        for p in (weight, marked_bias, unmarked_weight):
            p.grad = torch.randn_like(p)
        opt.set_signals(LOSSES[i])
        opt.step()
    assert zeros.any()
    assert torch.all(weight.detach()[zeros] == 0)
    assert torch.all(weight.detach()[~zeros] != before[~zeros])
    assert torch.all(opt.state[weight]["exp_avg"][zeros] == 0)
    assert torch.all(opt.state[weight]["exp_avg_sq"][zeros] == 0)
    assert torch.all(marked_bias.detach() != 0)
    assert torch.all(unmarked_weight.detach()[zeros] != 0)


def test_sparse_group_trains_zeros_when_flag_off():
    p = torch.nn.Parameter(torch.zeros(4))
    opt = Velvet([{"params": [p], "sparse": True}], lr=1e-2, sparse_aware=False,
                 entropy_adaptive=False)
    p.grad = torch.ones(4)
    opt.step()
    assert torch.all(p.detach() != 0)


@pytest.mark.parametrize("backend", BACKENDS)
def test_bf16_params_keep_f32_moments_and_round_once(backend):
    torch.manual_seed(0)
    p16 = torch.nn.Parameter(torch.randn(5, 7).bfloat16())
    p32 = torch.nn.Parameter(p16.detach().float())
    opts = [Velvet([p], lr=1e-2, vocab_size=VOCAB, backend=backend) for p in (p16, p32)]
    for i in range(3):
        g = torch.randn(5, 7).bfloat16()
        for p, opt in zip((p16, p32), opts):
            p.grad = g.to(p.dtype)
            opt.set_signals(LOSSES[i])
            opt.step()
        assert p16.dtype == torch.bfloat16
        assert torch.equal(p16.detach(), p32.detach().bfloat16())
        p32.data.copy_(p16.detach().float())  # the f32 twin restarts from the rounded value
    assert opts[0].state[p16]["exp_avg"].dtype == torch.float32
    assert opts[0].state[p16]["exp_avg_sq"].dtype == torch.float32


def test_clip_grad_norm_returns_pre_clip_norm_and_scales():
    a, b = torch.nn.Parameter(torch.zeros(2)), torch.nn.Parameter(torch.zeros(1))
    opt = Velvet([a, b], max_grad_norm=1.0, entropy_adaptive=False)
    a.grad, b.grad = torch.tensor([3.0, 0.0]), torch.tensor([4.0])
    norm = opt.clip_grad_norm_()
    assert norm.dtype == torch.float32 and norm.dim() == 0 and norm.item() == pytest.approx(5.0)
    coef = 1.0 / (5.0 + 1e-6)
    torch.testing.assert_close(a.grad, torch.tensor([3.0 * coef, 0.0]))
    torch.testing.assert_close(b.grad, torch.tensor([4.0 * coef]))
    opt.step()  # must not recompute: the stored norm is the pre-clip one
    assert opt.param_groups[0]["grad_norm"] == pytest.approx(5.0)


def test_step_clips_automatically_and_leaves_small_grads_untouched():
    a = torch.nn.Parameter(torch.zeros(3))
    opt = Velvet([a], max_grad_norm=1.0, entropy_adaptive=False)
    a.grad = torch.tensor([0.3, 0.0, 0.4])
    grad = a.grad
    opt.step()
    assert torch.equal(grad, torch.tensor([0.3, 0.0, 0.4]))
    assert opt.param_groups[0]["grad_norm"] == pytest.approx(0.5)
    a.grad = torch.tensor([30.0, 0.0, 40.0])
    grad = a.grad
    opt.step()
    assert opt.param_groups[0]["grad_norm"] == pytest.approx(50.0)
    torch.testing.assert_close(grad.norm(), torch.tensor(1.0))


def test_clipping_disabled_records_zero():
    a = torch.nn.Parameter(torch.zeros(2))
    opt = Velvet([a], max_grad_norm=0.0, entropy_adaptive=False)
    a.grad = torch.tensor([30.0, 40.0])
    opt.step()
    assert opt.param_groups[0]["grad_norm"] == 0.0
    assert torch.equal(a.grad, torch.tensor([30.0, 40.0]))


def test_set_signals_stores_one_when_feature_off_and_handles_nan():
    p = torch.nn.Parameter(torch.zeros(2))
    opt = Velvet([p], entropy_adaptive=False, perplexity_guided=True)
    opt.set_signals(torch.tensor(3.0))
    assert opt.param_groups[0]["entropy_scale"] == 1.0
    assert opt.param_groups[0]["ppl_scale"] == pytest.approx(min(40 / math.exp(3.0), 1.3))
    opt.set_signals(float("nan"))
    assert opt.param_groups[0]["ppl_scale"] == 1.0
    opt2 = Velvet([p])
    with pytest.raises(ConfigError, match="vocab_size"):
        opt2.set_signals(3.0)
    opt2.set_signals(3.0, normalized_entropy=0.4)
    assert opt2.param_groups[0]["entropy_scale"] == pytest.approx(0.8)
    assert opt2.effective_lr() == pytest.approx(3e-4 * 0.8)


@pytest.mark.parametrize("kwargs,message", [
    ({"lr": -1.0}, "Invalid learning rate: -1.0"),
    ({"lr": float("nan")}, "Invalid learning rate"),
    ({"eps": -1e-8}, "Invalid epsilon value: -1e-08"),
    ({"betas": (1.0, 0.999)}, "Invalid beta parameter at index 0: 1.0"),
    ({"betas": (0.9, -0.1)}, "Invalid beta parameter at index 1: -0.1"),
    ({"betas": (0.9,)}, "Invalid betas"),
    ({"weight_decay": -0.1}, "Invalid weight_decay value: -0.1"),
    ({"max_grad_norm": -1.0}, "Invalid max_grad_norm value: -1.0"),
    ({"entropy_adaptive": "yes"}, "Invalid entropy_adaptive value"),
    ({"scale_bounds": (1.3, 0.7)}, "scale_bounds must satisfy 0 < lo <= hi"),
    ({"rules": {"entropy_target": 0.0}}, "entropy_target must be a finite number > 0"),
    ({"vocab_size": 1}, "Invalid vocab_size: 1"),
])
def test_hyperparameter_validation(kwargs, message):
    with pytest.raises(ValueError, match=message) as err:
        Velvet([torch.nn.Parameter(torch.zeros(1))], **kwargs)
    assert isinstance(err.value, ConfigError)


def test_group_overrides_are_validated_and_complex_rejected():
    p = torch.nn.Parameter(torch.zeros(1))
    with pytest.raises(ConfigError, match="Invalid learning rate"):
        Velvet([{"params": [p], "lr": -0.5}])
    with pytest.raises(ConfigError, match="Invalid sparse value"):
        Velvet([{"params": [p], "sparse": 1}])
    with pytest.raises(ConfigError, match="floating-point"):
        Velvet([torch.nn.Parameter(torch.zeros(2, dtype=torch.complex64))])
    with pytest.raises(UnknownNameError, match="foreach"):
        Velvet([p], backend="foreahc")


def test_group_max_grad_norm_must_agree_and_sparse_grads_rejected():
    a, b = torch.nn.Parameter(torch.zeros(1)), torch.nn.Parameter(torch.zeros(1))
    opt = Velvet([{"params": [a]}, {"params": [b], "max_grad_norm": 2.0}])
    a.grad, b.grad = torch.ones(1), torch.ones(1)
    with pytest.raises(ConfigError, match="max_grad_norm differs"):
        opt.step()
    c = torch.nn.Parameter(torch.zeros(3))
    opt = Velvet([c], max_grad_norm=0.0, entropy_adaptive=False)
    c.grad = torch.zeros(3).to_sparse()
    with pytest.raises(VesperError, match="sparse gradients"):
        opt.step()


def test_params_without_grad_are_skipped():
    a, b = torch.nn.Parameter(torch.ones(2)), torch.nn.Parameter(torch.ones(2))
    opt = Velvet([a, b], entropy_adaptive=False)
    a.grad = torch.ones(2)
    opt.step()
    assert torch.equal(b.detach(), torch.ones(2)) and b not in opt.state
    assert opt.state[a]["step"].item() == 1


def test_closure_is_evaluated():
    p = torch.nn.Parameter(torch.ones(2))
    opt = Velvet([p], entropy_adaptive=False)

    def closure():
        opt.zero_grad()
        loss = (p**2).sum()
        loss.backward()
        return loss

    assert opt.step(closure).item() == pytest.approx(2.0)
    assert torch.all(p.detach() < 1)

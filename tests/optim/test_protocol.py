"""The capability protocol a trainer uses (SignalAware, ReportsMetrics), one clipping path, and the
stale-norm bug: a norm recorded for gradients whose step never ran must not skip the next clip."""

from __future__ import annotations

import pytest
import torch

from optim_helpers import make_mlp
from vesper_core.errors import ConfigError
from vesper_optim import SIGNALS, ReportsMetrics, SignalAware, Velvet as _Velvet
from vesper_optim import velvet as velvet_module
from vesper_optim.clipping import clip_grad_norm_


def Velvet(*args, **kwargs):  # noqa: N802 - these tests check the upstream formulas (UPSTREAM_SPEC §3.3)
    """Velvet with the ``upstream`` rules unless a test picks others (the product default is tested apart)."""
    kwargs.setdefault("rules", "upstream")
    return _Velvet(*args, **kwargs)


VOCAB = 1000


def _batch(gen, scale=1.0):
    return torch.randn(16, 7, generator=gen), scale * torch.randn(16, 5, generator=gen)


def test_velvet_has_both_capabilities_and_plain_optimizers_none():
    opt = Velvet([torch.nn.Parameter(torch.zeros(1))])
    assert isinstance(opt, SignalAware) and isinstance(opt, ReportsMetrics)
    adamw = torch.optim.AdamW([torch.nn.Parameter(torch.zeros(1))])
    assert not isinstance(adamw, SignalAware) and not isinstance(adamw, ReportsMetrics)
    assert SIGNALS == ("loss", "entropy")
    assert opt.training_signals() == frozenset({"loss"}) and opt.training_signals() <= set(SIGNALS)


def test_step_metrics_are_what_the_next_step_applies():
    p = torch.nn.Parameter(torch.zeros(3))
    opt = Velvet([p], lr=0.1, vocab_size=VOCAB)
    opt.set_signals(4.0)
    metrics = opt.step_metrics()
    assert set(metrics) == {"lr_effective", "entropy_scale", "ppl_scale", "beta1_effective", "hypergradient_scale"}
    assert metrics["lr_effective"] == opt.effective_lr() == pytest.approx(0.1 * metrics["entropy_scale"])
    assert metrics["beta1_effective"] == opt.effective_beta1()
    seen = {}

    def recording(params, grads, exp_avgs, exp_avg_sqs, scalars):
        seen.update(lr_e=scalars.lr_e, beta1_e=scalars.beta1_e)

    from vesper_optim import functional as F
    F.BACKENDS.register("test_recording_metrics", recording)
    try:
        opt2 = Velvet([p], lr=0.1, vocab_size=VOCAB, backend="test_recording_metrics")
        opt2.set_signals(4.0)
        metrics = opt2.step_metrics()
        p.grad = torch.ones(3)
        opt2.step()
    finally:
        F.BACKENDS.unregister("test_recording_metrics")
    assert seen["lr_e"] == metrics["lr_effective"] and seen["beta1_e"] == metrics["beta1_effective"]


def _trainer_step(model, opt, gen, loss_value, *, max_norm=1.0, scale=1.0):
    """The step exactly as the trainer runs it: shared clip -> set_signals(grad_norm=) -> step -> zero_grad."""
    x, y = _batch(gen, scale)
    torch.nn.functional.mse_loss(model(x), y).backward()
    norm = clip_grad_norm_(list(model.parameters()), max_norm)
    opt.set_signals(loss_value, vocab_size=VOCAB, grad_norm=norm)
    opt.step()
    opt.zero_grad()
    return norm


def _standalone_step(model, opt, gen, loss_value, *, scale=1.0):
    x, y = _batch(gen, scale)
    torch.nn.functional.mse_loss(model(x), y).backward()
    opt.set_signals(loss_value)  # the README's call: step() clips by itself
    opt.step()
    opt.zero_grad()


def test_trainer_path_equals_standalone_path_and_does_not_clip_twice(monkeypatch):
    calls = []
    real = velvet_module.clip_grad_norm_
    monkeypatch.setattr(velvet_module, "clip_grad_norm_", lambda *a, **k: calls.append(1) or real(*a, **k))
    a, b = make_mlp(), make_mlp()
    opt_a = Velvet(a.parameters(), lr=1e-2, vocab_size=VOCAB)
    opt_b = Velvet(b.parameters(), lr=1e-2, vocab_size=VOCAB)
    gen_a, gen_b = torch.Generator().manual_seed(3), torch.Generator().manual_seed(3)
    norms = []
    for i, loss in enumerate([6.0, 5.0, 4.5, 4.0, 3.8]):
        norms.append(float(_trainer_step(a, opt_a, gen_a, loss, scale=30.0)))  # big gradients: clipped
        assert opt_a.param_groups[0]["grad_norm"] == norms[-1]  # the caller's pre-clip norm, recorded
    assert not calls  # Velvet never clipped: the caller did
    for loss in [6.0, 5.0, 4.5, 4.0, 3.8]:
        _standalone_step(b, opt_b, gen_b, loss, scale=30.0)
    assert len(calls) == 5 and min(norms) > 1.0
    for x, y in zip(a.parameters(), b.parameters()):
        assert torch.equal(x, y)


def _reference_run(scale_first, scale_second):
    """What a correct run does: the first step skipped, the second clipped by step()."""
    model = make_mlp()
    opt = Velvet(model.parameters(), lr=1e-2, vocab_size=VOCAB)
    gen = torch.Generator().manual_seed(5)
    _batch(gen, scale_first)  # the skipped step's batch
    _standalone_step(model, opt, gen, 4.0, scale=scale_second)
    return model


@pytest.mark.parametrize("clear", ["zero_grad", "model.zero_grad", "grad=None"])
def test_skipped_step_does_not_leave_a_stale_norm(clear):
    """clip -> step skipped (GradScaler found inf) -> new gradients -> step() must clip them."""
    model = make_mlp()
    opt = Velvet(model.parameters(), lr=1e-2, vocab_size=VOCAB)
    gen = torch.Generator().manual_seed(5)
    x, y = _batch(gen, 0.01)
    torch.nn.functional.mse_loss(model(x), y).backward()
    small = opt.clip_grad_norm_()  # a small norm: nothing clipped
    assert float(small) < 1.0  # ... and then the step is skipped
    if clear == "zero_grad":
        opt.zero_grad()
    elif clear == "model.zero_grad":
        model.zero_grad()  # the optimizer is not told
    else:
        for p in model.parameters():
            p.grad = None
    x, y = _batch(gen, 100.0)  # large gradients this time
    torch.nn.functional.mse_loss(model(x), y).backward()
    opt.set_signals(4.0)
    opt.step()
    assert 1.0 < opt.param_groups[0]["grad_norm"] < float("inf")  # this step's norm, not the stale one
    for p, q in zip(model.parameters(), _reference_run(0.01, 100.0).parameters()):
        assert torch.equal(p, q)


def test_grad_scaler_skip_then_next_step_clips():
    """The real thing on CPU: a GradScaler skips a step with an inf gradient after the clip."""
    model = make_mlp()
    opt = Velvet(model.parameters(), lr=1e-2, vocab_size=VOCAB)
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0 ** 4)
    gen = torch.Generator().manual_seed(5)
    x, y = _batch(gen, 0.01)
    scaler.scale(torch.nn.functional.mse_loss(model(x), y)).backward()
    model[0].weight.grad[0, 0] = float("inf")
    scaler.unscale_(opt)
    opt.set_signals(4.0, grad_norm=clip_grad_norm_(list(model.parameters()), 1.0))
    before = [p.detach().clone() for p in model.parameters()]
    scaler.step(opt)  # inf found: optimizer.step() is not called
    scaler.update()
    assert all(torch.equal(p, q) for p, q in zip(model.parameters(), before))
    model.zero_grad()  # not opt.zero_grad(): Velvet still holds the norm of the skipped gradients
    x, y = _batch(gen, 100.0)
    scaler.scale(torch.nn.functional.mse_loss(model(x), y)).backward()
    scaler.unscale_(opt)
    opt.set_signals(4.0)  # this time nobody clips before step()
    scaler.step(opt)
    scaler.update()
    assert 1.0 < opt.param_groups[0]["grad_norm"] < float("inf")  # this step's norm, not the skipped one's
    for p, q in zip(model.parameters(), _reference_run(0.01, 100.0).parameters()):
        # scaling by 2^4 and back is exact; compare bit for bit: Adam's first step hides a missed
        # clip in ~1e-7 (only eps sees the gradient scale)
        assert torch.equal(p, q)


def test_set_signals_keeps_the_old_call_forms_and_checks_grad_norm():
    p = torch.nn.Parameter(torch.zeros(2))
    opt = Velvet([p], vocab_size=VOCAB)
    opt.set_signals(torch.tensor(3.0))
    opt.set_signals(3.0, normalized_entropy=0.4, vocab_size=50257)
    assert opt.param_groups[0]["entropy_scale"] == pytest.approx(0.8)
    with pytest.raises(ConfigError, match="grad_norm must be a number"):
        opt.set_signals(3.0, grad_norm="big")
    p.grad = torch.tensor([3.0, 4.0])
    opt.set_signals(3.0, grad_norm=5.0)  # a float is fine too
    opt.step()
    assert opt.param_groups[0]["grad_norm"] == 5.0
    assert torch.equal(p.grad, torch.tensor([3.0, 4.0]))  # not clipped again

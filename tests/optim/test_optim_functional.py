"""Backend parity (foreach vs the reference loop) and backend selection."""

from __future__ import annotations

import dataclasses
import subprocess
import sys
import warnings

import pytest
import torch

from vesper_core.errors import BackendUnavailableError, ConfigError, UnknownNameError
from vesper_optim import Velvet as _Velvet
from vesper_optim import functional as F


def Velvet(*args, **kwargs):  # noqa: N802 - these tests check the upstream formulas (UPSTREAM_SPEC §3.3)
    """Velvet with the ``upstream`` rules unless a test picks others (the product default is tested apart)."""
    kwargs.setdefault("rules", "upstream")
    return _Velvet(*args, **kwargs)


SHAPES = [(7,), (3, 5), (1,), (17, 33), (0, 4), (2, 3, 5)]
LOSSES = [7.5, 5.2, 4.4, 3.9, 3.7, 3.65, 3.5, 3.2, float("nan"), 6.0]


def _params(dtypes):
    torch.manual_seed(0)
    out = []
    for i, shape in enumerate(SHAPES):
        t = torch.randn(shape) * (torch.rand(shape) > 0.3)  # some exact zeros
        out.append(torch.nn.Parameter(t.to(dtypes[i % len(dtypes)])))
    return out


@pytest.mark.parametrize("dtypes", [[torch.float32], [torch.bfloat16], [torch.float32, torch.bfloat16]],
                         ids=["f32", "bf16", "mixed"])
@pytest.mark.parametrize("entropy_adaptive,perplexity_guided,sparse_aware",
                         [(True, True, True), (False, False, False), (True, False, True),
                          (False, True, False)])
def test_foreach_matches_reference(dtypes, entropy_adaptive, perplexity_guided, sparse_aware, monkeypatch):
    monkeypatch.setattr(F, "CPU_BATCH_ELEMENTS", 40)  # several foreach chains, one oversized tensor
    runs = []
    for backend in ("reference", "foreach"):
        params = _params(dtypes)
        groups = [{"params": params[:3]}, {"params": params[3:], "sparse": True, "weight_decay": 0.1}]
        opt = Velvet(groups, lr=1e-2, entropy_adaptive=entropy_adaptive,
                     perplexity_guided=perplexity_guided, sparse_aware=sparse_aware,
                     vocab_size=50257, backend=backend)
        gen = torch.Generator().manual_seed(1)
        for step in range(30):
            for p in params:
                p.grad = torch.randn(p.shape, generator=gen).to(p.dtype)
            opt.set_signals(LOSSES[step % len(LOSSES)])
            opt.step()
        runs.append((params, opt))
    (ref_params, ref_opt), (fe_params, fe_opt) = runs
    for a, b in zip(ref_params, fe_params):
        assert a.dtype == b.dtype
        torch.testing.assert_close(b.float(), a.float(), atol=1e-6, rtol=0)
        for key in ("exp_avg", "exp_avg_sq"):
            torch.testing.assert_close(fe_opt.state[b][key], ref_opt.state[a][key], atol=1e-6, rtol=0)


def test_dispatcher_passes_scaled_hyperparameters_once():
    seen = {}

    def recording(params, grads, exp_avgs, exp_avg_sqs, scalars, **options):
        assert not options  # the dispatcher passes no backend options
        seen.update(dataclasses.asdict(scalars))
        F._single_tensor_velvet(params, grads, exp_avgs, exp_avg_sqs, scalars)

    F.BACKENDS.register("test_recording", recording)
    try:
        p = torch.nn.Parameter(torch.ones(3))
        opt = Velvet([p], lr=0.1, vocab_size=1000, backend="test_recording")
        opt.set_signals(5.0)
        p.grad = torch.ones(3)
        opt.step()
    finally:
        F.BACKENDS.unregister("test_recording")
    assert seen["lr_e"] == pytest.approx(opt.effective_lr())
    assert seen["beta1_e"] == pytest.approx(opt.effective_beta1())
    assert seen["bias_correction1"] == pytest.approx(1 - opt.effective_beta1())
    assert seen["bias_correction2"] == pytest.approx(1 - 0.999)
    assert set(seen) == {"lr_e", "beta1_e", "beta2", "eps", "weight_decay", "bias_correction1",
                         "bias_correction2", "sparse"}


def test_backend_resolution_order(monkeypatch):
    cpu = torch.device("cpu")
    monkeypatch.delenv(F.ENV_VAR, raising=False)
    assert F.resolve_backend("auto", cpu)[0] == "fused"  # the fastest CPU path (GPU kernels skipped silently)
    monkeypatch.setenv(F.ENV_VAR, "reference")
    assert F.resolve_backend("auto", cpu)[0] == "reference"
    assert F.resolve_backend("foreach", cpu)[0] == "foreach"  # explicit beats env
    monkeypatch.setenv(F.ENV_VAR, "refrence")
    with pytest.raises(UnknownNameError, match="did you mean 'reference'"):
        F.resolve_backend("auto", cpu)
    with pytest.raises(UnknownNameError):
        Velvet([torch.nn.Parameter(torch.zeros(1))])


def test_unavailable_backend_explicit_raises_auto_warns_once(monkeypatch):
    cpu = torch.device("cpu")
    monkeypatch.delenv(F.ENV_VAR, raising=False)
    F.BACKENDS.register("test_gpu_only", F.VelvetBackend(
        "test_gpu_only", F._single_tensor_velvet, devices=("cuda",),
        install_hint="pip install vesper[cuda]"))
    try:
        with pytest.raises(BackendUnavailableError, match=r"runs on cuda.*pip install vesper\[cuda\]"):
            F.resolve_backend("test_gpu_only", cpu)
        F.BACKENDS.register("test_missing_mod", F.VelvetBackend(
            "test_missing_mod", F._single_tensor_velvet, requires=("no_such_module_vesper",)))
        monkeypatch.setattr(F, "AUTO_ORDER", ("test_gpu_only", "test_missing_mod", "foreach"))
        monkeypatch.setattr(F, "_warned", set())
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            assert F.resolve_backend("auto", cpu)[0] == "foreach"
            assert F.resolve_backend("auto", cpu)[0] == "foreach"
        # a GPU-only kernel is not expected on CPU (silent); a missing module on this device warns once
        assert len(caught) == 1 and "test_missing_mod" in str(caught[0].message)
    finally:
        F.BACKENDS.unregister("test_gpu_only")
        F.BACKENDS.unregister("test_missing_mod")


def test_missing_module_makes_backend_unavailable():
    backend = F.VelvetBackend("x", F._single_tensor_velvet, requires=("no_such_module_vesper",))
    assert "no_such_module_vesper" in backend.unavailable_reason(torch.device("cpu"))


def test_effective_hyperparameters():
    assert F.effective_lr(0.1, 1.3, True) == pytest.approx(0.13)
    assert F.effective_lr(0.1, 1.3, False) == 0.1
    assert F.effective_beta1(0.9, 1.3, True) == 0.999
    assert F.effective_beta1(0.9, 0.5, True) == 0.5
    assert F.effective_beta1(0.9, 0.5, False) == 0.9


def test_library_imports_no_cli_stack():
    code = ("import sys, vesper_optim; bad = [m for m in ('typer', 'rich', 'vesper_cli') "
            "if m in sys.modules]; assert not bad, bad")
    subprocess.run([sys.executable, "-c", code], check=True)


@pytest.mark.parametrize("backend", ["reference", "foreach"])
def test_params_with_different_step_counts_get_their_own_bias_correction(backend):
    a, b = torch.nn.Parameter(torch.ones(4)), torch.nn.Parameter(torch.ones(3))
    a2, b2 = torch.nn.Parameter(torch.ones(4)), torch.nn.Parameter(torch.ones(3))
    joint = Velvet([a, b], lr=0.1, max_grad_norm=0.0, entropy_adaptive=False, backend=backend)
    alone = [Velvet([p], lr=0.1, max_grad_norm=0.0, entropy_adaptive=False, backend=backend)
             for p in (a2, b2)]
    gen = torch.Generator().manual_seed(0)
    for step, loss in enumerate([4.0, 3.7, 3.5]):
        grads = [torch.randn(4, generator=gen), torch.randn(3, generator=gen)]
        active = [True, step > 0]  # b has no gradient at the first step
        joint.set_signals(loss)
        for p, g, on in zip((a, b), grads, active):
            p.grad = g.clone() if on else None
        joint.step()
        for p, opt, g, on in zip((a2, b2), alone, grads, active):
            if on:
                p.grad = g.clone()
                opt.set_signals(loss)
                opt.step()
    assert joint.state[a]["step"].item() == 3 and joint.state[b]["step"].item() == 2
    assert torch.equal(a, a2) and torch.equal(b, b2)


def test_backend_without_sparse_support_explicit_refused_auto_falls_through(monkeypatch):
    calls = []

    def dense_only(params, grads, exp_avgs, exp_avg_sqs, scalars):
        calls.append(scalars.sparse)
        assert not scalars.sparse
        F._foreach_velvet(params, grads, exp_avgs, exp_avg_sqs, scalars)

    monkeypatch.delenv(F.ENV_VAR, raising=False)
    F.BACKENDS.register("test_dense_only", F.VelvetBackend("test_dense_only", dense_only,
                                                          supports_sparse=False))
    try:
        w = torch.nn.Parameter(torch.tensor([0.0, 1.0]))
        d = torch.nn.Parameter(torch.tensor([0.0, 1.0]))
        def groups():  # torch writes the defaults into the dicts it is given
            return [{"params": [w], "sparse": True}, {"params": [d]}]

        with pytest.raises(ConfigError, match=r"'test_dense_only' cannot run param group 0: .*sparse-aware.*'foreach'"):
            Velvet(groups(), sparse_aware=True, backend="test_dense_only")
        Velvet(groups(), sparse_aware=False, backend="test_dense_only")  # no sparse group without the flag
        monkeypatch.setattr(F, "AUTO_ORDER", ("test_dense_only", "foreach"))
        opt = Velvet(groups(), sparse_aware=True, entropy_adaptive=False)
        assert opt.backends() == ["foreach", "test_dense_only"]
        w.grad, d.grad = torch.ones(2), torch.ones(2)
        opt.step()
    finally:
        F.BACKENDS.unregister("test_dense_only")
    assert calls == [False] and w[0].item() == 0.0 and d[0].item() != 0.0

"""Backends never surprise: each declares what it runs, auto only picks one that can, an explicit one
that cannot fails when Velvet is built (one line, the value, what to do), and kernels never leak a
bare ValueError/TypeError."""

from __future__ import annotations

import dataclasses
import math
import os
import re
import warnings
from pathlib import Path

import pytest
import torch

if not torch.cuda.is_available():
    os.environ["TRITON_INTERPRET"] = "1"  # explicit 'triton' runs on CPU tensors through the interpreter

from optim_helpers import make_mlp  # noqa: E402
from vesper_core.errors import BackendUnavailableError, ConfigError, VesperError  # noqa: E402
from vesper_optim import Velvet as _Velvet  # noqa: E402
from vesper_optim import functional as F  # noqa: E402
from vesper_optim.signals import UPSTREAM  # noqa: E402
from vesper_optim.kernels import SPARSE_THRESHOLD, VelvetScalars  # noqa: E402
from vesper_optim.kernels.velvet_fused_cpu import fused_beta_ok, velvet_fused_cpu_  # noqa: E402


def Velvet(*args, **kwargs):  # noqa: N802 - these tests check the upstream formulas (UPSTREAM_SPEC §3.3)
    """Velvet with the ``upstream`` rules unless a test picks others (the product default is tested apart)."""
    kwargs.setdefault("rules", "upstream")
    return _Velvet(*args, **kwargs)


BACKENDS = ["reference", "foreach", "fused", "triton", "cupy"]
LOSSES = [7.5, 5.2, 4.4, 3.9, 3.5, 3.2, 3.0, 2.5]  # s_p reaches its upper bound: beta1 hits its cap
VOCAB = 1000
# Each case: Velvet keyword arguments, the model's dtype, whether a group is sparse (zeros kept).
CASES = {
    "beta2_0.9999": dict(kw=dict(betas=(0.9, 0.9999))),
    "beta2_0.99999999": dict(kw=dict(betas=(0.9, 0.99999999))),
    "sparse_group": dict(kw=dict(sparse_aware=True), sparse=True),
    "bf16": dict(kw={}, dtype=torch.bfloat16),
    "f16": dict(kw={}, dtype=torch.float16),
    "f64": dict(kw={}, dtype=torch.float64),
    # the upstream rules: their perplexity scale moves beta1 up to the cap
    "beta1_cap_0.99999999": dict(kw=dict(rules=UPSTREAM.replace(beta1_range=(0.5, 0.99999999)))),
}
# Tolerance vs the reference after the steps below, by param dtype. f32: kernels fold the scalars in
# another order (a few ulps per step). bf16/f16: one storage ulp (of values up to ~1) per step,
# where the Triton interpreter truncates instead of rounding and the fused path rounds from f32
# values a few ulps away from the reference's.
STEPS = 6
TOLERANCES = {torch.float32: 1e-6, torch.float64: 1e-6, torch.bfloat16: STEPS * 2 ** -8, torch.float16: STEPS * 2 ** -11}


def _model_and_groups(case):
    model = make_mlp(dtype=case.get("dtype", torch.float32))
    first, rest = model[0].weight, [p for n, p in model.named_parameters() if n != "0.weight"]
    if case.get("sparse"):
        with torch.no_grad():
            first[:, ::3] = 0.0  # structural zeros
        return model, [{"params": [first], "sparse": True}, {"params": rest}]
    return model, [{"params": list(model.parameters())}]


def _train(model, opt, steps=STEPS):
    gen = torch.Generator().manual_seed(1)
    dtype = next(model.parameters()).dtype
    for i in range(steps):
        x, y = torch.randn(16, 7, generator=gen).to(dtype), torch.randn(16, 5, generator=gen).to(dtype)
        opt.zero_grad()
        torch.nn.functional.mse_loss(model(x).float(), y.float()).backward()
        opt.set_signals(LOSSES[i % len(LOSSES)])
        opt.step()


GPU = torch.cuda.is_available()
# What each backend must refuse here (anything else must train and match the reference).
REFUSED = {
    "fused": {"beta2_0.99999999", "beta1_cap_0.99999999", "sparse_group", "f64"},  # bias-correction trick, AdamW kernel
    "triton": {"f64"},
    "cupy": {"beta2_0.99999999", "beta1_cap_0.99999999", "f64"} if GPU else set(CASES),  # f32 1 - beta; no GPU
}


@pytest.mark.parametrize("case_name", list(CASES))
@pytest.mark.parametrize("backend", BACKENDS)
def test_backend_trains_like_reference_or_refuses_at_construction(backend, case_name, monkeypatch):
    monkeypatch.delenv(F.ENV_VAR, raising=False)
    case = CASES[case_name]
    model, groups = _model_and_groups(case)
    kw = dict(lr=1e-2, vocab_size=VOCAB, weight_decay=0.1, **case["kw"])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # 'unverified on this GPU' where a GPU is present
        try:
            opt = Velvet(groups, backend=backend, **kw)
        except VesperError as exc:
            assert case_name in REFUSED.get(backend, set()), f"{backend} refused {case_name}: {exc}"
            assert isinstance(exc, (ConfigError, BackendUnavailableError))
            message = str(exc)
            assert "\n" not in message and f"backend {backend!r}" in message
            assert "use backend=" in message or "pip install" in message  # what to do
            return
    assert case_name not in REFUSED.get(backend, set()), f"{backend} accepted {case_name}"
    ref_model, ref_groups = _model_and_groups(case)
    ref = Velvet(ref_groups, backend="reference", **kw)
    _train(model, opt)
    _train(ref_model, ref)
    tol = TOLERANCES[case.get("dtype", torch.float32)]
    for (name, a), b in zip(model.named_parameters(), ref_model.parameters()):
        torch.testing.assert_close(a.float(), b.float(), atol=tol, rtol=0, msg=lambda m: f"{name}: {m}")
    if case.get("sparse"):
        assert torch.all(model[0].weight[:, ::3] == 0)


@pytest.mark.parametrize("backend,case_name", [
    ("fused", "beta2_0.99999999"), ("fused", "beta1_cap_0.99999999"), ("fused", "sparse_group"),
    ("fused", "f64"), ("triton", "f64"), ("cupy", "beta2_0.99999999"),
])
def test_refusals_name_the_value(backend, case_name):
    """The settings a backend cannot represent are named, with the value (GPU-free: select only)."""
    case = CASES[case_name]
    _, groups = _model_and_groups(case)
    opt_kw = case["kw"]
    rules = F.resolve_rules(opt_kw.get("rules"))
    beta1, beta2 = opt_kw.get("betas", (0.9, 0.999))
    placements = {(torch.device("cuda" if backend == "cupy" else "cpu"), p.dtype)
                  for g in groups for p in g["params"]}
    impl = F.describe_backend(backend)
    reasons = [impl.settings_reason(dtype, beta1_range=rules.beta1_span(beta1, True), beta2=beta2,
                                    sparse=bool(case.get("sparse"))) for _, dtype in placements]
    reason = next(r for r in reasons if r is not None)
    expected = {"beta2_0.99999999": "beta2=0.99999999", "beta1_cap_0.99999999": "beta1=0.99999999",
                "sparse_group": "sparse", "f64": "not float64"}[case_name]
    assert expected in reason


def test_auto_picks_a_backend_that_can_run_the_settings(monkeypatch):
    monkeypatch.delenv(F.ENV_VAR, raising=False)
    p = lambda dtype=torch.float32: torch.nn.Parameter(torch.randn(3, dtype=dtype))  # noqa: E731
    assert Velvet([p()]).backends() == ["fused"]
    assert Velvet([p()], betas=(0.9, 0.9999)).backends() == ["fused"]  # exact there (see fused_beta_ok)
    assert Velvet([p()], betas=(0.9, 0.99999999)).backends() == ["foreach"]
    assert Velvet([p()], rules=UPSTREAM.replace(beta1_range=(0.5, 0.99999999))).backends() == ["foreach"]
    assert Velvet([p()], perplexity_guided=False, betas=(0.99999999, 0.999)).backends() == ["foreach"]
    assert Velvet([p(torch.float64)]).backends() == ["foreach"]
    assert Velvet([p(torch.bfloat16)]).backends() == ["fused"]
    sparse = Velvet([{"params": [p()], "sparse": True}, {"params": [p()]}], sparse_aware=True)
    assert sparse.backends() == ["foreach", "fused"]
    # the perplexity rule's beta1 range decides, not the beta1 given: 0.9 * 1.3 is clamped to the cap
    assert Velvet([p()], betas=(0.9, 0.999), rules=UPSTREAM.replace(beta1_range=(0.5, 0.99999999))).backends() == ["foreach"]
    assert Velvet([p()], betas=(0.5, 0.999), rules=UPSTREAM.replace(beta1_range=(0.5, 0.99999999))).backends() == ["fused"]  # 0.5 * 1.3


def test_auto_on_beta2_0_9999_cpu_trains_like_reference(monkeypatch):
    monkeypatch.delenv(F.ENV_VAR, raising=False)
    a, b = make_mlp(), make_mlp()
    opt = Velvet(a.parameters(), lr=1e-2, betas=(0.9, 0.9999), vocab_size=VOCAB)
    assert opt.backends() == ["fused"]
    _train(a, opt, 20)
    _train(b, Velvet(b.parameters(), lr=1e-2, betas=(0.9, 0.9999), vocab_size=VOCAB, backend="reference"), 20)
    for x, y in zip(a.parameters(), b.parameters()):
        torch.testing.assert_close(x, y, atol=1e-6, rtol=0)


def test_a_group_changed_by_hand_gets_a_backend_that_fits(monkeypatch):
    monkeypatch.delenv(F.ENV_VAR, raising=False)
    p = torch.nn.Parameter(torch.randn(4))
    opt = Velvet([p], vocab_size=VOCAB)
    assert opt.backends() == ["fused"]
    opt.param_groups[0]["betas"] = (0.9, 0.99999999)
    p.grad = torch.randn(4)
    opt.step()
    assert opt.backends() == ["foreach"]
    explicit = Velvet([p], backend="fused")
    explicit.param_groups[0]["betas"] = (0.9, 0.99999999)
    with pytest.raises(ConfigError, match="beta2=0.99999999"):
        explicit.step()


def test_loading_settings_an_explicit_backend_cannot_run_fails_at_load():
    p = torch.nn.Parameter(torch.randn(4))
    saved = Velvet([p], betas=(0.9, 0.99999999), backend="foreach").state_dict()
    opt = Velvet([p], backend="fused")
    with pytest.raises(ConfigError, match="'fused' cannot run param group 0: .*beta2=0.99999999"):
        opt.load_state_dict(saved)


def test_env_var_backend_is_named_in_the_error(monkeypatch):
    monkeypatch.setenv(F.ENV_VAR, "fused")
    with pytest.raises(ConfigError, match=r"'fused' \(from VESPER_OPTIM_BACKEND\).*unset VESPER_OPTIM_BACKEND"):
        Velvet([torch.nn.Parameter(torch.randn(2))], betas=(0.9, 0.99999999))


def test_cuda_auto_takes_only_gpu_verified_kernels_and_explicit_ones_warn(monkeypatch):
    """Selection only reads declarations: no GPU needed to check what would run on one."""
    monkeypatch.delenv(F.ENV_VAR, raising=False)
    monkeypatch.setattr(F, "_warned", set())
    cuda = [(torch.device("cuda", 0), torch.float32)]
    assert F.GPU_VERIFIED == frozenset()  # no GPU parity run recorded yet
    monkeypatch.setattr(F, "has_module", lambda name: True)  # as on a machine with triton and cupy
    assert F.select_backend("auto", cuda).name == "foreach"
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert F.select_backend("triton", cuda).name == "triton"
        assert F.select_backend("triton", cuda).name == "triton"
    assert len(caught) == 1 and "no recorded GPU parity run" in str(caught[0].message)
    assert "\n" not in str(caught[0].message)
    monkeypatch.setattr(F, "GPU_VERIFIED", frozenset({"cupy"}))
    assert F.select_backend("auto", cuda).name == "cupy"
    assert F.select_backend("auto", cuda, beta2=0.99999).name == "foreach"  # cupy's f32 1 - beta2: too coarse
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        F.select_backend("cupy", cuda)
    assert not caught  # verified: no warning


def test_auto_never_picks_triton_on_cpu_even_under_the_interpreter(monkeypatch):
    monkeypatch.delenv(F.ENV_VAR, raising=False)
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    assert F.select_backend("auto", [(torch.device("cpu"), torch.float32)]).name == "fused"


def test_kernel_value_and_type_errors_become_config_errors(monkeypatch):
    monkeypatch.delenv(F.ENV_VAR, raising=False)

    def picky(params, grads, exp_avgs, exp_avg_sqs, scalars):
        raise ValueError("beta1_e out of range for this kernel")

    F.BACKENDS.register("test_picky", picky)
    try:
        p = torch.nn.Parameter(torch.ones(2))
        opt = Velvet([p], backend="test_picky", entropy_adaptive=False)
        p.grad = torch.ones(2)
        with pytest.raises(ConfigError, match=r"'test_picky' refused this step: beta1_e out of range"):
            opt.step()
    finally:
        F.BACKENDS.unregister("test_picky")
    # our own kernels raise ConfigError for inputs they cannot take (a grad of another dtype here)
    s = VelvetScalars(lr_e=1e-3, beta1_e=0.9, beta2=0.999, eps=1e-8, weight_decay=0.0, bias_correction1=0.1,
                      bias_correction2=1e-3, sparse=False)
    with pytest.raises(ConfigError, match="grad dtype"):
        velvet_fused_cpu_([torch.ones(3)], [torch.ones(3, dtype=torch.float64)], [torch.zeros(3)], [torch.zeros(3)], s)
    # the functional core checks the declaration first
    state = [torch.tensor(0.0)], [torch.tensor(1.0, dtype=torch.float64)]
    with pytest.raises(ConfigError, match="'fused' cannot run these parameters: .*not float64"):
        F.velvet([torch.ones(3, dtype=torch.float64)], [torch.ones(3, dtype=torch.float64)], [torch.zeros(3)],
                 [torch.zeros(3)], *state, lr=1e-3, beta1=0.9, beta2=0.999, eps=1e-8, weight_decay=0.0,
                 backend="fused")


def test_fused_beta_limit_is_exact():
    """The declared limit is the kernel's arithmetic: 1 - beta^(2^30) == 1.0 in float64."""
    limit = 1 - 54 * math.log(2) / 2 ** 30
    assert fused_beta_ok(0.9999) and fused_beta_ok(0.99999996) and fused_beta_ok(0.0)
    assert not fused_beta_ok(0.99999997) and not fused_beta_ok(1.0) and not fused_beta_ok(-0.1)
    assert fused_beta_ok(limit - 1e-15) and not fused_beta_ok(limit + 1e-15)
    # at the limit the kernel still equals the spec: one step against the reference kernel
    torch.manual_seed(0)
    p, g = torch.randn(1000), torch.randn(1000)
    m, v = torch.randn(1000) * 1e-3, torch.rand(1000) * 1e-6
    ref = [t.clone() for t in (p, g, m, v)]
    s = VelvetScalars(lr_e=1e-2, beta1_e=0.99999996, beta2=0.99999996, eps=1e-8, weight_decay=0.1,
                      bias_correction1=0.5, bias_correction2=0.25, sparse=False)
    velvet_fused_cpu_([p], [g], [m], [v], s)
    F._single_tensor_velvet([ref[0]], [ref[1]], [ref[2]], [ref[3]], s)
    torch.testing.assert_close(p, ref[0], atol=1e-6, rtol=0)
    with pytest.raises(ConfigError, match="beta2=0.99999997"):
        velvet_fused_cpu_([p], [g], [m], [v], dataclasses.replace(s, beta2=0.99999997))


def test_sparse_threshold_is_defined_once():
    cu = (Path(F.__file__).parent / "kernels" / "kernels.cu").read_text()
    value = re.search(r"#define VELVET_SPARSE_THRESHOLD ([0-9.eE+-]+)f", cu).group(1)
    assert float(value) == SPARSE_THRESHOLD
    assert not hasattr(F, "BETA1_RANGE")  # the beta1 clamp is a rule (signals.VelvetRules.beta1_range)
    sources = [Path(F.__file__).read_text(), (Path(F.__file__).parent / "kernels" / "velvet_triton.py").read_text()]
    assert all("1e-9" not in s for s in sources)

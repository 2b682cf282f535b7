"""Velvet's functional core: one dispatcher, one signature for every backend.

``velvet(...)`` applies the adaptive scales (once), advances the per-parameter step counters and
the running product of beta1, computes the bias corrections, then calls a backend kernel once per
set of tensors that share a step count (one call in practice). Kernels only see the final scalars,
one :class:`~vesper_optim.kernels.VelvetScalars` per call (``lr_e``, ``beta1_e``, ``beta2``, ``eps``,
``weight_decay``, ``bias_correction1/2``, ``sparse``), so no backend can scale twice (UPSTREAM_SPEC §3.6).

Every kernel has the signature of :class:`VelvetKernel`,
``kernel(params, grads, exp_avgs, exp_avg_sqs, scalars, **backend_options)`` (backend options are
keyword-only extras with defaults, e.g. ``block_size``), and updates params, ``exp_avgs`` and
``exp_avg_sqs`` in place. ``reference`` (``_single_tensor_velvet``) is the spec; other backends
must match it (tests/optim, tests/parity). Register new ones in ``BACKENDS``: a plain function
(runs anything, anywhere), or a :class:`VelvetBackend` that declares what it supports: devices,
parameter dtypes, sparse-aware groups, the betas it can represent, and how to install what it
needs. :func:`select_backend` reads those declarations:

* an explicit backend (argument, else ``$VESPER_OPTIM_BACKEND``) that cannot run the settings
  raises when Velvet is built: BackendUnavailableError (missing module / device, with the install
  hint) or ConfigError (a dtype, a beta, a sparse group), one line naming the value;
* ``auto`` tries :data:`AUTO_ORDER` and takes the first backend that supports every setting; on
  CUDA it takes a hand-written kernel only once :data:`GPU_VERIFIED` records a GPU parity run.
"""

from __future__ import annotations

import math
import os
import struct
import warnings
from collections import defaultdict
from dataclasses import dataclass
from typing import Callable, Iterable, Protocol, Sequence

import torch
from torch import Tensor

from vesper_core.device import has_module
from vesper_core.errors import BackendUnavailableError, ConfigError, VesperError
from vesper_core.registry import Registry
from vesper_optim import kernels
from vesper_optim.kernels import SPARSE_THRESHOLD, VelvetScalars
from vesper_optim.kernels.velvet_fused_cpu import fused_beta_ok
from vesper_optim.signals import VelvetRules, resolve_rules

ENV_VAR = "VESPER_OPTIM_BACKEND"
CPU_BATCH_ELEMENTS = 1 << 18  # elements per foreach chain on CPU (see _batches)

# Tried in order by backend="auto"; later backends (fused, triton, cupy) go in front of foreach.
AUTO_ORDER: tuple[str, ...] = ("triton", "cupy", "fused", "foreach")

#: Hand-written GPU kernels (``gpu_kernel=True``) with a recorded parity run on a real GPU
#: (``pytest tests/parity -m gpu``, numbers in benchmarks/results). Until a backend is listed here,
#: ``auto`` does not pick it on CUDA, and choosing it explicitly warns once that it is unverified.
GPU_VERIFIED: frozenset[str] = frozenset()

#: The cupy kernel forms 1 - beta in f32 from f32(beta); it is declared for the betas where that
#: is within this relative error of the exact 1 - beta (beta2 = 0.9999: 1.7e-4; 0.99999: 1.4e-3).
F32_ONE_MINUS_BETA_RTOL = 1e-3


class VelvetKernel(Protocol):
    """What a backend implements: one in-place update of same-step tensors with final scalars."""

    def __call__(
        self,
        params: Sequence[Tensor],
        grads: Sequence[Tensor],
        exp_avgs: Sequence[Tensor],
        exp_avg_sqs: Sequence[Tensor],
        scalars: VelvetScalars,
    ) -> None: ...


def _dtype_names(dtypes: Iterable[torch.dtype]) -> str:
    return "/".join(str(d).removeprefix("torch.") for d in dtypes)


@dataclass(frozen=True)
class VelvetBackend:
    """A registered kernel plus what it supports; calling it calls the kernel.

    ``supports(...)`` is the one question the resolver asks: None when the backend can run a param
    group with these settings, else the reason, in words that fit "backend X cannot run ...: <reason>".
    """

    name: str
    fn: VelvetKernel
    devices: tuple[str, ...] | None = None  # device types it runs on; None: any
    dtypes: tuple[torch.dtype, ...] | None = None  # parameter dtypes; None: any floating dtype
    requires: tuple[str, ...] = ()  # importable modules it needs
    install_hint: str = ""
    supports_sparse: bool = True  # sparse-aware groups (structural zeros left untouched)
    beta_ok: Callable[[float], bool] | None = None  # the betas (beta1_e and beta2) it represents exactly
    beta_limit: str = ""  # beta_ok in words, for the error message
    probe: Callable[[torch.device], str | None] | None = None  # extra runtime check: reason or None
    auto_devices: tuple[str, ...] | None = None  # where auto may pick it; None: ``devices``
    gpu_kernel: bool = False  # hand-written GPU kernel: needs a GPU parity run (GPU_VERIFIED)

    def unavailable_reason(self, device: torch.device) -> str | None:
        """Why this backend cannot run on ``device`` in this environment, or None if it can."""
        if self.devices is not None and device.type not in self.devices:
            return f"it runs on {'/'.join(self.devices)}, not {device.type}"
        missing = [m for m in self.requires if not has_module(m)]
        if missing:
            return f"module(s) {', '.join(missing)} not installed"
        return self.probe(device) if self.probe is not None else None

    def settings_reason(self, dtype: torch.dtype | None = None, *, beta1_range: tuple[float, float] | None = None,
                        beta2: float | None = None, sparse: bool = False) -> str | None:
        """Why this backend cannot run these settings (any device), or None if it can."""
        if dtype is not None and self.dtypes is not None and dtype not in self.dtypes:
            return f"it takes {_dtype_names(self.dtypes)} parameters, not {_dtype_names([dtype])}"
        if sparse and not self.supports_sparse:
            return "it has no sparse-aware update, which this group needs (sparse=True with sparse_aware=True)"
        if self.beta_ok is not None:
            checks = []
            if beta1_range is not None:
                lo, hi = beta1_range
                if lo == hi:
                    checks.append((f"beta1={hi!r}", hi))
                else:  # the perplexity rule moves beta1_e within [lo, hi]
                    checks += [(f"beta1={hi!r} (the perplexity-guided beta1 reaches it)", hi),
                               (f"beta1={lo!r} (the perplexity-guided beta1 reaches it)", lo)]
            if beta2 is not None:
                checks.append((f"beta2={beta2!r}", beta2))
            for what, value in checks:
                if not self.beta_ok(value):
                    return f"it cannot represent {what}; it needs {self.beta_limit}"
        return None

    def supports(self, device: torch.device, dtype: torch.dtype | None = None, *,
                 beta1_range: tuple[float, float] | None = None, beta2: float | None = None,
                 sparse: bool = False) -> str | None:
        """None if this backend can run a group on ``device`` with these settings, else why not."""
        return self.unavailable_reason(device) or self.settings_reason(
            dtype, beta1_range=beta1_range, beta2=beta2, sparse=sparse)

    def auto_allowed(self, device: torch.device) -> bool:
        """Whether ``auto`` may consider this backend on ``device`` (GPU kernels: once verified)."""
        allowed = self.auto_devices if self.auto_devices is not None else self.devices
        if allowed is not None and device.type not in allowed:
            return False
        return not (self.gpu_kernel and device.type == "cuda" and self.name not in GPU_VERIFIED)

    def __call__(self, *args, **kwargs) -> None:
        return self.fn(*args, **kwargs)


BACKENDS: Registry[VelvetKernel | VelvetBackend] = Registry("optimizer backend", "vesper.kernels")


# -- scales -----------------------------------------------------------------------------


def effective_lr(lr: float, entropy_scale: float, entropy_adaptive: bool, rules: VelvetRules | None = None) -> float:
    """``combine(lr, s_e)`` (``lr * s_e`` by default) when entropy-adaptive, else ``lr``."""
    return resolve_rules(rules).effective_lr(lr, entropy_scale) if entropy_adaptive else lr


def effective_beta1(beta1: float, ppl_scale: float, perplexity_guided: bool,
                    rules: VelvetRules | None = None) -> float:
    """``clamp(beta1 * s_p, *beta1_range)`` when perplexity-guided, else ``beta1``."""
    return resolve_rules(rules).effective_beta1(beta1, ppl_scale) if perplexity_guided else beta1


# -- kernels ----------------------------------------------------------------------------


def _velvet_tensor(param: Tensor, grad: Tensor, exp_avg: Tensor, exp_avg_sq: Tensor, s: VelvetScalars) -> None:
    """The update of one tensor, in AdamW's order of operations."""
    lr_e, beta1_e, beta2, eps, weight_decay = s.lr_e, s.beta1_e, s.beta2, s.eps, s.weight_decay
    bias_correction1, bias_correction2, sparse = s.bias_correction1, s.bias_correction2, s.sparse
    work = param if param.dtype == torch.float32 else param.float()
    grad = grad.float()
    if sparse:
        frozen = work.abs() < SPARSE_THRESHOLD
        saved = (work.clone(), exp_avg.clone(), exp_avg_sq.clone())
    if weight_decay != 0:
        work.mul_(1 - lr_e * weight_decay)
    exp_avg.lerp_(grad, 1 - beta1_e)
    exp_avg_sq.mul_(beta2).addcmul_(grad, grad, value=1 - beta2)
    denom = (exp_avg_sq.sqrt() / math.sqrt(bias_correction2)).add_(eps)
    work.addcdiv_(exp_avg, denom, value=-(lr_e / bias_correction1))
    if sparse:  # structural zeros: no decay, no moment update, no step
        for tensor, old in zip((work, exp_avg, exp_avg_sq), saved):
            tensor.copy_(torch.where(frozen, old, tensor))
    if work is not param:
        param.copy_(work)


def _single_tensor_velvet(
    params: Sequence[Tensor], grads: Sequence[Tensor], exp_avgs: Sequence[Tensor],
    exp_avg_sqs: Sequence[Tensor], scalars: VelvetScalars,
) -> None:
    """Reference kernel (the spec): a for-loop over tensors."""
    for p, g, m, v in zip(params, grads, exp_avgs, exp_avg_sqs):
        _velvet_tensor(p, g, m, v, scalars)


def _batches(params: Sequence[Tensor]) -> list[list[int]]:
    """Index lists of tensors that share a device and dtype, one foreach chain each.

    On CPU a chain covers at most ``CPU_BATCH_ELEMENTS`` elements (a tensor larger than that goes
    alone), so its temporaries stay cache-resident and come from the allocator's free lists:
    one chain over all 23.6M parameters of the benchmark was ~2-3x slower than 256K-element
    chains (measured with the old bench_optimizer_cpu.py, 2-core Xeon). Other devices take one chain.
    """
    groups: dict[tuple[torch.device, torch.dtype], list[int]] = defaultdict(list)
    for i, p in enumerate(params):
        groups[(p.device, p.dtype)].append(i)
    batches: list[list[int]] = []
    for (device, _), idx in groups.items():
        if device.type != "cpu":
            batches.append(idx)
            continue
        current: list[int] = []
        size = 0
        for i in idx:
            n = params[i].numel()
            if current and size + n > CPU_BATCH_ELEMENTS:
                batches.append(current)
                current, size = [], 0
            current.append(i)
            size += n
        if current:
            batches.append(current)
    return batches


def _foreach_velvet(
    params: Sequence[Tensor], grads: Sequence[Tensor], exp_avgs: Sequence[Tensor],
    exp_avg_sqs: Sequence[Tensor], scalars: VelvetScalars,
) -> None:
    """Multi-tensor kernel: the reference's ops, in its order, as ``torch._foreach_*`` chains."""
    if scalars.sparse:  # element masks have no foreach form: per-tensor masked math
        _single_tensor_velvet(params, grads, exp_avgs, exp_avg_sqs, scalars)
        return
    lr_e, beta1_e, beta2, eps, weight_decay = (
        scalars.lr_e, scalars.beta1_e, scalars.beta2, scalars.eps, scalars.weight_decay)
    bias_correction1, bias_correction2 = scalars.bias_correction1, scalars.bias_correction2
    bc2_sqrt = math.sqrt(bias_correction2)
    neg_step_size = -(lr_e / bias_correction1)
    for idx in _batches(params):
        batch_params = [params[i] for i in idx]
        upcast = batch_params[0].dtype != torch.float32
        work = [p.float() for p in batch_params] if upcast else batch_params
        g = [grads[i].float() for i in idx]
        m = [exp_avgs[i] for i in idx]
        v = [exp_avg_sqs[i] for i in idx]
        if weight_decay != 0:
            torch._foreach_mul_(work, 1 - lr_e * weight_decay)
        torch._foreach_lerp_(m, g, 1 - beta1_e)
        torch._foreach_mul_(v, beta2)
        torch._foreach_addcmul_(v, g, g, 1 - beta2)
        del g
        denom = torch._foreach_sqrt(v)
        torch._foreach_div_(denom, bc2_sqrt)
        torch._foreach_add_(denom, eps)
        torch._foreach_addcdiv_(work, m, denom, neg_step_size)
        if upcast:
            torch._foreach_copy_(batch_params, work)


def _f32_one_minus_beta_ok(beta: float) -> bool:
    """An f32 kernel forming ``1 - f32(beta)`` stays within F32_ONE_MINUS_BETA_RTOL of ``1 - beta``."""
    beta = float(beta)
    b32 = struct.unpack("f", struct.pack("f", beta))[0]
    return 0.0 <= beta < 1.0 and b32 < 1.0 and abs((1.0 - b32) - (1.0 - beta)) <= F32_ONE_MINUS_BETA_RTOL * (1.0 - beta)


def _triton_probe(device: torch.device) -> str | None:
    if device.type == "cpu" and os.environ.get("TRITON_INTERPRET") != "1":
        return "it runs on CPU tensors only under TRITON_INTERPRET=1 (tests)"
    return None


_GPU_HINT = "pip install 'vesper[cuda]' on a machine with an NVIDIA GPU"
_KERNEL_DTYPES = (torch.float32, torch.bfloat16, torch.float16)
BACKENDS.register("reference", VelvetBackend("reference", _single_tensor_velvet))
BACKENDS.register("foreach", VelvetBackend("foreach", _foreach_velvet))
BACKENDS.register("fused", VelvetBackend(
    "fused", kernels.velvet_fused_cpu_, devices=("cpu",), dtypes=_KERNEL_DTYPES, supports_sparse=False,
    beta_ok=fused_beta_ok, beta_limit="beta < 0.99999996 (its bias corrections are exact only there)"))
BACKENDS.register("triton", VelvetBackend(
    "triton", kernels.velvet_triton_, devices=("cuda", "cpu"), auto_devices=("cuda",), dtypes=_KERNEL_DTYPES,
    requires=("triton",), install_hint=_GPU_HINT, probe=_triton_probe, gpu_kernel=True))
BACKENDS.register("cupy", VelvetBackend(
    "cupy", kernels.velvet_cupy_, devices=("cuda",), dtypes=_KERNEL_DTYPES, requires=("cupy",),
    install_hint=_GPU_HINT, beta_ok=_f32_one_minus_beta_ok, gpu_kernel=True,
    beta_limit=f"1 - beta exact to {F32_ONE_MINUS_BETA_RTOL:g} in f32 (beta <= ~0.9999)"))


# -- backend selection ------------------------------------------------------------------

_warned: set[tuple[str, ...]] = set()


def _warn_once(key: tuple[str, ...], message: str) -> None:
    if key not in _warned:
        _warned.add(key)
        warnings.warn(message, RuntimeWarning, stacklevel=4)


def describe_backend(name: str) -> VelvetBackend:
    """The registered backend ``name`` as a VelvetBackend (a plain function: runs anything)."""
    obj = BACKENDS.get(name)
    return obj if isinstance(obj, VelvetBackend) else VelvetBackend(BACKENDS.resolve(name), obj)


_describe = describe_backend


def requested_backend(backend: str = "auto") -> str:
    """The backend name asked for: the argument, else ``$VESPER_OPTIM_BACKEND``, else ``auto``."""
    if not isinstance(backend, str):
        raise ConfigError(f"Invalid backend: {backend!r} (expected a name such as 'auto' or 'foreach')")
    if backend != "auto":
        return backend
    return os.environ.get(ENV_VAR, "").strip() or "auto"


def check_backend_name(backend: str = "auto") -> None:
    """Raise UnknownNameError now for a misspelt backend (argument or env var)."""
    name = requested_backend(backend)
    if name != "auto":
        BACKENDS.resolve(name)


def select_backend(
    backend: str,
    placements: Iterable[tuple[torch.device, torch.dtype]],
    *,
    beta1_range: tuple[float, float] | None = None,
    beta2: float | None = None,
    sparse: bool = False,
    where: str = "these parameters",
    from_env: bool | None = None,
) -> VelvetBackend:
    """The backend for a param group: explicit (argument > env) or the first of AUTO_ORDER that fits.

    ``placements`` are the (device, dtype) pairs of the group's parameters; ``beta1_range`` every
    beta1 a step can apply (see ``VelvetRules.beta1_span``). An explicit backend that cannot run
    them raises BackendUnavailableError (environment) or ConfigError (settings); auto falls through
    silently on settings, with one warning per missing module, and ends at ``foreach``.
    ``from_env``: whether the name came from the env var (default: ``backend`` is "auto" and it is set).
    """
    placements = sorted(set(placements), key=str)
    name = requested_backend(backend)
    if name != "auto":
        impl = describe_backend(name)
        from_env = backend == "auto" if from_env is None else from_env
        source = f" (from {ENV_VAR})" if from_env else ""
        todo = f"use backend='auto' or 'foreach'{' (or unset ' + ENV_VAR + ')' if source else ''}"
        for device, dtype in placements:
            reason = impl.unavailable_reason(device)
            if reason is not None:
                raise BackendUnavailableError(f"Velvet backend {impl.name!r}{source} cannot run on {device}: "
                                              f"{reason}; {impl.install_hint or todo}")
            reason = impl.settings_reason(dtype, beta1_range=beta1_range, beta2=beta2, sparse=sparse)
            if reason is not None:
                raise ConfigError(f"Velvet backend {impl.name!r}{source} cannot run {where}: {reason}; {todo}")
        if impl.gpu_kernel and impl.name not in GPU_VERIFIED and any(d.type == "cuda" for d, _ in placements):
            _warn_once(("unverified", impl.name), (
                f"Velvet backend {impl.name!r} has no recorded GPU parity run (GPU_VERIFIED), so its results on "
                f"this GPU are unverified; run `pytest tests/parity -m gpu` or use backend='foreach'"))
        return impl
    for candidate in AUTO_ORDER:
        if candidate not in BACKENDS:
            continue
        impl = describe_backend(candidate)
        if not all(impl.auto_allowed(device) for device, _ in placements):
            continue  # a GPU kernel on a CPU tensor (or an unverified one) is not a fallback worth a warning
        reasons = [impl.unavailable_reason(device) for device, _ in placements]
        missing = next((r for r in reasons if r is not None), None)
        if missing is not None:
            _warn_once((candidate, missing), f"Velvet backend {candidate!r} unavailable ({missing}); falling back")
            continue
        if all(impl.settings_reason(dtype, beta1_range=beta1_range, beta2=beta2, sparse=sparse) is None
               for _, dtype in placements):
            return impl
    return describe_backend("foreach" if "foreach" in BACKENDS else "reference")


def resolve_backend(backend: str, device: torch.device) -> tuple[str, VelvetBackend]:
    """The backend for plain f32 parameters on ``device`` with the default betas: (name, backend)."""
    impl = select_backend(backend, [(device, torch.float32)])
    return impl.name, impl


# -- dispatcher ---------------------------------------------------------------------------


def velvet(
    params: list[Tensor],
    grads: list[Tensor],
    exp_avgs: list[Tensor],
    exp_avg_sqs: list[Tensor],
    state_steps: list[Tensor],
    beta1_prods: list[Tensor],
    *,
    lr: float,
    beta1: float,
    beta2: float,
    eps: float,
    weight_decay: float,
    entropy_scale: float = 1.0,
    ppl_scale: float = 1.0,
    entropy_adaptive: bool = True,
    perplexity_guided: bool = True,
    sparse_mask_enabled: bool = False,
    rules: VelvetRules | None = None,
    backend: str | VelvetBackend = "auto",
) -> None:
    """Functional Velvet step over tensors that all have gradients (see torch.optim.adamw.adamw).

    ``state_steps`` (f32) and ``beta1_prods`` (f64) are 0-dim CPU tensors, updated in place:
    ``t += 1`` and ``beta1_prod *= beta1_e``; ``bc1 = 1 - beta1_prod`` is then exact when beta1
    changes from step to step, and equals ``1 - beta1**t`` when it does not. ``rules`` (default
    preset if None) combine the scales; ``backend`` is a name (resolved for these tensors and
    values) or an already selected VelvetBackend (Velvet selects once per param group).
    """
    if not params:
        return
    rules = resolve_rules(rules)
    lr_e = effective_lr(lr, entropy_scale, entropy_adaptive, rules)
    beta1_e = effective_beta1(beta1, ppl_scale, perplexity_guided, rules)
    if isinstance(backend, VelvetBackend):
        impl = backend
    else:
        impl = select_backend(backend, {(p.device, p.dtype) for p in params}, beta1_range=(beta1_e, beta1_e),
                              beta2=beta2, sparse=sparse_mask_enabled)
    torch._foreach_add_(state_steps, 1.0)
    torch._foreach_mul_(beta1_prods, beta1_e)
    steps = torch.stack(state_steps).tolist()  # CPU tensors: no device sync
    prods = torch.stack(beta1_prods).tolist()
    # one kernel call per distinct (step, beta1_prod): a single call unless some params skipped steps
    buckets: dict[tuple[float, float], list[int]] = defaultdict(list)
    for i, key in enumerate(zip(steps, prods)):
        buckets[key].append(i)
    for (step, prod), idx in buckets.items():
        try:
            scalars = VelvetScalars(
                lr_e=lr_e, beta1_e=beta1_e, beta2=beta2, eps=eps, weight_decay=weight_decay,
                bias_correction1=1.0 - prod, bias_correction2=1.0 - beta2**step, sparse=sparse_mask_enabled,
            )
            impl([params[i] for i in idx], [grads[i] for i in idx], [exp_avgs[i] for i in idx],
                 [exp_avg_sqs[i] for i in idx], scalars)
        except VesperError:
            raise
        except (ValueError, TypeError) as exc:  # a kernel refusing its input is a settings problem
            raise ConfigError(f"Velvet backend {impl.name!r} refused this step: {exc}; "
                              f"use backend='foreach' (the reference's multi-tensor twin)") from exc

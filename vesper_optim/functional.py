"""Velvet's functional core: one dispatcher, one signature for every backend.

``velvet(...)`` applies the adaptive scales (once), advances the per-parameter step counters and
the running product of beta1, computes the bias corrections, then calls a backend kernel once per
set of tensors that share a step count (one call in practice). Kernels only see the final scalars
(``lr_e``, ``beta1_e``, ``bias_correction1/2``), so no backend can scale twice (UPSTREAM_SPEC §3.6).

Every kernel has the signature of :class:`VelvetKernel` (the one vesper_optim.kernels uses) and
updates params, ``exp_avgs`` and ``exp_avg_sqs`` in place. ``reference`` (``_single_tensor_velvet``) is the spec; other backends
must match it (tests/optim). Register new ones in ``BACKENDS``: a plain function, or a
:class:`VelvetBackend` that also says where it can run and how to install what it needs.
"""

from __future__ import annotations

import math
import os
import warnings
from collections import defaultdict
from dataclasses import dataclass
from typing import Protocol, Sequence

import torch
from torch import Tensor

from vesper_core.device import has_module
from vesper_core.errors import BackendUnavailableError, ConfigError
from vesper_core.registry import Registry
from vesper_optim import kernels

ENV_VAR = "VESPER_OPTIM_BACKEND"
SPARSE_THRESHOLD = 1e-9  # |p| below this is a "structural zero" in a sparse group
BETA1_RANGE = (0.5, 0.999)  # clamp of the perplexity-guided beta1
CPU_BATCH_ELEMENTS = 1 << 18  # elements per foreach chain on CPU (see _batches)

# Tried in order by backend="auto"; later backends (fused, triton, cupy) go in front of foreach.
AUTO_ORDER: tuple[str, ...] = ("triton", "cupy", "fused", "foreach")


class VelvetKernel(Protocol):
    """What a backend implements: one in-place update of same-step tensors with final scalars."""

    def __call__(
        self,
        params: Sequence[Tensor],
        grads: Sequence[Tensor],
        exp_avgs: Sequence[Tensor],
        exp_avg_sqs: Sequence[Tensor],
        *,
        lr_e: float,
        beta1_e: float,
        beta2: float,
        eps: float,
        weight_decay: float,
        bias_correction1: float,
        bias_correction2: float,
        sparse: bool,
    ) -> None: ...


@dataclass(frozen=True)
class VelvetBackend:
    """A registered kernel plus where it can run; calling it calls the kernel."""

    name: str
    fn: VelvetKernel
    devices: tuple[str, ...] = ("cpu", "cuda")
    requires: tuple[str, ...] = ()  # importable modules it needs
    install_hint: str = ""
    supports_sparse: bool = True  # False: sparse groups go to the reference kernel

    def unavailable_reason(self, device: torch.device) -> str | None:
        """Why this backend cannot run on ``device``, or None if it can."""
        if device.type not in self.devices:
            return f"it runs on {'/'.join(self.devices)}, not {device.type}"
        missing = [m for m in self.requires if not has_module(m)]
        if missing:
            return f"module(s) {', '.join(missing)} not installed"
        return None

    def __call__(self, *args, **kwargs) -> None:
        return self.fn(*args, **kwargs)


BACKENDS: Registry[VelvetKernel | VelvetBackend] = Registry("optimizer backend", "vesper.kernels")


# -- scales -----------------------------------------------------------------------------


def effective_lr(lr: float, entropy_scale: float, entropy_adaptive: bool) -> float:
    """``lr * s_e`` when entropy-adaptive, else ``lr``."""
    return lr * entropy_scale if entropy_adaptive else lr


def effective_beta1(beta1: float, ppl_scale: float, perplexity_guided: bool) -> float:
    """``clamp(beta1 * s_p, 0.5, 0.999)`` when perplexity-guided, else ``beta1``."""
    if not perplexity_guided:
        return beta1
    return min(max(beta1 * ppl_scale, BETA1_RANGE[0]), BETA1_RANGE[1])


# -- kernels ----------------------------------------------------------------------------


def _velvet_tensor(
    param: Tensor, grad: Tensor, exp_avg: Tensor, exp_avg_sq: Tensor, *,
    lr_e: float, beta1_e: float, beta2: float, eps: float, weight_decay: float,
    bias_correction1: float, bias_correction2: float, sparse: bool,
) -> None:
    """The update of one tensor, in AdamW's order of operations."""
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
    exp_avg_sqs: Sequence[Tensor], *, lr_e: float, beta1_e: float, beta2: float, eps: float,
    weight_decay: float, bias_correction1: float, bias_correction2: float, sparse: bool,
) -> None:
    """Reference kernel (the spec): a for-loop over tensors."""
    for p, g, m, v in zip(params, grads, exp_avgs, exp_avg_sqs):
        _velvet_tensor(
            p, g, m, v, lr_e=lr_e, beta1_e=beta1_e, beta2=beta2, eps=eps, weight_decay=weight_decay,
            bias_correction1=bias_correction1, bias_correction2=bias_correction2, sparse=sparse,
        )


def _batches(params: Sequence[Tensor]) -> list[list[int]]:
    """Index lists of tensors that share a device and dtype, one foreach chain each.

    On CPU a chain covers at most ``CPU_BATCH_ELEMENTS`` elements (a tensor larger than that goes
    alone), so its temporaries stay cache-resident and come from the allocator's free lists:
    one chain over all 23.6M parameters of the benchmark was ~2-3x slower than 256K-element
    chains (benchmarks/bench_optimizer_cpu.py, 2-core Xeon). Other devices take one chain.
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
    exp_avg_sqs: Sequence[Tensor], *, lr_e: float, beta1_e: float, beta2: float, eps: float,
    weight_decay: float, bias_correction1: float, bias_correction2: float, sparse: bool,
) -> None:
    """Multi-tensor kernel: the reference's ops, in its order, as ``torch._foreach_*`` chains."""
    if sparse:  # element masks have no foreach form: per-tensor masked math
        _single_tensor_velvet(
            params, grads, exp_avgs, exp_avg_sqs, lr_e=lr_e, beta1_e=beta1_e, beta2=beta2, eps=eps,
            weight_decay=weight_decay, bias_correction1=bias_correction1,
            bias_correction2=bias_correction2, sparse=True,
        )
        return
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


BACKENDS.register("reference", VelvetBackend("reference", _single_tensor_velvet))
BACKENDS.register("foreach", VelvetBackend("foreach", _foreach_velvet))
_GPU_HINT = "pip install 'vesper[cuda]' on a machine with an NVIDIA GPU"
BACKENDS.register("fused", VelvetBackend("fused", kernels.velvet_fused_cpu_, devices=("cpu",), supports_sparse=False))
BACKENDS.register("triton", VelvetBackend("triton", kernels.velvet_triton_, devices=("cuda",), requires=("triton",),
                                          install_hint=_GPU_HINT))
BACKENDS.register("cupy", VelvetBackend("cupy", kernels.velvet_cupy_, devices=("cuda",), requires=("cupy",),
                                        install_hint=_GPU_HINT))


# -- backend selection ------------------------------------------------------------------

_warned: set[tuple[str, str, str]] = set()


def _describe(name: str) -> VelvetBackend:
    obj = BACKENDS.get(name)
    return obj if isinstance(obj, VelvetBackend) else VelvetBackend(name, obj)


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


def resolve_backend(backend: str, device: torch.device) -> tuple[str, VelvetBackend]:
    """Pick the kernel for ``device``: explicit > env > auto.

    An explicit backend that cannot run raises BackendUnavailableError; auto skips unusable
    candidates with one warning each and ends at ``reference``.
    """
    name = requested_backend(backend)
    if name != "auto":
        impl = _describe(BACKENDS.resolve(name))
        reason = impl.unavailable_reason(device)
        if reason is not None:
            hint = impl.install_hint or "use backend='auto' (or unset VESPER_OPTIM_BACKEND)"
            raise BackendUnavailableError(
                f"Velvet backend {name!r} cannot run on {device}: {reason}; {hint}"
            )
        return impl.name, impl
    for candidate in AUTO_ORDER:
        if candidate not in BACKENDS:
            continue
        impl = _describe(BACKENDS.resolve(candidate))
        if device.type not in impl.devices:
            continue  # a GPU kernel on a CPU tensor is not a fallback worth a warning
        reason = impl.unavailable_reason(device)
        if reason is None:
            return impl.name, impl
        key = (candidate, device.type, reason)
        if key not in _warned:
            _warned.add(key)
            warnings.warn(
                f"Velvet backend {candidate!r} unavailable on {device} ({reason}); falling back",
                RuntimeWarning, stacklevel=3,
            )
    return "reference", _describe("reference")


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
    backend: str = "auto",
) -> None:
    """Functional Velvet step over tensors that all have gradients (see torch.optim.adamw.adamw).

    ``state_steps`` (f32) and ``beta1_prods`` (f64) are 0-dim CPU tensors, updated in place:
    ``t += 1`` and ``beta1_prod *= beta1_e``; ``bc1 = 1 - beta1_prod`` is then exact when beta1
    changes from step to step, and equals ``1 - beta1**t`` when it does not.
    """
    if not params:
        return
    lr_e = effective_lr(lr, entropy_scale, entropy_adaptive)
    beta1_e = effective_beta1(beta1, ppl_scale, perplexity_guided)
    torch._foreach_add_(state_steps, 1.0)
    torch._foreach_mul_(beta1_prods, beta1_e)
    steps = torch.stack(state_steps).tolist()  # CPU tensors: no device sync
    prods = torch.stack(beta1_prods).tolist()
    _, impl = resolve_backend(backend, params[0].device)
    if sparse_mask_enabled and not impl.supports_sparse:
        impl = _describe("reference")
    # one kernel call per distinct (step, beta1_prod): a single call unless some params skipped steps
    buckets: dict[tuple[float, float], list[int]] = defaultdict(list)
    for i, key in enumerate(zip(steps, prods)):
        buckets[key].append(i)
    for (step, prod), idx in buckets.items():
        impl(
            [params[i] for i in idx], [grads[i] for i in idx], [exp_avgs[i] for i in idx],
            [exp_avg_sqs[i] for i in idx], lr_e=lr_e, beta1_e=beta1_e, beta2=beta2, eps=eps,
            weight_decay=weight_decay, bias_correction1=1.0 - prod, bias_correction2=1.0 - beta2**step,
            sparse=sparse_mask_enabled,
        )

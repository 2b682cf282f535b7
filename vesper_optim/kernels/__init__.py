"""Fast backends of the Velvet update. Each one has the signature of the pure-torch reference (the
spec), ``kernel(params, grads, exp_avgs, exp_avg_sqs, scalars: VelvetScalars, **backend_options)``,
and a parity test in ``tests/parity``:

* ``velvet_triton.velvet_triton_``        Triton, one launch per (device, dtype) group (multi-tensor).
* ``velvet_cupy.velvet_cupy_``            CuPy RawModule around ``kernels.cu`` (multi- and single-tensor).
* ``velvet_fused_cpu.velvet_fused_cpu_``  CPU: torch's own fused AdamW kernel with remapped scalars.

Backend-specific options (``block_size``, ``multi_tensor``, ``grad_scale``) are keyword-only extras.
Nothing is imported here: triton and cupy are optional and are imported by the backend module
that needs them, when it is first called.
"""

from __future__ import annotations

from dataclasses import dataclass, fields


@dataclass(frozen=True, slots=True)
class VelvetScalars:
    """The final scalars of one kernel call, built once per step bucket by ``functional.velvet``.

    ``lr_e`` and ``beta1_e`` already carry the entropy / perplexity scales (a kernel never applies
    them again, UPSTREAM_SPEC §3.6); ``bias_correction1 = 1 - prod(beta1_e)``,
    ``bias_correction2 = 1 - beta2**step``. ``sparse``: leave elements with
    ``|p| < SPARSE_THRESHOLD`` untouched (sparse-aware groups).
    """

    lr_e: float
    beta1_e: float
    beta2: float
    eps: float
    weight_decay: float
    bias_correction1: float
    bias_correction2: float
    sparse: bool


#: The fields of VelvetScalars, in order.
VELVET_SCALARS = tuple(f.name for f in fields(VelvetScalars))

#: |p| below this counts as an exact zero for sparse-aware groups: the element is left untouched.
#: The one definition: functional.py and velvet_triton.py import it; kernels.cu's
#: ``VELVET_SPARSE_THRESHOLD`` must equal it (tests/optim/test_backends.py reads the source).
SPARSE_THRESHOLD = 1e-9

__all__ = ["VelvetScalars", "VELVET_SCALARS", "SPARSE_THRESHOLD"]


# -- lazy entry points: importing this package never imports triton or cupy --------------------
# (each forwards its arguments unchanged to the implementation module on first call)


def velvet_triton_(*args, **kwargs) -> None:
    """Triton backend, see ``vesper_optim.kernels.velvet_triton.velvet_triton_``."""
    from vesper_optim.kernels.velvet_triton import velvet_triton_ as impl

    impl(*args, **kwargs)


def velvet_cupy_(*args, **kwargs) -> None:
    """CuPy backend, see ``vesper_optim.kernels.velvet_cupy.velvet_cupy_``."""
    from vesper_optim.kernels.velvet_cupy import velvet_cupy_ as impl

    impl(*args, **kwargs)


def velvet_fused_cpu_(*args, **kwargs) -> None:
    """CPU fused backend, see ``vesper_optim.kernels.velvet_fused_cpu.velvet_fused_cpu_``."""
    from vesper_optim.kernels.velvet_fused_cpu import velvet_fused_cpu_ as impl

    impl(*args, **kwargs)


__all__ += ["velvet_triton_", "velvet_cupy_", "velvet_fused_cpu_"]

"""Fast backends of the Velvet update. Each one has the same keyword-only signature as the
pure-torch reference (the spec) and a parity test in ``tests/parity``:

* ``velvet_triton.velvet_triton_``        Triton, one launch per (device, dtype) group (multi-tensor).
* ``velvet_cupy.velvet_cupy_``            CuPy RawModule around ``kernels.cu`` (multi- and single-tensor).
* ``velvet_fused_cpu.velvet_fused_cpu_``  CPU: torch's own fused AdamW kernel with remapped scalars.

Nothing is imported here: triton and cupy are optional and are imported by the backend module
that needs them, when it is first called.
"""

from __future__ import annotations

#: The scalar arguments every backend takes (keyword-only), in the order the docs list them.
VELVET_SCALARS = (
    "lr_e", "beta1_e", "beta2", "eps", "weight_decay", "bias_correction1", "bias_correction2", "sparse",
)

#: |p| below this counts as an exact zero for sparse-aware groups: the element is left untouched.
#: The one definition: functional.py and velvet_triton.py import it; kernels.cu's
#: ``VELVET_SPARSE_THRESHOLD`` must equal it (tests/optim/test_backends.py reads the source).
SPARSE_THRESHOLD = 1e-9

__all__ = ["VELVET_SCALARS", "SPARSE_THRESHOLD"]


# -- lazy entry points: importing this package never imports triton or cupy --------------------
# (each forwards to the implementation module on first call; same keyword-only signature)


def velvet_triton_(params, grads, exp_avgs, exp_avg_sqs, **kwargs) -> None:
    """Triton backend, see ``vesper_optim.kernels.velvet_triton.velvet_triton_``."""
    from vesper_optim.kernels.velvet_triton import velvet_triton_ as impl

    impl(params, grads, exp_avgs, exp_avg_sqs, **kwargs)


def velvet_cupy_(params, grads, exp_avgs, exp_avg_sqs, **kwargs) -> None:
    """CuPy backend, see ``vesper_optim.kernels.velvet_cupy.velvet_cupy_``."""
    from vesper_optim.kernels.velvet_cupy import velvet_cupy_ as impl

    impl(params, grads, exp_avgs, exp_avg_sqs, **kwargs)


def velvet_fused_cpu_(params, grads, exp_avgs, exp_avg_sqs, **kwargs) -> None:
    """CPU fused backend, see ``vesper_optim.kernels.velvet_fused_cpu.velvet_fused_cpu_``."""
    from vesper_optim.kernels.velvet_fused_cpu import velvet_fused_cpu_ as impl

    impl(params, grads, exp_avgs, exp_avg_sqs, **kwargs)


__all__ += ["velvet_triton_", "velvet_cupy_", "velvet_fused_cpu_"]

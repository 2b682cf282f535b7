"""Triton Velvet kernel vs the reference (interpreter on CPU, real launch on a GPU)."""

from __future__ import annotations

import os

import pytest
import torch

if not torch.cuda.is_available():
    os.environ["TRITON_INTERPRET"] = "1"  # must precede the first `import triton`

triton = pytest.importorskip("triton")

from _velvet_helpers import assert_states_close, run_parity  # noqa: E402

from vesper_core.errors import ConfigError  # noqa: E402
from vesper_optim.kernels import VelvetScalars  # noqa: E402
from vesper_optim.kernels.velvet_triton import velvet_triton_  # noqa: E402

pytestmark = pytest.mark.triton
DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
SIZES = [1, 127, 1000, 4099]  # odd sizes, one spans two 4096-element programs


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["f32", "bf16"])
@pytest.mark.parametrize("sparse", [False, True], ids=["dense", "sparse"])
def test_velvet_triton_matches_reference(dtype, sparse):
    got, want = run_parity(velvet_triton_, SIZES, dtype, sparse=sparse, num_steps=20, device=DEVICE,
                           block_size=4096)
    assert_states_close(got, want, dtype)
    if sparse:  # exact zeros stay exactly zero, with untouched moments
        for p, m, v in zip(*got):
            zero = p.cpu()[::7]
            assert torch.all(zero == 0) and torch.all(m.cpu()[::7] == 0) and torch.all(v.cpu()[::7] == 0)


def test_velvet_triton_mixed_dtypes_and_strided():
    """One call with f32 + bf16 tensors (two launches) and a non-contiguous parameter."""
    torch.manual_seed(0)
    base = torch.randn(33, 65)
    p_strided = base.t()  # non-contiguous view (65, 33)
    ps = [p_strided, torch.randn(300).bfloat16()]
    gs = [torch.randn(65, 33), torch.randn(300).bfloat16()]
    ms = [torch.zeros(65, 33), torch.zeros(300)]
    vs = [torch.zeros(65, 33), torch.zeros(300)]
    ref = [[t.clone() for t in lst] for lst in (ps, gs, ms, vs)]
    s = VelvetScalars(lr_e=1e-2, beta1_e=0.8, beta2=0.99, eps=1e-8, weight_decay=0.05, bias_correction1=0.2,
                      bias_correction2=0.01, sparse=False)
    from _velvet_helpers import _velvet_reference_
    velvet_triton_(ps, gs, ms, vs, s)
    _velvet_reference_(*ref, s)
    torch.testing.assert_close(base.t(), ref[0][0], atol=1e-6, rtol=1e-6)  # written through the view
    torch.testing.assert_close(ps[1].float(), ref[0][1].float(), atol=1e-2, rtol=2 ** -7)
    torch.testing.assert_close(ms[0], ref[2][0], atol=1e-6, rtol=1e-6)


def test_velvet_triton_rejects_bad_input():
    with pytest.raises(ConfigError, match="exp_avg"):
        velvet_triton_([torch.zeros(3)], [torch.zeros(3)], [torch.zeros(3).double()], [torch.zeros(3)],
                       VelvetScalars(lr_e=1e-3, beta1_e=0.9, beta2=0.999, eps=1e-8, weight_decay=0.0,
                                     bias_correction1=0.1, bias_correction2=0.001, sparse=False))

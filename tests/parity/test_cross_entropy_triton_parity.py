"""Triton cross-entropy kernel (online log-sum-exp, fwd + bwd) vs the reference."""

from __future__ import annotations

import os

import pytest
import torch

if not torch.cuda.is_available():
    os.environ["TRITON_INTERPRET"] = "1"  # must precede the first `import triton`

pytest.importorskip("triton")

from vesper_core.kernels import cross_entropy_triton as cet  # noqa: E402
from vesper_core.kernels.cross_entropy import cross_entropy_reference  # noqa: E402

pytestmark = pytest.mark.triton
DEVICE = "cuda" if torch.cuda.is_available() else "cpu"


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["f32", "bf16"])
@pytest.mark.parametrize("vocab,block", [(1000, None), (1000, 256), (4099, None)], ids=["v1000", "v1000-b256", "v4099"])
def test_cross_entropy_triton_matches_reference(dtype, vocab, block, monkeypatch):
    if block is not None:  # several vocabulary blocks per row: exercises the online rescaling
        monkeypatch.setattr(cet, "INTERPRETER_MAX_BLOCK", block)
        monkeypatch.setattr(cet, "GPU_MAX_BLOCK", block)
    gen = torch.Generator().manual_seed(0)
    logits = (torch.randn(37, vocab, generator=gen) * 5).to(dtype)
    logits[3, 17] = 60.0  # a dominant logit
    labels = torch.randint(0, vocab, (37,), generator=gen)
    labels[::6] = -100
    xk = logits.clone().to(DEVICE).requires_grad_()
    loss = cet.cross_entropy_triton(xk, labels.to(DEVICE))
    (loss * 1.5).backward()
    xr = logits.double().requires_grad_()
    ref = torch.nn.functional.cross_entropy(xr, labels, ignore_index=-100)
    (ref * 1.5).backward()
    torch.testing.assert_close(loss.cpu().double(), ref.detach(), atol=2e-6, rtol=1e-6)
    torch.testing.assert_close(cross_entropy_reference(logits, labels).double(), ref.detach(), atol=2e-6, rtol=1e-6)
    # bf16: the stored gradient is rounded once (the interpreter truncates) and again when backward
    # scales it by grad_output in bf16 -> two bf16 ulps
    grad_tol = dict(atol=1e-7, rtol=1e-5) if dtype == torch.float32 else dict(atol=1e-6, rtol=2 ** -6)
    torch.testing.assert_close(xk.grad.cpu().double(), xr.grad.to(dtype).double(), **grad_tol)
    assert torch.all(xk.grad.cpu()[::6] == 0)

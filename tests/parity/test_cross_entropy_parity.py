"""Chunked fused linear + cross-entropy vs the reference: loss and both gradients."""

from __future__ import annotations

import math

import pytest
import torch

from vesper_core.kernels.cross_entropy import chunked_cross_entropy, cross_entropy_reference


def _problem(n=37, h=16, v=1000, dtype=torch.float32, ignore_every=5, seed=0):
    gen = torch.Generator().manual_seed(seed)
    hidden = torch.randn(n, h, generator=gen).to(dtype).requires_grad_()
    weight = (torch.randn(v, h, generator=gen) * 0.5).to(dtype).requires_grad_()
    labels = torch.randint(0, v, (n,), generator=gen)
    if ignore_every:
        labels[::ignore_every] = -100
    return hidden, weight, labels


def _reference(hidden, weight, labels):
    h = hidden.detach().double().requires_grad_()
    w = weight.detach().double().requires_grad_()
    # the spec's formula (cross_entropy_reference) evaluated in float64
    loss = torch.nn.functional.cross_entropy(h @ w.t(), labels, ignore_index=-100)
    loss.backward()
    return loss.detach(), h.grad, w.grad


@pytest.mark.parametrize("chunk_size", [1, 7, 13, 37, 64], ids=lambda c: f"chunk{c}")
def test_chunked_ce_matches_reference_f32(chunk_size):
    hidden, weight, labels = _problem()
    loss = chunked_cross_entropy(hidden, weight, labels, chunk_size=chunk_size)
    assert loss.grad_fn is not None  # differentiable (upstream BUG-26)
    (loss * 2.5).backward()          # backward scales by grad_output
    ref_loss, ref_dh, ref_dw = _reference(hidden, weight, labels)
    torch.testing.assert_close(loss.double(), ref_loss, atol=1e-5, rtol=1e-6)
    torch.testing.assert_close(hidden.grad.double(), 2.5 * ref_dh, atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(weight.grad.double(), 2.5 * ref_dw, atol=1e-6, rtol=1e-5)


def test_chunked_ce_bf16_and_3d_and_weight_only():
    hidden, weight, labels = _problem(n=36, dtype=torch.bfloat16)
    loss = chunked_cross_entropy(hidden.view(4, 9, 16), weight, labels.view(4, 9), chunk_size=11)
    loss.backward()
    ref_loss, ref_dh, ref_dw = _reference(hidden, weight, labels)
    # bf16 logits (8 mantissa bits) against an f64 reference: loss ~7, so 2e-2 absolute
    torch.testing.assert_close(loss.double(), ref_loss, atol=2e-2, rtol=1e-2)
    assert hidden.grad.dtype == torch.bfloat16 and weight.grad.dtype == torch.bfloat16
    torch.testing.assert_close(hidden.grad.double(), ref_dh, atol=2e-3, rtol=2e-2)
    torch.testing.assert_close(weight.grad.double(), ref_dw, atol=2e-3, rtol=2e-2)

    h2, w2, l2 = _problem()
    h2.requires_grad_(False)
    chunked_cross_entropy(h2, w2, l2, chunk_size=8).backward()
    assert w2.grad is not None and h2.grad is None


def test_chunked_ce_reference_function_and_all_ignored():
    hidden, weight, labels = _problem()
    logits = hidden.detach() @ weight.detach().t()
    torch.testing.assert_close(cross_entropy_reference(logits, labels),
                               torch.nn.functional.cross_entropy(logits, labels, ignore_index=-100))
    all_ignored = torch.full_like(labels, -100)
    loss = chunked_cross_entropy(hidden, weight, all_ignored, chunk_size=10)
    assert math.isnan(float(loss.detach())) and math.isnan(float(cross_entropy_reference(logits, all_ignored)))


def test_chunked_ce_gradcheck_f64():
    hidden, weight, labels = _problem(n=9, h=4, v=11, dtype=torch.float64, ignore_every=4)
    torch.autograd.gradcheck(lambda h, w: chunked_cross_entropy(h, w, labels, chunk_size=4), (hidden, weight))


def test_chunked_ce_sum_reduction_and_entropy():
    from vesper_optim.signals import normalized_entropy

    hidden, weight, labels = _problem()
    loss, ent = chunked_cross_entropy(hidden, weight, labels, chunk_size=10, reduction="sum", return_entropy=True)
    loss.backward()
    h = hidden.detach().double().requires_grad_()
    w = weight.detach().double().requires_grad_()
    logits = h @ w.t()
    ref = torch.nn.functional.cross_entropy(logits, labels, ignore_index=-100, reduction="sum")
    ref.backward()
    torch.testing.assert_close(loss.double(), ref.detach(), atol=1e-4, rtol=1e-6)
    torch.testing.assert_close(hidden.grad.double(), h.grad, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(weight.grad.double(), w.grad, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(ent, normalized_entropy(logits.detach().float()), atol=1e-6, rtol=1e-5)

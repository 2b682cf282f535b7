"""Kernel benchmarks: fused (chunked) linear + cross-entropy vs unfused, ERA Triton vs reference.

    python benchmarks/bench_kernels.py [--device cpu|cuda] [--repeats 10] [--csv out.csv]

Cross-entropy (fwd + bwd of ``CE(hidden @ W.T, labels)``): on CUDA, peak memory from
``torch.cuda.max_memory_allocated`` and time; on CPU, time plus the analytic bytes of logits the
chunked version never materialises (N*V*(dtype + 4 + 4): logits, their f32 copy, their gradient,
minus one chunk). ERA (fwd + bwd): Triton vs ``F.gelu(tanh) + gamma*softplus`` on CUDA only; on
CPU a note says why it is skipped (the Triton interpreter is a test tool, not a fast path).
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
import torch.nn.functional as F

from vesper_core.kernels.cross_entropy import chunked_cross_entropy, cross_entropy_reference, default_chunk_size


def _sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _time(fn, device, warmup=2, repeats=10):
    out = []
    for i in range(warmup + repeats):
        _sync(device)
        t0 = time.perf_counter()
        fn()
        _sync(device)
        if i >= warmup:
            out.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(out)


def _peak(fn, device):
    if device.type != "cuda":
        return None
    torch.cuda.empty_cache()
    torch.cuda.reset_peak_memory_stats(device)
    base = torch.cuda.memory_allocated(device)
    fn()
    torch.cuda.synchronize(device)
    return (torch.cuda.max_memory_allocated(device) - base) / 2**20


def bench_cross_entropy(device, dtype, n, h, v, repeats):
    gen = torch.Generator().manual_seed(0)
    hidden = (torch.randn(n, h, generator=gen)).to(device, dtype).requires_grad_()
    weight = (torch.randn(v, h, generator=gen) * h ** -0.5).to(device, dtype).requires_grad_()
    labels = torch.randint(0, v, (n,), generator=gen).to(device)

    def unfused():
        hidden.grad = weight.grad = None
        cross_entropy_reference(hidden @ weight.t(), labels).backward()

    def fused():
        hidden.grad = weight.grad = None
        chunked_cross_entropy(hidden, weight, labels).backward()

    chunk = default_chunk_size(n, v)
    esize = torch.finfo(dtype).bits // 8
    avoided = (n - chunk) * v * (esize + 4 + 4) if chunk < n else 0
    rows = []
    for name, fn in (("ce_unfused", unfused), ("ce_chunked", fused)):
        ms = _time(fn, device, repeats=repeats)
        mib = _peak(fn, device)
        rows.append((name, ms, mib))
    print(f"## cross-entropy fwd+bwd  N={n} H={h} V={v} {dtype} on {device}  (chunk={chunk} rows)")
    base = rows[0][1]
    for name, ms, mib in rows:
        mem = f"{mib:9.1f} MiB peak" if mib is not None else "   (no CUDA memory stats on CPU)"
        print(f"{name:14s} {ms:9.2f} ms  x{ms / base:5.2f}  {mem}")
    print(f"logits bytes never materialised by ce_chunked (analytic): {avoided / 2**20:.1f} MiB "
          f"(N*V*({esize}+4+4) - one chunk)")
    return rows


def bench_era(device, dtype, numel, repeats):
    if device.type != "cuda":
        print("## ERA: skipped on CPU (the Triton kernels need a GPU; TRITON_INTERPRET=1 is a test tool)")
        return []
    from vesper_core.kernels.era_triton import era_triton

    x = torch.randn(numel, device=device, dtype=dtype, requires_grad=True)
    dy = torch.randn_like(x)

    def ref():
        x.grad = None
        (F.gelu(x, approximate="tanh") + 0.1 * F.softplus(x)).backward(dy)

    def tri():
        x.grad = None
        era_triton(x, 0.1).backward(dy)

    rows = [(n, _time(f, device, repeats=repeats), _peak(f, device)) for n, f in (("era_reference", ref),
                                                                                  ("era_triton", tri))]
    print(f"## ERA fwd+bwd numel={numel} {dtype} on {torch.cuda.get_device_name(device)}")
    for name, ms, mib in rows:
        gbs = 5 * numel * x.element_size() / (ms * 1e-3) / 1e9  # read x (fwd, bwd), dy; write y, dx
        print(f"{name:14s} {ms:9.3f} ms  x{ms / rows[0][1]:5.2f}  {mib:8.1f} MiB peak  {gbs:7.1f} GB/s (5 passes)")
    return rows


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--repeats", type=int, default=10)
    args = ap.parse_args(argv)
    device = torch.device(args.device)
    print(f"# torch {torch.__version__}, device={device}, threads={torch.get_num_threads()}")
    if device.type == "cuda":
        bench_cross_entropy(device, torch.bfloat16, 8192, 1024, 50257, args.repeats)
        bench_era(device, torch.bfloat16, 16 * 1024 * 1024, args.repeats)
    else:
        bench_cross_entropy(device, torch.float32, 2048, 256, 16384, args.repeats)
        bench_era(device, torch.float32, 0, args.repeats)
        print("## GPU parts skipped: no CUDA device (peak-memory and Triton ERA numbers need one)")


if __name__ == "__main__":
    main()

"""Kernel benchmarks: fused (chunked) linear + cross-entropy vs unfused, ERA Triton vs reference.

    python benchmarks/bench_kernels.py [--device cpu|cuda] [--repeats 10] [--n 2048 --h 256 --v 16384] [--no-save]

Cross-entropy (fwd + bwd of ``CE(hidden @ W.T, labels)``): on CUDA, peak memory from
``torch.cuda.max_memory_allocated`` and time; on CPU, time plus the analytic bytes of logits the
chunked version never materialises (N*V*(dtype + 4 + 4): logits, their f32 copy, their gradient,
minus one chunk). ERA (fwd + bwd): Triton vs ``F.gelu(tanh) + gamma*softplus`` on CUDA only; on
CPU a note says why it is skipped (the Triton interpreter is a test tool, not a fast path).
Times: median (and p20/p80) of ``--repeats`` runs after 2 warm-ups. Results:
benchmarks/results/bench_kernels_<device>.json (schema: benchmarks/_results.py).
"""

from __future__ import annotations

import argparse
import time

import torch
import torch.nn.functional as F

from _results import spread, write_results
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
    return spread(out)


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
        t = _time(fn, device, repeats=repeats)
        rows.append({"kernel": "cross_entropy_fwd_bwd", "variant": name, "n": n, "h": h, "v": v,
                     "dtype": str(dtype).removeprefix("torch."), "chunk_rows": chunk,
                     "median_ms": round(t["median"], 3), "p20_ms": round(t["p20"], 3), "p80_ms": round(t["p80"], 3),
                     "repeats": t["n"], "peak_mib": _peak(fn, device)})
    print(f"## cross-entropy fwd+bwd  N={n} H={h} V={v} {dtype} on {device}  (chunk={chunk} rows)")
    base = rows[0]["median_ms"]
    for row in rows:
        row["ratio_vs_unfused"] = round(row["median_ms"] / base, 3)
        mem = f"{row['peak_mib']:9.1f} MiB peak" if row["peak_mib"] is not None else "   (no CUDA memory stats on CPU)"
        print(f"{row['variant']:14s} {row['median_ms']:9.2f} ms  x{row['ratio_vs_unfused']:5.2f}  {mem}")
    rows[1]["logits_mib_not_materialised"] = round(avoided / 2**20, 1)
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

    rows = []
    for name, fn in (("era_reference", ref), ("era_triton", tri)):
        t = _time(fn, device, repeats=repeats)
        rows.append({"kernel": "era_fwd_bwd", "variant": name, "numel": numel, "dtype": str(dtype).removeprefix("torch."),
                     "median_ms": round(t["median"], 4), "p20_ms": round(t["p20"], 4), "p80_ms": round(t["p80"], 4),
                     "repeats": t["n"], "peak_mib": _peak(fn, device)})
    print(f"## ERA fwd+bwd numel={numel} {dtype} on {torch.cuda.get_device_name(device)}")
    for row in rows:
        row["ratio_vs_reference"] = round(row["median_ms"] / rows[0]["median_ms"], 3)
        # read x (fwd, bwd), dy; write y, dx
        row["gb_per_s_5_passes"] = round(5 * numel * x.element_size() / (row["median_ms"] * 1e-3) / 1e9, 1)
        print(f"{row['variant']:14s} {row['median_ms']:9.3f} ms  x{row['ratio_vs_reference']:5.2f}  "
              f"{row['peak_mib']:8.1f} MiB peak  {row['gb_per_s_5_passes']:7.1f} GB/s (5 passes)")
    return rows


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--repeats", type=int, default=10)
    ap.add_argument("--n", type=int, default=None, help="CE rows (default 8192 on CUDA, 2048 on CPU)")
    ap.add_argument("--h", type=int, default=None, help="CE hidden size (default 1024 / 256)")
    ap.add_argument("--v", type=int, default=None, help="CE vocabulary (default 50257 / 16384)")
    ap.add_argument("--no-save", action="store_true")
    args = ap.parse_args(argv)
    device = torch.device(args.device)
    print(f"# torch {torch.__version__}, device={device}, threads={torch.get_num_threads()}")
    notes = ["times: median (p20/p80) of --repeats runs after 2 warm-ups; peak_mib: CUDA only"]
    if device.type == "cuda":
        rows = bench_cross_entropy(device, torch.bfloat16, args.n or 8192, args.h or 1024, args.v or 50257, args.repeats)
        rows += bench_era(device, torch.bfloat16, 16 * 1024 * 1024, args.repeats)
    else:
        rows = bench_cross_entropy(device, torch.float32, args.n or 2048, args.h or 256, args.v or 16384, args.repeats)
        bench_era(device, torch.float32, 0, args.repeats)
        print("## GPU parts skipped: no CUDA device (peak-memory and Triton ERA numbers need one)")
        notes.append("CPU: ERA Triton and peak memory skipped (need a GPU); logits_mib_not_materialised is analytic")
    if not args.no_save:
        computed = ["ratio_vs_unfused", "logits_mib_not_materialised"]
        if device.type == "cuda":
            computed += ["ratio_vs_reference", "gb_per_s_5_passes"]
        path = write_results("kernels", rows, notes=notes, computed=computed, device=device,
                             stem=f"bench_kernels_{device.type}")
        print(f"wrote {path}")


if __name__ == "__main__":
    main()

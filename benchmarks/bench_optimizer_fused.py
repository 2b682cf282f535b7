"""Time one optimizer step: torch AdamW (fused / foreach / fused + clip) vs Velvet backends.

    python benchmarks/bench_optimizer_fused.py [--device cpu|cuda] [--repeats 20] [--warmup 3] [--csv out.csv]

Parameter set: 76 f32 tensors, ~23.6M parameters, shaped like a small GPT (d=512, 6 layers,
vocab 8192). Prints ms/step (median of ``--repeats`` timed steps after ``--warmup`` untimed ones, variants
timed round-robin)
and the ratio to ``torch.optim.AdamW(fused=True)`` from the same run. On CUDA it also times the
Triton and CuPy Velvet kernels and reports achieved bandwidth at 28 bytes/param
(read p, g, m, v + write p, m, v, all f32). Gradients are restored (untimed) before each timed
step of the clipped variants so values stay in range.
"""

from __future__ import annotations

import argparse
import functools
import platform
import statistics
import time

import torch

from vesper_optim.kernels.velvet_fused_cpu import clip_grad_scale_, velvet_fused_cpu_

BYTES_PER_PARAM = 28


def param_shapes(d: int = 512, layers: int = 6, vocab: int = 8192, ctx: int = 1024) -> list[tuple[int, ...]]:
    shapes: list[tuple[int, ...]] = [(vocab, d), (ctx, d)]
    for _ in range(layers):
        shapes += [(d,), (d,), (3 * d, d), (3 * d,), (d, d), (d,), (d,), (d,), (4 * d, d), (4 * d,), (d, 4 * d), (d,)]
    shapes += [(d,), (d,)]
    return shapes


def make_params(device: torch.device, seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    ps = [torch.nn.Parameter(torch.randn(s, generator=gen).mul_(0.02).to(device)) for s in param_shapes()]
    for p in ps:
        p.grad = torch.randn(p.shape, generator=gen).to(device)
    return ps


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_interleaved(variants, device, *, warmup: int, repeats: int) -> dict[str, float]:
    """Median ms per variant; the variants take turns (round-robin), so a change in machine load
    hits all of them alike instead of whichever happened to be running."""
    times: dict[str, list[float]] = {name: [] for name, _, _ in variants}
    for i in range(warmup + repeats):
        for name, fn, before in variants:
            if before is not None:
                before()
            sync(device)
            t0 = time.perf_counter()
            fn()
            sync(device)
            if i >= warmup:
                times[name].append((time.perf_counter() - t0) * 1e3)
    return {name: statistics.median(ts) for name, ts in times.items()}


class VelvetDriver:
    """The host bookkeeping of a Velvet step (step counter, beta1 product) around a backend."""

    def __init__(self, params, backend, *, lr=1e-3, beta1=0.9, beta2=0.999, eps=1e-8, wd=0.01, clip=None):
        self.params, self.backend, self.clip = params, backend, clip
        self.lr, self.beta1, self.beta2, self.eps, self.wd = lr, beta1, beta2, eps, wd
        self.m = [torch.zeros_like(p) for p in params]
        self.v = [torch.zeros_like(p) for p in params]
        self.t, self.beta1_prod = 0, 1.0

    def step(self):
        grads = [p.grad for p in self.params]
        extra = {}
        if self.clip is not None:
            _, extra["grad_scale"] = clip_grad_scale_(grads, self.clip)
        self.t += 1
        s_e, s_p = 1.1, 0.95  # stand-ins for the entropy / perplexity scales
        lr_e = self.lr * s_e
        beta1_e = min(max(self.beta1 * s_p, 0.5), 0.999)
        self.beta1_prod *= beta1_e
        self.backend([p.data for p in self.params], grads, self.m, self.v, lr_e=lr_e, beta1_e=beta1_e,
                     beta2=self.beta2, eps=self.eps, weight_decay=self.wd, bias_correction1=1 - self.beta1_prod,
                     bias_correction2=1 - self.beta2 ** self.t, sparse=False, **extra)


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--repeats", type=int, default=20)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--csv", default=None, help="append rows to this CSV file")
    args = ap.parse_args(argv)
    device = torch.device(args.device)

    params = make_params(device)
    num_params = sum(p.numel() for p in params)
    saved = [p.grad.clone() for p in params]

    def restore():
        for p, g in zip(params, saved):
            p.grad.copy_(g)

    print(f"# {len(params)} tensors, {num_params / 1e6:.2f}M params, device={device} "
          f"({torch.cuda.get_device_name(device) if device.type == 'cuda' else platform.processor() or 'cpu'}), "
          f"threads={torch.get_num_threads()}, torch {torch.__version__}")
    adamw_fused = torch.optim.AdamW(params, lr=1e-3, weight_decay=0.01, fused=True)
    adamw_foreach = torch.optim.AdamW(params, lr=1e-3, weight_decay=0.01, foreach=True)

    def adamw_clip():
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        adamw_fused.step()

    variants = [
        ("adamw_fused", adamw_fused.step, None),
        ("adamw_foreach", adamw_foreach.step, None),
        ("adamw_fused+clip_grad_norm_", adamw_clip, restore),
    ]
    if device.type == "cpu":
        variants += [
            ("velvet_fused_cpu_", VelvetDriver(params, velvet_fused_cpu_).step, None),
            ("velvet_fused_cpu_+clip(grad_scale)", VelvetDriver(params, velvet_fused_cpu_, clip=1.0).step, restore),
        ]
    else:
        from vesper_optim.kernels.velvet_triton import velvet_triton_

        variants.append(("velvet_triton_", VelvetDriver(params, velvet_triton_).step, None))
        try:
            from vesper_optim.kernels.velvet_cupy import cupy_available, velvet_cupy_

            ok, why = cupy_available(device)
            if ok:
                variants.append(("velvet_cupy_", VelvetDriver(params, velvet_cupy_).step, None))
                variants.append(("velvet_cupy_(single-tensor)",
                                 VelvetDriver(params, functools.partial(velvet_cupy_, multi_tensor=False)).step, None))
            else:
                print(f"# cupy skipped: {why}")
        except Exception as exc:  # noqa: BLE001 - report and go on
            print(f"# cupy skipped: {exc}")
    medians = time_interleaved(variants, device, warmup=args.warmup, repeats=args.repeats)
    rows = list(medians.items())

    base = rows[0][1]
    print(f"{'variant':40s} {'ms/step':>10s} {'vs adamw_fused':>15s} {'GB/s @28B/param':>16s}")
    for name, ms in rows:
        gbs = BYTES_PER_PARAM * num_params / (ms * 1e-3) / 1e9
        print(f"{name:40s} {ms:10.3f} {ms / base:15.3f} {gbs:16.1f}")
    if args.csv:
        import csv
        import os

        new = not os.path.exists(args.csv)
        with open(args.csv, "a", newline="") as fh:
            w = csv.writer(fh)
            if new:
                w.writerow(["variant", "device", "num_params", "ms_per_step", "ratio_vs_adamw_fused", "torch"])
            for name, ms in rows:
                w.writerow([name, str(device), num_params, f"{ms:.4f}", f"{ms / base:.4f}", torch.__version__])


if __name__ == "__main__":
    main()

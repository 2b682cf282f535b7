"""CPU time of one optimizer step: Velvet backends vs torch AdamW (fused / foreach).

    python benchmarks/bench_optimizer_cpu.py [--steps 20] [--warmup 3] [--threads N]

Parameter set: 76 f32 tensors, ~23.6M parameters, shaped like a GPT with 6 layers, d=512,
vocab 8192, context 1024. Velvet runs with every feature on (entropy, perplexity, sparse_aware
with no sparse group, clip 1.0 inside step) and once with clipping off for a like-for-like
comparison with AdamW (which does not clip). Cases run round-robin, one step each, so background
load hits all of them alike. Prints the median and the minimum ms/step (the minimum is the
steadier number on a busy machine) and the ratios to AdamW(fused=True) measured in the same run.
"""

from __future__ import annotations

import argparse
import platform
import statistics
import time

import torch

from vesper_optim import Velvet


def gpt_shapes(d: int = 512, layers: int = 6, vocab: int = 8192, ctx: int = 1024) -> list[tuple[int, ...]]:
    shapes: list[tuple[int, ...]] = [(vocab, d), (ctx, d)]
    for _ in range(layers):
        shapes += [(d,), (d,), (3 * d, d), (3 * d,), (d, d), (d,),
                   (d,), (d,), (4 * d, d), (4 * d,), (d, 4 * d), (d,)]
    return shapes + [(d,), (d,)]


def make_params(seed: int = 0) -> list[torch.nn.Parameter]:
    gen = torch.Generator().manual_seed(seed)
    params = [torch.nn.Parameter(torch.randn(s, generator=gen) * 0.02) for s in gpt_shapes()]
    for p in params:
        p.grad = torch.randn(p.shape, generator=gen) * 1e-3
    return params


class Case:
    """One optimizer over its own copy of the parameters; grads are restored before each step."""

    def __init__(self, make_opt, signals: bool):
        self.params = make_params()
        self.grads = [p.grad.clone() for p in self.params]
        self.opt = make_opt(self.params)
        self.signals = signals
        self.times: list[float] = []

    def step(self, i: int, record: bool) -> None:
        for p, g in zip(self.params, self.grads):  # untimed: clipping scales grads in place
            p.grad.copy_(g)
        start = time.perf_counter()
        if self.signals:
            self.opt.set_signals(4.0 + 0.01 * i)
        self.opt.step()
        if record:
            self.times.append(time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    numel = sum(p.numel() for p in make_params())
    print(f"torch {torch.__version__}, {platform.processor() or platform.machine()}, "
          f"{torch.get_num_threads()} threads; {len(gpt_shapes())} tensors, {numel / 1e6:.2f}M params, f32")
    hp = dict(lr=3e-4, betas=(0.9, 0.999), eps=1e-8, weight_decay=1e-3)
    cases = {
        "AdamW fused=True": (lambda ps: torch.optim.AdamW(ps, fused=True, **hp), False),
        "AdamW foreach=True": (lambda ps: torch.optim.AdamW(ps, foreach=True, **hp), False),
    }
    for backend in ("foreach", "reference"):
        cases[f"Velvet {backend} (all on, clip)"] = (
            lambda ps, b=backend: Velvet(ps, vocab_size=8192, sparse_aware=True, backend=b, **hp), True)
    cases["Velvet foreach (all on, no clip)"] = (
        lambda ps: Velvet(ps, vocab_size=8192, sparse_aware=True, max_grad_norm=0.0, backend="foreach",
                          **hp), True)
    runs = {name: Case(make, sig) for name, (make, sig) in cases.items()}
    for i in range(args.warmup + args.steps):  # round-robin: background load hits every case alike
        for case in runs.values():
            case.step(i, record=i >= args.warmup)
    medians = {name: statistics.median(case.times) * 1e3 for name, case in runs.items()}
    minima = {name: min(case.times) * 1e3 for name, case in runs.items()}
    print(f"{'optimizer':36s} {'median ms':>10s} {'x fused':>8s} {'min ms':>9s} {'x fused':>8s}")
    for name in runs:
        print(f"{name:36s} {medians[name]:10.2f} {medians[name] / medians['AdamW fused=True']:8.2f} "
              f"{minima[name]:9.2f} {minima[name] / minima['AdamW fused=True']:8.2f}")


if __name__ == "__main__":
    main()

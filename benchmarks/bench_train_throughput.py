"""Training throughput: the `vesper train` loop vs a plain PyTorch loop of the same model, plus MFU.

    python benchmarks/bench_train_throughput.py [--preset tiny] [--vocab 8192] [--seq-len 128]
        [--batch-size 4] [--steps 12] [--warmup 3] [--rounds 2] [--dtypes f32,bf16] [--device cpu]

Both loops train the same VesperLM config (random init, seed 0) on the built-in demo corpus (byte
tokens, model vocabulary ``--vocab``) with the same batch, sequence length, dtype (f32, or bf16
autocast over f32 weights) and torch AdamW, clipping at 1.0. The Vesper side is
``vesper_cli.engine.trainer.train`` itself (its observer timestamps each step; checkpoint saving is off
until the final one, which is outside the timed window). The plain loop is the textbook
forward / cross-entropy / backward / clip / step / zero_grad. A Velvet run of the Vesper loop is
timed too. Throughput = tokens of the steps after ``--warmup`` over their wall time; best of
``--rounds`` alternating rounds (a busy machine slows one round, not the comparison).

MFU = tokens/s x (6N + 12 L H T) / matmul FLOP/s, with the matmul rate of a square ``--matmul-size``
GEMM in the same dtype measured in the same run. Writes one JSON row to benchmarks/results/.
"""

from __future__ import annotations

import argparse
import contextlib
import platform
import tempfile
import time

import torch
import torch.nn.functional as F

from _results import write_results
from vesper_cli.engine.observer import TrainObserver
from vesper_cli.engine.run_config import build_run_config
from vesper_cli.engine.trainer import autocast_factory, train
from vesper_core.device import parse_dtype
from vesper_core.model import VesperLM
from vesper_core.presets import model_config
from vesper_data.demo import demo_corpus
from vesper_data.loader import BatchLoader, TokenWindows
from vesper_data.sources import tokenize_documents
from vesper_data.tokenizers import load_tokenizer



class _Clock(TrainObserver):
    def __init__(self) -> None:
        self.stamps: list[float] = []

    def on_step(self, metrics) -> None:
        self.stamps.append(time.perf_counter())


def _rate(stamps: list[float], warmup: int, tokens_per_step: int) -> float:
    timed = stamps[warmup - 1:] if warmup > 0 else stamps
    return tokens_per_step * (len(timed) - 1) / (timed[-1] - timed[0])


def vesper_loop(args, dtype: str, optimizer: str, device: str) -> float:
    with tempfile.TemporaryDirectory() as out:
        flags = dict(dataset="demo", tokenizer="byte", model_size=args.preset, vocab_size=args.vocab,
                     seq_len=args.seq_len, batch_size=args.batch_size, max_steps=args.warmup + args.steps,
                     save_every=0, output_dir=out, dtype=dtype, optimizer=optimizer, device=device, seed=0,
                     log_every=10_000)
        clock = _Clock()
        train(build_run_config(flags), clock)
    return _rate(clock.stamps, args.warmup, args.batch_size * args.seq_len)


def plain_loop(args, dtype: str, device: str, windows: TokenWindows) -> float:
    dev = torch.device(device)
    torch.manual_seed(0)
    model = VesperLM(model_config(args.preset, vocab_size=args.vocab)).to(dev).train()
    opt = torch.optim.AdamW(model.parameters(), lr=3e-4, weight_decay=1e-3, fused=True)
    autocast = autocast_factory(dev, parse_dtype(dtype))
    loader = BatchLoader(windows, args.batch_size, shuffle=True, seed=0).batches_forever()
    stamps = []
    for _ in range(args.warmup + args.steps):
        x, y = next(loader)
        x, y = x.to(dev), y.to(dev)
        with autocast():
            logits = model(x).logits
        loss = F.cross_entropy(logits.float().flatten(0, 1), y.flatten())
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        float(loss)  # the Vesper loop logs the loss every step: the same host sync here
        stamps.append(time.perf_counter())
    return _rate(stamps, args.warmup, args.batch_size * args.seq_len)


def matmul_flops(size: int, dtype: torch.dtype, device: str, seconds: float = 1.5) -> float:
    dev = torch.device(device)
    a = torch.randn(size, size, device=dev, dtype=dtype)
    b = torch.randn(size, size, device=dev, dtype=dtype)
    (a @ b).sum().item()
    n, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        c = a @ b
        n += 1
    c.sum().item()
    return 2 * size**3 * n / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="tiny")
    parser.add_argument("--vocab", type=int, default=8192)
    parser.add_argument("--seq-len", type=int, default=128)
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--steps", type=int, default=12)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--dtypes", default="f32,bf16")
    parser.add_argument("--matmul-size", type=int, default=1024)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--no-save", action="store_true")
    args = parser.parse_args()

    tok = load_tokenizer("byte")
    windows = TokenWindows(tokenize_documents([demo_corpus()], tok), args.seq_len)
    cfg = model_config(args.preset, vocab_size=args.vocab)
    num_params = cfg.num_params()
    flops_per_token = 6 * num_params + 12 * cfg.num_layers * cfg.hidden_size * args.seq_len
    device_name = torch.cuda.get_device_name(0) if args.device.startswith("cuda") else \
        f"cpu ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)"
    print(f"device {device_name}, torch {torch.__version__}")
    print(f"{args.preset}: {num_params / 1e6:.2f}M params, vocab {args.vocab}, batch {args.batch_size} x seq "
          f"{args.seq_len}, {args.steps} timed steps after {args.warmup} warm-up, best of {args.rounds} rounds; "
          f"{flops_per_token / 1e6:.1f} MFLOP/token (6N + 12LHT)")

    rows = []
    for dtype in args.dtypes.split(","):
        peak = matmul_flops(args.matmul_size, parse_dtype(dtype), args.device)
        best = {"plain_adamw": 0.0, "vesper_adamw": 0.0, "vesper_velvet": 0.0}
        for _ in range(args.rounds):
            best["plain_adamw"] = max(best["plain_adamw"], plain_loop(args, dtype, args.device, windows))
            best["vesper_adamw"] = max(best["vesper_adamw"], vesper_loop(args, dtype, "adamw", args.device))
            best["vesper_velvet"] = max(best["vesper_velvet"], vesper_loop(args, dtype, "velvet", args.device))
        ratio = best["vesper_adamw"] / best["plain_adamw"]
        mfu = {k: v * flops_per_token / peak for k, v in best.items()}
        print(f"[{dtype}] matmul {args.matmul_size}^3: {peak / 1e9:.1f} GFLOP/s")
        for key, value in best.items():
            print(f"[{dtype}]   {key:14s} {value:9.0f} tok/s   MFU {100 * mfu[key]:5.1f}%")
        print(f"[{dtype}]   vesper/plain (both AdamW) = {ratio:.3f}x (goal >= 1.0x)")
        rows.append({"dtype": dtype, "preset": args.preset, "params": num_params, "vocab": args.vocab,
                     "batch_size": args.batch_size, "seq_len": args.seq_len, "flops_per_token": flops_per_token,
                     "matmul_flops": peak, **{f"{k}_tokens_per_sec": v for k, v in best.items()},
                     **{f"{k}_mfu": v for k, v in mfu.items()}, "vesper_over_plain": ratio})

    if not args.no_save:
        path = write_results("train_throughput", rows, device=device_name,
                             stem=f"bench_train_throughput_{args.device.split(':')[0]}",
                             computed=["flops_per_token", "vesper_over_plain"] + [k for k in rows[0] if k.endswith("_mfu")],
                             notes=[f"best of {args.rounds} rounds of {args.steps} timed steps after {args.warmup} "
                                    f"warm-up steps; MFU = tok/s x flops_per_token / the measured matmul FLOP/s",
                                    "flops_per_token is analytic (6N + attention), not measured"])
        print(f"wrote {path}")


if __name__ == "__main__":
    with contextlib.suppress(KeyboardInterrupt):
        main()

"""Fine-tuning: full vs LoRA vs FlyLoRA on the same pretrained checkpoint and the same data.

    python benchmarks/bench_finetune.py [--preset tiny] [--pretrain-steps 150] [--steps 80] [--seq-len 64]
        [--batch-size 8] [--rank 8] [--lr-full 1e-3] [--lr-adapter 1e-2] [--threads 1] [--device cpu]

1. Pretrain ``--preset`` on the built-in demo corpus (byte tokens) for ``--pretrain-steps``.
2. Fine-tune that checkpoint with ``vesper train --init-from BASE --finetune full|lora|flylora`` (Velvet,
   the same seed, batch and steps) on a project-written task the base never saw: plain-text questions
   and answers about small sums (``q: 3 plus 4? a: 7.``), the last 10 % held out (``--val-fraction``).
   Each arm runs in its own process, so its peak RSS is its own.
3. Report per arm: trainable parameters and share, the training state counted exactly (weights +
   buffers + gradients of trainable tensors + optimizer state), peak RSS of the process (includes the
   ~0.3-0.5 GiB of Python + torch), median step time (steps after the first 3), held-out loss before and
   after.

Writes benchmarks/results/bench_finetune_<preset>_<device>.json.
"""

from __future__ import annotations

import argparse
import json
import random
import resource
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

import torch

from _results import write_results

ARMS = ("full", "lora", "flylora")


def task_text(path: Path, lines: int = 3000, seed: int = 0) -> Path:
    """Plain-text Q/A about sums of two small numbers (a task the demo corpus does not contain)."""
    rng = random.Random(seed)
    words = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]
    rows = []
    for _ in range(lines):
        a, b = rng.randrange(10), rng.randrange(10)
        rows.append(f"q: {words[a]} plus {words[b]}? a: {a + b}.")
    path.write_text("\n".join(rows) + "\n", encoding="utf-8")
    return path


def peak_rss_mib() -> float:
    """This process's peak resident set (VmHWM). Not ru_maxrss: Linux carries that over from the forking
    parent across exec, so every arm would report the pretraining parent's peak."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # not Linux


def run_arm(args) -> dict:
    """One fine-tuning arm in this process; prints its row as JSON."""
    from vesper_cli.engine import TrainObserver, build_run_config, build_training
    from vesper_cli.engine.evaluation import evaluate
    from vesper_cli.engine.step import autocast_factory
    from vesper_cli.engine.trainer import Trainer

    torch.set_num_threads(args.threads)
    times: list[float] = []

    class Clock(TrainObserver):
        def on_step(self, metrics) -> None:
            times.append(metrics.step_time_s)

    flags = dict(dataset=args.data, tokenizer="auto", init_from=args.base, finetune=args.arm, seq_len=args.seq_len,
                 batch_size=args.batch_size, max_steps=args.steps, save_every=0, output_dir=args.out, dtype="f32",
                 device=args.device, seed=0, log_every=10_000, val_fraction=0.1, eval_batches=0,
                 lr=args.lr_full if args.arm == "full" else args.lr_adapter)
    if args.arm != "full":
        flags.update(lora_rank=args.rank, lora_alpha=2.0 * args.rank)
    clock = Clock()
    run, _ = build_training(build_run_config(flags), clock)

    def held_out() -> float:
        return evaluate(run.model, run.val_windows, batch_size=args.batch_size, max_batches=0, loss_impl="standard",
                        device=run.dist.device, autocast=autocast_factory(run.dist.device, torch.float32),
                        dist_info=run.dist)["val_loss"]

    before = held_out()
    result = Trainer(run, clock).fit()
    trainable = [p for p in run.model.parameters() if p.requires_grad]
    weights = sum(t.numel() * t.element_size() for t in [*run.model.parameters(), *run.model.buffers()])
    grads = sum(p.numel() * p.element_size() for p in trainable)
    opt_state = sum(v.numel() * v.element_size() for s in run.optimizer.state.values() for v in s.values()
                    if torch.is_tensor(v))
    num_total = sum(p.numel() for p in run.model.parameters())
    row = {
        "arm": args.arm, "lr": flags["lr"], "rank": None if args.arm == "full" else args.rank,
        "trainable_params": sum(p.numel() for p in trainable), "total_params": num_total,
        "trainable_share": sum(p.numel() for p in trainable) / num_total,
        "state_mib": (weights + grads + opt_state) / 2**20, "optimizer_state_mib": opt_state / 2**20,
        "peak_rss_mib": peak_rss_mib(),
        "step_time_ms_median": 1000 * statistics.median(times[3:] or times), "steps": result.steps,
        "val_loss_before": before, "val_loss_after": result.final_eval["val_loss"],
        "checkpoint_kib": result.final_checkpoint.stat().st_size / 1024,
    }
    print(json.dumps(row))
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="tiny")
    parser.add_argument("--pretrain-steps", type=int, default=150)
    parser.add_argument("--steps", type=int, default=80)
    parser.add_argument("--seq-len", type=int, default=64)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--rank", type=int, default=8)
    parser.add_argument("--lr-full", type=float, default=1e-3)
    parser.add_argument("--lr-adapter", type=float, default=1e-2)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--no-save", action="store_true")
    # one arm in a child process (internal)
    parser.add_argument("--arm", choices=ARMS)
    parser.add_argument("--base")
    parser.add_argument("--data")
    parser.add_argument("--out")
    args = parser.parse_args()
    if args.arm:
        run_arm(args)
        return

    from vesper_cli.engine import build_run_config, train

    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        print(f"pretraining {args.preset} on the demo corpus for {args.pretrain_steps} steps ...", flush=True)
        base = train(build_run_config(dict(
            dataset="demo", tokenizer="byte", model_size=args.preset, seq_len=args.seq_len,
            batch_size=args.batch_size, max_steps=args.pretrain_steps, save_every=0, output_dir=str(tmp / "base"),
            dtype="f32", device=args.device, seed=0, log_every=10_000, lr=1e-3))).final_checkpoint
        data = task_text(tmp / "task.txt")
        rows = []
        for arm in ARMS:
            cmd = [sys.executable, __file__, "--arm", arm, "--base", str(base), "--data", str(data),
                   "--out", str(tmp / arm)]
            for flag in ("steps", "seq_len", "batch_size", "rank", "lr_full", "lr_adapter", "threads", "device"):
                cmd += ["--" + flag.replace("_", "-"), str(getattr(args, flag))]
            done = subprocess.run(cmd, capture_output=True, text=True)
            if done.returncode != 0:
                raise SystemExit(f"arm {arm} failed:\n{done.stderr[-3000:]}")
            rows.append(json.loads(done.stdout.strip().splitlines()[-1]))
            r = rows[-1]
            print(f"{arm:8s} trainable {r['trainable_params']:>10,} ({100 * r['trainable_share']:6.2f}%)  "
                  f"state {r['state_mib']:7.2f} MiB (optimizer {r['optimizer_state_mib']:6.2f})  "
                  f"peak RSS {r['peak_rss_mib']:6.0f} MiB  step {r['step_time_ms_median']:6.1f} ms  "
                  f"held-out loss {r['val_loss_before']:.3f} -> {r['val_loss_after']:.3f}  "
                  f"checkpoint {r['checkpoint_kib']:,.0f} KiB", flush=True)
    full = next(r for r in rows if r["arm"] == "full")
    for r in rows:
        r["trainable_vs_full"] = r["trainable_params"] / full["trainable_params"]
        r["step_time_vs_full"] = r["step_time_ms_median"] / full["step_time_ms_median"]
    if not args.no_save:
        path = write_results("finetune", rows, stem=f"bench_finetune_{args.preset}_{args.device.split(':')[0]}",
                             computed=["trainable_share", "trainable_vs_full", "step_time_vs_full", "state_mib"],
                             notes=[f"{args.preset} pretrained {args.pretrain_steps} steps on the demo corpus (byte "
                                    f"tokens), then {args.steps} Velvet steps per arm on a held-out-split plain-text "
                                    f"sum Q/A task (batch {args.batch_size} x {args.seq_len}, f32, seed 0, "
                                    f"{args.threads} thread(s)); plain text, not chat data",
                                    "state_mib counts weights + buffers + gradients of trainable tensors + optimizer "
                                    "state exactly; peak_rss_mib is the arm's own process (includes Python + torch)",
                                    "one run per arm, one seed, learning rates not tuned per arm beyond "
                                    "--lr-full/--lr-adapter"],
                             device=args.device)
        print(f"wrote {path}")


if __name__ == "__main__":
    main()

#!/usr/bin/env python
"""Velvet's rules against AdamW through `vesper benchmark`'s runner (the product path), cell by cell.

Each cell is one corpus x model size x schedule; in each, `run_benchmark` trains every optimizer from the
same initial weights on the same batches for N seeds over a bracketed LR sweep (the grid widens x2 beyond
an edge until each optimizer's best LR is interior) and scores held-out text. Velvet runs once per rule
preset (default = the hypergradient multiplier, upstream = the original rules); AdamW once.

    python benchmarks/velvet_study.py --corpus en=shakespeare.txt --corpus de=fortunes_de.txt \\
        --sizes nano --schedules constant --seeds 3 --steps 300

Writes benchmarks/results/velvet_study.json (the one results schema): a row per cell x optimizer x LR
with the held-out loss mean/std over seeds, the best LR and whether it is bracketed. Text files are not
shipped: pass your own (README "Velvet's rules, studied" says where ours came from).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _results import write_results  # noqa: E402

from vesper_cli.engine.benchmark import BenchConfig, run_benchmark  # noqa: E402

SCHEDULES = {"constant": {}, "cosine": {"lr_schedule": "cosine", "warmup_steps": None}}

# Each upstream rule alone: the other rule's scale pinned to 1 (its bounds (1, 1)).
RULE_VARIANTS = {
    "upstream_entropy_only": ("upstream", {"perplexity_bounds": (1.0, 1.0)}),
    "upstream_perplexity_only": ("upstream", {"entropy_bounds": (1.0, 1.0)}),
    # sparse-aware updates on the FlyLoRA branches of the FFN (the group upstream meant them for)
    "default_sparse_lora": ("default", {"sparse_aware": True, "sparse_params": "layers.*.ffn.*.lora_*"}),
}


def rule_settings(name: str) -> dict:
    """BenchConfig fields for a rule preset name or one of RULE_VARIANTS."""
    preset, overrides = RULE_VARIANTS.get(name, (name, {}))
    return {"velvet_rules": preset, **overrides}


def cell_rows(report: dict, cell: dict, arm: str) -> list[dict]:
    rows = []
    for name, sweep in report["lr_sweep"].items():
        label = arm if name == "velvet" else name
        for point in sweep["grid"]:
            rows.append({**cell, "optimizer": label, "lr": point["lr"], "val_loss_mean": point["val_loss"]["mean"],
                         "val_loss_std": point["val_loss"]["std"], "seeds": point["val_loss"]["n"],
                         "best_lr": sweep["best_lr"], "bracketed": sweep["bracketed"],
                         "is_best": point["lr"] == sweep["best_lr"]})
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--corpus", action="append", required=True, help="NAME=PATH (repeat)")
    ap.add_argument("--sizes", default="nano")
    ap.add_argument("--schedules", default="constant", help="constant,cosine")
    ap.add_argument("--rules", default="default,upstream",
                    help=f"Velvet rule presets to run (or {', '.join(RULE_VARIANTS)})")
    ap.add_argument("--baseline", default="adamw", choices=("adamw", "none"),
                    help="run AdamW alongside the first preset (none: Velvet rows only, e.g. to add rows to a cell)")
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--steps", type=int, default=300)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--seq-len", type=int, default=128)
    ap.add_argument("--lr", type=float, default=2e-3, help="centre of the sweep grid")
    ap.add_argument("--lr-grid", default="0.5,1,2", help="multipliers of --lr (e.g. 0.25,0.5,1,2,4 = a 16x grid)")
    ap.add_argument("--tokenizer", default="byte")
    ap.add_argument("--stem", default="velvet_study")
    args = ap.parse_args()

    rows: list[dict] = []
    for corpus in args.corpus:
        name, path = corpus.split("=", 1)
        for size in args.sizes.split(","):
            for schedule in args.schedules.split(","):
                extra = dict(SCHEDULES[schedule])
                if "warmup_steps" in extra:
                    extra["warmup_steps"] = args.steps // 10
                cell = {"corpus": name, "size": size, "schedule": schedule, "steps": args.steps,
                        "batch_size": args.batch_size, "seq_len": args.seq_len, "tokenizer": args.tokenizer}
                for i, rules in enumerate(args.rules.split(",")):
                    with_baseline = i == 0 and args.baseline == "adamw"
                    optimizers = ("velvet", "adamw") if with_baseline else ("velvet",)
                    cfg = BenchConfig.from_flat(
                        dataset=path, tokenizer=args.tokenizer, model_size=size, seq_len=args.seq_len,
                        batch_size=args.batch_size, max_steps=args.steps, seeds=args.seeds, lr=args.lr,
                        lr_sweep=True, lr_grid=tuple(float(x) for x in args.lr_grid.split(",")),
                        optimizers=optimizers, val_tokens=32768, **rule_settings(rules), **extra)
                    start = time.perf_counter()
                    report = run_benchmark(cfg)
                    rows += cell_rows(report, cell, f"velvet[{rules}]")
                    best = {n: (s["best_lr"], s["bracketed"]) for n, s in report["lr_sweep"].items()}
                    print(f"{name}/{size}/{schedule} rules={rules}: {report.get('verdict', '')} "
                          f"best LRs {best} ({time.perf_counter() - start:.0f} s)", flush=True)
                    write_results("velvet_study", rows, stem=args.stem, computed=[],
                                  notes=["held-out loss = first 32K tokens of the last 10% of each corpus, "
                                         "mean/std over seeds at each LR; best LR by that loss",
                                         "every arm runs through vesper benchmark's runner (the trainer's step)"])


if __name__ == "__main__":
    main()

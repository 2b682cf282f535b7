"""One optimizer step exactly as the trainer takes it: Velvet on every backend that runs here vs torch AdamW.

    python benchmarks/bench_optimizer.py [--preset small] [--rounds 15] [--warmup 3] [--device cpu|cuda]
                                         [--threads N] [--entropy-signal loss|logits] [--note TEXT] [--no-save]

Parameters: the VesperLM preset's own tensors (``--preset``, vocabulary ``--vocab``; default ``small``
at vocab 8192: 211 f32 tensors, 38.5M parameters), split into decay / no-decay groups by
``build_param_groups`` like the trainer does. Every variant owns a copy of the same initial weights
and gets the same gradients each round (unit global norm times a factor cycling through 0.5..2, so
the clip engages on some rounds), restored untimed before its step.

Timed, per variant (``vesper_cli.engine.step.TrainStep``'s sequence):

* Velvet (built by ``build_optimizer(groups, OptimConfig(backend=...))``):
  ``vesper_optim.clipping.clip_grad_norm_`` -> ``set_signals(loss, normalized_entropy=...,
  vocab_size=V, grad_norm=norm)`` -> ``step()`` -> ``zero_grad()``, with a loss falling like a real
  run's (and its entropy, passed when the rules ask for it), so both scales move every step;
* ``torch.optim.AdamW(fused=True)`` and ``AdamW(foreach=True)``: ``torch.nn.utils.clip_grad_norm_``
  -> ``step()`` -> ``zero_grad()``.

Velvet backends: reference, foreach, fused on CPU; reference, foreach, triton, cupy on CUDA (each
where it can run). Rounds are interleaved (every variant once per round, the order rotating), so
load changes hit all alike. Per variant: median ms and p20-p80 / min-max; the ratio to
AdamW(fused=True) is taken per round (same round, same load) and summarised the same way. At the
end every Velvet backend's weights are compared with the reference backend's (same steps, same
signals): the timed code is the real one. Results: benchmarks/results/bench_optimizer_<device>.json.
"""

from __future__ import annotations

import argparse
import copy
import math
import time
import warnings

import torch

from _results import device_name, spread, write_results
from vesper_core.errors import VesperError
from vesper_core.model import VesperLM
from vesper_core.presets import model_config
from vesper_optim import OptimConfig, build_optimizer, build_param_groups
from vesper_optim.clipping import clip_grad_norm_

MAX_GRAD_NORM = 1.0
GRAD_FACTORS = (0.5, 0.8, 1.25, 2.0)  # global gradient norm per round, cycling: clipped on half the rounds


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def signals_at(step: int, vocab: int) -> tuple[float, float]:
    """(loss, normalised entropy) of a run that learns: 9 -> ~2.8 nats with some wobble."""
    loss = 2.8 + 6.2 * math.exp(-step / 25) + 0.15 * math.sin(step)
    entropy = min(max(loss / math.log(vocab) + 0.03 * math.sin(1.3 * step), 0.0), 1.0)
    return loss, entropy


class Variant:
    """One optimizer on its own copy of the weights, stepped the way the trainer steps it."""

    def __init__(self, name: str, model: torch.nn.Module, make_opt, *, velvet: bool, vocab: int,
                 weight_decay: float):
        self.name, self.velvet, self.vocab = name, velvet, vocab
        self.model = model
        self.params = [p for p in model.parameters()]
        self.opt = make_opt(build_param_groups(model, weight_decay))
        self.wanted = self.opt.training_signals() if velvet else frozenset()
        self.grads = [torch.empty_like(p) for p in self.params]
        self.times: list[float] = []

    def load_grads(self, saved: list[torch.Tensor], factor: float) -> None:  # untimed
        torch._foreach_copy_(self.grads, saved)
        torch._foreach_mul_(self.grads, factor)
        for p, g in zip(self.params, self.grads):
            p.grad = g

    def step(self, step: int) -> None:
        if self.velvet:
            loss, entropy = signals_at(step, self.vocab)
            norm = clip_grad_norm_(self.params, MAX_GRAD_NORM)
            self.opt.set_signals(loss, normalized_entropy=entropy if "entropy" in self.wanted else None,
                                 vocab_size=self.vocab, grad_norm=norm)
        else:
            torch.nn.utils.clip_grad_norm_(self.params, MAX_GRAD_NORM)
        self.opt.step()
        self.opt.zero_grad(set_to_none=True)


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--preset", default="small")
    ap.add_argument("--vocab", type=int, default=8192)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--rounds", type=int, default=15)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    ap.add_argument("--entropy-signal", choices=("loss", "logits"), default=None,
                    help="Velvet's entropy signal (default: the default rules', as the trainer)")
    ap.add_argument("--note", action="append", default=[], help="free text recorded with the results (repeatable)")
    ap.add_argument("--no-save", action="store_true")
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)

    torch.manual_seed(0)
    base = VesperLM(model_config(args.preset, vocab_size=args.vocab)).to(device)
    shapes = [p.shape for p in base.parameters()]
    num_params = sum(p.numel() for p in base.parameters())
    gen = torch.Generator().manual_seed(1)
    saved = [torch.randn(s, generator=gen).to(device) for s in shapes]
    norm = torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g) for g in saved]))
    torch._foreach_div_(saved, norm)  # unit global norm; the round's factor sets the actual norm

    cfg = dict(lr=3e-4, weight_decay=1e-3, max_grad_norm=MAX_GRAD_NORM)
    hp = dict(lr=cfg["lr"], betas=(0.9, 0.999), eps=1e-8, weight_decay=cfg["weight_decay"])
    backends = ["reference", "foreach"] + (["triton", "cupy"] if device.type == "cuda" else ["fused"])
    variants: list[Variant] = []
    skipped: list[str] = []
    for backend in backends:
        ocfg = OptimConfig(backend=backend, entropy_signal=args.entropy_signal, **cfg)
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # "unverified on this GPU": noted in the results instead
                variants.append(Variant(f"velvet[{backend}]", copy.deepcopy(base),
                                        lambda groups, c=ocfg: build_optimizer(groups, c, vocab_size=args.vocab),
                                        velvet=True, vocab=args.vocab, weight_decay=cfg["weight_decay"]))
        except VesperError as exc:
            skipped.append(f"velvet[{backend}]: {exc}")
    for kind in ("fused", "foreach"):
        variants.append(Variant(f"adamw_{kind}", copy.deepcopy(base),
                                lambda groups, k=kind: torch.optim.AdamW(groups, **hp, **{k: True}),
                                velvet=False, vocab=args.vocab, weight_decay=cfg["weight_decay"]))
    del base

    print(f"# {device_name(device)}, torch {torch.__version__}; preset {args.preset} (vocab {args.vocab}): "
          f"{len(shapes)} tensors, {num_params / 1e6:.1f}M f32 params; {args.rounds} rounds after {args.warmup} warm-up")
    for line in skipped:
        print(f"# skipped {line}")
    for r in range(args.warmup + args.rounds):
        shift = r % len(variants)
        for v in variants[shift:] + variants[:shift]:
            v.load_grads(saved, GRAD_FACTORS[r % len(GRAD_FACTORS)])
            sync(device)
            start = time.perf_counter()
            v.step(r)
            sync(device)
            if r >= args.warmup:
                v.times.append((time.perf_counter() - start) * 1e3)

    by_name = {v.name: v for v in variants}
    base_times = by_name["adamw_fused"].times
    reference = by_name.get("velvet[reference]")
    rows = []
    for v in variants:
        t = spread(v.times)
        ratio = spread([a / b for a, b in zip(v.times, base_times)])
        row = {"variant": v.name, "median_ms": round(t["median"], 3), "p20_ms": round(t["p20"], 3),
               "p80_ms": round(t["p80"], 3), "min_ms": round(t["min"], 3), "max_ms": round(t["max"], 3),
               "rounds": t["n"], "ratio_vs_adamw_fused": round(ratio["median"], 3),
               "ratio_p20": round(ratio["p20"], 3), "ratio_p80": round(ratio["p80"], 3)}
        if v.velvet and reference is not None:
            row["max_abs_diff_vs_reference"] = max(
                (a - b).abs().max().item() for a, b in zip(v.params, reference.params))
        rows.append(row)

    print(f"{'variant':20s} {'median ms':>10s} {'p20-p80 ms':>17s} {'min-max ms':>17s} {'x adamw_fused':>14s} "
          f"{'(p20-p80)':>13s}")
    for row in rows:
        print(f"{row['variant']:20s} {row['median_ms']:10.2f} {row['p20_ms']:8.2f}-{row['p80_ms']:<8.2f} "
              f"{row['min_ms']:8.2f}-{row['max_ms']:<8.2f} {row['ratio_vs_adamw_fused']:14.2f} "
              f"{row['ratio_p20']:6.2f}-{row['ratio_p80']:<6.2f}")
    diffs = {r["variant"]: r["max_abs_diff_vs_reference"] for r in rows if "max_abs_diff_vs_reference" in r}
    print("# Velvet weights vs the reference backend after all steps (max |diff|): "
          + ", ".join(f"{k} {d:.1e}" for k, d in diffs.items()))

    notes = [
        f"parameters: VesperLM preset {args.preset!r} at vocab {args.vocab}: {len(shapes)} f32 tensors, "
        f"{num_params} parameters, decay/no-decay groups from build_param_groups; lr 3e-4, betas (0.9, 0.999), "
        f"eps 1e-8, weight decay 1e-3, clip {MAX_GRAD_NORM}",
        "timed Velvet: vesper_optim.clipping.clip_grad_norm_ -> set_signals(loss, normalized_entropy (if the rules "
        "ask), vocab_size, grad_norm) -> step() -> zero_grad(); timed AdamW: torch.nn.utils.clip_grad_norm_ -> "
        "step() -> zero_grad(); gradients restored untimed before every step",
        f"gradients: fixed random directions at global norm {GRAD_FACTORS} (cycling), so the clip engages on half "
        "the rounds; loss falls 9 -> ~2.8 with its entropy, so Velvet's scales change every step",
        "rounds interleaved, order rotating; ratio = this variant's time / adamw_fused's time in the same round",
        f"Velvet rules: default preset{'' if args.entropy_signal is None else ', entropy_signal ' + args.entropy_signal}",
    ] + [f"skipped {line}" for line in skipped] + list(args.note)
    if args.threads:
        notes.append(f"torch threads set to {args.threads} (--threads)")
    if device.type != "cuda":
        notes.append("CPU: triton and cupy need a GPU; other jobs on the machine may share these cores (see the spread)")
    if not args.no_save:
        path = write_results("optimizer", rows, notes=notes, device=device, stem=f"bench_optimizer_{device.type}",
                             computed=["ratio_vs_adamw_fused", "ratio_p20", "ratio_p80"])
        print(f"wrote {path}")


if __name__ == "__main__":
    main()

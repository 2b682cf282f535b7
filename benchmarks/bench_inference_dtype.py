"""Inference precision: tokens/s, model memory and held-out perplexity of one checkpoint in f32, bf16, f16, int8.

    python benchmarks/bench_inference_dtype.py --model runs/demo [--eval-text FILE] [--dtypes f32,bf16,f16,int8]
        [--new-tokens 64] [--prompts 4] [--repeats 3] [--seq-len 128] [--eval-windows 64] [--device cpu]

Every precision loads the same checkpoint through ``vesper_core.precision.prepare_for_inference`` (what
``vesper generate --dtype`` does). Speed: greedy decoding with the KV cache of exactly ``--new-tokens``
tokens (no EOS stop) from each of ``--prompts`` prompts (the first words of held-out lines), batch 1, best of
``--repeats`` timed rounds after one warm-up. Memory: bytes of the unique parameters and buffers (int8
weights count their int8 values and per-row scales). Perplexity: mean cross-entropy (computed in float32
from each precision's logits) over up to ``--eval-windows`` non-overlapping windows of ``--seq-len`` tokens of
the held-out text (default: the built-in demo corpus drawn with another seed than training's). Ratios and
deltas are against f32 measured in the same run. Results: benchmarks/results/bench_inference_dtype_<device>.json.
"""

from __future__ import annotations

import argparse
import math
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from _results import device_name as describe_device
from _results import write_results
from vesper_cli.engine.generation import load_generator
from vesper_core.generation import generate
from vesper_core.precision import INFERENCE_DTYPES, model_memory_bytes, parse_inference_dtype
from vesper_data.demo import demo_corpus


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def held_out_text(path: str | None) -> str:
    if path:
        return Path(path).read_text(encoding="utf-8")
    return demo_corpus(num_sentences=3000, seed=12345)  # training's demo corpus uses seed 0


@torch.no_grad()
def perplexity(model, ids: torch.Tensor, seq_len: int, max_windows: int) -> tuple[float, int]:
    """exp(mean next-token cross-entropy) over non-overlapping windows; returns (ppl, tokens scored)."""
    device = model.embeddings.weight.device
    total, count = 0.0, 0
    for w in range(min(max_windows, (len(ids) - 1) // seq_len)):
        window = ids[w * seq_len: (w + 1) * seq_len + 1].to(device)
        logits = model(window[None, :-1]).logits.float()  # (1, T, V)
        total += float(F.cross_entropy(logits[0], window[1:], reduction="sum"))
        count += seq_len
    return math.exp(total / count), count


def tokens_per_sec(model, prompts: list[torch.Tensor], new_tokens: int, repeats: int,
                   device: torch.device) -> tuple[float, list[list[int]]]:
    outputs: list[list[int]] = []

    def run() -> None:
        outputs.clear()
        for prompt in prompts:
            out = generate(model, prompt.to(device), max_new_tokens=new_tokens, temperature=0)
            outputs.append(out[len(prompt):].tolist())
        _sync(device)

    run()  # warm-up
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        run()
        best = min(best, time.perf_counter() - start)
    return new_tokens * len(prompts) / best, list(outputs)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", required=True, help="checkpoint or run folder (with its tokenizer.json)")
    parser.add_argument("--eval-text", default=None, help="held-out text file (default: demo corpus, seed 12345)")
    parser.add_argument("--dtypes", default=",".join(INFERENCE_DTYPES))
    parser.add_argument("--new-tokens", type=int, default=64)
    parser.add_argument("--prompts", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--seq-len", type=int, default=128)
    parser.add_argument("--eval-windows", type=int, default=64)
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads, 0 = torch's default")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--no-save", action="store_true")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    dtypes = [parse_inference_dtype(d) for d in args.dtypes.split(",")]
    if dtypes[0] != "f32":
        dtypes = ["f32"] + [d for d in dtypes if d != "f32"]  # the baseline comes first

    text = held_out_text(args.eval_text)
    rows, baseline = [], None
    for name in dtypes:
        gen = load_generator(args.model, device=device, dtype=name)
        tok, model = gen.tokenizer, gen.model
        ids = torch.tensor(tok.encode(text), dtype=torch.long)
        lines = [line for line in text.splitlines() if len(line.split()) >= 4][: args.prompts]
        prompts = [torch.tensor(tok.encode(" ".join(line.split()[:3])), dtype=torch.long) for line in lines]
        ppl, scored = perplexity(model, ids, args.seq_len, args.eval_windows)
        speed, outputs = tokens_per_sec(model, prompts, args.new_tokens, args.repeats, device)
        row = {"dtype": name, "tokens_per_sec": speed, "model_bytes": model_memory_bytes(model),
               "perplexity": ppl, "tokens_scored": scored, "num_prompts": len(prompts),
               "new_tokens_per_prompt": args.new_tokens}
        if baseline is None:
            baseline = {**row, "outputs": outputs}
        same = sum(a == b for out, ref in zip(outputs, baseline["outputs"]) for a, b in zip(out, ref))
        row.update(speed_ratio_vs_f32=speed / baseline["tokens_per_sec"],
                   memory_ratio_vs_f32=row["model_bytes"] / baseline["model_bytes"],
                   perplexity_delta_vs_f32=ppl - baseline["perplexity"],
                   perplexity_delta_pct_vs_f32=100 * (ppl / baseline["perplexity"] - 1),
                   greedy_tokens_equal_to_f32=same / (len(prompts) * args.new_tokens))
        rows.append(row)
        print(f"{name:>5}: {speed:8.1f} tok/s (x{row['speed_ratio_vs_f32']:.2f})  "
              f"{row['model_bytes'] / 2**20:7.2f} MiB (x{row['memory_ratio_vs_f32']:.2f})  "
              f"ppl {ppl:8.4f} ({row['perplexity_delta_pct_vs_f32']:+.3f} %)  "
              f"greedy tokens = f32: {100 * row['greedy_tokens_equal_to_f32']:.1f} %", flush=True)
        del gen, model

    device_label = describe_device(device)
    notes = [f"checkpoint {args.model}; held-out text {args.eval_text or 'demo_corpus(3000, seed=12345)'}",
             "speed: greedy decoding with the KV cache, batch 1, best of --repeats rounds after a warm-up",
             "memory: unique parameter + buffer bytes (int8: int8 values + per-row scales; embedding/tied head f32)",
             "perplexity: float32 cross-entropy of each precision's logits over non-overlapping windows",
             f"device: {device_label}"]
    computed = ["speed_ratio_vs_f32", "memory_ratio_vs_f32", "perplexity_delta_vs_f32",
                "perplexity_delta_pct_vs_f32", "greedy_tokens_equal_to_f32"]
    if not args.no_save:
        path = write_results("inference_dtype", rows, notes=notes, computed=computed, device=device,
                             stem=f"bench_inference_dtype_{device.type}")
        print(f"saved {path}")


if __name__ == "__main__":
    main()

"""Generation speed: VesperLM with the KV cache vs without it, and vs Hugging Face GPT-2 of the same size.

    python benchmarks/bench_generation.py [--preset tiny] [--vocab 8192] [--new-tokens 256]
                                          [--prompt-len 16] [--repeats 3] [--threads N] [--device cpu]

Random-init weights (speed does not depend on them), batch 1, greedy decoding of exactly
``--new-tokens`` tokens (no EOS), best of ``--repeats`` timed runs after one warm-up. The cache
path is ``vesper_core.generation.generate(..., use_cache=True)``; without the cache every step
re-runs the whole sequence. When ``transformers`` is importable, a GPT2LMHeadModel with the same
layers, heads, width, FFN width and vocabulary is timed with ``generate(do_sample=False,
use_cache=True)`` (GPT-2 has a plain GELU MLP where VesperLM has a GLU + FlyLoRA, so it has fewer
parameters; both counts are printed). Results: benchmarks/results/bench_generation_<device>.json
(schema: benchmarks/_results.py), one row per model and cache setting.
"""

from __future__ import annotations

import argparse
import time

import torch

from _results import device_name as describe_device
from _results import write_results
from vesper_core.generation import generate
from vesper_core.model import VesperLM
from vesper_core.presets import model_config



def _best_time(fn, repeats: int) -> float:
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def bench_vesper(args, device: torch.device) -> dict:
    torch.manual_seed(0)
    cfg = model_config(args.preset, vocab_size=args.vocab)
    model = VesperLM(cfg).to(device).eval()
    prompt = torch.randint(0, args.vocab, (1, args.prompt_len), device=device)
    out = {"params": model.num_parameters()}
    for use_cache in (True, False):
        def run() -> None:
            generate(model, prompt, max_new_tokens=args.new_tokens, temperature=0, use_cache=use_cache)
            _sync(device)

        seconds = _best_time(run, args.repeats)
        out["cache" if use_cache else "no_cache"] = {"seconds": seconds, "tokens_per_sec": args.new_tokens / seconds}
    greedy_cached = generate(model, prompt, max_new_tokens=32, temperature=0, use_cache=True)
    greedy_full = generate(model, prompt, max_new_tokens=32, temperature=0, use_cache=False)
    out["cache_matches_full_forward"] = bool(torch.equal(greedy_cached, greedy_full))
    out["config"] = {k: getattr(cfg, k) for k in ("num_layers", "num_heads", "hidden_size", "intermediate_size",
                                                  "vocab_size", "max_position_embeddings")}
    return out


def bench_hf(args, device: torch.device, cfg: dict) -> dict | None:
    try:
        import transformers
        from transformers import GPT2Config, GPT2LMHeadModel
    except ImportError:
        return None
    torch.manual_seed(0)
    hf_cfg = GPT2Config(vocab_size=cfg["vocab_size"], n_positions=cfg["max_position_embeddings"],
                        n_embd=cfg["hidden_size"], n_layer=cfg["num_layers"], n_head=cfg["num_heads"],
                        n_inner=cfg["intermediate_size"], bos_token_id=0, eos_token_id=0)
    model = GPT2LMHeadModel(hf_cfg).to(device).eval()
    prompt = torch.randint(0, cfg["vocab_size"], (1, args.prompt_len), device=device)
    mask = torch.ones_like(prompt)

    def run() -> None:
        with torch.no_grad():
            model.generate(prompt, attention_mask=mask, max_new_tokens=args.new_tokens,
                           min_new_tokens=args.new_tokens, do_sample=False, use_cache=True, pad_token_id=0)
        _sync(device)

    seconds = _best_time(run, args.repeats)
    return {"transformers": transformers.__version__, "params": sum(p.numel() for p in model.parameters()),
            "seconds": seconds, "tokens_per_sec": args.new_tokens / seconds}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="tiny")
    parser.add_argument("--vocab", type=int, default=8192)
    parser.add_argument("--new-tokens", type=int, default=256)
    parser.add_argument("--prompt-len", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads, 0 = torch's default")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--no-save", action="store_true")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)

    vesper = bench_vesper(args, device)
    ratio = vesper["cache"]["tokens_per_sec"] / vesper["no_cache"]["tokens_per_sec"]
    hf = bench_hf(args, device, vesper["config"])
    device_name = describe_device(device)

    print(f"device {device_name}, torch {torch.__version__}")
    print(f"VesperLM {args.preset} ({vesper['params'] / 1e6:.2f}M params, vocab {args.vocab}), "
          f"prompt {args.prompt_len}, {args.new_tokens} new tokens, greedy, batch 1, best of {args.repeats}")
    print(f"  KV cache      {vesper['cache']['tokens_per_sec']:9.1f} tok/s")
    print(f"  no cache      {vesper['no_cache']['tokens_per_sec']:9.1f} tok/s")
    print(f"  cache speed-up {ratio:.2f}x (goal >= 5x); cached greedy == full-forward greedy: "
          f"{vesper['cache_matches_full_forward']}")
    if hf is None:
        print("  HF transformers: not installed, comparison skipped (pip install transformers)")
    else:
        print(f"  HF GPT-2 same shape ({hf['params'] / 1e6:.2f}M params, transformers {hf['transformers']}, "
              f"KV cache) {hf['tokens_per_sec']:9.1f} tok/s; Vesper/HF = "
              f"{vesper['cache']['tokens_per_sec'] / hf['tokens_per_sec']:.2f}x")

    common = {"prompt_len": args.prompt_len, "new_tokens": args.new_tokens, "vocab": args.vocab, "batch": 1}
    rows = [{"model": f"vesper_{args.preset}", "kv_cache": True, "params": vesper["params"], **common,
             **vesper["cache"], "speedup_vs_no_cache": ratio,
             "matches_full_forward_greedy": vesper["cache_matches_full_forward"]},
            {"model": f"vesper_{args.preset}", "kv_cache": False, "params": vesper["params"], **common,
             **vesper["no_cache"]}]
    if hf is not None:
        rows.append({"model": "hf_gpt2_same_shape", "kv_cache": True, "params": hf["params"], **common,
                     "seconds": hf["seconds"], "tokens_per_sec": hf["tokens_per_sec"],
                     "transformers": hf["transformers"],
                     "vesper_cache_vs_this": vesper["cache"]["tokens_per_sec"] / hf["tokens_per_sec"]})
    notes = [f"random-init weights, greedy, exactly new_tokens tokens, best of {args.repeats} after one warm-up",
             f"VesperLM config {vesper['config']}; GPT-2 has a plain GELU MLP (fewer parameters)"]
    if hf is None:
        notes.append("transformers not installed: no HF comparison")
    if not args.no_save:
        computed = ["tokens_per_sec", "speedup_vs_no_cache"] + (["vesper_cache_vs_this"] if hf is not None else [])
        path = write_results("generation", rows, notes=notes, computed=computed, device=device,
                             stem=f"bench_generation_{device.type}")
        print(f"wrote {path}")


if __name__ == "__main__":
    main()

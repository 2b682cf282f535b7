"""Does `generate --metacog` stop earlier on easy prompts than on hard ones? Counted, not eyeballed.

    python benchmarks/bench_metacog_stops.py --model CKPT [--text demo|FILE] [--prompts 8] [--seeds 4]
                                             [--max-tokens 100] [--temperature 0.8]
                                             [--confidence-threshold X] [--regulation-threshold Y]
                                             [--show]

* **easy** prompts: sentences of the model's own domain cut before their last word ("The cat sleeps
  in the" from "The cat sleeps in the garden."). ``--text demo`` draws them from the demo generator
  with another seed than training (seed 12345); ``--text FILE`` takes lines of a held-out file.
* **hard** prompts: random printable characters, each as long as one of the easy prompts.

Every prompt is completed once greedily and ``--seeds`` times sampled at ``--temperature``, through the
same code as ``vesper generate --metacog`` (sentence spans, the checkpoint's regulator settings).
Printed per set and decoding: tokens written (mean, median) and why generation stopped; then the
hard/easy ratio of mean tokens (> 1 means easy prompts stop earlier). Writes one JSON row to
benchmarks/results/.
"""

from __future__ import annotations

import argparse
import random
import statistics
import string
from collections import Counter
from pathlib import Path

from _results import write_results
from vesper_cli.engine.generation import SamplingConfig, load_generator
from vesper_cli.engine.metacog_generation import MetacogSummary, metacog_stream, sentence_ends
from vesper_data.demo import demo_corpus

HELD_OUT_SEED = 12345
METACOG_STOPS = ("satisficed", "termination")


def easy_prompts(text: str, count: int, rng: random.Random) -> list[str]:
    """``count`` distinct lines of ``text`` with at least 4 words, cut before their last word."""
    lines = sorted({line.strip() for line in text.splitlines() if len(line.split()) >= 4})
    if len(lines) < count:
        raise SystemExit(f"--text has {len(lines)} usable lines (4+ words), need {count}")
    return [line.rsplit(" ", 1)[0] for line in rng.sample(lines, count)]


def hard_prompts(easy: list[str], rng: random.Random) -> list[str]:
    alphabet = string.ascii_letters + string.digits + string.punctuation + "     "
    return ["".join(rng.choice(alphabet) for _ in range(len(prompt))).strip() or "x" for prompt in easy]


def complete(gen, prompt: str, sampling: SamplingConfig, overrides: dict,
             boundaries: frozenset[int]) -> tuple[str, MetacogSummary]:
    summary = MetacogSummary()
    text = "".join(piece.text for piece in metacog_stream(gen, prompt, sampling, summary, overrides=overrides,
                                                          boundary_ids=boundaries))
    return text, summary


def measure(gen, prompts: list[str], args, boundaries: frozenset[int]) -> dict:
    rows = {}
    for decoding, temperature, seeds in (("greedy", 0.0, [0]), ("sampled", args.temperature, range(args.seeds))):
        tokens, reasons = [], Counter()
        for prompt in prompts:
            for seed in seeds:
                sampling = SamplingConfig(max_tokens=args.max_tokens, temperature=temperature, seed=seed)
                text, summary = complete(gen, prompt, sampling, args.overrides, boundaries)
                tokens.append(summary.tokens)
                reasons[summary.stop_reason] += 1
                if args.show and seed == 0:
                    print(f"  [{decoding}] {prompt!r} -> {text[:120]!r} ({summary.line()})")
        rows[decoding] = {"runs": len(tokens), "mean_tokens": statistics.mean(tokens),
                          "median_tokens": statistics.median(tokens),
                          "metacog_stops": sum(reasons[r] for r in METACOG_STOPS), "reasons": dict(reasons)}
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", required=True, help="checkpoint with a meta head")
    parser.add_argument("--text", default="demo", help="'demo' or a held-out text file for the easy prompts")
    parser.add_argument("--prompts", type=int, default=8, help="prompts per set")
    parser.add_argument("--seeds", type=int, default=4, help="sampled runs per prompt")
    parser.add_argument("--max-tokens", type=int, default=100)
    parser.add_argument("--temperature", type=float, default=0.8)
    parser.add_argument("--confidence-threshold", type=float, default=None,
                        help="satisficing threshold (default: the checkpoint's, 0.85)")
    parser.add_argument("--regulation-threshold", type=float, default=None,
                        help="re-draw threshold (default: the checkpoint's, 0.3)")
    parser.add_argument("--show", action="store_true", help="print each prompt's first completion")
    args = parser.parse_args()
    args.overrides = {name: value for name in ("confidence_threshold", "regulation_threshold")
                      if (value := getattr(args, name)) is not None}

    gen = load_generator(args.model)
    gen.model.eval()
    text = demo_corpus(2000, seed=HELD_OUT_SEED) if args.text == "demo" else Path(args.text).read_text(
        encoding="utf-8")
    rng = random.Random(0)
    easy = easy_prompts(text, args.prompts, rng)
    sets = {"easy": easy, "hard": hard_prompts(easy, rng)}
    boundaries = sentence_ends(gen.tokenizer)

    results = {}
    for name, prompts in sets.items():
        print(f"{name} prompts, e.g. {prompts[0]!r}")
        results[name] = measure(gen, prompts, args, boundaries)
    print(f"\n{'set':<6}{'decoding':<10}{'runs':>6}{'mean tok':>10}{'median':>8}{'metacog stop':>14}  reasons")
    for name, rows in results.items():
        for decoding, row in rows.items():
            print(f"{name:<6}{decoding:<10}{row['runs']:>6}{row['mean_tokens']:>10.1f}{row['median_tokens']:>8.1f}"
                  f"{row['metacog_stops']:>8}/{row['runs']:<5}  {row['reasons']}")
    ratios = {decoding: results["hard"][decoding]["mean_tokens"] / results["easy"][decoding]["mean_tokens"]
              for decoding in results["easy"]}
    print("hard/easy mean tokens: " + ", ".join(f"{d} {r:.2f}x" for d, r in ratios.items()))

    rows = [{"set": name, "decoding": decoding, **row, "hard_over_easy_mean_tokens": ratios[decoding]}
            for name, by_decoding in results.items() for decoding, row in by_decoding.items()]
    path = write_results("metacog_stops", rows, device="cpu", computed=["hard_over_easy_mean_tokens"],
                         notes=[f"model {args.model}, text {args.text}, max_tokens {args.max_tokens}, temperature "
                                f"{args.temperature}, regulator overrides {args.overrides}", f"prompts: {sets}"])
    print(f"wrote {path}")


if __name__ == "__main__":
    main()

"""The README's fine-tuning example, measured: pretrain nano on the demo corpus, then fine-tune it on a small
generated conversation set with ``vesper train --init-from``; report the held-out assistant-token loss before
and after (the same masked loss training validates with).

    python benchmarks/sft_example.py [--out DIR] [--pretrain-steps 300] [--sft-steps 200]

The conversations are arithmetic questions in the four accepted shapes (OpenAI messages, ShareGPT,
Alpaca, user/assistant pairs), answered by one rule ("3 plus 4 is 7."); the held-out set is drawn with
another seed. "Before" is the model --init-from starts from (the pretrained weights, the embedding grown by
the two ChatML tokens); "after" is the fine-tuned checkpoint. Writes benchmarks/results/sft_example.json.
"""

from __future__ import annotations

import argparse
import json
import random
import shlex
import subprocess
import sys
import time
from pathlib import Path

import torch

from _results import write_results
from vesper_cli.engine.evaluation import evaluate
from vesper_core.checkpoint import read_checkpoint
from vesper_core.distributed import DistInfo
from vesper_core.model import VesperLM
from vesper_core.vocab import grow_vocabulary
from vesper_data.chat import add_chat_tokens, default_template, load_chat_template
from vesper_data.chat.data import open_chat_windows
from vesper_data.tokenizers import VesperTokenizer

SEQ_LEN = 128


def conversations(n: int, seed: int) -> list[dict]:
    rng = random.Random(seed)
    out = []
    for i in range(n):
        a, b = rng.randint(1, 20), rng.randint(1, 20)
        answer = f"{a} plus {b} is {a + b}."
        shape = i % 4
        if shape == 0:
            out.append({"messages": [{"role": "user", "content": f"What is {a} plus {b}?"},
                                     {"role": "assistant", "content": answer}]})
        elif shape == 1:
            out.append({"conversations": [{"from": "human", "value": f"Add {a} and {b}."},
                                          {"from": "gpt", "value": answer}]})
        elif shape == 2:
            out.append({"instruction": "Add the two numbers.", "input": f"{a} {b}", "output": answer})
        else:
            out.append({"user": f"{a} + {b} = ?", "assistant": answer})
    return out


def write_jsonl(path: Path, records: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    return path


def vesper(*args) -> tuple[str, float]:
    cmd = ["vesper", *map(str, args)]
    start = time.perf_counter()
    subprocess.run([sys.executable, "-m", "vesper_cli", *map(str, args)], check=True)
    return shlex.join(cmd), time.perf_counter() - start


def held_out_loss(model: VesperLM, windows) -> float:
    metrics = evaluate(model, windows, batch_size=8, device=torch.device("cpu"),
                       autocast=lambda: torch.autocast("cpu", enabled=False), max_batches=0, dist_info=DistInfo())
    return metrics["val_loss"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("sft_example"))
    parser.add_argument("--pretrain-steps", type=int, default=300)
    parser.add_argument("--sft-steps", type=int, default=200)
    args = parser.parse_args()
    out = args.out
    out.mkdir(parents=True, exist_ok=True)
    train_file = write_jsonl(out / "chat_train.jsonl", conversations(400, seed=1))
    val_file = write_jsonl(out / "chat_val.jsonl", conversations(80, seed=2))
    common = ["--model-size", "nano", "--seq-len", SEQ_LEN, "--batch-size", 8, "--dtype", "f32", "--save-every", 0,
              "--lr", "1e-3", "--overwrite"]
    pre_cmd, pre_s = vesper("train", "--dataset", "demo", "--tokenizer", "byte", "--max-steps", args.pretrain_steps,
                            "--output-dir", out / "base", *common)
    sft_cmd, sft_s = vesper("train", "--init-from", out / "base", "--dataset", train_file, "--val-dataset", val_file,
                            "--max-steps", args.sft_steps, "--output-dir", out / "sft", *common)

    # before: what --init-from starts from (the base weights, the embedding grown by the template's tokens)
    base = read_checkpoint(out / "base" / "checkpoint-final.safetensors")
    tokenizer = VesperTokenizer.from_file(out / "base" / "tokenizer.json")
    add_chat_tokens(tokenizer, default_template())
    weights, _ = grow_vocabulary(base.state_dict, tokenizer.vocab_size)
    before_model = VesperLM(base.config.__class__(**{**base.config.to_dict(), "vocab_size": tokenizer.vocab_size}))
    before_model.load_exported_state_dict(weights)
    windows = open_chat_windows(str(val_file), tokenizer, default_template(), SEQ_LEN)
    before = held_out_loss(before_model, windows)
    final = read_checkpoint(out / "sft" / "checkpoint-final.safetensors")
    after_windows = open_chat_windows(str(val_file), VesperTokenizer.from_file(out / "sft" / "tokenizer.json"),
                                      load_chat_template(final.path), SEQ_LEN)
    after = held_out_loss(final.build_model(), after_windows)
    logged = json.loads((out / "sft" / "training_log.json").read_text())["evals"][-1]["val_loss"]
    num_tokens = int(sum(int((windows.get_batch([i])[1] != -100).sum()) for i in range(len(windows))))
    row = {"pretrain_steps": args.pretrain_steps, "sft_steps": args.sft_steps, "held_out_conversations": len(windows),
           "held_out_assistant_tokens": num_tokens, "loss_before": round(before, 4), "loss_after": round(after, 4),
           "val_loss_logged_by_train": round(logged, 4), "pretrain_seconds": round(pre_s, 1),
           "sft_seconds": round(sft_s, 1)}
    print(json.dumps(row, indent=2))
    print(f"held-out assistant-token loss: {before:.3f} before -> {after:.3f} after fine-tuning "
          f"({num_tokens} tokens in {len(windows)} conversations)")
    write_results("sft_example", [row], stem="sft_example", notes=[
        f"pretrain: {pre_cmd}", f"fine-tune: {sft_cmd}",
        "loss = mean cross-entropy over the held-out assistant tokens (answer + <|im_end|>), ChatML template",
        "before = the pretrained weights with the embedding grown by <|im_start|>/<|im_end|> (mean rows)",
        "CPU, shared machine: the seconds are wall time under load"])


if __name__ == "__main__":
    main()

"""Fine-tuning: full vs LoRA vs FlyLoRA on the same pretrained checkpoint and the same conversation data.

    python benchmarks/bench_finetune.py [--preset tiny] [--pretrain-steps 300] [--steps 150] [--seq-len 64]
        [--batch-size 8] [--rank 8] [--lr-full 1e-3] [--lr-adapter 1e-2] [--val-fraction 0.1] [--threads 1]
        [--device cpu]

1. Pretrain ``--preset`` on the built-in demo corpus (byte tokens) for ``--pretrain-steps``.
2. Write a project-made conversation file (OpenAI ``messages`` JSONL) the base never saw: a user asks for
   the sum of two number words in one of four phrasings ("what is three plus four?"), the assistant answers
   with the digits ("7"). The 100 pairs x 4 phrasings = 400 conversations are shuffled so that the last
   ``--val-fraction`` of the file (the held-out tail) holds (pair, phrasing) combinations that never occur in
   the training part; every held-out pair does occur in training under another phrasing.
3. Fine-tune that checkpoint with ``vesper train --init-from BASE --finetune full|lora|flylora`` (Velvet,
   the same seed, batch and steps; chat data autodetected, ChatML, the loss on assistant tokens). Each arm
   runs in its own process, so its peak RSS is its own. ``--init-from`` grows the embedding by the two
   ChatML tokens; with adapters those rows stay frozen (documented). Each arm also saves its step-0 model
   (the grown base: adapters start with B = 0) as ``checkpoint-0.safetensors``.
4. Score the step-0 and the final checkpoint of each arm with ``evaluate_checkpoint`` (``vesper eval``):
   the held-out assistant-token loss (``data=[chat file], val_fraction``: the training mask and template,
   the number training's own validation logs) and a multiple-choice task on the held-out conversations
   (context = the chat-template prompt with ``add_generation_prompt=True``, four digit answers) -> acc /
   acc_norm.
5. Report per arm: trainable parameters and share, the training state counted exactly (weights + buffers +
   gradients of trainable tensors + optimizer state), peak RSS of the process (includes the ~0.3-0.5 GiB of
   Python + torch), median step time (steps after the first 3), loss and task accuracy before and after.

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
WORDS = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]
PHRASINGS = ["what is {a} plus {b}?", "add {a} and {b}.", "{a} plus {b} equals?", "how much is {a} plus {b}?"]


def conversations(val_fraction: float, seed: int = 0) -> tuple[list[dict], list[tuple[int, int, int]]]:
    """Every (a, b, phrasing) once, shuffled; the tail (``val_fraction`` of the file) is the held-out part.
    Returns the records and the held-out (a, b, phrasing) triples in file order."""
    rng = random.Random(seed)
    combos = [(a, b, p) for a in range(10) for b in range(10) for p in range(len(PHRASINGS))]
    rng.shuffle(combos)
    num_val = int(len(combos) * val_fraction)  # what ChatExamples.split holds out
    held_out = combos[len(combos) - num_val:]

    def record(a: int, b: int, p: int) -> dict:
        return {"messages": [{"role": "user", "content": PHRASINGS[p].format(a=WORDS[a], b=WORDS[b])},
                             {"role": "assistant", "content": str(a + b)}]}

    return [record(*c) for c in combos], held_out


def task_file(path: Path, held_out: list[tuple[int, int, int]], template, seed: int = 0) -> Path:
    """vesper eval's multiple-choice format on the held-out conversations: the prompt rendered with the chat
    template up to the assistant turn, the right sum and three near misses in a random order."""
    rng = random.Random(seed)
    lines = []
    for a, b, p in held_out:
        answer = a + b
        near = [n for n in range(answer - 3, answer + 4) if n != answer and 0 <= n <= 18]
        choices = [answer, *rng.sample(near, 3)]
        rng.shuffle(choices)
        context = template.render([{"role": "user", "content": PHRASINGS[p].format(a=WORDS[a], b=WORDS[b])}],
                                  add_generation_prompt=True)
        lines.append(json.dumps({"type": "multiple_choice", "task": "held_out_sums", "context": context,
                                 "choices": [str(c) for c in choices], "answer": choices.index(answer)}))
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def peak_rss_mib() -> float:
    """This process's peak resident set (VmHWM). Not ru_maxrss: Linux carries that over from the forking
    parent across exec, so every arm would report the pretraining parent's peak."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # not Linux


def run_arm(args) -> dict:
    """One fine-tuning arm in this process; prints its row as JSON. Scoring happens in the parent, so the
    evaluation never counts in this process's peak RSS."""
    from vesper_cli.engine import TrainObserver, build_run_config, build_training
    from vesper_cli.engine.trainer import Trainer

    torch.set_num_threads(args.threads)
    times: list[float] = []
    trainer: Trainer | None = None

    class Clock(TrainObserver):
        def on_start(self, info) -> None:  # after the run folder exists, before the first step
            trainer._save("checkpoint-0.safetensors", full_state=False)

        def on_step(self, metrics) -> None:
            times.append(metrics.step_time_s)

    flags = dict(dataset=args.data, tokenizer="auto", init_from=args.base, finetune=args.arm, seq_len=args.seq_len,
                 batch_size=args.batch_size, max_steps=args.steps, save_every=0, output_dir=args.out, dtype="f32",
                 device=args.device, seed=0, log_every=10_000, val_fraction=args.val_fraction, eval_batches=0,
                 lr=args.lr_full if args.arm == "full" else args.lr_adapter)
    if args.arm != "full":
        flags.update(lora_rank=args.rank, lora_alpha=2.0 * args.rank)
    clock = Clock()
    run, _ = build_training(build_run_config(flags), clock)
    trainer = Trainer(run, clock)
    result = trainer.fit()
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
        "val_loss_logged_by_train": result.final_eval["val_loss"],
        "checkpoint_kib": result.final_checkpoint.stat().st_size / 1024,
        "step0_checkpoint": str(Path(args.out) / "checkpoint-0.safetensors"),
        "final_checkpoint": str(result.final_checkpoint),
    }
    print(json.dumps(row))
    return row


def score(checkpoint: str, data: Path, tasks: Path, args) -> dict:
    """Held-out assistant-token loss and multiple-choice accuracy of one checkpoint, through vesper eval."""
    from vesper_cli.engine.checkpoint_eval import EvalConfig, evaluate_checkpoint

    report = evaluate_checkpoint(EvalConfig(model=checkpoint, data=[str(data)], val_fraction=args.val_fraction,
                                            tasks=[str(tasks)], seq_len=args.seq_len, batch_size=args.batch_size,
                                            dtype="f32", device=args.device))
    if report.skipped:
        raise SystemExit(f"task records skipped: {report.skipped}")
    (ppl,), (task,) = report.perplexity, report.tasks
    return {"loss": ppl.loss, "tokens": ppl.num_tokens, "conversations": ppl.num_windows, "task_count": task.count,
            "acc": task.metrics["acc"], "acc_norm": task.metrics["acc_norm"]}


def split_loss(checkpoint: str, data: Path, args) -> dict:
    """The same held-out loss split by target: the answer's digits, and the end-of-turn token (``<|im_end|>``,
    whose embedding row is new; tied to the LM head, and frozen under adapters)."""
    from vesper_cli.engine.generation import load_generator
    from vesper_cli.engine.perplexity import WindowSettings, chat_windows
    from vesper_data.chat import load_chat_template

    gen = load_generator(checkpoint, device=args.device)
    settings = WindowSettings(seq_len=args.seq_len, batch_size=args.batch_size, dtype="f32",
                              val_fraction=args.val_fraction).resolve(gen.checkpoint)
    windows = chat_windows(data, gen, settings)
    (eot,) = gen.tokenizer.encode(load_chat_template(checkpoint).end_of_turn)
    inputs, labels = windows.get_batch(list(range(len(windows))))
    with torch.no_grad():
        logits = gen.model(inputs.to(next(gen.model.parameters()).device)).logits.float().cpu()
    nll = torch.nn.functional.cross_entropy(logits.flatten(0, 1), labels.flatten(), reduction="none",
                                            ignore_index=-100)
    flat = labels.flatten()
    return {"answer": float(nll[(flat != -100) & (flat != eot)].mean()), "end_of_turn": float(nll[flat == eot].mean())}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="tiny")
    parser.add_argument("--pretrain-steps", type=int, default=300)
    parser.add_argument("--steps", type=int, default=150)
    parser.add_argument("--seq-len", type=int, default=64)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--rank", type=int, default=8)
    parser.add_argument("--lr-full", type=float, default=1e-3)
    parser.add_argument("--lr-adapter", type=float, default=1e-2)
    parser.add_argument("--val-fraction", type=float, default=0.1)
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
    from vesper_data.chat import load_chat_template

    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        print(f"pretraining {args.preset} on the demo corpus for {args.pretrain_steps} steps ...", flush=True)
        base = train(build_run_config(dict(
            dataset="demo", tokenizer="byte", model_size=args.preset, seq_len=args.seq_len,
            batch_size=args.batch_size, max_steps=args.pretrain_steps, save_every=0, output_dir=str(tmp / "base"),
            dtype="f32", device=args.device, seed=0, log_every=10_000, lr=1e-3))).final_checkpoint
        records, held_out = conversations(args.val_fraction)
        data = tmp / "sums_chat.jsonl"
        data.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
        train_pairs = {(a, b) for a, b, _ in {(a, b, p) for a in range(10) for b in range(10)
                                              for p in range(len(PHRASINGS))} - set(held_out)}
        pairs_seen = sum((a, b) in train_pairs for a, b, _ in held_out)
        rows, tasks = [], None
        for arm in ARMS:
            cmd = [sys.executable, __file__, "--arm", arm, "--base", str(base), "--data", str(data),
                   "--out", str(tmp / arm)]
            for flag in ("steps", "seq_len", "batch_size", "rank", "lr_full", "lr_adapter", "val_fraction",
                         "threads", "device"):
                cmd += ["--" + flag.replace("_", "-"), str(getattr(args, flag))]
            done = subprocess.run(cmd, capture_output=True, text=True)
            if done.returncode != 0:
                raise SystemExit(f"arm {arm} failed:\n{done.stderr[-3000:]}")
            r = json.loads(done.stdout.strip().splitlines()[-1])
            step0, final = r.pop("step0_checkpoint"), r.pop("final_checkpoint")
            if tasks is None:  # the prompt as the fine-tuned model sees it (its recorded template)
                tasks = task_file(tmp / "held_out_sums_tasks.jsonl", held_out, load_chat_template(step0))
            before, after = score(step0, data, tasks, args), score(final, data, tasks, args)
            split_before, split_after = split_loss(step0, data, args), split_loss(final, data, args)
            r.update(held_out_conversations=before["conversations"], held_out_assistant_tokens=before["tokens"],
                     task_records=before["task_count"], held_out_pairs_seen_in_training=pairs_seen,
                     loss_before=before["loss"], loss_after=after["loss"],
                     answer_loss_before=split_before["answer"], answer_loss_after=split_after["answer"],
                     end_of_turn_loss_before=split_before["end_of_turn"],
                     end_of_turn_loss_after=split_after["end_of_turn"],
                     task_acc_before=before["acc"], task_acc_after=after["acc"],
                     task_acc_norm_before=before["acc_norm"], task_acc_norm_after=after["acc_norm"])
            rows.append(r)
            print(f"{arm:8s} trainable {r['trainable_params']:>10,} ({100 * r['trainable_share']:6.2f}%)  "
                  f"state {r['state_mib']:7.2f} MiB (optimizer {r['optimizer_state_mib']:6.2f})  "
                  f"peak RSS {r['peak_rss_mib']:6.0f} MiB  step {r['step_time_ms_median']:6.1f} ms  "
                  f"assistant-token loss {r['loss_before']:.3f} -> {r['loss_after']:.3f} "
                  f"(train logged {r['val_loss_logged_by_train']:.4f}; answer {r['answer_loss_before']:.3f} -> "
                  f"{r['answer_loss_after']:.3f}, end of turn {r['end_of_turn_loss_before']:.3f} -> "
                  f"{r['end_of_turn_loss_after']:.3f})  "
                  f"task acc {r['task_acc_before']:.3f} -> {r['task_acc_after']:.3f} "
                  f"(acc_norm {r['task_acc_norm_before']:.3f} -> {r['task_acc_norm_after']:.3f})  "
                  f"checkpoint {r['checkpoint_kib']:,.0f} KiB", flush=True)
    full = next(r for r in rows if r["arm"] == "full")
    for r in rows:
        r["trainable_vs_full"] = r["trainable_params"] / full["trainable_params"]
        r["step_time_vs_full"] = r["step_time_ms_median"] / full["step_time_ms_median"]
    if not args.no_save:
        path = write_results("finetune", rows, stem=f"bench_finetune_{args.preset}_{args.device.split(':')[0]}",
                             computed=["trainable_share", "trainable_vs_full", "step_time_vs_full", "state_mib"],
                             notes=[f"{args.preset} pretrained {args.pretrain_steps} steps on the demo corpus (byte "
                                    f"tokens), then {args.steps} Velvet steps per arm with vesper train --init-from "
                                    f"BASE --finetune ARM on generated conversations (OpenAI messages JSONL, "
                                    f"ChatML, loss on assistant tokens; batch {args.batch_size} x {args.seq_len}, "
                                    f"f32, seed 0, {args.threads} thread(s))",
                                    f"data: 400 conversations, user asks for the sum of two number words (0-9) in "
                                    f"one of {len(PHRASINGS)} phrasings, assistant answers the digits; the last "
                                    f"{args.val_fraction:g} (--val-fraction) are held out: (pair, phrasing) "
                                    f"combinations absent from the training part ({pairs_seen} of "
                                    f"{len(held_out)} held-out pairs occur in training under another phrasing)",
                                    "before = the arm's step-0 checkpoint (the base with the embedding grown by "
                                    "the two ChatML tokens, adapters at B = 0), after = checkpoint-final; both "
                                    "scored with evaluate_checkpoint (vesper eval): loss = held-out assistant-token "
                                    "cross-entropy (answer + <|im_end|>), task = multiple choice on the same "
                                    "held-out prompts (chat-template prompt with add_generation_prompt, the sum "
                                    "and three near misses), acc = sum log-prob, acc_norm = per character",
                                    "answer_loss / end_of_turn_loss: the same held-out loss split by target (the "
                                    "answer's digit tokens / the <|im_end|> token), from one plain forward pass",
                                    "state_mib counts weights + buffers + gradients of trainable tensors + optimizer "
                                    "state exactly; peak_rss_mib is the arm's own process (includes Python + torch; "
                                    "scoring runs in the parent)",
                                    "one run per arm, one seed, learning rates not tuned per arm beyond "
                                    "--lr-full/--lr-adapter; CPU shared with other jobs: step times are noisy"],
                             device=args.device)
        print(f"wrote {path}")


if __name__ == "__main__":
    main()

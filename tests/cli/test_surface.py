"""Guard tests: the command surface does not change by accident."""

from __future__ import annotations

import re

import pytest

from vesper_core import __version__

TRAIN_FLAGS = {
    "--dataset", "--format", "--tokenizer", "--model-size", "--epochs", "--batch-size", "--lr", "--seq-len",
    "--save-every", "--output-dir", "--max-steps", "--vocab-size", "--optimizer", "--resume", "--moe",
    "--num-experts", "--top-k", "--dtype", "--gradient-checkpointing", "--seed", "--device", "--log-every",
    "--config", "--grad-accum", "--warmup-steps", "--lr-schedule", "--weight-decay", "--max-grad-norm",
    "--val-dataset", "--eval-every", "--keep-last", "--max-bad-steps", "--compile", "--fsdp", "--num-workers", "--cache", "--streaming", "--chunk-mb", "--wandb",
    "--wandb-project", "--wandb-run", "--metacog", "--metacog-only", "--metacog-weight",
    "--text-field", "--val-fraction", "--eval-batches", "--loss", "--min-lr-ratio", "--beta1", "--beta2", "--eps",
    "--velvet-rules", "--entropy-signal", "--entropy-target", "--perplexity-target", "--lr-combine",
    "--entropy-adaptive", "--no-entropy-adaptive", "--perplexity-guided", "--no-perplexity-guided", "--sparse-aware",
    "--sparse-params", "--backend", "--hypergradient-rate", "--overwrite", "--tensorboard",
    "--init-from", "--chat-template", "--train-on-prompt",
    "--finetune", "--lora-rank", "--lora-alpha", "--lora-targets", "--flylora-sparsity", "--flylora-top-k",
}
GENERATE_FLAGS = {
    "--model", "--prompt", "--max-tokens", "--temperature", "--top-k", "--top-p", "--repetition-penalty",
    "--seed", "--tokenizer", "--model-size", "--device", "--stop", "--num-samples", "--prompts-file", "--interactive",
    "--metacog", "--confidence-threshold", "--regulation-threshold", "--dtype",
}
BENCHMARK_FLAGS = {
    "--dataset", "--format", "--tokenizer", "--model-size", "--epochs", "--max-steps", "--batch-size", "--lr",
    "--seq-len", "--output", "--seeds", "--seed", "--optimizers", "--lr-sweep", "--val-fraction", "--val-tokens",
    "--dtype", "--device", "--plot", "--json",
    "--text-field", "--loss", "--warmup-steps", "--lr-schedule", "--min-lr-ratio", "--weight-decay", "--max-grad-norm",
    "--velvet-rules", "--entropy-signal", "--entropy-target", "--perplexity-target", "--lr-combine",
    "--entropy-adaptive", "--no-entropy-adaptive", "--perplexity-guided", "--no-perplexity-guided", "--sparse-aware",
    "--sparse-params", "--backend", "--hypergradient-rate",
}
PLOT_FLAGS = {"--output"}
MERGE_FLAGS = {"--model", "--output", "--overwrite"}
EXPORT_FLAGS = {"--model", "--format", "--output", "--overwrite", "--tokenizer", "--verify", "--no-verify", "--tolerance",
                "--opset"}
EVAL_FLAGS = {
    "--model", "--data", "--tasks", "--lm-eval-tasks", "--include-path", "--format", "--text-field", "--chat-template",
    "--seq-len", "--batch-size", "--max-batches", "--val-fraction", "--dtype", "--max-tokens", "--limit",
    "--num-fewshot", "--tokenizer", "--device", "--json",
}
CHAT_FLAGS = {
    "--model", "--system", "--max-tokens", "--temperature", "--top-k", "--top-p", "--repetition-penalty", "--seed",
    "--stop", "--chat-template", "--tokenizer", "--device", "--dtype", "--metacog", "--confidence-threshold",
    "--regulation-threshold",
}


def _flags(help_text: str) -> set[str]:
    return set(re.findall(r"(--[a-z][a-z0-9-]+)", help_text)) - {"--help", "--no-moe", "--no-gradient-checkpointing"}


def test_help_lists_commands(cli):
    code, out, _ = cli("--help")
    assert code == 0
    for command in ("train", "benchmark", "generate", "plot", "plugins", "merge", "export", "eval", "chat"):
        assert re.search(rf"^\s*{command}\b", out, re.M), command


def test_version(cli):
    code, out, _ = cli("--version")
    assert code == 0 and out.strip() == f"vesper {__version__}"


@pytest.mark.parametrize("command,expected", [("train", TRAIN_FLAGS), ("generate", GENERATE_FLAGS),
                                              ("benchmark", BENCHMARK_FLAGS), ("plot", PLOT_FLAGS),
                                              ("merge", MERGE_FLAGS), ("export", EXPORT_FLAGS),
                                              ("eval", EVAL_FLAGS), ("chat", CHAT_FLAGS)])
def test_command_flags_snapshot(cli, command, expected):
    code, out, _ = cli(command, "--help")
    assert code == 0
    assert _flags(out) >= expected
    extra = _flags(out) - expected
    assert not extra, f"new flags on `vesper {command}`: update the snapshot deliberately: {extra}"


def test_python_dash_m_works():
    from tests.cli.conftest import run_subprocess

    proc = run_subprocess("--version")
    assert proc.returncode == 0 and proc.stdout.strip() == f"vesper {__version__}"


def test_plugins_lists_builtins(cli):
    code, out, _ = cli("plugins", "--json")
    assert code == 0
    import json

    rows = json.loads(out)
    names = {(r["kind"], r["name"]) for r in rows}
    assert ("preset", "nano") in names and ("optimizer", "velvet") in names and ("tokenizer", "byte") in names
    assert all(r["origin"] == "builtin" for r in rows if r["name"] in {"nano", "velvet", "byte"})

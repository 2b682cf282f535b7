"""Metacognition end to end: `train --metacog` / `--metacog-only`, the head in checkpoints, `metacog eval`."""

from __future__ import annotations

import json
import math

import pytest
import torch

from vesper_metacog.training import load_head
from safetensors import safe_open

from tests.train.conftest import assert_bit_identical, make_text, run_config, weights
from vesper_core.checkpoint import read_checkpoint
from vesper_cli.engine.trainer import train


@pytest.fixture(scope="module")
def text(tmp_path_factory):
    return make_text(tmp_path_factory.mktemp("data") / "train.txt")


@pytest.fixture(scope="module")
def joint(tmp_path_factory, text):
    """A nano model trained 4 steps with --metacog (eval at step 2 and the end)."""
    out = tmp_path_factory.mktemp("joint")
    return train(run_config(text, out, max_steps=4, save_every=2, metacog=True, metacog_weight=0.5,
                            val_dataset=str(text), eval_every=2, eval_batches=2))


def _split(tensors):
    lm = {k: v for k, v in tensors.items() if not k.startswith("metacog.")}
    head = {k: v for k, v in tensors.items() if k.startswith("metacog.")}
    return lm, head


def test_joint_training_saves_head_and_logs_metacog(joint):
    lm, head = _split(weights(joint.final_checkpoint))
    assert {"metacog.confidence_proj.weight", "metacog.error_classifier.weight",
            "metacog.termination_proj.bias"} <= head.keys()
    with safe_open(str(joint.final_checkpoint), framework="pt") as f:
        config = json.loads(f.metadata()["metacog_config"])
    assert config["hidden_size"] == 64 and config["loss_weight"] == 0.5
    log = json.loads(joint.log_path.read_text())
    for entry in log["steps"]:
        assert entry["metacog_loss"] > 0 and 0 < entry["metacog_confidence"] < 1
        assert 0 <= entry["metacog_accuracy"] <= 1
    assert [e["step"] for e in log["evals"]][:2] == [2, 4]
    assert all(0 <= e["metacog_ece"] <= 1 and 0 <= e["metacog_mean_confidence"] <= 1 for e in log["evals"])


def test_checkpoint_splits_head_and_model_loads_without_it(joint):
    ckpt = read_checkpoint(joint.final_checkpoint)
    assert ckpt.has_metacog and not any(k.startswith("metacog.") for k in ckpt.state_dict)
    model = ckpt.build_model()  # strict load: no unexpected metacog keys
    full = weights(joint.final_checkpoint)
    model.load_exported_state_dict(full)  # metacog.* keys are ignored by the model itself
    head = load_head(ckpt)
    assert torch.equal(head.confidence_proj.weight, full["metacog.confidence_proj.weight"])


def test_metacog_only_freezes_the_model_and_trains_the_head(tmp_path, joint, text):
    result = train(run_config(text, tmp_path / "only", max_steps=3, save_every=0, metacog_only=True,
                              model_size="small",  # ignored: the frozen model is the checkpoint's
                              resume=str(joint.final_checkpoint)))
    assert result.steps == 3
    lm_before, head_before = _split(weights(joint.final_checkpoint))
    lm_after, head_after = _split(weights(result.final_checkpoint))
    assert_bit_identical(lm_before, lm_after)
    assert head_before.keys() == head_after.keys()
    assert any(not torch.equal(head_before[k], head_after[k]) for k in head_before)
    meta = json.loads((tmp_path / "only" / "checkpoint-final.state.json").read_text())
    names = [n for g in meta["optimizer"]["param_groups"] for n in g["param_names"]]
    assert names and all(n.startswith("metacog.") for n in names)


def test_metacog_only_needs_resume(cli, text, tmp_path):
    code, _, err = cli("train", "--dataset", text, "--tokenizer", "byte", "--model-size", "nano", "--metacog-only",
                       "--output-dir", tmp_path)
    assert code != 0 and "Error: --metacog-only" in err


def test_exact_resume_with_metacog_is_bit_identical(tmp_path, text):
    full = train(run_config(text, tmp_path / "full", max_steps=6, save_every=3, metacog=True))
    resumed = train(run_config(text, tmp_path / "resumed", max_steps=6, save_every=3, metacog=True,
                               resume=str(tmp_path / "full" / "checkpoint-3.safetensors")))
    assert resumed.steps == 6
    assert_bit_identical(weights(full.final_checkpoint), weights(resumed.final_checkpoint))


def test_resume_across_head_presence(tmp_path, joint, text):
    """A head checkpoint resumes with metacog off (head dropped); a plain one gains a fresh head.

    (A resume inherits the run's recorded settings, --metacog included, so turning it off is explicit.)"""
    plain = train(run_config(text, tmp_path / "plain", max_steps=5, save_every=0, metacog=False,
                             resume=str(joint.output_dir / "checkpoint-4.safetensors")))
    assert plain.steps == 5 and not _split(weights(plain.final_checkpoint))[1]
    again = train(run_config(text, tmp_path / "again", max_steps=6, save_every=0, metacog=True,
                             resume=str(plain.final_checkpoint)))
    assert again.steps == 6 and _split(weights(again.final_checkpoint))[1]


def test_generate_loads_checkpoints_with_and_without_head(cli, joint, tmp_path, text):
    code, out, err = cli("generate", "--model", joint.final_checkpoint, "--prompt", "the", "--max-tokens", "5",
                         "--seed", "1")
    assert code == 0, err
    plain = train(run_config(text, tmp_path / "plain", max_steps=2, save_every=0))
    code, _, err = cli("generate", "--model", plain.final_checkpoint, "--prompt", "the", "--max-tokens", "5")
    assert code == 0, err


def test_metacog_eval_json(cli, joint, text):
    code, out, err = cli("metacog", "eval", "--model", joint.output_dir, "--dataset", text, "--seq-len", "16",
                         "--batch-size", "4", "--max-batches", "3", "--json")
    assert code == 0, err
    result = json.loads(out)
    assert {"ece", "auroc", "accuracy", "mean_confidence", "count", "lm_loss", "batches"} <= result.keys()
    assert result["count"] == 3 * 4 * 16 and result["batches"] == 3
    assert 0 <= result["ece"] <= 1 and 0 <= result["accuracy"] <= 1 and 0 < result["mean_confidence"] < 1
    assert result["auroc"] is None or 0 <= result["auroc"] <= 1
    assert math.isfinite(result["lm_loss"])


def test_metacog_eval_table_uses_the_recorded_seq_len(cli, joint, text):
    code, out, err = cli("metacog", "eval", "--model", joint.final_checkpoint, "--dataset", text,
                         "--max-batches", "1")
    assert code == 0, err
    assert "expected calibration error" in out and "seq-len 16" in err


def test_metacog_eval_without_head_is_one_error_line(cli, tmp_path, text):
    plain = train(run_config(text, tmp_path / "plain", max_steps=1, save_every=0))
    code, out, err = cli("metacog", "eval", "--model", plain.final_checkpoint, "--dataset", text)
    lines = [line for line in err.splitlines() if line.startswith("Error:")]
    assert code != 0 and out == "" and len(lines) == 1 and "no metacog head" in lines[0]


def test_metacog_eval_flags_snapshot(cli):
    import re

    code, out, _ = cli("metacog", "eval", "--help")
    assert code == 0
    flags = set(re.findall(r"(--[a-z][a-z0-9-]+)", out)) - {"--help", "--metacog"}  # --metacog: in a help text
    assert flags == {"--model", "--dataset", "--format", "--seq-len", "--batch-size", "--max-batches",
                     "--tokenizer", "--device", "--json"}


def test_generate_metacog_prints_text_and_a_summary(cli, joint):
    code, out, err = cli("generate", "--model", joint.final_checkpoint, "--prompt", "the river", "--metacog",
                         "--max-tokens", "12", "--seed", "3", "--temperature", "0")
    assert code == 0, err
    assert out.startswith("the river")  # plain text (not a TTY): no escape codes
    assert "\x1b[" not in out
    line = [x for x in err.splitlines() if x.startswith("metacog:")]
    assert len(line) == 1 and "tokens, mean confidence" in line[0] and "resampled, stopped:" in line[0]


def metacog_summary(cli, checkpoint, prompt, max_tokens, *flags):
    """The `metacog:` summary line of a greedy `generate --metacog` run that must succeed."""
    code, _, err = cli("generate", "--model", checkpoint, "--prompt", prompt, "--metacog",
                       "--max-tokens", str(max_tokens), "--temperature", "0", *flags)
    assert code == 0, err
    return next(x for x in err.splitlines() if x.startswith("metacog:"))


def test_generate_metacog_threshold_flags(cli, joint):
    summary = metacog_summary(cli, joint.final_checkpoint, "the river", 8, "--regulation-threshold", "1")
    assert " 8 resampled" in summary  # every span is weak: all re-drawn
    for flag in ("--regulation-threshold", "--confidence-threshold"):
        code, _, err = cli("generate", "--model", joint.final_checkpoint, "--prompt", "x", "--metacog", flag, "1.5")
        assert code != 0 and f"{flag} must be in [0, 1], got 1.5" in err


def test_generate_metacog_needs_a_head_and_a_prompt(cli, tmp_path, joint, text):
    plain = train(run_config(text, tmp_path / "plain", max_steps=1, save_every=0))
    code, _, err = cli("generate", "--model", plain.final_checkpoint, "--prompt", "the", "--metacog")
    assert code != 0 and "no metacog head" in err
    code, _, err = cli("generate", "--model", joint.final_checkpoint, "--interactive", "--metacog")
    assert code != 0 and "--metacog works with --prompt" in err


@pytest.mark.slow
def test_generate_metacog_stops_earlier_on_an_easy_prompt_than_on_a_hard_one(cli, tmp_path):
    """The README's recipe (nano, demo corpus, 800 steps with --metacog; ~40 s): the end of a begun
    sentence is easy - the head is confident and one sentence satisfices -, random characters are
    hard - the head is not, spans are re-drawn and writing goes on to --max-tokens."""
    result = train(run_config("demo", tmp_path / "run", tokenizer="auto", metacog=True, max_steps=800,
                              seq_len=128, batch_size=16, lr=1e-3, dtype="bf16", save_every=0,
                              log_every=100))

    def complete(prompt):
        summary = metacog_summary(cli, result.final_checkpoint, prompt, 60)
        return int(summary.split()[1]), summary.rsplit("stopped: ", 1)[1].split()[0], summary

    easy = [complete(p) for p in ("The cat sleeps in the", "My brother will find the map next",
                                  "Le professeur est fier le")]
    hard = [complete(p) for p in ("Xq zv jkw plo brrt", "iy+CEs(5lkO$!nM)L{p)", "%EB].1-J5\"[?`TkP;o")]
    assert [reason for _, reason, _ in easy] == ["satisficed"] * 3, easy
    assert all(tokens <= 3 for tokens, _, _ in easy), easy  # a word and its full stop
    assert [reason for _, reason, _ in hard] == ["max_tokens"] * 3, hard

"""Accumulation, the NaN/Inf guard, evaluation, best checkpoint, rotation, schedules, f16."""

from __future__ import annotations

import json

import pytest
import torch

from tests.train.conftest import make_text, run_config, weights
import vesper_core.model as training  # the model computes the loss: its F is patched
from vesper_cli.engine.trainer import TrainingDivergedError, train


def test_grad_accum_4x2_equals_batch_8(tmp_path, text_file):
    a = train(run_config(text_file, tmp_path / "a", max_steps=3, batch_size=8, optimizer="adamw"))
    b = train(run_config(text_file, tmp_path / "b", max_steps=3, batch_size=2, grad_accum=4, optimizer="adamw"))
    wa, wb = weights(a.final_checkpoint), weights(b.final_checkpoint)
    for key in wa:
        torch.testing.assert_close(wa[key], wb[key], atol=2e-6, rtol=1e-5)
    la = json.loads(a.log_path.read_text())["steps"]
    lb = json.loads(b.log_path.read_text())["steps"]
    for x, y in zip(la, lb):
        assert abs(x["loss"] - y["loss"]) < 1e-5


class _NaNLoss:
    """Wraps torch.nn.functional (as the model sees it) so that chosen cross-entropy calls return NaN."""

    def __init__(self, bad_calls):
        self.bad_calls, self.calls = set(bad_calls), 0

    def __getattr__(self, name):
        return getattr(torch.nn.functional, name)

    def cross_entropy(self, *args, **kwargs):
        self.calls += 1
        out = torch.nn.functional.cross_entropy(*args, **kwargs)
        return out * float("nan") if self.calls in self.bad_calls or "all" in self.bad_calls and self.calls > 2 else out


def test_non_finite_loss_skips_the_step_and_is_logged(tmp_path, text_file, monkeypatch):
    monkeypatch.setattr(training, "F", _NaNLoss({3, 4}))
    result = train(run_config(text_file, tmp_path / "o", max_steps=6))
    log = json.loads(result.log_path.read_text())
    assert [s["step"] for s in log["steps"]] == [1, 2, 3, 4, 5, 6]
    assert [e["after_step"] for e in log["skipped_steps"]] == [2, 2]
    assert all(e["reason"] == "non-finite loss" for e in log["skipped_steps"])
    assert all(s["loss"] == s["loss"] for s in log["steps"])  # no NaN reached the weights


def test_skipped_step_leaves_weights_and_optimizer_untouched(tmp_path, text_file, monkeypatch):
    """Stop right after a skipped step: weights and optimizer state equal a run that never saw that batch."""
    from safetensors.torch import load_file

    from tests.train.conftest import assert_bit_identical
    from vesper_cli.engine.control import StopControl
    from vesper_cli.engine.observer import TrainObserver

    clean = train(run_config(text_file, tmp_path / "clean", max_steps=1, save_every=0))
    control = StopControl()

    class StopOnSkip(TrainObserver):
        def on_message(self, message):
            if "skipped" in message:
                control.request_stop("test")

    monkeypatch.setattr(training, "F", _NaNLoss({2}))
    skipped = train(run_config(text_file, tmp_path / "nan", max_steps=5, save_every=0), StopOnSkip(), control)
    assert skipped.steps == 1 and skipped.final_checkpoint.name == "checkpoint-emergency-step1.safetensors"
    assert_bit_identical(weights(clean.final_checkpoint), weights(skipped.final_checkpoint))
    state = lambda d, n: {k: v for k, v in load_file(str(d / n)).items() if k.startswith("optim.")}  # noqa: E731
    assert_bit_identical(state(tmp_path / "clean", "checkpoint-final.state.safetensors"),
                         state(tmp_path / "nan", "checkpoint-emergency-step1.state.safetensors"))


def test_divergence_stops_with_error_and_checkpoint(tmp_path, text_file, monkeypatch):
    monkeypatch.setattr(training, "F", _NaNLoss({"all"}))
    with pytest.raises(TrainingDivergedError, match="--max-bad-steps 3"):
        train(run_config(text_file, tmp_path / "o", max_steps=50, max_bad_steps=3))
    assert (tmp_path / "o" / "checkpoint-2.safetensors").is_file()
    assert (tmp_path / "o" / "checkpoint-2.state.json").is_file()


def test_eval_logs_val_loss_and_keeps_best(tmp_path, text_file):
    val = make_text(tmp_path / "val.txt", lines=60)
    result = train(run_config(text_file, tmp_path / "o", max_steps=8, eval_every=4, val_dataset=str(val)))
    log = json.loads(result.log_path.read_text())
    assert [e["step"] for e in log["evals"]] == [4, 8]  # the final eval is not repeated at step 8
    assert all(e["val_loss"] > 0 and e["val_ppl"] > 1 for e in log["evals"])
    assert (tmp_path / "o" / "checkpoint-best.safetensors").is_file()


def test_keep_last_rotates_periodic_checkpoints(tmp_path, text_file):
    train(run_config(text_file, tmp_path / "o", max_steps=10, save_every=2, keep_last=2))
    periodic = sorted(p.name for p in (tmp_path / "o").glob("checkpoint-[0-9]*.safetensors") if ".state" not in p.name)
    assert periodic == ["checkpoint-10.safetensors", "checkpoint-8.safetensors"]
    assert not (tmp_path / "o" / "checkpoint-6.state.json").exists()
    assert (tmp_path / "o" / "checkpoint-best.safetensors").is_file()  # by training loss without a val set


def test_warmup_then_cosine_schedule_in_the_log(tmp_path, text_file):
    result = train(run_config(text_file, tmp_path / "o", max_steps=10, optimizer="adamw", lr=1e-3,
                              warmup_steps=4, lr_schedule="cosine"))
    lrs = [s["lr"] for s in json.loads(result.log_path.read_text())["steps"]]
    assert lrs[0] > 0 and lrs[0] < lrs[3]  # warm-up never starts at exactly 0
    assert abs(max(lrs) - 1e-3) < 1e-12
    assert lrs[-1] < lrs[5] and lrs[-1] >= 1e-4 - 1e-12


def test_f16_trains_with_grad_scaler(tmp_path, text_file):
    result = train(run_config(text_file, tmp_path / "o", max_steps=3, dtype="f16"))
    meta = json.loads((tmp_path / "o" / "checkpoint-final.state.json").read_text())
    assert meta["scaler"] is not None and meta["scaler"]["scale"] > 0
    assert result.steps == 3


@pytest.mark.parametrize("dtype", ["f32", "bf16"])
def test_chunked_loss_matches_standard(tmp_path, text_file, dtype):
    """The fused linear + CE path trains like the plain one (same losses, close weights)."""
    runs = {}
    for loss in ("standard", "chunked"):
        result = train(run_config(text_file, tmp_path / loss, max_steps=4, loss=loss, dtype=dtype,
                                  entropy_signal="logits"))
        runs[loss] = json.loads(result.log_path.read_text())["steps"]
    tol = 1e-4 if dtype == "f32" else 3e-2
    for a, b in zip(runs["standard"], runs["chunked"]):
        assert abs(a["loss"] - b["loss"]) < tol, (a, b)
        assert abs(a["entropy_scale"] - b["entropy_scale"]) < tol


def test_sparse_params_pattern_marks_the_sparse_group(tmp_path, text_file):
    """--sparse-aware --sparse-params PATTERN: the matching parameters form Velvet's sparse group (whose exact
    zeros Velvet keeps at zero, tests/optim); a pattern that matches nothing is one clear error."""
    from vesper_cli.engine.trainer import build_optimizer_for
    from vesper_core.model import VesperLM
    from vesper_core.presets import model_config

    cfg = run_config(text_file, tmp_path / "o", optimizer="velvet", sparse_aware=True,
                     sparse_params="layers.*.attention.q_proj.weight")
    model = VesperLM(model_config("nano", vocab_size=257))
    groups = build_optimizer_for(cfg, model, None, 257).param_groups
    sparse = [g for g in groups if g.get("sparse")]
    assert len(sparse) == 1 and all(".attention.q_proj.weight" in n for n in sparse[0]["param_names"])

    bad = run_config(text_file, tmp_path / "o", optimizer="velvet", sparse_params="layers.*.nothing")
    with pytest.raises(Exception, match="--sparse-params 'layers.\\*.nothing' matches no trainable parameter"):
        build_optimizer_for(bad, model, None, 257)


def test_sparse_params_from_the_command_line(tmp_path, text_file, cli):
    out = tmp_path / "run"
    code, _, err = cli("train", "--dataset", text_file, "--tokenizer", "byte", "--model-size", "nano", "--seq-len", "16",
                       "--max-steps", "2", "--dtype", "f32", "--output-dir", out, "--sparse-aware",
                       "--sparse-params", "layers.*.attention.q_proj.weight")
    assert code == 0, err
    code, _, err = cli("train", "--dataset", text_file, "--tokenizer", "byte", "--model-size", "nano", "--max-steps",
                       "1", "--output-dir", tmp_path / "bad", "--sparse-params", "nope.*")
    assert code != 0 and err.count("Error:") == 1 and "--sparse-params 'nope.*'" in err

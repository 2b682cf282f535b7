"""Exact resume: 2N steps in one run == N steps + resume for N more, bit for bit (CPU, f32)."""

from __future__ import annotations

import json
import shutil

import pytest

from tests.train.conftest import assert_bit_identical, run_config, weights
from vesper_cli.engine.control import StopControl
from vesper_cli.engine.observer import TrainObserver
from vesper_cli.engine.trainer import train


class StopAt(TrainObserver):
    def __init__(self, control: StopControl, step: int):
        self.control, self.step = control, step

    def on_step(self, metrics) -> None:
        if metrics.step == self.step:
            self.control.request_stop("test")


@pytest.mark.parametrize("optimizer", ["velvet", "adamw"])
def test_resume_from_periodic_checkpoint_is_bit_identical(tmp_path, text_file, optimizer):
    full = train(run_config(text_file, tmp_path / "full", max_steps=20, save_every=10, optimizer=optimizer,
                            lr_schedule="cosine", warmup_steps=3))
    resumed = train(run_config(text_file, tmp_path / "resumed", max_steps=20, save_every=10, optimizer=optimizer,
                               lr_schedule="cosine", warmup_steps=3,
                               resume=str(tmp_path / "full" / "checkpoint-10.safetensors")))
    assert resumed.steps == 20
    assert_bit_identical(weights(full.final_checkpoint), weights(resumed.final_checkpoint))


def test_stop_then_resume_matches_uninterrupted_run(tmp_path, text_file):
    """An emergency stop mid-epoch, then --resume of the run folder, lands on the same weights."""
    reference = train(run_config(text_file, tmp_path / "ref", max_steps=24, save_every=0, grad_accum=2,
                                 lr_schedule="cosine"))
    control = StopControl()
    stopped = train(run_config(text_file, tmp_path / "run", max_steps=24, save_every=0, grad_accum=2,
                               lr_schedule="cosine"), StopAt(control, 9), control)
    assert stopped.stopped_by == "test" and stopped.steps == 9
    assert stopped.final_checkpoint.name == "checkpoint-emergency-step9.safetensors"
    assert (tmp_path / "run" / "checkpoint-emergency-step9.state.safetensors").is_file()
    resumed = train(run_config(text_file, tmp_path / "run", max_steps=24, save_every=0, grad_accum=2,
                               lr_schedule="cosine", resume=str(tmp_path / "run")))
    assert_bit_identical(weights(reference.final_checkpoint), weights(resumed.final_checkpoint))
    log = json.loads((tmp_path / "run" / "training_log.json").read_text())
    assert [s["step"] for s in log["steps"]] == list(range(1, 25)), "duplicate or missing steps after resume"
    ref_log = json.loads((tmp_path / "ref" / "training_log.json").read_text())
    assert [s["loss"] for s in log["steps"]] == [s["loss"] for s in ref_log["steps"]]
    assert [s["entropy_scale"] for s in log["steps"]] == [s["entropy_scale"] for s in ref_log["steps"]]


def test_resume_state_holds_optimizer_scales_rng_and_position(tmp_path, text_file):
    train(run_config(text_file, tmp_path / "r", max_steps=6, save_every=6))
    meta = json.loads((tmp_path / "r" / "checkpoint-6.state.json").read_text())
    assert meta["step"] == 6 and meta["loader"]["index"] > 0
    group = meta["optimizer"]["param_groups"][0]
    assert 0.7 <= group["entropy_scale"] <= 1.3 and 0.7 <= group["ppl_scale"] <= 1.3
    assert {"python", "numpy"} <= set(meta["rng"])
    from safetensors import safe_open

    with safe_open(str(tmp_path / "r" / "checkpoint-6.state.safetensors"), framework="pt") as f:
        keys = set(f.keys())
    assert "rng.torch_cpu" in keys and any(k.endswith(".exp_avg") for k in keys)


def test_weights_only_checkpoint_resumes_the_rust_way(tmp_path, text_file):
    train(run_config(text_file, tmp_path / "a", max_steps=5, save_every=5))
    rust_dir = tmp_path / "rust"
    rust_dir.mkdir()
    shutil.copy(tmp_path / "a" / "checkpoint-5.safetensors", rust_dir / "checkpoint-5.safetensors")
    messages = []

    class Collect(TrainObserver):
        def on_start(self, info):
            messages.extend(info.notes)

    result = train(run_config(text_file, tmp_path / "b", max_steps=8,
                              resume=str(rust_dir / "checkpoint-5.safetensors")), Collect())
    assert result.steps == 8
    assert any("fresh optimizer" in m for m in messages)
    log = json.loads((tmp_path / "b" / "training_log.json").read_text())
    assert [s["step"] for s in log["steps"]] == [6, 7, 8]

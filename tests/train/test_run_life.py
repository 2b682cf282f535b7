"""A run's whole life (issue 12): failed commands write nothing, one run per folder, resume from the
recorded config, verified checkpoints, a live event log."""

from __future__ import annotations

import hashlib
import json
import math
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from tests.train.conftest import SMALL, run_config, weights
from vesper_cli.engine.control import StopControl
from vesper_cli.engine.observer import TrainObserver
from vesper_cli.engine.run_config import build_run_config
from vesper_cli.engine.trainer import train
from vesper_core.checkpoint import read_checkpoint
from vesper_core.errors import CheckpointError, ConfigError, VesperError


def snapshot(root: Path) -> dict[str, str]:
    """Every file and folder under ``root`` with its content hash: 'nothing changed on disk'."""
    return {str(p.relative_to(root)): (hashlib.sha256(p.read_bytes()).hexdigest() if p.is_file() else "dir")
            for p in sorted(root.rglob("*"))}


@pytest.fixture
def finished_run(tmp_path, text_file) -> Path:
    out = tmp_path / "run"
    train(run_config(text_file, out, max_steps=6, save_every=3))
    return out


def test_a_failing_new_run_creates_nothing(tmp_path, text_file):
    before = snapshot(tmp_path)
    for bad in (dict(dataset=str(tmp_path / "missing.txt")), dict(seq_len=4096), dict(vocab_size=10),
                dict(eval_every=2)):
        flags = {**SMALL, "dataset": str(text_file), "output_dir": str(tmp_path / "new" / "run"), **bad}
        with pytest.raises(VesperError):
            train(build_run_config(flags))
        assert snapshot(tmp_path) == before, bad


def test_a_failing_resume_changes_nothing_in_the_run(tmp_path, finished_run, text_file):
    before = snapshot(tmp_path)
    other_tok = tmp_path / "other.json"
    from vesper_data.tokenizers import train_bpe

    train_bpe([text_file.read_text()], 300).save(other_tok)
    before = snapshot(tmp_path)
    with pytest.raises(CheckpointError, match="not the one"):  # a different tokenizer: refused, not written
        train(build_run_config({"resume": str(finished_run), "tokenizer": str(other_tok), "max_steps": 9}))
    with pytest.raises(ConfigError, match="not beyond"):  # --max-steps below the checkpoint's step
        train(build_run_config({"resume": str(finished_run), "max_steps": 4}))
    with pytest.raises(ConfigError, match="nothing to train"):  # already finished
        train(build_run_config({"resume": str(finished_run)}))
    with pytest.raises(CheckpointError, match="pass --optimizer velvet"):  # no class names in the message
        train(build_run_config({"resume": str(finished_run), "max_steps": 9, "optimizer": "adamw"}))
    assert snapshot(tmp_path) == before


def test_a_used_folder_refuses_a_new_run_and_overwrite_replaces_it(tmp_path, finished_run, text_file):
    before = snapshot(tmp_path)
    with pytest.raises(ConfigError, match=r"--resume .*--overwrite"):
        train(run_config(text_file, finished_run, max_steps=2))
    assert snapshot(tmp_path) == before
    train(run_config(text_file, finished_run, max_steps=2, overwrite=True, save_every=0))
    names = {p.name for p in finished_run.iterdir()}
    assert "checkpoint-3.safetensors" not in names and "checkpoint-final.safetensors" in names
    log = json.loads((finished_run / "training_log.json").read_text())
    assert [s["step"] for s in log["steps"]] == [1, 2]


def test_resume_dir_alone_continues_with_the_recorded_config(tmp_path, finished_run, text_file):
    cfg = build_run_config({"resume": str(finished_run), "max_steps": 9, "batch_size": 8})
    assert cfg.train.output_dir == str(finished_run)  # the run's own folder, not ./checkpoints
    assert cfg.model.model_size == "nano" and cfg.data.dataset == str(text_file) and cfg.data.tokenizer == "byte"
    assert cfg.train.dtype == "f32" and cfg.data.seq_len == 16
    assert any("--batch-size 8" in n and "4" in n for n in cfg.notes)  # a change of the run is reported
    assert not any("--max-steps" in n and "batch" in n for n in cfg.notes)
    seen = []

    class Collect(TrainObserver):
        def on_start(self, info):
            seen.extend(info.notes)

    result = train(cfg, Collect())
    assert result.steps == 9 and any("--batch-size 8" in n for n in seen)
    log = json.loads((finished_run / "training_log.json").read_text())
    assert [s["step"] for s in log["steps"]] == list(range(1, 10))


def test_resume_without_flags_is_bit_identical_to_a_straight_run(tmp_path, text_file):
    straight = train(run_config(text_file, tmp_path / "straight", max_steps=8, save_every=0))
    control = StopControl()

    class StopAt(TrainObserver):
        def on_step(self, m):
            if m.step == 5:
                control.request_stop("SIGINT")

    stopped = train(run_config(text_file, tmp_path / "run", max_steps=8, save_every=0), StopAt(), control)
    assert stopped.stopped_by == "SIGINT" and stopped.steps == 5
    resumed = train(build_run_config({"resume": str(tmp_path / "run")}))
    assert resumed.steps == 8
    a, b = weights(straight.final_checkpoint), weights(resumed.final_checkpoint)
    assert all(torch.equal(a[k], b[k]) for k in a)


def _poison(path: Path) -> None:
    state = load_file(str(path))
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        meta = f.metadata()
    key = next(k for k, v in state.items() if v.is_floating_point())
    state[key] = torch.full_like(state[key], math.nan)
    save_file(state, str(path), metadata=meta)


def test_nan_weights_are_refused_on_load(tmp_path, finished_run):
    final = finished_run / "checkpoint-final.safetensors"
    _poison(final)
    with pytest.raises(CheckpointError, match="non-finite weights"):
        read_checkpoint(final)
    from vesper_cli.engine.generation import load_generator

    with pytest.raises(CheckpointError, match="non-finite"):
        load_generator(final)
    before = snapshot(tmp_path)
    with pytest.raises(CheckpointError, match="earlier checkpoint"):
        train(build_run_config({"resume": str(final), "max_steps": 9}))
    assert snapshot(tmp_path) == before


def test_generate_refuses_a_tokenizer_that_is_not_the_runs(tmp_path, finished_run, text_file):
    from vesper_cli.engine.generation import load_generator
    from vesper_data.tokenizers import train_bpe

    train_bpe([text_file.read_text()], 258).save(finished_run / "tokenizer.json")  # clobbered by someone
    with pytest.raises(CheckpointError, match="not the one"):
        load_generator(finished_run / "checkpoint-final.safetensors")


def test_live_log_is_written_at_every_log_step(tmp_path, text_file):
    out = tmp_path / "live"
    seen = []

    class Watch(TrainObserver):
        def on_step(self, m):
            if m.step == 4:  # log_every 2: step 2's entries are already on disk
                events = [json.loads(line) for line in (out / "events.jsonl").read_text().splitlines()]
                log = json.loads((out / "training_log.json").read_text())
                seen.append(([e["event"] for e in events], [s["step"] for s in log["steps"]]))
                try:
                    import matplotlib  # noqa: F401
                except ImportError:
                    return
                from vesper_cli.plots import plot_files

                png, _ = plot_files([out], tmp_path / "live.png")  # `vesper plot RUN_DIR` while it trains
                seen.append(png.stat().st_size)

    train(run_config(text_file, out, max_steps=6, save_every=0, log_every=2), Watch())
    kinds, steps = seen[0]
    assert kinds[0] == "start" and "step" in kinds and steps[-1] >= 2
    assert len(seen) == 1 or seen[1] > 0
    events = [json.loads(line) for line in (out / "events.jsonl").read_text().splitlines()]
    step_events = [e for e in events if e["event"] == "step"]
    assert [e["step"] for e in step_events] == [2, 4, 6]
    assert all("step_time_s" in e and "elapsed_s" in e and "loss" in e for e in step_events)
    assert events[-1]["event"] == "end"


def test_yaml_scientific_notation_is_a_number(tmp_path):
    run_file = tmp_path / "run.yaml"
    run_file.write_text("lr: 1e-3\nmax_steps: 5\nwarmup_steps: '10'\nmin_lr_ratio: 1e-1\n")
    cfg = build_run_config({}, run_file)
    assert cfg.optim.lr == 0.001 and cfg.optim.min_lr_ratio == 0.1 and cfg.optim.warmup_steps == 10
    for bad, why in (("lr: fast", "not a number"), ("lr: [1]", "not a number"), ("moe: maybe", "not true or false"),
                     ("batch_size: 4.5", "not a whole number")):
        run_file.write_text(bad + "\n")
        with pytest.raises(ConfigError, match=why):
            build_run_config({}, run_file)


def test_auto_tokenizer_never_asks_the_hub(tmp_path, text_file, monkeypatch):
    import vesper_data.tokenizers.resolve as resolve

    def no_hub(*a, **k):
        raise AssertionError("--tokenizer auto must not depend on the hub")

    monkeypatch.setattr(resolve, "load_from_hub", no_hub)
    result = train(run_config(text_file, tmp_path / "a", tokenizer="auto", max_steps=1, vocab_size=0))
    tok = json.loads((result.output_dir / "tokenizer.json").read_text())
    assert tok  # a BPE trained on the data


@pytest.mark.parametrize("sig,code", [("SIGINT", 130), ("SIGTERM", 143)])
def test_a_second_signal_keeps_the_log_and_exits_128_plus_signal(monkeypatch, sig, code):
    import signal

    import vesper_cli.engine.control as control_module

    def fake_exit(status):
        raise SystemExit(status)

    monkeypatch.setattr(control_module.os, "_exit", fake_exit)
    control = StopControl()
    flushed = []
    control.on_force_exit = lambda: flushed.append(True)
    control._handle(getattr(signal, sig), None)
    assert control.requested and not flushed
    with pytest.raises(SystemExit) as exit_info:
        control._handle(getattr(signal, sig), None)
    assert exit_info.value.code == code and flushed == [True]


def test_train_command_exit_code_follows_the_signal():
    from vesper_cli.commands.train import exit_code_for

    assert exit_code_for("SIGINT") == 130 and exit_code_for("SIGTERM") == 143 and exit_code_for("test") == 130


def test_tensorboard_writes_events_or_warns_once(tmp_path, text_file):
    messages = []

    class Collect(TrainObserver):
        def on_message(self, message):
            messages.append(message)

    train(run_config(text_file, tmp_path / "tb", max_steps=2, save_every=0, tensorboard=True), Collect())
    try:
        import tensorboard  # noqa: F401
    except ImportError:
        warnings = [m for m in messages if "tensorboard" in m]
        assert len(warnings) == 1 and "pip install 'vesper[tensorboard]'" in warnings[0]
    else:
        assert any((tmp_path / "tb" / "tensorboard").iterdir())


def test_a_stop_before_the_first_step_writes_nothing(tmp_path, text_file):
    control = StopControl()
    control.request_stop("SIGINT")
    result = train(run_config(text_file, tmp_path / "never", max_steps=5), control=control)
    assert result.stopped_by == "SIGINT" and result.final_checkpoint is None
    assert not (tmp_path / "never").exists()

"""Preemption and crashes: SIGTERM saves and resumes exactly; kill -9 mid-save never corrupts a checkpoint."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import torch

from tests.train.conftest import SMALL, assert_bit_identical, make_text, weights

ARGS = [f"--{k.replace('_', '-')}={v}" for k, v in SMALL.items()]


def _train_cmd(data: Path, out: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "vesper_cli", "train", "--dataset", str(data), "--output-dir", str(out),
            "--max-steps", "120", "--save-every", "0", *ARGS, *extra]


def test_sigterm_writes_emergency_checkpoint_and_resume_matches(tmp_path):
    data = make_text(tmp_path / "t.txt")
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    proc = subprocess.Popen(_train_cmd(data, tmp_path / "run"), stderr=subprocess.PIPE, text=True, env=env)
    lines = []
    for line in proc.stderr:  # wait until training is really under way
        lines.append(line)
        if line.startswith("step 20/"):
            break
    sent = time.monotonic()
    proc.send_signal(signal.SIGTERM)
    _, rest = proc.communicate(timeout=60)
    assert proc.returncode == 143, "".join(lines) + rest  # 128 + SIGTERM, after the emergency checkpoint
    assert "vesper train --resume" in rest and "done:" not in rest
    assert time.monotonic() - sent < 20
    emergency = sorted((tmp_path / "run").glob("checkpoint-emergency-step*.safetensors"))
    emergency = [p for p in emergency if ".state." not in p.name]
    assert len(emergency) == 1, list((tmp_path / "run").iterdir())
    stopped_at = int(emergency[0].stem.removeprefix("checkpoint-emergency-step"))
    assert 20 <= stopped_at < 120

    resumed = subprocess.run(_train_cmd(data, tmp_path / "run", "--resume", str(emergency[0])),
                             capture_output=True, text=True, env=env, timeout=300)
    assert resumed.returncode == 0, resumed.stderr
    straight = subprocess.run(_train_cmd(data, tmp_path / "straight"), capture_output=True, text=True, env=env,
                              timeout=300)
    assert straight.returncode == 0, straight.stderr
    assert_bit_identical(weights(tmp_path / "straight" / "checkpoint-final.safetensors"),
                         weights(tmp_path / "run" / "checkpoint-final.safetensors"))


_SLOW_SAVER = """
import sys, time, torch
import safetensors.torch as st
from vesper_core import checkpoint
from vesper_core.model import VesperLM
from vesper_core.presets import model_config

def slow_save(tensors, filename, metadata=None):
    with open(filename, "wb") as f:
        f.write(b"partial bytes of a checkpoint")
        f.flush()
    open(sys.argv[2], "w").close()   # tell the parent we are mid-write
    time.sleep(60)

checkpoint.save_file = slow_save
torch.manual_seed(1)
checkpoint.save_weights(sys.argv[1], VesperLM(model_config("nano", vocab_size=97)))
"""


def test_kill_9_during_save_leaves_previous_checkpoint_intact(tmp_path):
    from vesper_core.checkpoint import read_checkpoint, save_weights
    from vesper_core.model import VesperLM
    from vesper_core.presets import model_config

    target = tmp_path / "checkpoint-final.safetensors"
    torch.manual_seed(0)
    save_weights(target, VesperLM(model_config("nano", vocab_size=97)))
    before = weights(target)
    marker = tmp_path / "writing"
    child = subprocess.Popen([sys.executable, "-c", _SLOW_SAVER, str(target), str(marker)])
    deadline = time.monotonic() + 60
    while not marker.exists():
        assert time.monotonic() < deadline and child.poll() is None, "child never started writing"
        time.sleep(0.05)
    child.kill()  # SIGKILL: no cleanup handlers run
    child.wait()
    assert_bit_identical(before, weights(target))
    read_checkpoint(target)  # still loads as a checkpoint, config and all

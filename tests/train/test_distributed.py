"""DDP on CPU with 2 gloo ranks gives the single-process losses for the same global batch."""

from __future__ import annotations

import json
import os
import subprocess
import sys

from tests.train.conftest import SMALL, make_text

ARGS = [f"--{k.replace('_', '-')}={v}" for k, v in SMALL.items() if k != "batch_size"]


def test_two_gloo_ranks_match_single_process(tmp_path):
    data = make_text(tmp_path / "t.txt")
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    common = ["train", "--dataset", str(data), *ARGS, "--max-steps", "5", "--save-every", "0"]
    single = subprocess.run([sys.executable, "-m", "vesper_cli", *common, "--batch-size", "8",
                             "--output-dir", str(tmp_path / "single")], capture_output=True, text=True, env=env,
                            timeout=300)
    assert single.returncode == 0, single.stderr
    ddp = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                          "-m", "vesper_cli", *common, "--batch-size", "4", "--output-dir", str(tmp_path / "ddp")],
                         capture_output=True, text=True, env=env, timeout=300)
    assert ddp.returncode == 0, ddp.stderr[-3000:]
    one = json.loads((tmp_path / "single" / "training_log.json").read_text())["steps"]
    two = json.loads((tmp_path / "ddp" / "training_log.json").read_text())["steps"]
    assert [s["step"] for s in two] == [1, 2, 3, 4, 5]
    for a, b in zip(one, two):
        assert abs(a["loss"] - b["loss"]) < 1e-5, (a, b)
        assert abs(a["grad_norm"] - b["grad_norm"]) < 1e-4 * max(1.0, a["grad_norm"])
    # one set of files, written by rank 0
    assert (tmp_path / "ddp" / "checkpoint-final.safetensors").is_file()
    assert "DDP on 2 ranks (gloo)" in ddp.stderr


def test_resume_across_world_sizes(tmp_path):
    """A 2-rank checkpoint resumes in one process with the same global batch: no batch repeated or skipped."""
    data = make_text(tmp_path / "t.txt")
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    common = ["train", "--dataset", str(data), *ARGS, "--max-steps", "6", "--save-every", "3"]
    ddp = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                          "-m", "vesper_cli", *common, "--batch-size", "4", "--output-dir", str(tmp_path / "ddp")],
                         capture_output=True, text=True, env=env, timeout=300)
    assert ddp.returncode == 0, ddp.stderr[-3000:]
    resumed = subprocess.run([sys.executable, "-m", "vesper_cli", *common, "--batch-size", "8",
                              "--output-dir", str(tmp_path / "one"),
                              "--resume", str(tmp_path / "ddp" / "checkpoint-3.safetensors")],
                             capture_output=True, text=True, env=env, timeout=300)
    assert resumed.returncode == 0, resumed.stderr
    ref = json.loads((tmp_path / "ddp" / "training_log.json").read_text())["steps"]
    got = json.loads((tmp_path / "one" / "training_log.json").read_text())["steps"]
    assert [s["step"] for s in got] == [4, 5, 6]
    for a, b in zip(ref[3:], got):
        assert abs(a["loss"] - b["loss"]) < 1e-4, (a, b)


def test_fsdp_two_ranks_match_single_process_and_resume(tmp_path):
    data = make_text(tmp_path / "t.txt")
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    common = ["train", "--dataset", str(data), *ARGS, "--max-steps", "4", "--save-every", "2"]
    single = subprocess.run([sys.executable, "-m", "vesper_cli", *common, "--batch-size", "8",
                             "--output-dir", str(tmp_path / "single")], capture_output=True, text=True, env=env,
                            timeout=300)
    assert single.returncode == 0, single.stderr
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                "-m", "vesper_cli", *common, "--batch-size", "4", "--fsdp"]
    fsdp = subprocess.run([*torchrun, "--output-dir", str(tmp_path / "fsdp")], capture_output=True, text=True,
                          env=env, timeout=300)
    assert fsdp.returncode == 0, fsdp.stderr[-3000:]
    one = json.loads((tmp_path / "single" / "training_log.json").read_text())["steps"]
    two = json.loads((tmp_path / "fsdp" / "training_log.json").read_text())["steps"]
    for a, b in zip(one, two):
        assert abs(a["loss"] - b["loss"]) < 1e-5, (a, b)
    from vesper_core.checkpoint import read_checkpoint

    ckpt = read_checkpoint(tmp_path / "fsdp" / "checkpoint-final.safetensors")  # full, unsharded weights
    assert ckpt.state_dict["embeddings.weight"].shape == (257, 64)
    resumed = subprocess.run([*torchrun, "--output-dir", str(tmp_path / "fsdp"), "--resume",
                              str(tmp_path / "fsdp" / "checkpoint-2.safetensors"), "--max-steps", "4"],
                             capture_output=True, text=True, env=env, timeout=300)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    again = json.loads((tmp_path / "fsdp" / "training_log.json").read_text())["steps"]
    assert [s["step"] for s in again] == [1, 2, 3, 4]
    for a, b in zip(two, again):
        assert abs(a["loss"] - b["loss"]) < 1e-6, (a, b)


def test_fsdp_without_torchrun_is_a_clear_error(tmp_path, cli):
    data = make_text(tmp_path / "t.txt")
    code, _, err = cli("train", "--dataset", data, *ARGS, "--max-steps", "1", "--fsdp", "--output-dir", tmp_path / "o")
    assert code != 0 and "torchrun" in err and "Traceback" not in err


def test_lora_adapters_on_two_gloo_ranks_match_single_process(tmp_path):
    """Adapters under DDP: the frozen base is skipped by the reducer, the adapter gradients are averaged."""
    data = make_text(tmp_path / "t.txt")
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    base = subprocess.run([sys.executable, "-m", "vesper_cli", "train", "--dataset", str(data), *ARGS,
                           "--batch-size", "8", "--max-steps", "2", "--output-dir", str(tmp_path / "base")],
                          capture_output=True, text=True, env=env, timeout=300)
    assert base.returncode == 0, base.stderr
    common = ["train", "--dataset", str(data), *ARGS, "--max-steps", "4", "--save-every", "0", "--lr", "1e-2",
              "--init-from", str(tmp_path / "base"), "--finetune", "lora", "--lora-rank", "4"]
    single = subprocess.run([sys.executable, "-m", "vesper_cli", *common, "--batch-size", "8",
                             "--output-dir", str(tmp_path / "single")], capture_output=True, text=True, env=env,
                            timeout=300)
    assert single.returncode == 0, single.stderr
    ddp = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                          "-m", "vesper_cli", *common, "--batch-size", "4", "--output-dir", str(tmp_path / "ddp")],
                         capture_output=True, text=True, env=env, timeout=300)
    assert ddp.returncode == 0, ddp.stderr[-3000:]
    one = json.loads((tmp_path / "single" / "training_log.json").read_text())["steps"]
    two = json.loads((tmp_path / "ddp" / "training_log.json").read_text())["steps"]
    assert len(one) == len(two) == 4
    for a, b in zip(one, two):
        assert abs(a["loss"] - b["loss"]) < 1e-5, (a, b)
    from safetensors.torch import load_file

    saved = load_file(str(tmp_path / "ddp" / "checkpoint-final.safetensors"))
    assert saved and all(k.endswith((".lora_A", ".lora_B")) for k in saved)

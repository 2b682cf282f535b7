"""Bad resume / loop input: one clear error line, non-zero exit, nothing overwritten."""

from __future__ import annotations

import json
import shutil

import pytest

from tests.train.conftest import SMALL

ARGS = [f"--{k.replace('_', '-')}={v}" for k, v in SMALL.items()]


def _one_error(code, err, *needles):
    assert code != 0 and "Traceback" not in err
    lines = [l for l in err.splitlines() if l.startswith("Error:")]
    assert len(lines) == 1, err
    for needle in needles:
        assert needle in lines[0], (needle, lines[0])


@pytest.fixture
def run_dir(tmp_path, text_file, cli):
    code, _, err = cli("train", "--dataset", text_file, *ARGS, "--max-steps", "4", "--save-every", "4",
                       "--output-dir", tmp_path / "run")
    assert code == 0, err
    return tmp_path / "run"


def _train(cli, text_file, out, *extra):
    return cli("train", "--dataset", text_file, *ARGS, "--max-steps", "6", "--output-dir", out, *extra)


def test_resume_missing_file(cli, tmp_path, text_file):
    code, _, err = _train(cli, text_file, tmp_path / "o", "--resume", tmp_path / "missing.safetensors")
    _one_error(code, err, "missing.safetensors")


def test_resume_not_safetensors(cli, tmp_path, text_file):
    bad = tmp_path / "checkpoint-3.safetensors"
    bad.write_text("{not a checkpoint}")
    code, _, err = _train(cli, text_file, tmp_path / "o", "--resume", bad)
    _one_error(code, err, "checkpoint-3.safetensors")


def test_resume_other_model_size(cli, tmp_path, text_file, run_dir):
    args = [a if a != "--model-size=nano" else "--model-size=tiny" for a in ARGS]
    code, _, err = cli("train", "--dataset", text_file, *args, "--max-steps", "6", "--output-dir", tmp_path / "o",
                       "--resume", run_dir / "checkpoint-4.safetensors")
    _one_error(code, err, "different model", "hidden_size")


def test_resume_other_vocabulary(cli, tmp_path, text_file, run_dir):
    code, _, err = _train(cli, text_file, tmp_path / "o", "--resume", run_dir / "checkpoint-4.safetensors",
                          "--vocab-size", "300")
    _one_error(code, err, "vocab_size")


def test_resume_state_from_another_version(cli, tmp_path, text_file, run_dir):
    state = run_dir / "checkpoint-4.state.json"
    meta = json.loads(state.read_text())
    meta["vesper_state_format"] = 99
    meta["vesper_version"] = "9.9.9"
    state.write_text(json.dumps(meta))
    code, _, err = _train(cli, text_file, tmp_path / "o", "--resume", run_dir / "checkpoint-4.safetensors")
    _one_error(code, err, "format 99", "9.9.9")


def test_resume_does_not_overwrite_on_failure(cli, tmp_path, text_file, run_dir):
    before = {p.name: p.read_bytes() for p in run_dir.iterdir()}
    args = [a if a != "--model-size=nano" else "--model-size=tiny" for a in ARGS]
    code, _, _ = cli("train", "--dataset", text_file, *args, "--output-dir", run_dir,
                     "--resume", run_dir / "checkpoint-4.safetensors")
    assert code != 0
    after = {p.name: p.read_bytes() for p in run_dir.iterdir()}
    assert before == after


@pytest.mark.parametrize("extra,needle", [
    (("--grad-accum", "0"), "--grad-accum"),
    (("--eval-every", "5"), "--val-dataset"),
    (("--max-bad-steps", "0"), "--max-bad-steps"),
    (("--lr-schedule", "linear-ish"), "linear-ish"),
])
def test_invalid_loop_flags(cli, tmp_path, text_file, extra, needle):
    code, _, err = _train(cli, text_file, tmp_path / "o", *extra)
    _one_error(code, err, needle)


def test_output_dir_not_writable(cli, tmp_path, text_file):
    blocker = tmp_path / "file"
    blocker.write_text("a file where a folder should be")
    code, _, err = _train(cli, text_file, blocker / "out")
    _one_error(code, err, "--output-dir", "not writable")

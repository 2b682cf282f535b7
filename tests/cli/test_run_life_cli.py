"""Issue 12 as a new user meets it: exit codes, what is on disk before and after, what is printed."""

from __future__ import annotations

import io
import json
import os
import stat
import sys

import pytest

from tests.cli.conftest import run_subprocess

FAST = ("--model-size", "nano", "--seq-len", "16", "--batch-size", "4", "--dtype", "f32", "--tokenizer", "byte")


def _files(root):
    return sorted(str(p.relative_to(root)) for p in root.rglob("*"))


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    from vesper_cli.app import run

    root = tmp_path_factory.mktemp("life")
    data = root / "t.txt"
    data.write_text("the river runs past the old stone mill every morning.\n" * 60, encoding="utf-8")
    assert run(["train", "--dataset", str(data), *FAST, "--max-steps", "4", "--save-every", "2",
                "--output-dir", str(root / "run")]) == 0
    return root / "run"


def test_second_train_into_a_used_folder_refuses(run_dir, cli):
    before = _files(run_dir)
    code, _, err = cli("train", "--dataset", "demo", *FAST, "--max-steps", "2", "--output-dir", run_dir)
    assert code == 1 and "--resume" in err and "--overwrite" in err and "already holds a run" in err
    assert _files(run_dir) == before


def test_failed_train_leaves_no_folder(tmp_path, cli):
    code, _, err = cli("train", "--dataset", tmp_path / "nope.txt", *FAST, "--output-dir", tmp_path / "out")
    assert code != 0 and not (tmp_path / "out").exists()
    code, _, err = cli("train", "--dataset", "demo", *FAST, "--seq-len", "4096", "--output-dir", tmp_path / "out")
    assert code == 1 and "--seq-len 4096" in err and not (tmp_path / "out").exists()


def test_generate_refuses_more_tokens_than_the_context(run_dir, cli):
    code, out, err = cli("generate", "--model", run_dir, "--prompt", "the", "--max-tokens", "1500")
    assert code == 1 and "context" in err and "--max-tokens" in err and out == ""


def test_num_samples_separators_are_on_stdout(run_dir, cli):
    code, out, err = cli("generate", "--model", run_dir, "--prompt", "the", "--max-tokens", "3", "--num-samples",
                         "2", "--seed", "1")
    assert code == 0 and out.count("--- sample ") == 2 and "--- sample" not in err


def test_plot_writes_the_format_its_name_asks_for_and_follows_a_run_folder(run_dir, tmp_path, cli):
    pytest.importorskip("matplotlib")
    code, out, err = cli("plot", run_dir, "-o", tmp_path / "x.jpg")
    assert code == 0, err
    assert (tmp_path / "x.jpg").read_bytes()[:3] == b"\xff\xd8\xff"  # JPEG, not PNG bytes
    code, _, err = cli("plot", run_dir / "training_log.json", "-o", tmp_path / "x.bmpx")
    assert code == 1 and "unknown image type" in err and not (tmp_path / "x.bmpx").exists()


def test_plot_ema_is_bias_corrected():
    from vesper_cli.plots import ema

    smoothed = ema([4.0, 2.0], 0.9)
    assert smoothed[0] == pytest.approx(4.0) and smoothed[1] == pytest.approx((0.09 * 4 + 0.1 * 2) / 0.19)


@pytest.mark.skipif(os.geteuid() == 0, reason="root can write anywhere")
def test_unwritable_outputs_fail_first_with_one_line(tmp_path, cli):
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o500)
    data = tmp_path / "t.txt"
    data.write_text("hello world\n" * 50)
    try:
        for args in (("tokenizer", "train", "--dataset", data, "--vocab-size", "300", "--output", locked / "t.json"),
                     ("cache", "build", "--dataset", data, "--tokenizer", "byte", "--output-dir", locked / "c"),
                     ("train", "--dataset", data, *FAST, "--output-dir", locked / "run")):
            code, _, err = cli(*args)
            assert code == 1 and "not writable" in err and "unexpected" not in err, (args, err)
    finally:
        locked.chmod(0o700)


def test_outputs_under_a_file_fail_first_with_one_line(tmp_path, cli):
    blocker = tmp_path / "blocker"
    blocker.write_text("a file, not a folder")
    data = tmp_path / "t.txt"
    data.write_text("hello world\n" * 50)
    for args in (("tokenizer", "train", "--dataset", data, "--vocab-size", "300", "--output", blocker / "t.json"),
                 ("cache", "build", "--dataset", data, "--tokenizer", "byte", "--output-dir", blocker / "c"),
                 ("train", "--dataset", data, *FAST, "--output-dir", blocker / "run"),
                 ("benchmark", "--dataset", data, "--model-size", "nano", "--output", blocker / "r.json")):
        code, _, err = cli(*args)
        assert code == 1 and "is not writable" in err and "is a file" in err and "unexpected" not in err, (args, err)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["blocker", "t.txt"]


def test_cache_build_format_means_the_data_format(tmp_path, cli):
    data = tmp_path / "t.txt"
    data.write_text("hello world\n" * 50)
    code, _, err = cli("cache", "build", "--dataset", data, "--tokenizer", "byte", "--format", "compact",
                       "--output-dir", tmp_path / "c")
    assert code == 1 and "--layout compact" in err and not (tmp_path / "c").exists()
    code, _, err = cli("cache", "build", "--dataset", data, "--tokenizer", "byte", "--format", "text", "--layout",
                       "compact", "--output-dir", tmp_path / "c", "--name", "x")
    assert code == 0, err
    mask = os.umask(0)
    os.umask(mask)
    assert stat.S_IMODE((tmp_path / "c" / "x.bin").stat().st_mode) == 0o666 & ~mask


def test_progress_bar_keeps_step_eta_and_throughput_at_80_columns():
    from rich.console import Console

    from vesper_cli.engine.observer import RunInfo, StepMetrics
    from vesper_cli.progress import ConsoleTrainObserver

    buf = io.StringIO()
    console = Console(file=buf, width=80, force_terminal=True, color_system=None)
    obs = ConsoleTrainObserver(console=console)
    obs.on_start(RunInfo("nano", 1000, 257, "cpu", "f32", "velvet", "byte", 1000, 100, 500, 0))
    obs.on_step(StepMetrics(step=120, epoch=1, loss=2.3456, ppl=10.4, lr=3e-4, grad_norm=1.0, entropy_scale=1.0,
                            ppl_scale=1.0, tokens_per_sec=12345.0, elapsed_s=62.0, total_steps=500, eta_s=3723.0))
    obs._progress.refresh()
    obs._progress.stop()
    text = buf.getvalue()
    assert "120/500" in text and "2.3456" in text and "tok/s" in text and "1:02" in text and "1:02:03" in text


@pytest.mark.slow
@pytest.mark.parametrize("sig,code", [("SIGINT", 130), ("SIGTERM", 143)])
def test_interrupted_train_exits_128_plus_signal_after_its_checkpoint(tmp_path, sig, code):
    import signal
    import subprocess

    data = tmp_path / "t.txt"
    data.write_text("the river runs past the old stone mill every morning.\n" * 200, encoding="utf-8")
    cmd = [sys.executable, "-m", "vesper_cli", "train", "--dataset", str(data), *FAST, "--max-steps", "100000",
           "--save-every", "0", "--log-every", "1", "--output-dir", str(tmp_path / "run")]
    proc = subprocess.Popen(cmd, stderr=subprocess.PIPE, text=True, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    for line in proc.stderr:
        if line.startswith("step 5/"):
            break
    proc.send_signal(getattr(signal, sig))
    _, rest = proc.communicate(timeout=120)
    assert proc.returncode == code, rest
    assert "vesper train --resume" in rest and "done:" not in rest
    names = {p.name for p in (tmp_path / "run").iterdir()}
    assert any(n.startswith("checkpoint-emergency-step") for n in names) and "training_log.json" in names
    resumed = run_subprocess("train", "--resume", tmp_path / "run", "--max-steps", "12")
    assert resumed.returncode == 0, resumed.stderr

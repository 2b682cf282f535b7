"""End to end: `vesper train` writes the Rust-named files and learns; `vesper generate` reads them back."""

from __future__ import annotations

import json

import pytest
from safetensors import safe_open

from tests.cli.conftest import run_subprocess

FAST = ("--model-size", "nano", "--seq-len", "32", "--batch-size", "8", "--dtype", "f32", "--tokenizer", "byte")


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory):
    """One short run shared by the tests below (byte tokenizer: no downloads, no BPE training)."""
    from tests.cli.conftest import english_text as _  # noqa: F401  (fixture module import for clarity)

    root = tmp_path_factory.mktemp("run")
    text = root / "english.txt"
    text.write_text("\n".join(f"the cat sees the red house number {i % 7} every morning." for i in range(300)),
                    encoding="utf-8")
    out = root / "out"
    from vesper_cli.app import run

    code = run(["train", "--dataset", str(text), *FAST, "--max-steps", "60", "--save-every", "25",
                "--output-dir", str(out), "--seed", "3", "--lr", "3e-3"])
    assert code == 0
    return out


def test_train_writes_rust_named_files(trained_run):
    names = {p.name for p in trained_run.iterdir()}
    assert {"checkpoint-25.safetensors", "checkpoint-50.safetensors", "checkpoint-final.safetensors",
            "tokenizer.json", "training_log.json"} <= names
    assert any(n.startswith("checkpoint-epoch") for n in names)
    assert not any(n.endswith(".tmp") for n in names), "a temporary file was left behind"


def test_checkpoint_loads_alone(trained_run):
    with safe_open(str(trained_run / "checkpoint-final.safetensors"), framework="pt") as f:
        meta = f.metadata()
        keys = set(f.keys())
    config = json.loads(meta["model_config"])
    assert config["hidden_size"] == 64 and config["num_layers"] == 2 and config["vocab_size"] == 257
    assert meta["step"] == "60"
    assert "embeddings.weight" in keys and "lm_head.weight" not in keys  # tied: stored once


def test_training_log_has_rust_keys_and_loss_falls(trained_run):
    log = json.loads((trained_run / "training_log.json").read_text())
    assert log["optimizer"] == "velvet" and log["model_size"] == "nano"
    steps = log["steps"]
    assert [s["step"] for s in steps] == list(range(1, 61))
    for key in ("loss", "ppl", "lr", "tokens_per_sec", "grad_norm", "entropy_scale", "ppl_scale"):
        assert key in steps[0]
    first = sum(s["loss"] for s in steps[:5]) / 5
    last = sum(s["loss"] for s in steps[-5:]) / 5
    assert last < first - 1.0, (first, last)
    assert 0.7 <= steps[-1]["entropy_scale"] <= 1.3 and 0.7 <= steps[-1]["ppl_scale"] <= 1.3


def test_generate_greedy_is_deterministic(trained_run, cli):
    args = ("generate", "--model", trained_run / "checkpoint-final.safetensors", "--prompt", "the cat",
            "--temperature", "0", "--max-tokens", "20")
    code1, out1, err1 = cli(*args)
    code2, out2, _ = cli(*args)
    assert code1 == 0 and code2 == 0
    assert out1 == out2 and out1.startswith("the cat")
    assert out1.endswith("\n") and not out1[:-1].endswith((" ", "\n"))  # no whitespace padding (issue 12.11)
    assert "20 tokens" in err1 and "tok/s" in err1


def test_generate_from_run_folder(trained_run, cli):
    code, out, _ = cli("generate", "--model", trained_run, "--prompt", "the", "--max-tokens", "5", "--seed", "1")
    assert code == 0 and out.startswith("the")


def test_adamw_option_trains(tmp_path, english_text, cli):
    code, _, err = cli("train", "--dataset", english_text, *FAST, "--max-steps", "3", "--optimizer", "adamw",
                       "--output-dir", tmp_path / "o")
    assert code == 0, err
    assert json.loads((tmp_path / "o" / "training_log.json").read_text())["optimizer"] == "adamw"


def test_yaml_config_and_flag_precedence(tmp_path, english_text, cli):
    cfg = tmp_path / "run.yaml"
    cfg.write_text(f"dataset: {english_text}\nmodel_size: nano\nseq-len: 32\nbatch_size: 4\nmax_steps: 2\n"
                   f"tokenizer: byte\ndtype: f32\nmodel:\n  era_gamma: 0.2\n")
    code, _, err = cli("train", "--config", cfg, "--max-steps", "3", "--output-dir", tmp_path / "o")
    assert code == 0, err
    log = json.loads((tmp_path / "o" / "training_log.json").read_text())
    assert len(log["steps"]) == 3  # the flag beat the file
    with safe_open(str(tmp_path / "o" / "checkpoint-final.safetensors"), framework="pt") as f:
        assert json.loads(f.metadata()["model_config"])["era_gamma"] == 0.2


def test_moe_training_runs(tmp_path, english_text, cli):
    code, _, err = cli("train", "--dataset", english_text, *FAST, "--max-steps", "2", "--moe", "--num-experts", "4",
                       "--output-dir", tmp_path / "o")
    assert code == 0, err
    log = json.loads((tmp_path / "o" / "training_log.json").read_text())
    assert "aux_loss" in log["steps"][0]


def test_bf16_autocast_trains(tmp_path, english_text, cli):
    args = [a if a != "f32" else "bf16" for a in FAST]
    code, _, err = cli("train", "--dataset", english_text, *args, "--max-steps", "2", "--output-dir", tmp_path / "o")
    assert code == 0, err


def test_jsonl_dataset(tmp_path, cli):
    data = tmp_path / "d.jsonl"
    data.write_text("\n".join(json.dumps({"text": f"document number {i} is here."}) for i in range(200)))
    code, _, err = cli("train", "--dataset", data, *FAST, "--max-steps", "2", "--output-dir", tmp_path / "o")
    assert code == 0, err


def test_demo_dataset_needs_no_file(tmp_path, cli):
    code, _, err = cli("train", "--dataset", "demo", *FAST, "--max-steps", "2", "--output-dir", tmp_path / "o")
    assert code == 0, err


def test_non_tty_progress_prints_plain_lines(tmp_path, english_text):
    proc = run_subprocess("train", "--dataset", english_text, *FAST, "--max-steps", "4", "--log-every", "2",
                          "--output-dir", tmp_path / "o")
    assert proc.returncode == 0, proc.stderr
    assert "step 2/4 |" in proc.stderr and "tok/s" in proc.stderr and "elapsed | eta" in proc.stderr
    assert "\x1b[" not in proc.stderr  # no terminal control codes in a pipe


def test_written_files_get_normal_permissions(trained_run):
    import os
    import stat

    mask = os.umask(0)
    os.umask(mask)
    mode = stat.S_IMODE((trained_run / "checkpoint-final.safetensors").stat().st_mode)
    assert mode == 0o666 & ~mask

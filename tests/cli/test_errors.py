"""Bad input: one `Error:` line on stderr, a non-zero exit, no traceback."""

from __future__ import annotations

import json

import pytest

FAST = ("--model-size", "nano", "--seq-len", "16", "--batch-size", "2", "--dtype", "f32", "--tokenizer", "byte",
        "--max-steps", "1")


def _assert_one_error(code, err, *needles):
    assert code != 0
    assert "Traceback" not in err
    error_lines = [line for line in err.splitlines() if line.startswith("Error:")]
    assert len(error_lines) == 1, err
    for needle in needles:
        assert needle in error_lines[0], (needle, error_lines[0])


def test_missing_dataset(cli, tmp_path):
    code, _, err = cli("train", "--dataset", tmp_path / "nope.txt", *FAST, "--output-dir", tmp_path / "o")
    _assert_one_error(code, err, "nope.txt")


def test_empty_dataset(cli, tmp_path):
    (tmp_path / "empty.txt").write_text("")
    code, _, err = cli("train", "--dataset", tmp_path / "empty.txt", *FAST, "--output-dir", tmp_path / "o")
    _assert_one_error(code, err, "empty.txt")


def test_binary_dataset(cli, tmp_path):
    (tmp_path / "blob.txt").write_bytes(bytes(range(256)) * 50)
    code, _, err = cli("train", "--dataset", tmp_path / "blob.txt", *FAST, "--output-dir", tmp_path / "o")
    _assert_one_error(code, err, "blob.txt")


def test_invalid_jsonl_line_reports_line_number(cli, tmp_path):
    path = tmp_path / "bad.jsonl"
    path.write_text(json.dumps({"text": "ok"}) + "\n" + json.dumps({"text": "fine"}) + "\n{not json\n")
    code, _, err = cli("train", "--dataset", path, *FAST, "--output-dir", tmp_path / "o")
    _assert_one_error(code, err, "line 3")


def test_unknown_model_size_lists_choices(cli, tmp_path, english_text):
    code, _, err = cli("train", "--dataset", english_text, "--model-size", "smal", "--tokenizer", "byte",
                       "--output-dir", tmp_path / "o")
    _assert_one_error(code, err, "smal", "small", "tiny")


@pytest.mark.parametrize("flag,value", [("--lr", "0"), ("--lr", "-0.001"), ("--batch-size", "0"), ("--seq-len", "0")])
def test_non_positive_values(cli, tmp_path, english_text, flag, value):
    args = [a for a in FAST]
    if flag in args:
        i = args.index(flag)
        del args[i:i + 2]
    code, _, err = cli("train", "--dataset", english_text, *args, flag, value, "--output-dir", tmp_path / "o")
    _assert_one_error(code, err, value)


def test_unknown_yaml_key(cli, tmp_path, english_text):
    cfg = tmp_path / "run.yaml"
    cfg.write_text(f"dataset: {english_text}\nlearning_rate: 0.1\n")
    code, _, err = cli("train", "--config", cfg)
    _assert_one_error(code, err, "learning_rate", "lr")


def test_unreadable_checkpoint(cli, tmp_path):
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"this is not safetensors")
    code, _, err = cli("generate", "--model", bad, "--prompt", "hi")
    _assert_one_error(code, err, "bad.safetensors")


def test_missing_checkpoint(cli, tmp_path):
    code, _, err = cli("generate", "--model", tmp_path / "none.safetensors", "--prompt", "hi")
    _assert_one_error(code, err, "none.safetensors")


def test_resume_with_mismatched_model(cli, tmp_path, english_text):
    code, _, err = cli("train", "--dataset", english_text, *FAST, "--output-dir", tmp_path / "a")
    assert code == 0, err
    code, _, err = cli("train", "--dataset", english_text, *[a if a != "nano" else "tiny" for a in FAST],
                       "--resume", tmp_path / "a" / "checkpoint-final.safetensors", "--output-dir", tmp_path / "b")
    _assert_one_error(code, err, "different model")


def test_tokenizer_vocab_larger_than_model(cli, tmp_path, english_text):
    code, _, err = cli("train", "--dataset", english_text, *FAST, "--vocab-size", "100", "--output-dir", tmp_path / "o")
    _assert_one_error(code, err, "--vocab-size 100")


def test_debug_env_shows_traceback(tmp_path):
    from tests.cli.conftest import run_subprocess

    proc = run_subprocess("train", "--dataset", tmp_path / "nope.txt", env={"VESPER_DEBUG": "1"})
    assert proc.returncode != 0 and "Traceback" in proc.stderr


def test_usage_errors_exit_2_with_clicks_message(cli):
    code, _, err = cli("train", "stray-argument")
    assert code == 2 and "unexpected extra argument" in err and "please report" not in err
    code, _, err = cli("train", "--no-such-flag")
    assert code == 2 and "No such option" in err

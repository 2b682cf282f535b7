"""`vesper generate` beyond one prompt: stop strings, samples, prompt files, the REPL; the Python API."""

from __future__ import annotations

import re

import io

import pytest
import torch

from vesper_cli.engine.generation import SamplingConfig, held_back, load_generator, stop_index


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    """A nano model trained briefly on one repeated sentence (so greedy text is readable)."""
    from vesper_cli.app import run

    root = tmp_path_factory.mktemp("gen")
    text = root / "cat.txt"
    text.write_text("the cat sees the red house every morning.\n" * 200, encoding="utf-8")
    code = run(["train", "--dataset", str(text), "--model-size", "nano", "--seq-len", "32", "--batch-size", "8",
                "--dtype", "f32", "--tokenizer", "byte", "--max-steps", "40", "--save-every", "0",
                "--output-dir", str(root / "out"), "--lr", "5e-3", "--seed", "0"])
    assert code == 0
    return root / "out"


@pytest.fixture(scope="module")
def greedy_text(run_dir):
    gen = load_generator(run_dir)
    text = "".join(gen.stream("the cat", SamplingConfig(max_tokens=40, temperature=0, repetition_penalty=2.0)))
    assert len(set(text)) >= 5, text  # varied enough to pick a stop string from its middle
    return text


def test_stop_helpers():
    assert stop_index("abc STOP def", ["STOP", "def"]) == 4
    assert stop_index("abc", ["x"]) is None
    assert held_back("hello ST", ["STOP"]) == 2
    assert held_back("hello", ["STOP"]) == 0
    assert held_back("aab", ["abx", "b"]) == 2  # "ab" could begin "abx"


def test_stop_string_ends_generation_and_is_not_printed(run_dir, greedy_text, cli):
    assert len(greedy_text) >= 10, greedy_text
    stop = greedy_text[5:8]
    assert greedy_text.find(stop) == 5
    expected = greedy_text[:greedy_text.find(stop)]
    code, out, err = cli("generate", "--model", run_dir, "--prompt", "the cat", "--temperature", "0",
                         "--max-tokens", "40", "--repetition-penalty", "2", "--stop", stop, "--stop", "\x01never")
    assert code == 0, err
    assert out == "the cat" + expected + "\n"
    assert "tok/s" in err


def test_streamed_pieces_hold_back_a_possible_stop(run_dir, greedy_text):
    gen = load_generator(run_dir)
    stop = greedy_text[5:8]
    sampling = SamplingConfig(max_tokens=40, temperature=0, repetition_penalty=2.0, stop=(stop,))
    pieces = list(gen.stream("the cat", sampling))
    assert "".join(pieces) == greedy_text[:greedy_text.find(stop)]
    assert gen.stats["stopped_by"] == "stop"


def test_num_samples_are_seeded_and_different(run_dir, cli):
    args = ("generate", "--model", run_dir, "--prompt", "the", "--max-tokens", "12", "--num-samples", "3",
            "--seed", "7", "--temperature", "1.5")
    code, out, err = cli(*args)
    assert code == 0, err
    samples = [part.strip("\n") for part in re.split(r"--- sample \d/3 ---\n", out)[1:]]
    assert out.count("--- sample") == 3 and "--- sample" not in err  # separators on stdout: a script can split
    assert len(samples) == 3 and all(s.startswith("the") for s in samples)
    assert len(set(samples)) > 1
    _, out2, _ = cli(*args)
    assert out2 == out


def test_prompts_file_batches_equal_lengths(run_dir, tmp_path, cli):
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("the cat\nthe dog\n\nred\n", encoding="utf-8")
    code, out, err = cli("generate", "--model", run_dir, "--prompts-file", prompts, "--max-tokens", "6",
                         "--temperature", "0")
    assert code == 0, err
    parts = [p.strip("\n") for p in re.split(r"--- prompt \d/3 ---\n", out)[1:]]
    assert [p[:7] for p in parts[:2]] == ["the cat", "the dog"] and parts[2].startswith("red")
    assert "3 completions in 2 batch(es)" in err  # "the cat" and "the dog" share a batch


def test_batched_greedy_equals_single(run_dir):
    gen = load_generator(run_dir)
    sampling = SamplingConfig(max_tokens=10, temperature=0)
    single = "".join(gen.stream("the dog", sampling))
    batch = gen.generate_batch(["the cat", "the dog"], sampling)
    assert batch[1].text == single and batch[1].prompt_index == 1


def test_interactive_repl(run_dir, cli, monkeypatch):
    monkeypatch.setattr("sys.stdin", io.StringIO("the cat\n\n   \nred\n"))
    code, out, err = cli("generate", "--model", run_dir, "--interactive", "--max-tokens", "5", "--temperature", "0")
    assert code == 0, err
    assert err.count(">>> ") == 5  # two prompts, two skipped blank lines, and the one that met EOF
    assert len(out.splitlines()) == 2
    assert err.count("tok/s") == 2


def test_exactly_one_prompt_source(run_dir, cli):
    code, _, err = cli("generate", "--model", run_dir)
    assert code != 0 and "exactly one of --prompt" in err
    code, _, err = cli("generate", "--model", run_dir, "--prompt", "x", "--interactive")
    assert code != 0 and "--prompt and --interactive" in err


def test_python_generate_api(run_dir):
    from vesper_core.generation import generate

    gen = load_generator(run_dir)
    ids = torch.tensor(gen.tokenizer.encode("the cat"))
    out = generate(gen.model, ids, max_new_tokens=6, temperature=0)
    assert out.shape == (len(ids) + 6,) and torch.equal(out[:len(ids)], ids)
    batch = generate(gen.model, ids[None].repeat(2, 1), max_new_tokens=6, temperature=0)
    assert batch.shape == (2, len(ids) + 6) and torch.equal(batch[0], out) and torch.equal(batch[1], out)

"""`vesper cache build/info`, `vesper train --cache/--streaming`, `vesper tokenizer train`, end to end."""

from __future__ import annotations

import json
import struct

import pytest

from tests.data.test_cache import read_independently, write_v1

FAST = ("--model-size", "nano", "--seq-len", "16", "--batch-size", "4", "--dtype", "f32", "--lr", "3e-3")


@pytest.fixture
def corpus(tmp_path):
    path = tmp_path / "corpus.txt"
    path.write_text("".join(f"the cat sees house {i % 9} and the dog runs.\n" for i in range(300)), encoding="utf-8")
    return path


def _one_error_line(code, err, *needles):
    assert code != 0 and "Traceback" not in err
    lines = [line for line in err.splitlines() if line.startswith("Error:")]
    assert len(lines) == 1, err
    for needle in needles:
        assert needle in lines[0], (needle, lines[0])


def test_build_then_info(cli, corpus, tmp_path):
    out = tmp_path / "cache"
    code, stdout, _ = cli("cache", "build", "--dataset", corpus, "--tokenizer", "byte", "--seq-len", "16",
                          "--output-dir", out, "--json")
    assert code == 0
    built = json.loads(stdout)
    assert built["version"] == 2 and built["token_dtype"] == "uint16" and built["num_sequences"] == 1
    names = sorted(p.name for p in out.iterdir())
    stem = names[0].rsplit(".", 1)[0]
    assert names == [f"{stem}.bin", f"{stem}.idx", f"{stem}.meta.json"]
    header, seqs = read_independently(out / f"{stem}.bin")
    from vesper_data.tokenizers import load_tokenizer

    assert load_tokenizer("byte").decode(seqs[0]) == corpus.read_text(encoding="utf-8")
    code, stdout, _ = cli("cache", "info", "--cache", out / f"{stem}.bin", "--json")
    info = json.loads(stdout)
    assert code == 0 and info["total_tokens"] == header["total"] and info["tokenizer"] == "byte"
    assert info["source"] == [str(corpus)]
    code, stdout, _ = cli("cache", "info", "--cache", out / f"{stem}.bin")
    assert code == 0 and "sequences:" in stdout and "tokenizer:" in stdout and "file size:" in stdout


def test_v1_flag_writes_the_rust_layout(cli, corpus, tmp_path):
    code, stdout, _ = cli("cache", "build", "--dataset", corpus, "--tokenizer", "byte", "--layout", "v1",
                          "--output-dir", tmp_path / "c", "--json")
    assert code == 0
    header, _ = read_independently(tmp_path / "c" / json.loads(stdout)["bin"].rsplit("/", 1)[1])
    assert header["version"] == 1 and header["reserved"] == bytes(32)


def test_train_from_an_independently_written_v1_cache(cli, tmp_path):
    tokens = [list(b"the cat sees the red house. " * 8) + [256] for _ in range(6)]
    path = write_v1(tmp_path / "rust_0000000000000000.bin", tokens, vocab_size=257, max_seq_len=16)
    code, stdout, _ = cli("cache", "info", "--cache", path)
    assert code == 0 and "sequences:    6" in stdout
    out = tmp_path / "run"
    code, _, err = cli("train", "--cache", path, "--tokenizer", "byte", *FAST, "--max-steps", "3",
                       "--output-dir", out)
    assert code == 0, err
    log = json.loads((out / "training_log.json").read_text())
    assert [s["step"] for s in log["steps"]] == [1, 2, 3]


def test_train_from_a_built_cache_uses_its_tokenizer(cli, corpus, tmp_path):
    cli("cache", "build", "--dataset", corpus, "--tokenizer", "byte", "--output-dir", tmp_path / "c", "--name", "x")
    code, _, err = cli("train", "--cache", tmp_path / "c" / "x.bin", *FAST, "--max-steps", "2",
                       "--output-dir", tmp_path / "run")
    assert code == 0, err
    assert "using the tokenizer recorded with the cache: byte" in err


def test_cache_vocab_mismatch_is_one_error(cli, tmp_path):
    path = write_v1(tmp_path / "gpt2.bin", [[1, 2, 3] * 20], vocab_size=50257)
    code, _, err = cli("train", "--cache", path, "--tokenizer", "byte", *FAST, "--output-dir", tmp_path / "run")
    _one_error_line(code, err, "vocabulary of 257", "built with 50257", "gpt2.bin")


@pytest.mark.parametrize("damage", ["magic", "truncate", "idx"])
def test_bad_cache_is_one_error_line(cli, tmp_path, damage):
    path = write_v1(tmp_path / "c.bin", [[1, 2, 3], [4, 5]])
    if damage == "magic":
        path.write_bytes(b"NOPE" + path.read_bytes()[4:])
    elif damage == "truncate":
        path.write_bytes(path.read_bytes()[:70])
    else:
        path.with_suffix(".idx").write_bytes(struct.pack("<2Q", 0, 5))
    for args in (("cache", "info", "--cache", path),
                 ("train", "--cache", path, "--tokenizer", "byte", *FAST, "--output-dir", tmp_path / "r")):
        code, _, err = cli(*args)
        _one_error_line(code, err, "c.")


def test_failed_build_is_one_error_and_leaves_nothing(cli, tmp_path):
    bad = tmp_path / "notsquad.json"
    bad.write_text('{"rows": []}', encoding="utf-8")
    out = tmp_path / "c"
    code, _, err = cli("cache", "build", "--dataset", bad, "--tokenizer", "byte", "--output-dir", out)
    _one_error_line(code, err, "notsquad.json", "SQuAD")
    assert not out.exists() or list(out.iterdir()) == []


def test_streaming_train_resumes_exactly(cli, corpus, tmp_path):
    common = ("train", "--dataset", corpus, "--streaming", "--chunk-mb", "1", "--tokenizer", "byte", *FAST,
              "--max-steps", "6", "--save-every", "3")
    code, _, err = cli(*common, "--output-dir", tmp_path / "full")
    assert code == 0, err
    code, _, err = cli(*common, "--output-dir", tmp_path / "resumed",
                       "--resume", tmp_path / "full" / "checkpoint-3.safetensors")
    assert code == 0, err
    full = json.loads((tmp_path / "full" / "training_log.json").read_text())["steps"]
    resumed = json.loads((tmp_path / "resumed" / "training_log.json").read_text())["steps"]
    assert [s["loss"] for s in full[3:]] == pytest.approx([s["loss"] for s in resumed if s["step"] > 3], rel=1e-6)
    state = json.loads((tmp_path / "full" / "checkpoint-3.state.json").read_text())
    assert "stream" in state["loader"] and state["loader"]["index"] == 3


def test_tokenizer_train(cli, corpus, tmp_path):
    out = tmp_path / "tok" / "tokenizer.json"
    code, stdout, _ = cli("tokenizer", "train", "--dataset", corpus, "--vocab-size", "300", "--output", out, "--json")
    assert code == 0
    result = json.loads(stdout)
    from vesper_data.tokenizers import load_tokenizer

    tok = load_tokenizer(str(out))
    assert tok.vocab_size == result["vocab_size"] <= 300 and tok.eos_id is not None
    assert tok.decode(tok.encode("the cat sees house 3")) == "the cat sees house 3"
    code, _, err = cli("tokenizer", "train", "--dataset", corpus, "--vocab-size", "10", "--output", out)
    _one_error_line(code, err, "--vocab-size 10")

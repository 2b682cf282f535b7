"""--dtype reaches chat and eval as it reaches generate (one precision switch, vesper_core.precision)."""

from __future__ import annotations

import json

import pytest

from tests.core.export_helpers import byte_checkpoint
from vesper_cli.engine.checkpoint_eval import EvalConfig, evaluate_checkpoint
from vesper_core.errors import ConfigError


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    return byte_checkpoint(tmp_path_factory.mktemp("dtype") / "run")


def test_eval_int8_scores_close_to_f32(checkpoint, tmp_path):
    pytest.importorskip("torchao")
    text = tmp_path / "held.txt"
    text.write_text("the quick brown fox jumps over the lazy dog. " * 40)
    f32 = evaluate_checkpoint(EvalConfig(model=str(checkpoint), data=[str(text)], dtype="f32", device="cpu"))
    int8 = evaluate_checkpoint(EvalConfig(model=str(checkpoint), data=[str(text)], dtype="int8", device="cpu"))
    assert int8.perplexity[0].dtype == "int8" and f32.perplexity[0].dtype == "f32"
    assert int8.perplexity[0].num_tokens == f32.perplexity[0].num_tokens
    assert int8.perplexity[0].loss != f32.perplexity[0].loss  # the weights really changed
    assert abs(int8.perplexity[0].loss - f32.perplexity[0].loss) < 0.02 * f32.perplexity[0].loss
    assert json.loads(json.dumps(int8.to_dict()))["perplexity"][0]["dtype"] == "int8"


def test_eval_refuses_unknown_dtype(checkpoint):
    with pytest.raises(ConfigError):
        EvalConfig(model=str(checkpoint), data=["x.txt"], dtype="int4")


def test_chat_unknown_dtype_is_one_line(cli, checkpoint):
    code, out, err = cli("chat", "--model", checkpoint, "--dtype", "int4")
    assert code != 0 and out == ""
    assert err.strip().splitlines()[0].startswith("Error: unknown --dtype 'int4'")


def test_chat_metacog_needs_f32(cli, checkpoint):
    code, _, err = cli("chat", "--model", checkpoint, "--dtype", "bf16", "--metacog")
    assert code != 0 and "--metacog runs the meta head on f32" in err

"""`vesper generate --dtype`: the same greedy text path in every precision, and one line for a bad name."""

from __future__ import annotations

import pytest

from tests.core.export_helpers import byte_checkpoint


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    return byte_checkpoint(tmp_path_factory.mktemp("dtype") / "run")


@pytest.mark.parametrize("dtype", ["f32", "bf16", "f16", "int8"])
def test_generate_in_each_dtype(cli, checkpoint, dtype):
    if dtype == "int8":
        pytest.importorskip("torchao")
    code, out, err = cli("generate", "--model", checkpoint, "--prompt", "the cat", "--max-tokens", "5",
                         "--temperature", "0", "--device", "cpu", "--dtype", dtype)
    assert code == 0, err
    assert out.startswith("the cat") and "tokens in" in err


def test_greedy_f32_flag_equals_default(cli, checkpoint):
    outputs = [cli("generate", "--model", checkpoint, "--prompt", "abc", "--max-tokens", "8", "--temperature", "0",
                   "--device", "cpu", *extra)[1] for extra in ((), ("--dtype", "float32"))]
    assert outputs[0] == outputs[1]


def test_unknown_dtype_is_one_line(cli, checkpoint):
    code, out, err = cli("generate", "--model", checkpoint, "--prompt", "x", "--dtype", "int4")
    assert code != 0 and out == ""
    assert err.strip().splitlines()[0] == ("Error: unknown --dtype 'int4' (did you mean 'int8'?); choices: f32, "
                                           "bf16, f16, int8")

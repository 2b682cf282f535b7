from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from vesper_cli.engine.run_config import build_run_config

SMALL = dict(model_size="nano", tokenizer="byte", seq_len=16, batch_size=4, dtype="f32", log_every=1)


def make_text(path: Path, lines: int = 300) -> Path:
    words = ["river", "stone", "garden", "window", "candle", "harbour", "meadow"]
    path.write_text("\n".join(f"the {words[i % 7]} of line {i % 11} is near the {words[(i * 3) % 7]}."
                              for i in range(lines)) + "\n", encoding="utf-8")
    return path


@pytest.fixture
def text_file(tmp_path) -> Path:
    return make_text(tmp_path / "train.txt")


def run_config(dataset: Path, output_dir: Path, **overrides):
    flags = {**SMALL, "dataset": str(dataset), "output_dir": str(output_dir), **overrides}
    return build_run_config(flags)


def weights(path: Path) -> dict[str, torch.Tensor]:
    return load_file(str(path))


def assert_bit_identical(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert a.keys() == b.keys()
    different = [k for k in a if not torch.equal(a[k], b[k])]
    assert not different, f"{len(different)} tensors differ, e.g. {different[:3]}"


@pytest.fixture
def cli(capsys):
    from vesper_cli.app import run

    def invoke(*args):
        code = run([str(a) for a in args])
        out, err = capsys.readouterr()
        return code, out, err

    return invoke

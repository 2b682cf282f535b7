"""`vesper export`: the checked HF export end to end, and the refusals (each one line, nothing written)."""

from __future__ import annotations


import pytest
import torch

from tests.core.export_helpers import byte_checkpoint


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    return byte_checkpoint(tmp_path_factory.mktemp("export") / "run")


def _first_line(err: str) -> str:
    return err.strip().splitlines()[0]


def test_export_hf_checks_and_writes(cli, checkpoint, tmp_path):
    pytest.importorskip("transformers")
    out = tmp_path / "hf"
    code, stdout, err = cli("export", "--model", checkpoint.parent, "--format", "hf", "--output", out)
    assert code == 0, err
    assert stdout.strip() == str(out)
    assert "greedy tokens identical" in err
    assert {"config.json", "modeling_vesper.py", "configuration_vesper.py", "model.safetensors", "tokenizer.json",
            "tokenizer_config.json", "generation_config.json"} <= {p.name for p in out.iterdir()}
    assert [p.name for p in tmp_path.iterdir()] == ["hf"]  # no staging folder left behind
    # --overwrite replaces the folder
    (out / "stale.txt").write_text("old")
    code, _, err = cli("export", "--model", checkpoint, "--output", out, "--overwrite", "--no-verify")
    assert code == 0, err
    assert not (out / "stale.txt").exists() and (out / "model.safetensors").is_file()


def test_unknown_format(cli, checkpoint, tmp_path):
    code, _, err = cli("export", "--model", checkpoint, "--format", "gguf", "--output", tmp_path / "x")
    assert code == 1 and _first_line(err) == "Error: unknown --format 'gguf'; choices: hf, onnx"
    assert not (tmp_path / "x").exists()


def test_existing_output_needs_overwrite(cli, checkpoint, tmp_path):
    out = tmp_path / "taken"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    code, _, err = cli("export", "--model", checkpoint, "--output", out)
    assert code == 1 and "already exists and is not empty; pass --overwrite" in _first_line(err)
    assert [p.name for p in out.iterdir()] == ["keep.txt"]


def test_missing_onnx_extra(cli, checkpoint, tmp_path, monkeypatch):
    import vesper_core.device as device

    real = device.has_module.__wrapped__
    monkeypatch.setattr(device, "has_module", lambda name: False if name == "onnxscript" else real(name))
    code, _, err = cli("export", "--model", checkpoint, "--format", "onnx", "--output", tmp_path / "o")
    assert code == 1
    assert _first_line(err) == "Error: --format onnx needs onnxscript (torch's ONNX exporter); pip install 'vesper[export]'"
    assert not (tmp_path / "o").exists()


def test_failed_check_writes_nothing(cli, checkpoint, tmp_path, monkeypatch):
    pytest.importorskip("transformers")
    import vesper_cli.engine.export as export

    real = export._run_hf

    def off_by_a_little(folder, prompt, new_tokens):
        logits, tokens = real(folder, prompt, new_tokens)
        return logits + 1e-3, tokens

    monkeypatch.setattr(export, "_run_hf", off_by_a_little)
    code, _, err = cli("export", "--model", checkpoint, "--output", tmp_path / "hf")
    assert code == 1 and "does not reproduce the checkpoint (max logit difference 1.00e-03" in _first_line(err)
    assert list(tmp_path.iterdir()) == []


def test_missing_checkpoint(cli, tmp_path):
    code, _, err = cli("export", "--model", tmp_path / "nope.safetensors", "--output", tmp_path / "o")
    assert code == 1 and "not found" in _first_line(err)
    assert not (tmp_path / "o").exists()


def test_adapted_model_is_merged_before_export(monkeypatch):
    """A model with parameters a plain VesperLM lacks goes through merge_adapters (or is refused without it)."""
    import sys
    import types

    from tests.core.export_helpers import random_model, tiny_config
    from vesper_cli.engine.export import merge_adapters_if_any
    from vesper_core.errors import NotImplementedFeatureError

    model = random_model(tiny_config(97))
    assert merge_adapters_if_any(model) is model  # plain: untouched
    model.layers[0].attention.q_proj.register_parameter("lora_extra", torch.nn.Parameter(torch.zeros(2)))
    fake = types.ModuleType("vesper_core.layers.adapters")
    merged = random_model(tiny_config(97), seed=5)
    fake.merge_adapters = lambda m: merged
    monkeypatch.setitem(sys.modules, "vesper_core.layers.adapters", fake)
    assert merge_adapters_if_any(model) is merged
    monkeypatch.setitem(sys.modules, "vesper_core.layers.adapters", types.ModuleType("vesper_core.layers.adapters"))
    with pytest.raises(NotImplementedFeatureError, match="carries adapters"):
        merge_adapters_if_any(model)


@pytest.mark.slow
@pytest.mark.parametrize("preset,tokenizer", [("nano", "byte"), ("nano", "auto")])
def test_trained_run_exports_to_both_formats(cli, english_text, tmp_path, preset, tokenizer):
    """The user's path: `vesper train`, then `vesper export` (checked) to HF and ONNX; greedy text agrees."""
    pytest.importorskip("transformers")
    pytest.importorskip("onnxruntime")
    run_dir = tmp_path / "run"
    code, _, err = cli("train", "--dataset", english_text, "--model-size", preset, "--tokenizer", tokenizer,
                       "--seq-len", "32", "--batch-size", "8", "--max-steps", "30",
                       "--save-every", "0", "--lr", "5e-3", "--dtype", "f32", "--output-dir", run_dir)
    assert code == 0, err
    for fmt in ("hf", "onnx"):
        code, _, err = cli("export", "--model", run_dir, "--format", fmt, "--output", tmp_path / fmt)
        assert code == 0, err
        assert "greedy tokens identical" in err
    from tokenizers import Tokenizer

    from vesper_core.export.onnx_runner import OnnxLM

    code, vesper_text, _ = cli("generate", "--model", run_dir, "--prompt", "the cat", "--temperature", "0",
                               "--max-tokens", "24", "--device", "cpu")
    tok = Tokenizer.from_file(str(tmp_path / "onnx" / "tokenizer.json"))
    new = OnnxLM(tmp_path / "onnx").generate_greedy(tok.encode("the cat", add_special_tokens=False).ids, 24)
    assert vesper_text.rstrip("\n") == ("the cat" + tok.decode(new)).rstrip()

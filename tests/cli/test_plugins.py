"""A third-party distribution adds a model preset through the `vesper.presets` entry point."""

from __future__ import annotations

import json
import textwrap

from tests.cli.conftest import run_subprocess


def _install_plugin(site: "Path") -> None:
    """Install a tiny distribution the way pip lays one out: a module + a .dist-info with entry points."""
    (site / "vesper_tinyplug.py").write_text(textwrap.dedent("""
        from vesper_core.config import ModelConfig

        def micro():
            return ModelConfig(vocab_size=512, hidden_size=32, num_layers=1, num_heads=2,
                               intermediate_size=64, flylora_rank=4, max_position_embeddings=256)
    """))
    info = site / "vesper_tinyplug-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: vesper-tinyplug\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text("[vesper.presets]\nmicro = vesper_tinyplug:micro\n")
    (info / "RECORD").write_text("")


def test_plugin_preset_is_listed_and_trains(tmp_path, english_text):
    site = tmp_path / "site"
    site.mkdir()
    _install_plugin(site)
    env = {"PYTHONPATH": str(site)}
    listed = run_subprocess("plugins", "--json", env=env)
    assert listed.returncode == 0, listed.stderr
    rows = {r["name"]: r for r in json.loads(listed.stdout) if r["kind"] == "preset"}
    assert "micro" in rows and "vesper-tinyplug" in rows["micro"]["origin"]

    out = tmp_path / "out"
    proc = run_subprocess("train", "--dataset", english_text, "--model-size", "micro", "--tokenizer", "byte",
                          "--seq-len", "16", "--batch-size", "2", "--max-steps", "2", "--dtype", "f32",
                          "--output-dir", out, env=env)
    assert proc.returncode == 0, proc.stderr
    log = json.loads((out / "training_log.json").read_text())
    assert log["model_size"] == "micro" and len(log["steps"]) == 2


def test_plugin_cannot_shadow_builtin(tmp_path):
    from vesper_core.errors import ConfigError
    from vesper_core.registry import Registry

    reg = Registry("thing")
    reg.register("a", 1)
    try:
        reg.register("a", 2)
    except ConfigError as exc:
        assert "duplicate" in str(exc)
    else:
        raise AssertionError("duplicate name accepted")

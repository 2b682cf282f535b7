"""`vesper data inspect`, `vesper data download` (offline), `vesper scale`, `vesper env` end to end."""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

import torch

from vesper_core.presets import PRESETS


def test_surface_lists_the_new_commands(cli):
    code, out, _ = cli("--help")
    assert code == 0
    for command in ("data", "scale", "env", "studio"):
        assert re.search(rf"^\s*{command}\b", out, re.M), command


def test_data_inspect_json(cli, tmp_path):
    path = tmp_path / "d.jsonl"
    path.write_text('{"user": "hello", "assistant": "hi there"}\n' * 3, encoding="utf-8")
    code, out, _ = cli("data", "inspect", str(path), "--json")
    report = json.loads(out)
    assert code == 0 and report["format"] == "jsonl" and report["num_records"] == 3
    assert report["conversation"] == ["user", "assistant"]
    assert report["num_chars"] == 3 * len("User: hello\nAssistant: hi there") == report["num_tokens"]


def test_data_inspect_plain_and_errors(cli, tmp_path):
    path = tmp_path / "t.txt"
    path.write_text("one two\nthree\n", encoding="utf-8")
    code, out, _ = cli("data", "inspect", str(path))
    assert code == 0 and "format:      text" in out and "tokens:      14 with byte" in out
    code, _, err = cli("data", "inspect", str(tmp_path / "nope.txt"))
    assert code == 1 and "not found" in err and "Traceback" not in err
    code, _, err = cli("data", "inspect", str(path), "--tokenizer", "auto")
    assert code == 1 and "--tokenizer auto" in err


def test_data_download_offline(cli, tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    out_file = tmp_path / "fw.txt"
    code, _, err = cli("data", "download", "fineweb-edu", "--tokens", "100M", "--output", str(out_file))
    assert code == 1 and "offline" in err and err.count("Error:") == 1
    assert not out_file.exists()
    code, _, err = cli("data", "download", "x/y", "--tokens", "lots")
    assert code == 1 and "'lots' is not a token count" in err


def test_scale_json_is_the_chinchilla_rule(cli):
    code, out, _ = cli("scale", "--tokens", "100M", "--vocab-size", "32000", "--batch-size", "8", "--seq-len", "256",
                       "--json")
    plan = json.loads(out)
    assert code == 0 and plan["dataset_tokens"] == 100_000_000 and plan["optimal_params"] == 5_000_000
    assert plan["tokens_per_step"] == 8 * 256
    names = [s["name"] for s in plan["suggestions"]]
    assert {"nano", "tiny"} <= set(names) and len(names) == len(set(names)) == 6
    target = math.log(5_000_000)
    distances = [abs(math.log(s["num_params"]) - target) for s in plan["suggestions"]]
    assert distances == sorted(distances)
    for s in plan["suggestions"]:
        wanted = max(100_000_000, 20 * s["num_params"])
        assert s["recommended_steps"] == math.ceil(wanted / 2048)
        if s["source"] == "preset":
            assert s["num_params"] == PRESETS.get(s["name"])().replace(vocab_size=32000).num_params()


def test_scale_refuses_bad_counts(cli):
    code, _, err = cli("scale", "--tokens", "-5")
    assert code == 1 and "--tokens" in err
    code, _, err = cli("scale", "--tokens", "1M", "--batch-size", "0")
    assert code == 1 and "batch size" in err


def test_env_json(cli):
    code, out, _ = cli("env", "--json")
    env = json.loads(out)
    assert code == 0 and env["torch"] == torch.__version__
    assert env["cuda_available"] == torch.cuda.is_available() and len(env["devices"]) == torch.cuda.device_count()
    backends = {b["name"]: b["reason"] for b in env["backends"]}
    assert backends["reference"] is None
    assert any(p["module"] == "fastapi" for p in env["packages"])


def test_studio_refuses_bad_settings_before_serving(cli, tmp_path):
    code, _, err = cli("studio", "--workspace", str(tmp_path / "missing"))
    assert code == 1 and "is not a folder" in err
    code, _, err = cli("studio", "--port", "70000")
    assert code == 1 and "--port" in err
    code, _, err = cli("studio", "--max-jobs", "0")
    assert code == 1 and "--max-jobs" in err


def test_env_names_only_extras_that_exist():
    import tomllib

    from vesper_cli.engine.environment import OPTIONAL_PACKAGES

    pyproject = tomllib.loads((Path(__file__).resolve().parents[2] / "pyproject.toml").read_text())
    extras = set(pyproject["project"]["optional-dependencies"])
    assert {extra for _, _, extra in OPTIONAL_PACKAGES} <= extras

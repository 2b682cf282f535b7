"""Plots: the four benchmark graphs (§6.3) and the two training panels (§6.4), as PNG via matplotlib."""

from __future__ import annotations

import json
import math
import struct
import sys

import pytest

pytest.importorskip("matplotlib")

from vesper_cli.plots import benchmark_figure, ema, plot_files, training_figure  # noqa: E402


def _png_size(path) -> tuple[int, int]:
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n", "not a PNG"
    assert data[12:16] == b"IHDR"
    return struct.unpack(">II", data[16:24])


def _result(name: str, n: int, velvet: bool) -> dict:
    rows = []
    for i in range(n):
        row = {"step": i, "loss": 5.0 - 0.01 * i + 0.05 * math.sin(i), "grad_norm": 2.0 + 0.1 * math.cos(i)}
        if velvet:
            row.update(entropy_scale=1.3 - 0.001 * i, ppl_scale=0.7 + 0.001 * i)
        rows.append(row)
    history = [4.9, 4.7, 4.6]
    return {"optimizer": name, "model_size": "nano (161120params)", "epochs": 3, "final_loss": history[-1],
            "best_loss": min(history), "training_time_secs": 1.0, "loss_history": history,
            "perplexity_history": [math.exp(x) for x in history], "step_metrics": rows}


@pytest.fixture
def report() -> dict:
    return {"velvet": _result("Velvet", 30, True), "adamw": _result("AdamW", 30, False),
            "comparison": {"loss_improvement_pct": 1.0, "perplexity_improvement_pct": 2.0,
                           "speed_difference_pct": -3.0},
            "verdict": "no significant difference: ..."}


def _log(optimizer: str, n: int) -> dict:
    return {"optimizer": optimizer, "model_size": "nano",
            "steps": [{"step": i + 1, "loss": 5.0 - 0.02 * i, "ppl": math.exp(5.0 - 0.02 * i)} for i in range(n)]}


def test_ema_is_bias_corrected():
    assert ema([1.0, 3.0], 0.5) == [1.0, (0.25 * 1.0 + 0.5 * 3.0) / 0.75]
    assert ema([2.0] * 5, 0.9) == pytest.approx([2.0] * 5)  # a constant stays constant from the first point
    assert ema([], 0.9) == []


def test_benchmark_figure_has_the_four_graphs(report):
    fig = benchmark_figure(report)
    titles = [ax.get_title() for ax in fig.axes]
    assert titles == ["Training loss per step", "Perplexity per epoch", "Velvet adaptive scales",
                      "Gradient norms (before clipping)"]
    loss, ppl, scales, norms = fig.axes
    assert len(loss.lines) == 4  # raw + EMA(0.9) per optimizer
    assert len(ppl.lines) == 2 and len(ppl.texts) == 2  # final values annotated
    assert len(scales.lines) == 3  # entropy EMA, ppl EMA, the 1.0 reference
    assert len(norms.lines) == 4
    assert "VelvetOptimizer Benchmark" in fig._suptitle.get_text()
    assert any("no significant difference" in t.get_text() for t in fig.texts)


def test_benchmark_figure_without_velvet_has_no_scales_panel(report):
    fig = benchmark_figure({"adamw": report["adamw"]})
    assert [ax.get_title() for ax in fig.axes] == ["Training loss per step", "Perplexity per epoch",
                                                   "Gradient norms (before clipping)"]


def test_training_figure_panels_and_footer():
    fig = training_figure([("a/training_log.json", _log("velvet", 20)), ("b/training_log.json", _log("adamw", 4))])
    loss, ppl = fig.axes
    assert loss.get_title() == "Training loss" and ppl.get_title().startswith("Perplexity")
    assert len(loss.lines) == 3  # raw + EMA for the 20-step run, raw only for the 4-step run
    assert len(ppl.lines) == 2
    footer = "\n".join(t.get_text() for t in fig.texts)
    assert "velvet (nano): last step 20, final loss 4.6200" in footer and "adamw (nano): last step 4" in footer


def test_plot_command_writes_png(tmp_path, cli):
    logs = []
    for name in ("velvet", "adamw"):
        (tmp_path / name).mkdir()
        path = tmp_path / name / "training_log.json"
        path.write_text(json.dumps(_log(name, 12)))
        logs.append(path)
    out = tmp_path / "both.png"
    code, stdout, err = cli("plot", *logs, "-o", out)
    assert code == 0, err
    assert stdout.strip() == str(out)
    width, height = _png_size(out)
    assert (width, height) == (14 * 150, pytest.approx(8.5 * 150, abs=60)) and out.stat().st_size > 20_000
    code, stdout, _ = cli("plot", logs[0])  # default: next to the first log
    assert code == 0 and (tmp_path / "velvet" / "training_log.png").is_file()


def test_plot_command_takes_a_benchmark_report(tmp_path, cli, report):
    path = tmp_path / "benchmark_report.json"
    path.write_text(json.dumps(report))
    code, _, err = cli("plot", path)
    assert code == 0, err
    width, height = _png_size(tmp_path / "benchmark_report.png")
    assert width == 2100 and height > 2000


def test_plot_errors(tmp_path, cli, monkeypatch):
    bad = tmp_path / "x.json"
    bad.write_text("{}")
    code, _, err = cli("plot", bad)
    assert code != 0 and "no 'steps' list" in err
    code, _, err = cli("plot", tmp_path / "missing.json")
    assert code != 0 and "no such file" in err
    good = tmp_path / "log.json"
    good.write_text(json.dumps(_log("velvet", 3)))
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # as if not installed
    code, _, err = cli("plot", good)
    assert code != 0 and "plotting needs matplotlib: pip install 'vesper[plot]'" in err
    assert err.count("Error:") == 1

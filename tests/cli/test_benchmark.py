"""`vesper benchmark`: fair (same weights, same batches), seeded, held-out, Rust-shaped report."""

from __future__ import annotations

import json

import pytest

from vesper_cli.engine.benchmark import BenchConfig, RunResult, run_benchmark, verdict
from vesper_core.errors import ConfigError, UnknownNameError

FAST = ("--model-size", "nano", "--seq-len", "32", "--batch-size", "4", "--tokenizer", "byte", "--val-tokens", "256")
RUST_RESULT_KEYS = ["optimizer", "model_size", "epochs", "final_loss", "best_loss", "training_time_secs",
                    "loss_history", "perplexity_history", "step_metrics"]
RUST_COMPARISON_KEYS = ["loss_improvement_pct", "perplexity_improvement_pct", "speed_difference_pct",
                        "velvet_final_loss", "adamw_final_loss", "velvet_final_ppl", "adamw_final_ppl"]
TIMING_KEYS = {"tokens_per_sec", "time_per_step_ms", "peak_memory_mb", "training_time_secs"}


def _cfg(path, **kw) -> BenchConfig:
    base = dict(dataset=str(path), tokenizer="byte", model_size="nano", seq_len=32, batch_size=4, max_steps=4,
                seeds=2, val_tokens=256)
    return BenchConfig.from_flat(**{**base, **kw})


@pytest.fixture(scope="module")
def cli_report(tmp_path_factory):
    """One CLI run with 2 seeds, shared by the schema tests."""
    from tests.cli.conftest import english_text  # noqa: F401
    from vesper_cli.app import run

    root = tmp_path_factory.mktemp("bench")
    text = root / "english.txt"
    text.write_text("\n".join(f"the cat sees the red house number {i % 7} every morning." for i in range(300)),
                    encoding="utf-8")
    out = root / "sub" / "report.json"
    code = run(["benchmark", "--dataset", str(text), *FAST, "--max-steps", "6", "--seeds", "2",
                "--output", str(out), "--plot"])
    assert code == 0
    return out, text


def test_report_keeps_rust_schema(cli_report):
    out, _ = cli_report
    report = json.loads(out.read_text())
    assert list(report)[:3] == ["velvet", "adamw", "comparison"]
    for name, display in (("velvet", "Velvet"), ("adamw", "AdamW")):
        result = report[name]
        assert list(result) == RUST_RESULT_KEYS
        assert result["optimizer"] == display
        assert result["model_size"].startswith("nano (") and result["model_size"].endswith("params)")
        assert len(result["step_metrics"]) == 6 and result["step_metrics"][0]["step"] == 0
        assert len(result["loss_history"]) == result["epochs"] == len(result["perplexity_history"])
    assert {"entropy_scale", "ppl_scale", "grad_norm"} <= set(report["velvet"]["step_metrics"][0])
    assert "entropy_scale" not in report["adamw"]["step_metrics"][0]
    assert "ppl_scale" not in report["adamw"]["step_metrics"][0]
    assert list(report["comparison"])[:7] == RUST_COMPARISON_KEYS


def test_report_adds_seeds_summary_verdict(cli_report):
    out, _ = cli_report
    report = json.loads(out.read_text())
    for name in ("velvet", "adamw"):
        rows = report["seeds"][name]
        assert [r["seed"] for r in rows] == [0, 1]
        for row in rows:
            assert row["val_loss"] > 0 and row["tokens_per_sec"] > 0 and row["time_per_step_ms"] > 0
            # CPU has no per-arm allocator statistics: n/a, never a process-wide high-water mark
            assert row["peak_memory_mb"] is None and row["peak_memory_kind"].startswith("n/a")
        stats = report["summary"][name]["val_loss"]
        assert stats["n"] == 2 and stats["std"] >= 0
    assert report["verdict"].startswith(("velvet is better", "adamw is better", "no significant difference"))
    assert out.with_suffix(".png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_same_initial_weights_and_batches(cli_report):
    out, _ = cli_report
    report = json.loads(out.read_text())
    # step 0's loss is computed before any update: same weights + same batch => the same number
    assert report["velvet"]["step_metrics"][0]["loss"] == report["adamw"]["step_metrics"][0]["loss"]
    assert report["velvet"]["step_metrics"][0]["grad_norm"] == report["adamw"]["step_metrics"][0]["grad_norm"]


def test_rerun_gives_identical_numbers(cli_report):
    _, text = cli_report
    cfg = _cfg(text, seeds=1, max_steps=3, optimizers=("adamw",))
    a, b = run_benchmark(cfg), run_benchmark(cfg)
    strip = lambda rows: [{k: v for k, v in r.items() if k not in TIMING_KEYS} for r in rows]  # noqa: E731
    assert strip(a["seeds"]["adamw"]) == strip(b["seeds"]["adamw"])
    assert a["adamw"]["step_metrics"] == b["adamw"]["step_metrics"]
    assert "comparison" not in a and "verdict" not in a  # one optimizer: nothing to compare


def test_json_flag_prints_the_report(cli_report, cli, tmp_path):
    _, text = cli_report
    out = tmp_path / "r.json"
    code, stdout, err = cli("benchmark", "--dataset", text, *FAST, "--max-steps", "2", "--optimizers", "adamw,velvet",
                            "--output", out, "--json")
    assert code == 0, err
    assert json.loads(stdout) == json.loads(out.read_text())
    assert "report:" in err  # progress and notices on stderr


def test_lr_sweep_compares_best_of_each(cli_report):
    _, text = cli_report
    report = run_benchmark(_cfg(text, seeds=1, max_steps=2, lr=1e-3, lr_sweep=True))
    for name in ("velvet", "adamw"):
        sweep = report["lr_sweep"][name]
        grid = [g["lr"] for g in sweep["grid"]]
        assert all(any(abs(g - x) < 1e-12 for g in grid) for x in (5e-4, 1e-3, 2e-3))  # the initial grid
        widened = len(grid) - 3
        interior = grid[0] < sweep["best_lr"] < grid[-1]
        assert sweep["bracketed"] == interior
        assert interior or widened == 4  # widened x2 beyond the edge until interior, at most 4 times
        assert sweep["best_lr"] in grid
        assert report["summary"][name]["lr"] == sweep["best_lr"]
        best = min(sweep["grid"], key=lambda g: g["val_loss"]["mean"])
        assert best["lr"] == sweep["best_lr"]
    assert report["verdict"].startswith("inconclusive")  # one seed: no spread
    assert "bracketed" in report["verdict"]


def test_moe_preset_runs(cli_report):
    _, text = cli_report
    report = run_benchmark(_cfg(text, model_size="tiny-moe", seeds=1, max_steps=1, seq_len=16, batch_size=1,
                                val_tokens=16, optimizers=("velvet",)))
    assert report["velvet"]["model_size"].startswith("tiny-moe")
    assert report["seeds"]["velvet"][0]["val_loss"] > 0


def _run(name: str, val: float) -> RunResult:
    return RunResult(optimizer=name, lr=1e-3, seed=0, steps=1, epochs=1, loss_history=[val], step_metrics=[],
                     training_time_secs=1.0, final_train_loss=val, val_loss=val, tokens_per_sec=1.0,
                     time_per_step_ms=1.0, peak_memory_mb=1.0, peak_memory_kind="x")


def test_verdict_needs_the_difference_to_exceed_the_spread():
    clear = verdict("velvet", [_run("velvet", v) for v in (2.00, 2.01, 2.02)],
                    "adamw", [_run("adamw", v) for v in (2.20, 2.21, 2.22)])
    assert clear["text"].startswith("velvet is better than adamw") and clear["winner"] == "velvet"
    noisy = verdict("velvet", [_run("velvet", v) for v in (2.00, 2.10, 2.20)],
                    "adamw", [_run("adamw", v) for v in (2.05, 2.15, 2.25)])
    assert noisy["text"].startswith("no significant difference") and noisy["winner"] is None
    single = verdict("velvet", [_run("velvet", 2.0)], "adamw", [_run("adamw", 3.0)])
    assert single["text"].startswith("inconclusive")


def test_config_errors(tmp_path, cli):
    with pytest.raises(UnknownNameError, match="adam"):
        BenchConfig.from_flat(dataset="demo", optimizers=("adamx",))
    with pytest.raises(ConfigError, match="val-fraction"):
        BenchConfig.from_flat(dataset="demo", val_fraction=1.0)
    code, _, err = cli("benchmark", "--dataset", "demo", "--optimizers", "velvet,velvet")
    assert code != 0 and "twice" in err
    code, _, err = cli("benchmark", *FAST)
    assert code != 0 and "--dataset" in err


@pytest.mark.parametrize("optimizer", ["adamw", "velvet"])
def test_benchmark_arm_trains_exactly_like_vesper_train(tmp_path, optimizer):
    """One trainer: a benchmark arm and `vesper train` on the same seed, data and settings give the same
    losses step by step, and the same held-out loss."""
    from tests.train.conftest import make_text, run_config
    from vesper_cli.engine.trainer import train

    text = make_text(tmp_path / "train.txt", lines=400)
    common = dict(tokenizer="byte", seq_len=32, batch_size=4, max_steps=6, val_fraction=0.1, lr=1e-3)
    report = run_benchmark(BenchConfig.from_flat(dataset=str(text), model_size="nano", seeds=1,
                                                 optimizers=(optimizer,), val_tokens=0, **common))
    result = train(run_config(text, tmp_path / "run", optimizer=optimizer, eval_batches=0, save_every=0, seed=0,
                              **common))
    logged = json.loads(result.log_path.read_text())
    assert [r["loss"] for r in report[optimizer]["step_metrics"]] == [s["loss"] for s in logged["steps"]]
    assert report["seeds"][optimizer][0]["val_loss"] == logged["evals"][-1]["val_loss"]

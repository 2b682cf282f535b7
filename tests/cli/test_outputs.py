"""Outputs that must survive: a benchmark interrupted by Ctrl-C saves what finished; the table is whole in a pipe."""

from __future__ import annotations

import json

from vesper_cli.commands.benchmark import render_table


def test_benchmark_ctrl_c_saves_a_partial_report(tmp_path, cli, monkeypatch):
    import vesper_cli.engine.benchmark as bench

    real = bench._train_one
    calls = []

    def interrupt_second(*args, **kwargs):
        if kwargs.get("score", True):  # not the warm-up
            calls.append(1)
        if len(calls) > 1:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(bench, "_train_one", interrupt_second)
    out = tmp_path / "reports" / "r.json"
    code, _, err = cli("benchmark", "--dataset", "demo", "--model-size", "nano", "--tokenizer", "byte",
                       "--max-steps", "2", "--seq-len", "16", "--batch-size", "2", "--dtype", "f32",
                       "--output", out)
    assert code == 130, err
    report = json.loads(out.read_text())
    assert report["interrupted"] is True and len(report["completed_runs"]) == 1
    assert "partial report" in err


def test_benchmark_table_is_not_cut_in_a_pipe(capsys):
    row = {"lr": 1e-3, "val_loss": {"mean": 2.5, "std": 0.1}, "final_train_loss": {"mean": 2.4, "std": 0.1},
           "tokens_per_sec": {"mean": 12345.0}, "time_per_step_ms": {"mean": 12.5}, "peak_memory_mb": None}
    report = {"config": {"model_size": "nano", "seeds": 3},
              "summary": {"velvet_with_a_long_name": row, "adamw": row}}
    render_table(report)
    out = capsys.readouterr().out
    assert "velvet_with_a_long_name" in out and "peak MiB" in out and "…" not in out

"""`vesper eval` end to end: perplexity reproduces train's validation loss; tasks; JSON schema; bad input."""

from __future__ import annotations

import json

import pytest

from vesper_cli.app import run

BASE = ("--model-size", "nano", "--seq-len", "32", "--batch-size", "8", "--tokenizer", "byte", "--lr", "3e-3",
        "--seed", "5")


def _lines(start: int, stop: int) -> str:
    return "\n".join(f"the cat sees the red house number {i % 7} every morning." for i in range(start, stop))


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """Two short runs: one with a held-out file (default bf16 autocast), one with --val-fraction (f32)."""
    root = tmp_path_factory.mktemp("eval")
    (root / "train.txt").write_text(_lines(0, 250), encoding="utf-8")
    (root / "val.txt").write_text(_lines(250, 300), encoding="utf-8")
    assert run(["train", "--dataset", str(root / "train.txt"), "--val-dataset", str(root / "val.txt"), *BASE,
                "--max-steps", "12", "--eval-every", "6", "--eval-batches", "3", "--output-dir",
                str(root / "held_out")]) == 0
    assert run(["train", "--dataset", str(root / "train.txt"), "--val-fraction", "0.2", *BASE, "--dtype", "f32",
                "--max-steps", "6", "--output-dir", str(root / "fraction")]) == 0
    chats = [{"messages": [{"role": "user", "content": f"what does cat {i} see?"},
                           {"role": "assistant", "content": f"cat {i} sees the red house."}]} for i in range(40)]
    (root / "chats.jsonl").write_text("\n".join(map(json.dumps, chats[:32])) + "\n", encoding="utf-8")
    (root / "chats_val.jsonl").write_text("\n".join(map(json.dumps, chats[32:])) + "\n", encoding="utf-8")
    assert run(["train", "--dataset", str(root / "chats.jsonl"), "--val-dataset", str(root / "chats_val.jsonl"),
                *BASE, "--seq-len", "96", "--max-steps", "4", "--output-dir", str(root / "chat")]) == 0
    return root


def _final_val_loss(run_dir) -> float:
    return json.loads((run_dir / "training_log.json").read_text())["evals"][-1]["val_loss"]


def _eval_json(cli, *args):
    code, out, err = cli("eval", *args, "--json")
    assert code == 0, err
    return json.loads(out), err


def test_perplexity_reproduces_the_training_validation_loss(runs, cli):
    """Same windows, batches and (recorded bf16) autocast as train's evaluation: the same number."""
    report, err = _eval_json(cli, "--model", runs / "held_out" / "checkpoint-final.safetensors",
                             "--data", runs / "val.txt", "--max-batches", "3")
    (ppl,) = report["perplexity"]
    assert ppl["loss"] == pytest.approx(_final_val_loss(runs / "held_out"), abs=1e-5)
    assert (ppl["seq_len"], ppl["batch_size"], ppl["dtype"], ppl["batches"]) == (32, 8, "bf16", 3)
    assert ppl["tokens"] == ppl["windows"] * 32 == 3 * 8 * 32
    assert ppl["perplexity"] == pytest.approx(2.718281828 ** ppl["loss"], rel=1e-6)
    assert "seq_len 32, batch 8, bf16" in err


def test_val_fraction_scores_the_held_out_tail_train_used(runs, cli):
    report, _ = _eval_json(cli, "--model", runs / "fraction", "--data", runs / "train.txt", "--val-fraction", "0.2",
                           "--max-batches", "50")
    assert report["perplexity"][0]["loss"] == pytest.approx(_final_val_loss(runs / "fraction"), abs=1e-5)
    whole, _ = _eval_json(cli, "--model", runs / "fraction", "--data", runs / "train.txt", "--max-batches", "20")
    assert whole["perplexity"][0]["windows"] == 160 > report["perplexity"][0]["windows"]


def test_chat_data_uses_the_training_mask(runs, cli):
    """Held-out conversations: one padded row each, only the assistant tokens scored, as train measured them."""
    report, _ = _eval_json(cli, "--model", runs / "chat", "--data", runs / "chats_val.jsonl")
    ppl = report["perplexity"][0]
    assert ppl["loss"] == pytest.approx(_final_val_loss(runs / "chat"), abs=1e-5)
    assert ppl["windows"] == 8
    # scored: each reply "cat N sees the red house." and its end-of-turn token, nothing of the prompt
    assert ppl["tokens"] == sum(len(f"cat {i} sees the red house.") + 1 for i in range(32, 40))


def test_settings_given_override_the_run(runs, cli):
    report, _ = _eval_json(cli, "--model", runs / "held_out", "--data", runs / "val.txt", "--seq-len", "16",
                           "--batch-size", "2", "--dtype", "f32", "--max-batches", "4")
    ppl = report["perplexity"][0]
    assert (ppl["seq_len"], ppl["batch_size"], ppl["dtype"], ppl["windows"], ppl["tokens"]) == (16, 2, "f32", 8, 128)


def test_tasks_report_schema_and_skipped_records(runs, cli, tmp_path):
    tasks = tmp_path / "mixed.jsonl"
    tasks.write_text("\n".join([
        json.dumps({"type": "multiple_choice", "context": "the cat sees the", "choices": [" red", " ???"],
                    "answer": 0, "task": "colour"}),
        json.dumps({"type": "generate", "prompt": "the cat sees", "answer": "zzz", "stop": ["."], "task": "gen"}),
        "{broken",
        json.dumps({"type": "multiple_choice", "context": "x", "choices": ["a", "b"], "answer": 5}),
    ]) + "\n", encoding="utf-8")
    report, err = _eval_json(cli, "--model", runs / "held_out", "--tasks", tasks, "--max-tokens", "8")
    assert set(report) == {"model", "tokenizer", "device", "perplexity", "tasks", "skipped", "lm_eval"}
    assert report["perplexity"] == [] and report["lm_eval"] == {}
    by_task = {t["task"]: t for t in report["tasks"]}
    assert by_task["colour"]["type"] == "multiple_choice" and by_task["colour"]["count"] == 1
    assert set(by_task["colour"]["metrics"]) == {"acc", "acc_norm"}
    assert by_task["gen"]["metrics"] == {"exact_match": 0.0}
    assert [(s["line"], s["file"]) for s in report["skipped"]] == [(3, str(tasks)), (4, str(tasks))]
    assert "2 task record(s) skipped" in err and "mixed.jsonl:3: not valid JSON" in err


def test_table_output(runs, cli, tmp_path):
    tasks = tmp_path / "t.jsonl"
    tasks.write_text(json.dumps({"context": "the", "choices": [" cat", " dog"], "answer": 0}) + "\n")
    code, out, _ = cli("eval", "--model", runs / "held_out", "--data", runs / "val.txt", "--tasks", tasks)
    assert code == 0
    assert "perplexity" in out and "val.txt" in out and "acc_norm" in out and "multiple_choice" in out


@pytest.mark.parametrize("args, message", [
    ((), "nothing to evaluate"),
    (("--data", "missing.txt"), "dataset file not found: missing.txt"),
    (("--tasks", "missing.jsonl"), "task file missing.jsonl not found"),
    (("--data", "VAL", "--seq-len", "5000"), "--seq-len 5000 must be in 1..1024"),
    (("--data", "VAL", "--max-tokens", "0"), "--max-tokens must be positive"),
    (("--data", "VAL", "--dtype", "f8"), "unknown dtype 'f8'"),
    (("--data", "VAL", "--include-path", "."), "--include-path adds lm-eval task definitions"),
])
def test_bad_input_is_one_line(runs, cli, args, message):
    args = [str(runs / "val.txt") if a == "VAL" else a for a in args]
    code, out, err = cli("eval", "--model", runs / "held_out", *args)
    assert code == 1 and out == ""
    assert err.startswith("Error: ") and message in err and "Traceback" not in err


def test_a_task_file_with_only_bad_records_fails_before_loading(runs, cli, tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"type": "multiple_choice", "choices": ["a"]}\n')
    code, _, err = cli("eval", "--model", tmp_path / "no-such-checkpoint", "--tasks", bad)
    assert code == 1 and "has no valid record (1 skipped; line 1: 'context' must be a string" in err


def test_lm_eval_tasks_agree_with_the_same_records_in_vesper_format(runs, cli, tmp_path, monkeypatch):
    """One multiple-choice set, written once as a Vesper task file and once as a local lm-eval task: the same
    accuracies (both score log P(choice | context) through the same scorer), with the datasets library offline."""
    pytest.importorskip("lm_eval")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    records = [{"context": f"the cat sees the red house number {i}", "choices": [" every", " never", " ???"],
                "answer": i % 3} for i in range(6)]
    data = tmp_path / "mc.jsonl"
    data.write_text("\n".join(map(json.dumps, records)) + "\n")
    folder = tmp_path / "tasks"
    folder.mkdir()
    (folder / "mc.yaml").write_text(
        f"task: house_mc\ndataset_path: json\ndataset_kwargs:\n  data_files:\n    test: {data}\n"
        f"  cache_dir: {tmp_path / 'hf'}\ntest_split: test\noutput_type: multiple_choice\n"
        'doc_to_text: "{{context}}"\ndoc_to_choice: "{{choices}}"\ndoc_to_target: "{{answer}}"\n'
        'target_delimiter: ""\nmetric_list:\n  - metric: acc\n  - metric: acc_norm\n')
    report, _ = _eval_json(cli, "--model", runs / "held_out", "--tasks", data, "--lm-eval-tasks", "house_mc",
                           "--include-path", folder, "--dtype", "f32")
    ours = report["tasks"][0]["metrics"]
    assert report["lm_eval"]["house_mc"] == {"count": 6, "acc": pytest.approx(ours["acc"]),
                                             "acc_norm": pytest.approx(ours["acc_norm"])}


def test_lm_eval_missing_names_the_extra(runs, cli, monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "lm_eval", None)  # import lm_eval now raises ImportError
    code, _, err = cli("eval", "--model", runs / "held_out", "--lm-eval-tasks", "x")
    assert code == 1 and "pip install 'vesper[lm-eval]'" in err

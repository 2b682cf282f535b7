"""The local task format: parsing, skipped records, multiple-choice and exact-match scoring."""

from __future__ import annotations

import json

import pytest

from vesper_core.errors import DataError
from vesper_cli.engine.eval_tasks import (GenerateRecord, MultipleChoiceRecord, RecordError, generate_answer,
                                          parse_record, read_task_file, run_tasks)
from vesper_cli.engine.loglikelihood import LikelihoodScorer


def _write(path, records):
    path.write_text("\n".join(r if isinstance(r, str) else json.dumps(r) for r in records) + "\n", encoding="utf-8")
    return path


def test_type_is_inferred_and_answer_may_be_the_choice_text():
    mc = parse_record({"context": "c", "choices": ["a", "b"], "answer": "b"}, line=1, default_task="t")
    assert isinstance(mc, MultipleChoiceRecord) and mc.answer == 1 and mc.task == "t"
    gen = parse_record({"prompt": "p", "answer": ["x", "y"], "task": "mine"}, line=2, default_task="t")
    assert isinstance(gen, GenerateRecord) and gen.answers == ("x", "y") and gen.task == "mine"


@pytest.mark.parametrize("record, reason", [
    ([1, 2], "must be a JSON object"),
    ({"context": "c"}, "neither 'choices'"),
    ({"type": "essay", "prompt": "p"}, "unknown type 'essay'"),
    ({"type": "multiple_choice", "context": "c", "choices": ["only"], "answer": 0}, "at least two"),
    ({"type": "multiple_choice", "context": "c", "choices": ["a", "b"], "answer": 2}, "index in 0..1"),
    ({"type": "multiple_choice", "context": "c", "choices": ["a", "b"], "answer": True}, "index in 0..1"),
    ({"type": "multiple_choice", "context": "c", "choices": ["a", "b"], "answer": "z"}, "not one of the choices"),
    ({"type": "multiple_choice", "context": 3, "choices": ["a", "b"], "answer": 0}, "'context' must be a string"),
    ({"type": "generate", "prompt": "", "answer": "a"}, "'prompt' is empty"),
    ({"type": "generate", "prompt": "p"}, "'answer' must be a string"),
    ({"type": "generate", "prompt": "p", "answer": "a", "max_tokens": 0}, "'max_tokens' must be a positive"),
    ({"type": "generate", "prompt": "p", "answer": "a", "stop": [""]}, "'stop' strings must not be empty"),
])
def test_bad_records_say_why(record, reason):
    with pytest.raises(RecordError, match=reason):
        parse_record(record, line=1, default_task="t")


def test_bad_lines_are_skipped_with_their_line_numbers(tmp_path):
    path = _write(tmp_path / "t.jsonl", [
        {"context": "c", "choices": ["a", "b"], "answer": 0}, "{not json", "", {"prompt": "p"},
        {"prompt": "p", "answer": "a"}])
    parsed = read_task_file(path)
    assert len(parsed.records) == 2
    assert [(s.line, s.reason.split(" (")[0]) for s in parsed.skipped] == [
        (2, "not valid JSON"), (4, "'answer' must be a string or a non-empty list of strings, got nothing")]


def test_a_file_without_valid_records_is_an_error(tmp_path):
    path = _write(tmp_path / "bad.jsonl", ["{oops", {"type": "generate"}])
    with pytest.raises(DataError, match=r"no valid record \(2 skipped; line 1: not valid JSON"):
        read_task_file(path)
    with pytest.raises(DataError, match="not found"):
        read_task_file(tmp_path / "missing.jsonl")


def test_limit_keeps_the_first_records(tmp_path):
    path = _write(tmp_path / "t.jsonl", [{"prompt": f"p{i}", "answer": "a"} for i in range(5)])
    assert [r.prompt for r in read_task_file(path, limit=2).records] == ["p0", "p1"]


def test_multiple_choice_accuracy_follows_the_log_likelihoods(tiny_gen, tmp_path):
    """acc picks the highest log P(choice | context), acc_norm the highest per character; both checked
    against the scorer's own numbers, on records whose raw and normalised winners differ."""
    scorer = LikelihoodScorer(tiny_gen.model, tiny_gen.tokenizer, tiny_gen.device, batch_size=4)
    contexts = ["the cat", "a dog", "one two", "red sky", "x"]
    choices = [" sat", " sat on the mat today", " ran", " z"]
    records, expected_raw, expected_norm = [], [], []
    for i, context in enumerate(contexts):
        lls = [s.logprob for s in scorer.loglikelihood([(context, c) for c in choices])]
        best_raw = max(range(4), key=lambda k: lls[k])
        best_norm = max(range(4), key=lambda k: lls[k] / len(choices[k]))
        answer = best_raw if i % 2 == 0 else best_norm  # right by one rule, maybe wrong by the other
        records.append({"context": context, "choices": choices, "answer": answer, "task": "mc"})
        expected_raw.append(best_raw == answer)
        expected_norm.append(best_norm == answer)
    report = run_tasks(read_task_file(_write(tmp_path / "mc.jsonl", records)), tiny_gen, scorer)
    (result,) = report.results
    assert result.count == 5 and result.type == "multiple_choice"
    assert result.metrics["acc"] == pytest.approx(sum(expected_raw) / 5)
    assert result.metrics["acc_norm"] == pytest.approx(sum(expected_norm) / 5)
    assert [r.prediction for r in report.records] == [
        max(range(4), key=lambda k: r.logprobs[k]) for r in report.records]


def test_exact_match_compares_stripped_greedy_text(tiny_gen, tmp_path):
    produced = generate_answer(tiny_gen, "the cat", max_tokens=6, stop=())
    assert produced, "the greedy completion should not be empty"
    records = [{"prompt": "the cat", "answer": f"  {produced.strip()}\n", "max_tokens": 6, "task": "g"},
               {"prompt": "the cat", "answer": produced.strip() + "!", "max_tokens": 6, "task": "g"},
               {"prompt": "the cat", "answer": ["nope", produced], "max_tokens": 6, "task": "g"}]
    scorer = LikelihoodScorer(tiny_gen.model, tiny_gen.tokenizer, tiny_gen.device)
    report = run_tasks(read_task_file(_write(tmp_path / "g.jsonl", records)), tiny_gen, scorer)
    assert report.results[0].metrics["exact_match"] == pytest.approx(2 / 3)
    assert [r.correct for r in report.records] == [True, False, True]


def test_stop_strings_end_the_answer(tiny_gen):
    full = generate_answer(tiny_gen, "hello", max_tokens=12, stop=())
    cut_at = full.strip()[1:3] if len(full.strip()) >= 3 else None
    if not cut_at:
        pytest.skip("the untrained model's greedy text is too short to place a stop string in")
    stopped = generate_answer(tiny_gen, "hello", max_tokens=12, stop=(cut_at,))
    assert cut_at not in stopped and full.startswith(stopped)


def test_a_prompt_longer_than_the_context_keeps_its_end(tmp_path):
    from tests.engine.conftest import make_generator

    gen = make_generator(context=16)
    long_prompt = "abc " * 20
    assert generate_answer(gen, long_prompt, max_tokens=4, stop=()) == generate_answer(
        gen, long_prompt[-12:], max_tokens=4, stop=())

"""Local evaluation tasks: multiple choice by log-likelihood, exact-match generation.

A task file is JSONL, one record per line (blank lines are skipped)::

    {"type": "multiple_choice", "context": "The sky is", "choices": [" blue", " green"], "answer": 0}
    {"type": "generate", "prompt": "2 + 2 =", "answer": " 4", "stop": ["\\n"], "max_tokens": 8}

* ``type`` may be left out: a record with ``choices`` is multiple choice, one with ``prompt`` is generation.
* multiple choice: ``answer`` is the index of the right choice (or the choice's text); at least two
  choices. Each choice is scored as log P(choice | context) (lm-evaluation-harness rules, see
  ``engine.loglikelihood``); ``acc`` takes the highest, ``acc_norm`` the highest per character of the choice.
* generate: greedy decoding of at most ``max_tokens`` new tokens (default: the command's
  ``--max-tokens``), ending before the first ``stop`` string; ``answer`` is a string or a list of
  accepted strings; ``exact_match`` compares after stripping surrounding whitespace.
* optional: ``task`` (a name that groups records into their own result; default: the file's stem) and
  ``id`` (kept with the record).

A record that does not follow the format is skipped and reported (line and reason); a file with no
valid record is an error.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

from vesper_core.errors import ConfigError, DataError
from vesper_cli.engine.generation import Generator, SamplingConfig
from vesper_cli.engine.loglikelihood import LikelihoodScorer

MULTIPLE_CHOICE = "multiple_choice"
GENERATE = "generate"
TASK_TYPES = (MULTIPLE_CHOICE, GENERATE)


@dataclass(frozen=True)
class MultipleChoiceRecord:
    task: str
    line: int
    context: str
    choices: tuple[str, ...]
    answer: int
    id: Any = None


@dataclass(frozen=True)
class GenerateRecord:
    task: str
    line: int
    prompt: str
    answers: tuple[str, ...]
    stop: tuple[str, ...] = ()
    max_tokens: int | None = None
    id: Any = None


@dataclass(frozen=True)
class SkippedRecord:
    file: str
    line: int
    reason: str


@dataclass
class TaskFile:
    path: Path
    records: list[MultipleChoiceRecord | GenerateRecord]
    skipped: list[SkippedRecord]


class RecordError(ValueError):
    """One record does not follow the task format (the record is skipped, the reason reported)."""


def _string(record: dict, key: str, *, allow_empty: bool = False) -> str:
    value = record.get(key)
    if not isinstance(value, str):
        raise RecordError(f"'{key}' must be a string, got {_kind(value)}")
    if not allow_empty and not value:
        raise RecordError(f"'{key}' is empty")
    return value


def _kind(value: Any) -> str:
    return "nothing" if value is None else type(value).__name__


def _strings(value: Any, key: str) -> tuple[str, ...]:
    if isinstance(value, str):
        return (value,)
    if isinstance(value, list) and value and all(isinstance(v, str) for v in value):
        return tuple(value)
    raise RecordError(f"'{key}' must be a string or a non-empty list of strings, got {_kind(value)}")


def parse_record(record: Any, *, line: int, default_task: str) -> MultipleChoiceRecord | GenerateRecord:
    """One task record from its decoded JSON; RecordError says what is wrong with it."""
    if not isinstance(record, dict):
        raise RecordError(f"a record must be a JSON object, got {_kind(record)}")
    kind = record.get("type")
    if kind is None:
        kind = MULTIPLE_CHOICE if "choices" in record else GENERATE if "prompt" in record else None
        if kind is None:
            raise RecordError("no 'type', and neither 'choices' (multiple choice) nor 'prompt' (generate)")
    if kind not in TASK_TYPES:
        raise RecordError(f"unknown type {kind!r}; use one of {', '.join(TASK_TYPES)}")
    task = record.get("task", default_task)
    if not isinstance(task, str) or not task:
        raise RecordError(f"'task' must be a non-empty string, got {_kind(task)}")
    if kind == MULTIPLE_CHOICE:
        context = _string(record, "context", allow_empty=True)
        choices = record.get("choices")
        if not isinstance(choices, list) or len(choices) < 2 or not all(isinstance(c, str) and c for c in choices):
            raise RecordError("'choices' must be a list of at least two non-empty strings")
        answer = record.get("answer")
        if isinstance(answer, str):
            if answer not in choices:
                raise RecordError(f"'answer' {answer!r} is not one of the choices")
            answer = choices.index(answer)
        if isinstance(answer, bool) or not isinstance(answer, int) or not 0 <= answer < len(choices):
            raise RecordError(f"'answer' must be a choice index in 0..{len(choices) - 1} (or a choice's text), "
                              f"got {answer!r}")
        return MultipleChoiceRecord(task=task, line=line, context=context, choices=tuple(choices), answer=answer,
                                    id=record.get("id"))
    prompt = _string(record, "prompt")
    answers = _strings(record.get("answer"), "answer")
    stop = _strings(record["stop"], "stop") if record.get("stop") not in (None, []) else ()
    if any(not s for s in stop):
        raise RecordError("'stop' strings must not be empty")
    max_tokens = record.get("max_tokens")
    if max_tokens is not None and (isinstance(max_tokens, bool) or not isinstance(max_tokens, int) or max_tokens <= 0):
        raise RecordError(f"'max_tokens' must be a positive integer, got {max_tokens!r}")
    return GenerateRecord(task=task, line=line, prompt=prompt, answers=answers, stop=stop, max_tokens=max_tokens,
                          id=record.get("id"))


def read_task_file(path: str | Path, *, limit: int = 0) -> TaskFile:
    """Parse a task file; bad records are collected in ``skipped``. DataError when nothing valid is left."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"task file {path} not found; pass a .jsonl file in the task format (see `vesper eval --help`)")
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except UnicodeDecodeError as exc:
        raise DataError(f"task file {path} is not UTF-8 text ({exc})") from None
    records, skipped = [], []
    for number, text in enumerate(lines, start=1):
        if not text.strip():
            continue
        if limit and len(records) >= limit:
            break
        try:
            records.append(parse_record(json.loads(text), line=number, default_task=path.stem))
        except json.JSONDecodeError as exc:
            skipped.append(SkippedRecord(str(path), number, f"not valid JSON ({exc.msg} at column {exc.colno})"))
        except RecordError as exc:
            skipped.append(SkippedRecord(str(path), number, str(exc)))
    if not records:
        first = f"; line {skipped[0].line}: {skipped[0].reason}" if skipped else ""
        raise DataError(f"task file {path} has no valid record ({len(skipped)} skipped{first}); see the task format "
                        f"in `vesper eval --help`")
    return TaskFile(path, records, skipped)


# -- scoring -----------------------------------------------------------------------------------------
@dataclass
class RecordResult:
    task: str
    type: str
    line: int
    correct: bool
    prediction: Any  # the chosen index (multiple choice) or the generated text
    id: Any = None
    correct_norm: bool | None = None  # multiple choice: by length-normalised log-likelihood
    logprobs: list[float] | None = None  # multiple choice: log P(choice | context)


@dataclass
class TaskResult:
    file: str
    task: str
    type: str
    count: int
    metrics: dict[str, float]

    def to_dict(self) -> dict[str, Any]:
        return {"file": self.file, "task": self.task, "type": self.type, "count": self.count,
                "metrics": self.metrics}


@dataclass
class TaskReport:
    results: list[TaskResult] = field(default_factory=list)
    skipped: list[SkippedRecord] = field(default_factory=list)
    records: list[RecordResult] = field(default_factory=list)


def score_multiple_choice(records: Sequence[MultipleChoiceRecord], scorer: LikelihoodScorer,
                          on_skip: Callable[[MultipleChoiceRecord, str], None]) -> list[RecordResult]:
    """All choices of all records in one batched pass."""
    pairs, owners = [], []
    for record in records:
        try:
            split = [scorer.split(record.context, choice) for choice in record.choices]
        except (DataError, ConfigError) as exc:
            on_skip(record, str(exc))
            continue
        owners.append(record)
        pairs.extend(split)
    scores = scorer.score_tokens(pairs)
    results, at = [], 0
    for record in owners:
        lls = [s.logprob for s in scores[at:at + len(record.choices)]]
        at += len(record.choices)
        normed = [ll / len(choice) for ll, choice in zip(lls, record.choices)]
        pred, pred_norm = _argmax(lls), _argmax(normed)
        results.append(RecordResult(task=record.task, type=MULTIPLE_CHOICE, line=record.line, id=record.id,
                                    correct=pred == record.answer, correct_norm=pred_norm == record.answer,
                                    prediction=pred, logprobs=lls))
    return results


def _argmax(values: Sequence[float]) -> int:
    return max(range(len(values)), key=lambda i: values[i])


def generate_answer(gen: Generator, prompt: str, *, max_tokens: int, stop: Sequence[str]) -> str:
    """Greedy completion of ``prompt`` (its oldest tokens dropped when it would not fit the context)."""
    window = gen.model.config.max_position_embeddings
    if max_tokens >= window:
        raise ConfigError(f"max_tokens {max_tokens} leaves no room for the prompt in the model's context of {window}")
    ids = gen.tokenizer.encode(prompt)
    if not ids:
        raise DataError(f"prompt {prompt!r} is empty after tokenization")
    ids = ids[-(window - max_tokens):]
    sampling = SamplingConfig(max_tokens=max_tokens, temperature=0.0, stop=tuple(stop))
    return "".join(gen.stream_ids(ids, sampling))


def score_generation(records: Sequence[GenerateRecord], gen: Generator, *, default_max_tokens: int,
                     on_skip: Callable[[GenerateRecord, str], None]) -> list[RecordResult]:
    results = []
    for record in records:
        try:
            text = generate_answer(gen, record.prompt, max_tokens=record.max_tokens or default_max_tokens,
                                   stop=record.stop)
        except (DataError, ConfigError) as exc:
            on_skip(record, str(exc))
            continue
        correct = any(text.strip() == answer.strip() for answer in record.answers)
        results.append(RecordResult(task=record.task, type=GENERATE, line=record.line, id=record.id,
                                    correct=correct, prediction=text))
    return results


def summarize(file: str, results: Sequence[RecordResult]) -> list[TaskResult]:
    """One TaskResult per (task, type), in the order the tasks first appear."""
    groups: dict[tuple[str, str], list[RecordResult]] = {}
    for r in results:
        groups.setdefault((r.task, r.type), []).append(r)
    out = []
    for (task, kind), members in groups.items():
        n = len(members)
        if kind == MULTIPLE_CHOICE:
            metrics = {"acc": sum(r.correct for r in members) / n,
                       "acc_norm": sum(bool(r.correct_norm) for r in members) / n}
        else:
            metrics = {"exact_match": sum(r.correct for r in members) / n}
        out.append(TaskResult(file=file, task=task, type=kind, count=n, metrics=metrics))
    return out


def run_tasks(task_file: TaskFile, gen: Generator, scorer: LikelihoodScorer, *,
              default_max_tokens: int = 32) -> TaskReport:
    """Score every valid record of a parsed task file (``read_task_file``); see the module docstring."""
    if default_max_tokens <= 0:
        raise ConfigError(f"--max-tokens must be positive, got {default_max_tokens}")
    report = TaskReport(skipped=list(task_file.skipped))

    def skip(record, reason: str) -> None:
        report.skipped.append(SkippedRecord(str(task_file.path), record.line, reason))

    mc = [r for r in task_file.records if isinstance(r, MultipleChoiceRecord)]
    generation = [r for r in task_file.records if isinstance(r, GenerateRecord)]
    scored = score_multiple_choice(mc, scorer, skip) if mc else []
    scored += score_generation(generation, gen, default_max_tokens=default_max_tokens, on_skip=skip)
    scored.sort(key=lambda r: r.line)
    report.records = scored
    report.results = summarize(str(task_file.path), scored)
    report.skipped.sort(key=lambda s: s.line)
    return report

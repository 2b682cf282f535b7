"""Slots: a full queue answers 429, a client that leaves mid-stream frees its slot, the queue's accounting."""

from __future__ import annotations

import dataclasses
import time

import httpx
import pytest
import torch

from tests.serve.conftest import make_app, running
from vesper_cli.engine.generation import SamplingConfig
from vesper_cli.serve.scheduler import Job, QueueFullError, RowSpec, Scheduler


class SlowModel(torch.nn.Module):
    """The model, with a pause in every forward, so that a request is surely still decoding when the next comes."""

    def __init__(self, inner: torch.nn.Module, pause: float):
        super().__init__()
        self.inner = inner
        self.config = inner.config
        self.embeddings = inner.embeddings
        self.pause = pause

    def forward(self, *args, **kwargs):
        time.sleep(self.pause)
        return self.inner(*args, **kwargs)


def _wait_until(predicate, what: str, limit: float = 30.0) -> None:
    deadline = time.monotonic() + limit
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting until {what}")
        time.sleep(0.05)


def test_queue_full_is_429_and_a_disconnect_frees_the_slot(tiny_generator):
    slow = dataclasses.replace(tiny_generator, model=SlowModel(tiny_generator.model, 0.05))
    app = make_app(slow, max_batch_size=1, max_queue=0)
    body = {"model": "tiny-run", "prompt": "the cat", "max_tokens": 80, "stream": True}
    with running(app) as url:
        health = lambda: httpx.get(f"{url}/health").json()  # noqa: E731
        with httpx.Client(timeout=60) as first:
            with first.stream("POST", f"{url}/v1/completions", json=body) as stream:
                lines = stream.iter_lines()
                assert next(line for line in lines if line.startswith("data: "))  # it is decoding now
                refused = httpx.post(f"{url}/v1/completions", json={**body, "stream": False}, timeout=60)
                assert refused.status_code == 429
                assert refused.json()["error"]["code"] == "queue_full" and refused.headers["retry-after"] == "1"
                assert health()["active_rows"] == 1
        # the first client left after one chunk: its row is dropped at the next step, long before 80 tokens
        _wait_until(lambda: health()["active_rows"] == 0, "the abandoned row is dropped")
        ok = httpx.post(f"{url}/v1/completions", json={**body, "stream": False, "max_tokens": 3}, timeout=60)
        assert ok.status_code == 200 and ok.json()["usage"]["completion_tokens"] == 3
        assert app.state.scheduler.stats["decode_steps"] < 70  # the abandoned request did not run to its end


def _job(num_rows: int) -> Job:
    rows = [RowSpec(index=i, prompt_ids=[1, 2], sampling=SamplingConfig(max_tokens=2)) for i in range(num_rows)]
    return Job(rows=rows, emit=lambda event: None)


def test_queue_counts_only_requests_that_wait_for_a_slot(tiny_generator):
    scheduler = Scheduler(tiny_generator, max_batch_size=3, max_queue=1)  # not started: nothing is admitted
    scheduler.submit(_job(2))  # will run at the next step
    scheduler.submit(_job(1))  # also fits: 3 rows
    scheduler.submit(_job(1))  # waits: the one queue place
    with pytest.raises(QueueFullError, match="1 requests are already waiting"):
        scheduler.submit(_job(1))
    assert scheduler.load()["waiting_requests"] == 3
    with pytest.raises(ValueError):
        scheduler.submit(_job(4))  # can never fit


def test_scheduler_runs_jobs_in_order_and_reports_each_row(tiny_generator):
    scheduler = Scheduler(tiny_generator, max_batch_size=2, max_queue=8)
    events: list = []
    jobs = [Job(rows=[RowSpec(index=0, prompt_ids=ids, sampling=SamplingConfig(max_tokens=n, temperature=0))],
                emit=events.append) for ids, n in (([1, 2], 3), ([1, 2, 3], 5), ([4], 2))]
    for job in jobs:
        scheduler.submit(job)
    scheduler.start()
    try:
        _wait_until(lambda: sum(e.finish_reason is not None for e in events) == 3, "three rows finish")
    finally:
        scheduler.stop()
    ends = [e for e in events if e.finish_reason is not None]
    assert sorted(e.completion_tokens for e in ends) == [2, 3, 5]
    assert all(e.finish_reason == "length" for e in ends) and not any(e.error for e in events)


def _greedy(generator, prompt: list[int], num: int) -> list[int]:
    from vesper_core.generation import generate_tokens

    return [int(t[0]) for t in generate_tokens(generator.model, torch.tensor([prompt]), max_new_tokens=num,
                                               temperature=0)]


def test_a_later_request_joins_the_running_batch_and_decodes_as_alone(tiny_generator):
    """Continuous batching: B arrives while A decodes, takes the cache slots that end at A's length (a key mask
    hides the rest) and produces the tokens it produces alone."""
    slow = dataclasses.replace(tiny_generator, model=SlowModel(tiny_generator.model, 0.02))
    scheduler = Scheduler(slow, max_batch_size=4)
    got: dict[str, list] = {"a": [], "b": []}
    job_a = Job(rows=[RowSpec(index=0, prompt_ids=[1, 2, 3], sampling=SamplingConfig(max_tokens=40, temperature=0))],
                emit=got["a"].append)
    job_b = Job(rows=[RowSpec(index=0, prompt_ids=[4, 5], sampling=SamplingConfig(max_tokens=12, temperature=0,
                                                                                  stop_at_eos=False))],
                emit=got["b"].append)
    scheduler.submit(job_a)
    scheduler.start()
    try:
        _wait_until(lambda: len(got["a"]) >= 4, "A has decoded a few tokens")
        scheduler.submit(job_b)
        _wait_until(lambda: any(e.finish_reason for e in got["b"]) and any(e.finish_reason for e in got["a"]),
                    "both finish")
    finally:
        scheduler.stop()
    assert scheduler.stats["joins"] == 1 and scheduler.stats["max_rows_in_step"] == 2
    decode = tiny_generator.tokenizer.decode
    assert "".join(e.piece for e in got["b"]) == decode(_greedy(tiny_generator, [4, 5], 12)).rstrip()
    assert "".join(e.piece for e in got["a"]) == decode(_greedy(tiny_generator, [1, 2, 3], 40)).rstrip()


def test_a_client_that_gives_up_on_a_plain_answer_frees_its_slot(tiny_generator):
    slow = dataclasses.replace(tiny_generator, model=SlowModel(tiny_generator.model, 0.05))
    app = make_app(slow, max_batch_size=1, max_queue=0)
    with running(app) as url:
        with pytest.raises(httpx.TimeoutException):
            httpx.post(f"{url}/v1/completions", json={"model": "tiny-run", "prompt": "the cat", "max_tokens": 80},
                       timeout=1.0)
        _wait_until(lambda: httpx.get(f"{url}/health").json()["active_rows"] == 0, "the abandoned row is dropped")
        assert app.state.scheduler.stats["decode_steps"] < 70
        ok = httpx.post(f"{url}/v1/completions", json={"model": "tiny-run", "prompt": "the", "max_tokens": 2},
                        timeout=60)
        assert ok.status_code == 200

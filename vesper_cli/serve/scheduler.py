"""The decode scheduler behind ``vesper serve``: one worker thread, concurrent requests in shared decode steps.

Requests (``Job``: one prompt x ``n`` choices, or several prompts) wait in a bounded FIFO queue; a full queue
refuses new work at once (``QueueFullError``, answered with 429). The worker admits waiting jobs in order while
their rows fit in ``max_batch_size`` decoding rows. Rows admitted together whose prompts have the same token
count form one ``DecodeBatch`` (the model has no padding mask, so rows of different lengths cannot share a
forward pass): one prefill, then one batched forward per new token with a shared KV cache. Every loop of the
worker advances each live batch by one token, so a batch that started later does not wait for an earlier,
longer one to finish. Sampling is per row (its own temperature, top-k/p, repetition penalty, stop strings,
token budget and seeded generator), so a row's text does not depend on what shares its batch: a seeded
request repeats, and a greedy one equals ``vesper generate --temperature 0``.

Finished or cancelled rows leave the batch at once (their KV-cache rows are dropped) and free their slot for
the next waiting job. Nothing here knows HTTP: results go out through each job's ``emit`` callback.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Callable

import torch

from vesper_cli.engine.generation import Generator, SamplingConfig, _Row
from vesper_core.errors import VesperError
from vesper_core.generation import KVCache, apply_repetition_penalty, sample_next


class QueueFullError(VesperError):
    """The waiting queue is at its bound; the caller should retry later (HTTP 429)."""


class SchedulerStoppedError(VesperError):
    """The scheduler is shutting down and takes no new work (HTTP 503)."""


@dataclass(frozen=True)
class Event:
    """What the worker reports for one choice: a text ``piece``, or the end (``finish_reason`` set), or ``error``."""

    index: int
    piece: str = ""
    finish_reason: str | None = None  # "stop" (EOS or a stop string) | "length" (token budget)
    completion_tokens: int = 0
    error: str | None = None


@dataclass
class RowSpec:
    """One choice to generate: prompt ids, its sampling settings (``max_tokens`` already fits the context)."""

    index: int
    prompt_ids: list[int]
    sampling: SamplingConfig
    seed: int | None = None  # its own random stream when set
    stop_ids: tuple[int, ...] = ()  # token ids that end the row (not emitted), besides EOS: a chat end-of-turn


@dataclass
class Job:
    """One request: its rows, and the thread-safe callback that receives their events."""

    rows: list[RowSpec]
    emit: Callable[[Event], None]
    cancelled: threading.Event = field(default_factory=threading.Event)

    def cancel(self) -> None:
        self.cancelled.set()


class _LiveRow:
    """A row in a batch: its ids so far, decoded text state and generator."""

    def __init__(self, job: Job, spec: RowSpec, generator: Generator):
        self.job = job
        self.spec = spec
        self.ids = list(spec.prompt_ids)
        self.text = _Row(generator.tokenizer, spec.sampling)
        self.num_sampled = 0
        self.rng = (torch.Generator(device=generator.device).manual_seed(spec.seed)
                    if spec.seed is not None else None)

    def finish_reason(self) -> str | None:
        if self.text.stopped_by is not None:
            return "stop"
        if self.num_sampled >= self.spec.sampling.max_tokens:
            return "length"
        return None


class DecodeBatch:
    """Rows with equal prompt length decoding together: a shared KV cache, per-row sampling."""

    def __init__(self, generator: Generator, rows: list[_LiveRow]):
        self.generator = generator
        self.rows = rows
        model = generator.model
        prompt = torch.tensor([r.ids for r in rows], dtype=torch.long, device=generator.device)  # (B, T)
        longest = max(r.spec.sampling.max_tokens for r in rows)
        self.cache = KVCache.for_model(model, batch=len(rows), max_len=prompt.shape[1] + longest)
        with torch.no_grad():
            self.logits = model(prompt, kv_cache=self.cache).logits[:, -1]  # (B, V)

    def step(self) -> None:
        """Sample one token for every row, report it, drop finished rows, run the next forward."""
        next_ids: list[int] = []
        keep: list[int] = []
        for i, row in enumerate(self.rows):
            if row.job.cancelled.is_set():
                continue
            sampling = row.spec.sampling
            history = torch.tensor([row.ids], dtype=torch.long, device=self.logits.device)  # (1, T)
            logits = apply_repetition_penalty(self.logits[i:i + 1].float(), history, sampling.repetition_penalty)
            token = int(sample_next(logits, temperature=sampling.temperature, top_k=sampling.top_k,
                                    top_p=sampling.top_p, generator=row.rng)[0])
            row.ids.append(token)
            row.num_sampled += 1
            if token in row.spec.stop_ids:
                row.text.stopped_by = "stop"
            else:
                row.text.add(token)
            piece = row.text.take()
            reason = row.finish_reason()
            if reason is not None:
                piece += row.text.finish()
            if piece:
                row.job.emit(Event(row.spec.index, piece=piece))
            if reason is not None:
                row.job.emit(Event(row.spec.index, finish_reason=reason, completion_tokens=row.num_sampled))
                continue
            keep.append(i)
            next_ids.append(token)
        if len(keep) < len(self.rows):
            self._keep(keep)
        if self.rows:
            ids = torch.tensor(next_ids, dtype=torch.long, device=self.logits.device)[:, None]  # (B, 1)
            with torch.no_grad():
                self.logits = self.generator.model(ids, kv_cache=self.cache).logits[:, -1]  # (B, V)

    def _keep(self, keep: list[int]) -> None:
        self.rows = [self.rows[i] for i in keep]
        if not keep:
            return
        index = torch.tensor(keep, dtype=torch.long, device=self.logits.device)
        for layer in self.cache.layers:
            layer.k = layer.k.index_select(0, index)  # (B', NH, max_len, D)
            layer.v = layer.v.index_select(0, index)
        self.cache.batch = len(keep)
        self.logits = self.logits.index_select(0, index)  # (B', V)

    def fail(self, message: str) -> None:
        for row in self.rows:
            row.job.emit(Event(row.spec.index, error=message))
        self.rows = []


class Scheduler:
    """A bounded FIFO of jobs and the one worker thread that decodes them (see the module docstring)."""

    def __init__(self, generator: Generator, *, max_batch_size: int = 8, max_queue: int = 32):
        if max_batch_size < 1:
            raise ValueError(f"max_batch_size must be >= 1, got {max_batch_size}")
        if max_queue < 0:
            raise ValueError(f"max_queue must be >= 0, got {max_queue}")
        self.generator = generator
        self.max_batch_size = max_batch_size
        self.max_queue = max_queue
        self._waiting: deque[Job] = deque()
        self._batches: list[DecodeBatch] = []
        self._lock = threading.Condition()
        self._reserved = 0
        self._stopping = False
        self._thread: threading.Thread | None = None
        self.stats = {"decode_steps": 0, "max_rows_in_step": 0}  # worker loops; most rows in one

    # -- the caller's side (any thread) ----------------------------------------------------
    def submit(self, job: Job) -> None:
        """Queue ``job``; QueueFullError when ``max_queue`` jobs already wait."""
        if len(job.rows) > self.max_batch_size:
            raise ValueError(f"a job has {len(job.rows)} rows but the batch holds {self.max_batch_size}")
        with self._lock:
            if self._stopping:
                raise SchedulerStoppedError("the server is shutting down")
            queued, free = self._queue_position()
            if not (queued == 0 and len(job.rows) <= free) and queued >= self.max_queue:
                raise QueueFullError(f"{queued} requests are already waiting for a decoding slot (the queue "
                                     f"holds {self.max_queue}); retry shortly")
            self._waiting.append(job)
            self._lock.notify()

    def load(self) -> dict:
        """Rows decoding now and jobs waiting (for /health)."""
        with self._lock:
            return {"active_rows": self._active_rows(), "waiting_requests": len(self._waiting),
                    "max_batch_size": self.max_batch_size, "max_queue": self.max_queue}

    def start(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="vesper-serve-decoder", daemon=True)
            self._thread.start()

    def stop(self, timeout: float = 10.0) -> None:
        with self._lock:
            self._stopping = True
            self._lock.notify()
        if self._thread is not None:
            self._thread.join(timeout)
            self._thread = None

    # -- the worker ----------------------------------------------------------------------
    def _active_rows(self) -> int:
        return self._reserved + sum(len(b.rows) for b in self._batches)

    def _queue_position(self) -> tuple[int, int]:
        """(waiting jobs that will not be admitted at the next step, rows left free after those that will)."""
        free, queued = self.max_batch_size - self._active_rows(), 0
        for job in self._waiting:
            if queued == 0 and len(job.rows) <= free:
                free -= len(job.rows)
            else:
                queued += 1
        return queued, free

    def _admit(self) -> list[Job]:
        """Waiting jobs, in order, while their rows fit (a job that does not fit blocks those behind it)."""
        admitted: list[Job] = []
        free = self.max_batch_size - self._active_rows()
        while self._waiting:
            job = self._waiting[0]
            if job.cancelled.is_set():
                self._waiting.popleft()
                continue
            if len(job.rows) > free:
                break
            admitted.append(self._waiting.popleft())
            free -= len(job.rows)
        self._reserved = sum(len(job.rows) for job in admitted)  # counted as active while they prefill
        return admitted

    def _run(self) -> None:
        while True:
            with self._lock:
                while not self._stopping and not self._waiting and not self._batches:
                    self._lock.wait()
                if self._stopping:
                    break
                admitted = self._admit()
            self._start_batches(admitted)
            with self._lock:
                self._reserved = 0
                rows = self._active_rows()
            self.stats["decode_steps"] += 1
            self.stats["max_rows_in_step"] = max(self.stats["max_rows_in_step"], rows)
            for batch in list(self._batches):
                self._guarded(batch, batch.step)
            with self._lock:
                self._batches = [b for b in self._batches if b.rows]
        with self._lock:
            batches, waiting = self._batches, list(self._waiting)
            self._batches, self._waiting = [], deque()
        for batch in batches:
            batch.fail("the server is shutting down")
        for job in waiting:
            for spec in job.rows:
                job.emit(Event(spec.index, error="the server is shutting down"))

    def _start_batches(self, jobs: list[Job]) -> None:
        groups: dict[int, list[_LiveRow]] = {}
        for job in jobs:
            for spec in job.rows:
                groups.setdefault(len(spec.prompt_ids), []).append(_LiveRow(job, spec, self.generator))
        for rows in groups.values():
            holder: list[DecodeBatch] = []
            ok = self._guarded_rows(rows, lambda: holder.append(DecodeBatch(self.generator, rows)))
            if ok:
                with self._lock:
                    self._batches.append(holder[0])

    def _guarded(self, batch: DecodeBatch, fn: Callable[[], None]) -> None:
        """Run one batch's step; an unexpected failure ends that batch's rows with an error, never the worker."""
        try:
            fn()
        except Exception as exc:  # noqa: BLE001 - the worker must survive anything one batch does
            batch.fail(f"generation failed: {type(exc).__name__}: {exc}")

    def _guarded_rows(self, rows: list[_LiveRow], fn: Callable[[], None]) -> bool:
        try:
            fn()
            return True
        except Exception as exc:  # noqa: BLE001
            for row in rows:
                row.job.emit(Event(row.spec.index, error=f"generation failed: {type(exc).__name__}: {exc}"))
            return False

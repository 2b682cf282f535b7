"""The decode scheduler behind ``vesper serve``: one worker thread, concurrent requests in shared decode steps.

Requests (``Job``: one prompt x ``n`` choices, or several prompts) wait in a bounded FIFO queue; a full queue
refuses new work at once (``QueueFullError``, answered with 429). The worker admits waiting jobs in order while
their rows fit in ``max_batch_size`` decoding rows (continuous batching): admitted rows with equal prompt
lengths are prefilled together and then join a running ``DecodeBatch`` whose cache already holds at least
their prompt length (they take the slots that end there; a key mask hides the earlier ones), or start a new
batch. Each batch runs one forward per new token for all its rows with one KV cache, and every loop of the
worker advances each live batch by one token. Sampling is per row (its own temperature, top-k/p, repetition
penalty, stop strings, token budget and seeded generator), so a row's text does not depend on what shares its
batch (up to float rounding in the shared forward): a seeded request repeats, and a greedy one alone equals
``vesper generate --temperature 0``.

Finished or cancelled rows leave the batch at once (their KV-cache rows are dropped) and free their slot for
the next waiting job. Nothing here knows HTTP: results go out through each job's ``emit`` callback.
"""

from __future__ import annotations

import threading
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
        self.rng = (torch.Generator(device=generator.device).manual_seed(spec.seed % 2**64)
                    if spec.seed is not None else None)

    def finish_reason(self) -> str | None:
        if self.text.stopped_by is not None:
            return "stop"
        if self.num_sampled >= self.spec.sampling.max_tokens:
            return "length"
        return None


class DecodeBatch:
    """Rows decoding together: one KV cache, one forward per new token, per-row sampling.

    A batch starts with rows of equal prompt length at slot 0. Later rows join it between steps: a prompt of
    length P joining when the cache holds L >= P slots is prefilled into slots [L - P, L), and a per-row key
    mask hides the slots before it. RoPE attention scores depend only on the distance between positions, so
    a row that starts at slot L - P computes what it would alone (up to float rounding).
    """

    def __init__(self, generator: Generator, rows: list[_LiveRow]):
        self.generator = generator
        self.model = generator.model
        self.context = self.model.config.max_position_embeddings
        self.rows = rows
        prompt = torch.tensor([r.ids for r in rows], dtype=torch.long, device=generator.device)  # (B, T)
        capacity = prompt.shape[1] + max(r.spec.sampling.max_tokens for r in rows)
        self.cache = KVCache.for_model(self.model, batch=len(rows), max_len=capacity)
        self.key_mask = torch.ones(len(rows), capacity, dtype=torch.bool, device=generator.device)  # (B, S)
        self.padded = False  # True once a row starts after slot 0: the key mask is then needed
        with torch.no_grad():
            self.logits = self.model(prompt, kv_cache=self.cache).logits[:, -1]  # (B, V)

    def can_join(self, prompt_len: int, budget: int) -> bool:
        """Whether rows with this prompt length and token budget fit (their slots stay inside the context)."""
        length = self.cache.length
        return prompt_len <= length and length + budget <= self.context

    def join(self, rows: list[_LiveRow]) -> None:
        """Prefill ``rows`` (equal prompt lengths) into the slots that end at the cache's length, then add them."""
        length, num_prompt = self.cache.length, len(rows[0].ids)
        need = length + max(r.spec.sampling.max_tokens for r in rows)
        if need > self.cache.max_len:
            self._grow(need)
        prompt = torch.tensor([r.ids for r in rows], dtype=torch.long, device=self.logits.device)  # (k, P)
        side = KVCache.for_model(self.model, batch=len(rows), max_len=self.cache.max_len)
        side.length = length - num_prompt  # the prompt lands in slots [L - P, L)
        mask = torch.zeros(len(rows), self.cache.max_len, dtype=torch.bool, device=self.logits.device)
        mask[:, length - num_prompt:] = True  # (k, S)
        with torch.no_grad():
            logits = self.model(prompt, kv_cache=side, key_mask=mask).logits[:, -1]  # (k, V)
        for layer, new in zip(self.cache.layers, side.layers):
            layer.k = torch.cat([layer.k, new.k])  # (B + k, NH, S, D)
            layer.v = torch.cat([layer.v, new.v])
        self.cache.batch += len(rows)
        self.key_mask = torch.cat([self.key_mask, mask])
        self.logits = torch.cat([self.logits, logits])
        self.rows.extend(rows)
        self.padded = self.padded or num_prompt < length

    def _grow(self, max_len: int) -> None:
        extra = max_len - self.cache.max_len
        for layer in self.cache.layers:
            layer.k = torch.nn.functional.pad(layer.k, (0, 0, 0, extra))  # (B, NH, max_len, D)
            layer.v = torch.nn.functional.pad(layer.v, (0, 0, 0, extra))
        self.key_mask = torch.nn.functional.pad(self.key_mask, (0, extra), value=True)
        self.cache.max_len = max_len

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
            mask = self.key_mask if self.padded else None
            with torch.no_grad():
                self.logits = self.model(ids, kv_cache=self.cache, key_mask=mask).logits[:, -1]  # (B, V)

    def _keep(self, keep: list[int]) -> None:
        self.rows = [self.rows[i] for i in keep]
        if not keep:
            return
        index = torch.tensor(keep, dtype=torch.long, device=self.logits.device)
        for layer in self.cache.layers:
            layer.k = layer.k.index_select(0, index)  # (B', NH, max_len, D)
            layer.v = layer.v.index_select(0, index)
        self.cache.batch = len(keep)
        self.key_mask = self.key_mask.index_select(0, index)
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
        self.stats = {"decode_steps": 0, "max_rows_in_step": 0, "joins": 0}  # loops, most rows in one, joins

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
            budget = max(r.spec.sampling.max_tokens for r in rows)
            host = next((b for b in self._batches if b.rows and b.can_join(len(rows[0].ids), budget)), None)
            if host is not None:  # join a running batch: shared decode steps from the next token on
                self._guarded(host, lambda: host.join(rows), also=rows)
                self.stats["joins"] += 1
                continue
            holder: list[DecodeBatch] = []
            if self._guarded_rows(rows, lambda: holder.append(DecodeBatch(self.generator, rows))):
                with self._lock:
                    self._batches.append(holder[0])

    def _guarded(self, batch: DecodeBatch, fn: Callable[[], None], also: list[_LiveRow] = ()) -> None:
        """Run one batch's step (or a join of ``also``); an unexpected failure ends that batch's rows (and
        ``also``'s) with an error, never the worker."""
        try:
            fn()
        except Exception as exc:  # noqa: BLE001 - the worker must survive anything one batch does
            message = f"generation failed: {type(exc).__name__}: {exc}"
            told = {id(row) for row in batch.rows}
            batch.fail(message)
            for row in also:
                if id(row) not in told:
                    row.job.emit(Event(row.spec.index, error=message))

    def _guarded_rows(self, rows: list[_LiveRow], fn: Callable[[], None]) -> bool:
        try:
            fn()
            return True
        except Exception as exc:  # noqa: BLE001
            for row in rows:
                row.job.emit(Event(row.spec.index, error=f"generation failed: {type(exc).__name__}: {exc}"))
            return False

"""The FastAPI app of ``vesper serve``: OpenAI-compatible completions and chat completions on one checkpoint.

Routes: ``POST /v1/completions``, ``POST /v1/chat/completions`` (both with SSE streaming), ``GET /v1/models``,
``GET /v1/models/{id}``, ``GET /health``. Generation runs in the scheduler's worker thread (scheduler.py), never
on the event loop; each request talks to it through an asyncio queue. Every refusal is OpenAI-shaped
(errors.py): 400 bad body or field, 401 bad key, 404 unknown model or route, 429 queue full, 501 chat without a
chat template, 503 shutting down.
"""

from __future__ import annotations

import asyncio
import hmac
import json
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any, AsyncIterator, Protocol

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, StreamingResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from vesper_cli.engine.generation import Generator, SamplingConfig
from vesper_core.errors import VesperError
from vesper_cli.serve.errors import APIError, bad_request, error_body
from vesper_cli.serve.protocol import (ChatCompletionRequest, CompletionRequest, new_id, not_found, now, parse,
                                       usage)
from vesper_cli.serve.scheduler import Event, Job, QueueFullError, RowSpec, Scheduler, SchedulerStoppedError

DEFAULT_COMPLETION_TOKENS = 16  # OpenAI's default for /v1/completions; chat defaults to the rest of the context
DISCONNECT_POLL_S = 0.5
MAX_BODY_BYTES = 8 * 2**20  # prompts past the context are refused anyway; this bounds the work before that


class ChatPromptsLike(Protocol):
    """What chat needs (``loading.ChatPrompts``): messages -> prompt ids, and how an assistant turn ends."""

    stop_strings: tuple[str, ...]
    stop_ids: tuple[int, ...]

    def encode(self, messages: list[dict[str, str]]) -> list[int]: ...


@dataclass
class ServeSettings:
    model_name: str
    api_key: str | None = None
    max_batch_size: int = 8
    max_queue: int = 32


def create_app(generator: Generator, settings: ServeSettings, chat: ChatPromptsLike | None = None) -> FastAPI:
    """The app; its scheduler thread starts and stops with the app's lifespan (uvicorn runs it).

    ``chat``: how chat messages become a prompt (``loading.load_chat_prompts``); without it
    /v1/chat/completions answers 501."""
    scheduler = Scheduler(generator, max_batch_size=settings.max_batch_size, max_queue=settings.max_queue)
    created = now()

    @asynccontextmanager
    async def lifespan(_app: FastAPI):
        scheduler.start()
        try:
            yield
        finally:
            scheduler.stop()

    app = FastAPI(title="vesper serve", lifespan=lifespan, docs_url=None, redoc_url=None, openapi_url=None)
    app.state.scheduler = scheduler
    app.state.settings = settings
    _install_error_handlers(app)
    handler = _Handler(generator, settings, scheduler, chat)

    @app.get("/health")
    async def health() -> dict[str, Any]:
        return {"status": "ok", "model": settings.model_name, **scheduler.load()}

    @app.get("/v1/models")
    async def list_models(request: Request) -> dict[str, Any]:
        handler.authorize(request)
        return {"object": "list", "data": [handler.model_card(created)]}

    @app.get("/v1/models/{model_id:path}")
    async def get_model(model_id: str, request: Request) -> dict[str, Any]:
        handler.authorize(request)
        handler.check_model(model_id)
        return handler.model_card(created)

    @app.post("/v1/completions")
    async def completions(request: Request):
        handler.authorize(request)
        return await handler.completions(request, parse(CompletionRequest, await _json(request)))

    @app.post("/v1/chat/completions")
    async def chat_completions(request: Request):
        handler.authorize(request)
        return await handler.chat(request, parse(ChatCompletionRequest, await _json(request)))

    return app


async def _json(request: Request) -> Any:
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > MAX_BODY_BYTES:
        raise APIError(413, f"the request body has {int(declared)} bytes; at most {MAX_BODY_BYTES} are accepted",
                       code="request_too_large")
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > MAX_BODY_BYTES:
            raise APIError(413, f"the request body is over {MAX_BODY_BYTES} bytes", code="request_too_large")
        chunks.append(chunk)
    body = b"".join(chunks)
    try:
        return json.loads(body)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise bad_request(f"the request body is not valid JSON ({exc})", code="invalid_json") from None


def _install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(APIError)
    async def api_error(_request: Request, exc: APIError) -> JSONResponse:
        return JSONResponse(exc.body(), status_code=exc.status, headers=exc.headers)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        message = (f"no route {request.method} {request.url.path}" if exc.status_code in (404, 405)
                   else str(exc.detail))
        code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code)
        return JSONResponse(error_body(message, code=code), status_code=exc.status_code,
                            headers=getattr(exc, "headers", None))

    @app.exception_handler(RequestValidationError)
    async def validation_error(_request: Request, exc: RequestValidationError) -> JSONResponse:
        return JSONResponse(error_body(f"invalid request: {exc.errors()[0].get('msg')}"), status_code=400)

    @app.exception_handler(Exception)
    async def internal_error(_request: Request, exc: Exception) -> JSONResponse:
        return JSONResponse(error_body(f"internal error: {type(exc).__name__}: {exc}", type="server_error"),
                            status_code=500)


class _Bridge:
    """Carries a job's events from the worker thread onto this request's event loop."""

    def __init__(self) -> None:
        self.loop = asyncio.get_running_loop()
        self.queue: asyncio.Queue[Event] = asyncio.Queue()

    def emit(self, event: Event) -> None:
        try:
            self.loop.call_soon_threadsafe(self.queue.put_nowait, event)
        except RuntimeError:  # the loop is closed: nobody is listening any more
            pass


class _Handler:
    def __init__(self, generator: Generator, settings: ServeSettings, scheduler: Scheduler,
                 chat: ChatPromptsLike | None):
        self.generator = generator
        self.settings = settings
        self.scheduler = scheduler
        self.chat_prompts = chat
        self.context = generator.model.config.max_position_embeddings

    # -- checks -------------------------------------------------------------------------
    def authorize(self, request: Request) -> None:
        key = self.settings.api_key
        if key is None:
            return
        header = request.headers.get("authorization", "")
        scheme, _, given = header.partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(given.strip().encode(), key.encode()):
            raise APIError(401, "missing or incorrect API key: send 'Authorization: Bearer <key>' with the key "
                           "given to vesper serve --api-key", code="invalid_api_key",
                           headers={"WWW-Authenticate": "Bearer"})

    def check_model(self, name: str) -> None:
        if name != self.settings.model_name:
            raise not_found(f"the model '{name}' does not exist here; this server serves "
                            f"'{self.settings.model_name}' (GET /v1/models)", "model", "model_not_found")

    def model_card(self, created: int) -> dict[str, Any]:
        return {"id": self.settings.model_name, "object": "model", "created": created, "owned_by": "vesper",
                "context_length": self.context}

    def _encode(self, text: str, param: str) -> list[int]:
        return self._check_prompt(self.generator.tokenizer.encode(text), param)

    def _check_prompt(self, ids: list[int], param: str) -> list[int]:
        if not ids:
            raise bad_request(f"'{param}' is empty after tokenization; send some text", param)
        if len(ids) >= self.context:
            raise bad_request(f"'{param}' has {len(ids)} tokens but the model's context is {self.context} "
                              f"positions, with room for at least one new token; shorten it", param,
                              "context_length_exceeded")
        return ids

    def _rows(self, req, prompt_ids: list[list[int]], default_budget: int | None, budget: int | None,
              extra_stops: tuple[str, ...] = (), stop_ids: tuple[int, ...] = ()) -> list[RowSpec]:
        self._check_count(len(prompt_ids), req.n)
        stops = tuple(dict.fromkeys(req.stop_strings() + extra_stops))
        rows = []
        for p, ids in enumerate(prompt_ids):
            room = self.context - len(ids)
            wanted = budget if budget is not None else (default_budget if default_budget is not None else room)
            sampling = SamplingConfig(max_tokens=min(wanted, room),  # capped by the context window
                                      temperature=1.0 if req.temperature is None else req.temperature,
                                      top_k=req.top_k, top_p=1.0 if req.top_p is None else req.top_p,
                                      repetition_penalty=req.repetition_penalty, stop=stops)
            for j in range(req.n):
                index = p * req.n + j
                rows.append(RowSpec(index=index, prompt_ids=ids, sampling=sampling, stop_ids=stop_ids,
                                    seed=None if req.seed is None else req.seed + index))
        return rows

    def _check_count(self, num_prompts: int, n: int) -> None:
        total = num_prompts * n
        if total > self.settings.max_batch_size:
            raise bad_request(f"{num_prompts} prompt(s) x n={n} make {total} completions; this server decodes at "
                              f"most {self.settings.max_batch_size} at once (--max-batch-size)",
                              "n" if num_prompts == 1 else "prompt")

    def _submit(self, rows: list[RowSpec]) -> tuple[Job, _Bridge]:
        bridge = _Bridge()
        job = Job(rows=rows, emit=bridge.emit)
        try:
            self.scheduler.submit(job)
        except QueueFullError as exc:
            raise APIError(429, str(exc), type="rate_limit_error", code="queue_full",
                           headers={"Retry-After": "1"}) from None
        except SchedulerStoppedError as exc:
            raise APIError(503, str(exc), type="server_error", code="shutting_down") from None
        return job, bridge

    # -- routes -------------------------------------------------------------------------
    async def completions(self, request: Request, req: CompletionRequest):
        self.check_model(req.model)
        req.refuse_unsupported({"echo": not req.echo, "best_of": req.best_of in (None, 1),
                                "suffix": not req.suffix})
        prompts = req.prompts()
        self._check_count(len(prompts), req.n)
        # tokenizing a long body takes a while: off the event loop, so other requests keep being answered
        prompt_ids = await asyncio.to_thread(lambda: [self._encode(p, "prompt") for p in prompts])
        rows = self._rows(req, prompt_ids, DEFAULT_COMPLETION_TOKENS, req.max_tokens)
        prompt_tokens = sum(len(ids) for ids in prompt_ids) * req.n
        job, bridge = self._submit(rows)
        meta = {"id": new_id("cmpl"), "object": "text_completion", "created": now(),
                "model": self.settings.model_name}

        def choice(index: int, text: str, reason: str | None) -> dict[str, Any]:
            return {"index": index, "text": text, "logprobs": None, "finish_reason": reason}

        if req.stream:
            include_usage = bool(req.stream_options and req.stream_options.include_usage)
            return _sse(self._stream(request, job, bridge, meta, prompt_tokens, include_usage,
                                     piece=lambda e: choice(e.index, e.piece, None),
                                     end=lambda e: choice(e.index, "", e.finish_reason)))
        texts, reasons, tokens = await self._collect(request, job, bridge)
        return {**meta, "choices": [choice(i, texts[i], reasons[i]) for i in range(len(rows))],
                "usage": usage(prompt_tokens, sum(tokens))}

    async def chat(self, request: Request, req: ChatCompletionRequest):
        self.check_model(req.model)
        req.refuse_unsupported({"tools": not req.tools,
                                "response_format": req.response_format in (None, {"type": "text"})})
        if not req.messages:
            raise bad_request("'messages' is empty; send at least one message", "messages")
        if self.chat_prompts is None:
            raise APIError(501, "/v1/chat/completions is not available: this server was started without a chat "
                           "template; use /v1/completions", type="not_implemented", code="chat_unavailable")
        messages = [{"role": "system" if m.role == "developer" else m.role, "content": m.text()}
                    for m in req.messages]
        try:
            ids = self._check_prompt(await asyncio.to_thread(self.chat_prompts.encode, messages), "messages")
        except VesperError as exc:  # the template refused the conversation (say, roles out of order)
            raise bad_request(str(exc), "messages") from None
        rows = self._rows(req, [ids], None, req.token_budget(), self.chat_prompts.stop_strings,
                          self.chat_prompts.stop_ids)
        prompt_tokens = len(ids) * req.n
        job, bridge = self._submit(rows)
        meta = {"id": new_id("chatcmpl"), "created": now(), "model": self.settings.model_name}

        if req.stream:
            include_usage = bool(req.stream_options and req.stream_options.include_usage)
            started: set[int] = set()

            def piece(e: Event) -> dict[str, Any]:
                delta = {"content": e.piece}
                if e.index not in started:
                    started.add(e.index)
                    delta = {"role": "assistant", "content": e.piece}
                return {"index": e.index, "delta": delta, "logprobs": None, "finish_reason": None}

            def end_choice(e: Event) -> dict[str, Any]:
                delta = {} if e.index in started else {"role": "assistant", "content": ""}
                return {"index": e.index, "delta": delta, "logprobs": None, "finish_reason": e.finish_reason}

            return _sse(self._stream(request, job, bridge, {**meta, "object": "chat.completion.chunk"},
                                     prompt_tokens, include_usage, piece=piece, end=end_choice))
        texts, reasons, tokens = await self._collect(request, job, bridge)
        choices = [{"index": i, "message": {"role": "assistant", "content": texts[i]}, "logprobs": None,
                    "finish_reason": reasons[i]} for i in range(len(rows))]
        return {**meta, "object": "chat.completion", "choices": choices,
                "usage": usage(prompt_tokens, sum(tokens))}

    # -- waiting for the worker ------------------------------------------------------------
    async def _events(self, request: Request, job: Job, bridge: _Bridge) -> AsyncIterator[Event]:
        """The job's events until every row has ended; cancels the job if the client goes away first."""
        remaining = len(job.rows)
        clock = asyncio.get_running_loop().time
        checked = clock()
        try:
            while remaining:
                try:
                    event: Event | None = await asyncio.wait_for(bridge.queue.get(), timeout=DISCONNECT_POLL_S)
                except asyncio.TimeoutError:
                    event = None
                if clock() - checked >= DISCONNECT_POLL_S:  # also while events flow: a plain answer sends none
                    checked = clock()
                    if await request.is_disconnected():
                        return
                if event is None:
                    continue
                if event.error is not None:
                    raise APIError(500, event.error, type="server_error", code="generation_failed")
                if event.finish_reason is not None:
                    remaining -= 1
                yield event
        finally:
            if remaining:
                job.cancel()  # the slot is freed at the worker's next step

    async def _collect(self, request: Request, job: Job, bridge: _Bridge):
        texts = [""] * len(job.rows)
        reasons: list[str | None] = [None] * len(job.rows)
        tokens = [0] * len(job.rows)
        async for event in self._events(request, job, bridge):
            texts[event.index] += event.piece
            if event.finish_reason is not None:
                reasons[event.index] = event.finish_reason
                tokens[event.index] = event.completion_tokens
        if any(r is None for r in reasons):  # the client left: nobody reads this answer
            raise APIError(499, "client closed the request", code="client_closed")
        return texts, reasons, tokens

    async def _stream(self, request: Request, job: Job, bridge: _Bridge, meta: dict[str, Any],
                      prompt_tokens: int, include_usage: bool, *, piece, end) -> AsyncIterator[str]:
        completion_tokens = 0
        extra = {"usage": None} if include_usage else {}
        try:
            async for event in self._events(request, job, bridge):
                if event.finish_reason is not None:
                    completion_tokens += event.completion_tokens
                    choice = end(event)
                else:
                    choice = piece(event)
                yield _data({**meta, "choices": [choice], **extra})
        except APIError as exc:  # the headers are sent: the error goes in the stream
            yield _data(exc.body())
            return
        if include_usage:
            yield _data({**meta, "choices": [], "usage": usage(prompt_tokens, completion_tokens)})
        yield "data: [DONE]\n\n"


def _data(payload: dict[str, Any]) -> str:
    return f"data: {json.dumps(payload, ensure_ascii=False)}\n\n"


def _sse(stream: AsyncIterator[str]) -> StreamingResponse:
    return StreamingResponse(stream, media_type="text/event-stream",
                             headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})

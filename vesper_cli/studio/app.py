"""The studio's FastAPI app: pages (Jinja2), a JSON API, plotly.js from the installed package, and its guards."""

# no `from __future__ import annotations`: FastAPI reads the handlers' annotations (Request) at run time

import contextlib
import itertools
import json
import threading
from pathlib import Path
from urllib.parse import urlparse

from vesper_core.errors import VesperError
from vesper_cli.studio import features, forms, runs
from vesper_cli.studio.jobs import JobManager, read_tail
from vesper_cli.studio.security import (CSRF_HEADER, TOKEN_QUERY, StudioError, check_name, new_token,
                                        relative_to_workspace, resolve_inside, same_secret)

HERE = Path(__file__).parent
SAFE_METHODS = ("GET", "HEAD", "OPTIONS")
PAGES = (("runs", "Runs"), ("train", "Train"), ("benchmark", "Benchmark"), ("chat", "Chat"), ("data", "Data"),
         ("models", "Models"))
MAX_CHAT_SESSIONS = 4


def _studio_imports():
    try:
        import fastapi  # noqa: F401
        import jinja2  # noqa: F401
    except ImportError:
        raise VesperError("vesper studio needs fastapi, uvicorn, jinja2 and plotly: pip install 'vesper[studio]'") \
            from None


def plotly_js_path() -> Path:
    try:
        import plotly
    except ImportError:
        raise VesperError("vesper studio draws charts with plotly.js from the plotly package: "
                          "pip install 'vesper[studio]'") from None
    path = Path(plotly.__file__).parent / "package_data" / "plotly.min.js"
    if not path.is_file():
        raise VesperError(f"the installed plotly package has no {path.name}; reinstall it: pip install -U plotly")
    return path


def create_app(workspace: str | Path, *, token: str | None = None, max_jobs: int = 2,
               allowed_hosts: tuple[str, ...] | None = ("127.0.0.1", "localhost"), cookie_name: str = "vesper_studio"):
    """The app for one workspace; ``token`` (random when None) is required on every request."""
    _studio_imports()
    from fastapi import FastAPI, Request
    from fastapi.responses import FileResponse, HTMLResponse, JSONResponse, PlainTextResponse, StreamingResponse
    from fastapi.templating import Jinja2Templates
    from starlette.middleware.trustedhost import TrustedHostMiddleware

    workspace = Path(workspace).resolve()
    if not workspace.is_dir():
        raise StudioError(f"--workspace {workspace} is not a folder; create it or pick another")
    token = token or new_token()
    csrf = new_token()
    plotly_js = plotly_js_path()
    jobs = JobManager(workspace, max_jobs=max_jobs)
    templates = Jinja2Templates(directory=str(HERE / "templates"))
    chat_sessions: dict[str, object] = {}
    chat_ids = itertools.count(1)
    chat_lock = threading.Lock()

    @contextlib.asynccontextmanager
    async def lifespan(app):
        yield
        jobs.shutdown()  # running jobs get SIGTERM: each writes its emergency checkpoint

    app = FastAPI(title="Vesper Studio", docs_url=None, redoc_url=None, openapi_url=None, lifespan=lifespan)
    app.state.token, app.state.csrf, app.state.jobs, app.state.workspace = token, csrf, jobs, workspace

    @app.middleware("http")
    async def guard(request: Request, call_next):
        from_query = request.query_params.get(TOKEN_QUERY)
        header = request.headers.get("authorization", "")
        given = from_query or (header[6:].strip() if header.lower().startswith("token ") else None) \
            or request.cookies.get(cookie_name)
        if not same_secret(given, token):
            return PlainTextResponse("Access token missing or wrong: open the URL that `vesper studio` printed "
                                     "(it ends with ?token=...).", status_code=401)
        if request.method not in SAFE_METHODS:
            if not same_secret(request.headers.get(CSRF_HEADER), csrf):
                return PlainTextResponse("Refused: a state-changing request needs the studio's CSRF header "
                                         "(cross-site requests are not accepted).", status_code=403)
            origin = request.headers.get("origin")
            if origin and origin != "null" and urlparse(origin).netloc != request.headers.get("host"):
                return PlainTextResponse(f"Refused: request from another origin ({origin}).", status_code=403)
            if origin == "null":
                return PlainTextResponse("Refused: request from an opaque origin.", status_code=403)
        response = await call_next(request)
        if from_query:
            response.set_cookie(cookie_name, token, httponly=True, samesite="strict")
        response.headers["X-Frame-Options"] = "DENY"
        response.headers["X-Content-Type-Options"] = "nosniff"
        response.headers["Referrer-Policy"] = "no-referrer"  # the URL holds the token
        response.headers["Cache-Control"] = "no-store"
        return response

    if allowed_hosts:  # added last = runs first: a foreign Host header (DNS rebinding) never reaches the app
        app.add_middleware(TrustedHostMiddleware, allowed_hosts=list(allowed_hosts))

    @app.exception_handler(VesperError)
    async def vesper_error(request: Request, exc: VesperError):
        return JSONResponse({"error": str(exc)}, status_code=getattr(exc, "status", 400))

    def page(request: Request, template: str, **context):
        return templates.TemplateResponse(request, f"{template}.html", {
            "pages": PAGES, "active": template, "csrf": csrf, "workspace": str(workspace), **context})

    def run_folder(path: str) -> Path:
        folder = resolve_inside(workspace, path, "run")
        if not folder.is_dir():
            raise StudioError(f"run {path!r} not found", 404)
        return folder

    def run_entry(folder: Path) -> dict:
        job = jobs.for_folder(folder)
        summary = runs.summarize_run(folder)
        if job is not None and job.kind in ("train", "resume") and job.running:
            summary["status"] = job.state
        return {"path": relative_to_workspace(workspace, folder), "job": None if job is None else job.describe(workspace),
                **summary}

    # -- static --------------------------------------------------------------------------------------------------
    @app.get("/static/plotly.min.js")
    def plotly_asset():
        return FileResponse(plotly_js, media_type="application/javascript")

    @app.get("/static/{name}")
    def static_asset(name: str):
        check_name(name, "asset")
        path = HERE / "static" / name
        if not path.is_file():
            raise StudioError(f"no asset {name!r}", 404)
        return FileResponse(path)

    # -- pages ---------------------------------------------------------------------------------------------------
    @app.get("/", response_class=HTMLResponse)
    @app.get("/runs", response_class=HTMLResponse)
    def runs_page(request: Request):
        return page(request, "runs", runs=[run_entry(f) for f in runs.find_runs(workspace)])

    @app.get("/runs/{path:path}", response_class=HTMLResponse)
    def run_page(request: Request, path: str):
        folder = run_folder(path)
        return page(request, "run", run=run_entry(folder))

    @app.get("/train", response_class=HTMLResponse)
    def train_page(request: Request):
        from vesper_core.presets import PRESETS
        from vesper_optim.registry import OPTIMIZERS

        presets = [{"name": n, "num_params": PRESETS.get(n)().num_params()} for n in PRESETS.names()]
        return page(request, "train", datasets=forms.list_files(workspace), tokenizers=forms.list_tokenizers(workspace),
                    presets=presets, optimizers=list(OPTIMIZERS.names()))

    @app.get("/benchmark", response_class=HTMLResponse)
    def benchmark_page(request: Request):
        from vesper_core.presets import PRESETS
        from vesper_optim.registry import OPTIMIZERS

        reports = [{"name": p.parent.name, "verdict": (runs.read_report(p) or {}).get("verdict")}
                   for p in runs.find_reports(workspace)]
        return page(request, "benchmark", datasets=forms.list_files(workspace),
                    tokenizers=forms.list_tokenizers(workspace), presets=list(PRESETS.names()),
                    optimizers=list(OPTIMIZERS.names()), reports=reports)

    @app.get("/benchmark/{name}", response_class=HTMLResponse)
    def report_page(request: Request, name: str):
        return page(request, "report", name=check_name(name, "report"))

    @app.get("/chat", response_class=HTMLResponse)
    def chat_page(request: Request):
        return page(request, "chat", available=features.chat_available(), checkpoints=_all_checkpoints())

    @app.get("/data", response_class=HTMLResponse)
    def data_page(request: Request):
        return page(request, "data", files=forms.list_files(workspace), tokenizers=forms.list_tokenizers(workspace))

    @app.get("/models", response_class=HTMLResponse)
    def models_page(request: Request):
        from vesper_cli.engine.environment import collect_environment

        commands = {name: features.command_options(name) for name in ("export", "merge")}
        return page(request, "models", env=collect_environment(), commands=commands, checkpoints=_all_checkpoints())

    # -- runs and jobs -------------------------------------------------------------------------------------------
    def _all_checkpoints() -> list[str]:
        out = []
        for folder in runs.find_runs(workspace):
            for c in runs.checkpoints(folder):
                out.append(relative_to_workspace(workspace, folder / c["name"]))
        return out

    @app.get("/api/runs")
    def api_runs():
        return [run_entry(f) for f in runs.find_runs(workspace)]

    @app.get("/api/run")
    def api_run(path: str):
        return run_entry(run_folder(path))

    @app.get("/api/events")
    def api_events(path: str, offset: int = 0):
        events, next_offset = runs.read_events(run_folder(path), max(0, offset))
        return {"events": events, "offset": next_offset}

    @app.get("/api/jobs")
    def api_jobs():
        return [j.describe(workspace) for j in jobs.all()]

    @app.get("/api/jobs/{job_id}")
    def api_job(job_id: str):
        job = jobs.get(job_id)
        return {**job.describe(workspace), "log_tail": read_tail(job.log_path)}

    def _start(kind: str, folder_args: tuple[Path, list[str]]):
        folder, args = folder_args
        return jobs.start(kind, args, folder).describe(workspace)

    async def _body(request: Request) -> dict:
        try:
            body = await request.json()
        except (json.JSONDecodeError, UnicodeDecodeError):
            raise StudioError("the request body must be JSON") from None
        if not isinstance(body, dict):
            raise StudioError("the request body must be a JSON object")
        return body

    @app.post("/api/train")
    async def api_train(request: Request):
        return _start("train", forms.train_args(workspace, await _body(request)))

    @app.post("/api/resume")
    async def api_resume(request: Request):
        return _start("resume", forms.resume_args(workspace, (await _body(request)).get("run")))

    @app.post("/api/stop")
    async def api_stop(request: Request):
        body = await _body(request)
        if "job" in body:
            return jobs.stop(str(body["job"])).describe(workspace)
        job = jobs.for_folder(run_folder(body.get("run")))
        if job is None or not job.running:
            raise StudioError("no running job for that run", 409)
        return jobs.stop(job.id).describe(workspace)

    @app.post("/api/benchmark")
    async def api_benchmark(request: Request):
        return _start("benchmark", forms.benchmark_args(workspace, await _body(request)))

    @app.get("/api/benchmarks")
    def api_benchmarks():
        return [{"name": p.parent.name} for p in runs.find_reports(workspace)]

    @app.get("/api/benchmarks/{name}")
    def api_report(name: str):
        folder = resolve_inside(workspace, f"{forms.BENCH_DIR}/{check_name(name, 'report')}", "report")
        report = runs.read_report(folder / "report.json")
        job = jobs.for_folder(folder)
        return {"name": name, "report": report, "job": None if job is None else job.describe(workspace),
                "log_tail": read_tail(folder / "studio-benchmark.log", 4096)}

    # -- data ----------------------------------------------------------------------------------------------------
    def _tokenizer(spec: str | None):
        from vesper_data.tokenizers.resolve import load_tokenizer

        spec = forms.tokenizer_arg(workspace, spec or "byte")
        if spec == "auto":
            return None
        return load_tokenizer(spec if spec == "byte" else str(workspace / spec))

    @app.get("/api/inspect")
    def api_inspect(path: str, tokenizer: str = "byte", text_field: str | None = None):
        from vesper_data.inspect import inspect_dataset

        file = resolve_inside(workspace, path, "file")
        report = inspect_dataset(file, text_field=text_field or None, tokenizer=_tokenizer(tokenizer),
                                 max_chars=5_000_000)
        return {**report.to_dict(), "path": relative_to_workspace(workspace, file)}

    @app.get("/api/scale")
    def api_scale(dataset: str, tokenizer: str = "byte", batch_size: int = 4, seq_len: int = 128):
        from vesper_cli.engine.scale import scale_for_tokens
        from vesper_data.inspect import inspect_dataset

        file = resolve_inside(workspace, dataset, "dataset")
        tok = _tokenizer(tokenizer)
        report = inspect_dataset(file, tokenizer=tok, num_samples=0, max_chars=2_000_000)
        tokens = report.num_tokens if report.num_tokens is not None else max(1, report.num_chars // 4)
        vocab = tok.vocab_size if tok is not None and hasattr(tok, "vocab_size") else 32000
        plan = scale_for_tokens(max(1, tokens), vocab_size=vocab, batch_size=max(1, batch_size),
                                seq_len=max(2, seq_len))
        return {**plan.to_dict(), "estimated": report.estimated or report.num_tokens is None, "vocab_size": vocab}

    @app.post("/api/cache")
    async def api_cache(request: Request):
        return _start("cache", forms.cache_args(workspace, await _body(request)))

    @app.get("/api/search")
    def api_search(q: str):
        from vesper_data.download import search_datasets

        return [{"id": h.id, "downloads": h.downloads} for h in search_datasets(q, 20)]

    @app.post("/api/download")
    async def api_download(request: Request):
        from vesper_data.download import check_online

        folder_args = forms.download_args(workspace, await _body(request))
        check_online("downloading a dataset")  # say so now, in one line, rather than in a failed job
        return _start("download", folder_args)

    # -- chat ----------------------------------------------------------------------------------------------------
    def _need_chat():
        if not features.chat_available():
            raise StudioError("chat is not available in this build (vesper_cli.engine.chat is missing)", 501)

    @app.post("/api/chat/open")
    async def api_chat_open(request: Request):
        _need_chat()
        path = resolve_inside(workspace, (await _body(request)).get("checkpoint"), "checkpoint")
        if not (path.is_file() and path.suffix == ".safetensors"):
            raise StudioError("pick a .safetensors checkpoint in the workspace")
        session = features.open_chat_session(str(path))
        with chat_lock:
            while len(chat_sessions) >= MAX_CHAT_SESSIONS:
                chat_sessions.pop(next(iter(chat_sessions)))
            session_id = str(next(chat_ids))
            chat_sessions[session_id] = session
        return {"session": session_id}

    def _session(session_id: str):
        session = chat_sessions.get(str(session_id))
        if session is None:
            raise StudioError("that chat session is gone; pick the checkpoint again", 404)
        return session

    @app.post("/api/chat/message")
    async def api_chat_message(request: Request):
        _need_chat()
        body = await _body(request)
        session, text = _session(body.get("session")), body.get("text")
        if not isinstance(text, str) or not text.strip():
            raise StudioError("write a message first")

        def stream():
            try:
                for piece in features.stream_pieces(session, text):
                    yield json.dumps(piece) + "\n"
            except VesperError as exc:
                yield json.dumps({"error": str(exc)}) + "\n"

        return StreamingResponse(stream(), media_type="application/x-ndjson")

    @app.post("/api/chat/reset")
    async def api_chat_reset(request: Request):
        _need_chat()
        _session((await _body(request)).get("session")).reset()
        return {"ok": True}

    # -- models --------------------------------------------------------------------------------------------------
    @app.get("/api/env")
    def api_env():
        from vesper_cli.engine.environment import collect_environment

        return collect_environment().to_dict()

    @app.post("/api/command/{name}")
    async def api_command(name: str, request: Request):
        if name not in ("export", "merge"):
            raise StudioError(f"the studio does not run `vesper {name}`", 404)
        options = features.command_options(name)
        if options is None:
            raise StudioError(f"`vesper {name}` is not available in this build", 501)
        body = await _body(request)
        out_name = check_name(body.get("output_name"), "output name")
        folder = resolve_inside(workspace, f"{'exports' if name == 'export' else 'merged'}/{out_name}", "output")
        args: list[str] = [name]
        values = body.get("options") or {}
        if not isinstance(values, dict):
            raise StudioError("options must be an object")
        for opt in options:
            value = values.get(opt["name"])
            if value in (None, "", False):
                continue
            if opt["is_flag"]:
                args.append(opt["flag"])
                continue
            if not isinstance(value, (str, int, float)):
                raise StudioError(f"{opt['name']} must be a single value")
            value = str(value)
            if any(word in opt["name"] for word in ("output", "out_dir", "dir")):
                # outputs always land in the job's folder (merge writes a checkpoint file, export a folder)
                target = folder / "model.safetensors" if name == "merge" else folder
                value = relative_to_workspace(workspace, target)
            elif any(word in opt["name"] for word in ("checkpoint", "model", "adapter", "path", "file", "base")):
                value = relative_to_workspace(workspace, resolve_inside(workspace, value, opt["name"]))
            elif value.startswith("-"):
                raise StudioError(f"{opt['name']} may not start with '-'")
            args += [value] if opt["argument"] else [opt["flag"], value]
        return _start(name, (folder, args))

    return app

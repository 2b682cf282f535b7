"""Vesper Studio: a local web app for runs, training, benchmarks, chat, data and models (`vesper studio`)."""

from __future__ import annotations

import socket
from pathlib import Path

import typer

from vesper_cli.output import console, info

Opt = typer.Option


def studio_command(
    workspace: Path = Opt(Path("."), help="Folder the studio works in: its datasets, runs and reports."),
    port: int = Opt(0, help="Port on 127.0.0.1, 0 = a free one."),
    max_jobs: int = Opt(2, help="Jobs (trainings, benchmarks, ...) that may run at once."),
) -> None:
    """Start the studio on 127.0.0.1 and print its URL (with the access token every request needs)."""
    from vesper_core.errors import ConfigError

    if not 0 <= port <= 65535:
        raise ConfigError(f"--port must be between 0 and 65535, got {port}")
    if max_jobs < 1:
        raise ConfigError(f"--max-jobs must be at least 1, got {max_jobs}")
    try:
        import uvicorn
    except ImportError:
        raise ConfigError("vesper studio needs uvicorn: pip install 'vesper[studio]'") from None
    from vesper_cli.studio import create_app

    host = "127.0.0.1"
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        sock.bind((host, port))
    except OSError as exc:
        raise ConfigError(f"--port {port} is not free on {host} ({exc.strerror}); pick another or 0") from None
    port = sock.getsockname()[1]
    try:
        app = create_app(workspace, max_jobs=max_jobs, cookie_name=f"vesper_studio_{port}",
                         allowed_hosts=(host, "localhost"))
    except BaseException:
        sock.close()
        raise
    console.print(f"Vesper Studio: http://{host}:{port}/?token={app.state.token}", markup=False)
    info(f"workspace {app.state.workspace}; Ctrl-C stops the studio (running jobs get SIGTERM)")
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning"))
    server.run(sockets=[sock])

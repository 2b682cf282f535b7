"""Studio jobs: ``vesper`` subcommands run as child processes, capped, logged into their own folder.

A job is ``[sys.executable, -m, vesper_cli, *args]`` (an argument list, never a shell) started in the
workspace; stdout and stderr go to ``<folder>/studio-<kind>.log``. Stop sends SIGTERM, which the trainer
answers with an emergency checkpoint and exit status 143.
"""

from __future__ import annotations

import itertools
import os
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from vesper_cli.studio.security import StudioError, relative_to_workspace


@dataclass
class Job:
    id: str
    kind: str  # train, resume, benchmark, cache, download, or a registered command's name
    args: list[str]
    folder: Path
    log_path: Path
    process: subprocess.Popen
    started: float = field(default_factory=time.time)
    stop_requested: bool = False

    @property
    def returncode(self) -> int | None:
        return self.process.poll()

    @property
    def running(self) -> bool:
        return self.returncode is None

    @property
    def state(self) -> str:
        code = self.returncode
        if code is None:
            return "stopping" if self.stop_requested else "running"
        if code == 0:
            return "finished"
        if code in (143, -signal.SIGTERM) and self.stop_requested:
            return "stopped"
        return f"failed (exit {code})"

    def describe(self, workspace: Path) -> dict:
        return {"id": self.id, "kind": self.kind, "state": self.state, "running": self.running,
                "returncode": self.returncode, "folder": relative_to_workspace(workspace, self.folder),
                "log": relative_to_workspace(workspace, self.log_path), "args": self.args,
                "started": self.started}


class JobManager:
    def __init__(self, workspace: Path, *, max_jobs: int = 2, python: str = sys.executable):
        self.workspace = workspace.resolve()
        self.max_jobs = max_jobs
        self.python = python
        self._jobs: dict[str, Job] = {}
        self._ids = itertools.count(1)
        self._lock = threading.Lock()

    def running(self) -> list[Job]:
        return [j for j in self._jobs.values() if j.running]

    def all(self) -> list[Job]:
        return sorted(self._jobs.values(), key=lambda j: j.started, reverse=True)

    def get(self, job_id: str) -> Job:
        job = self._jobs.get(job_id)
        if job is None:
            raise StudioError(f"no job {job_id!r}", 404)
        return job

    def for_folder(self, folder: Path) -> Job | None:
        """The newest job writing into ``folder``."""
        folder = folder.resolve()
        for job in self.all():
            if job.folder == folder:
                return job
        return None

    def start(self, kind: str, args: list[str], folder: Path) -> Job:
        if not all(isinstance(a, str) and "\x00" not in a for a in args):
            raise StudioError("job arguments must be plain strings")
        folder = folder.resolve()
        with self._lock:
            if len(self.running()) >= self.max_jobs:
                raise StudioError(f"{self.max_jobs} job(s) already running (the studio's cap); stop one or wait", 429)
            busy = self.for_folder(folder)
            if busy is not None and busy.running:
                raise StudioError(f"a {busy.kind} job is already writing to {folder.name}; stop it first", 409)
            folder.mkdir(parents=True, exist_ok=True)
            log_path = folder / f"studio-{kind}.log"
            env = dict(os.environ, PYTHONUNBUFFERED="1", TERM="dumb", COLUMNS="100")
            with log_path.open("ab") as log:
                process = subprocess.Popen([self.python, "-m", "vesper_cli", *args], cwd=self.workspace,
                                           stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, env=env,
                                           start_new_session=True)
            job = Job(str(next(self._ids)), kind, list(args), folder, log_path, process)
            self._jobs[job.id] = job
            return job

    def stop(self, job_id: str) -> Job:
        job = self.get(job_id)
        if job.running:
            job.stop_requested = True
            job.process.send_signal(signal.SIGTERM)
        return job

    def shutdown(self, timeout: float = 10.0) -> None:
        """SIGTERM every running job (each writes its emergency checkpoint) and wait a little."""
        for job in self.running():
            self.stop(job.id)
        deadline = time.time() + timeout
        for job in list(self._jobs.values()):
            try:
                job.process.wait(max(0.1, deadline - time.time()))
            except subprocess.TimeoutExpired:
                job.process.kill()


def read_tail(path: Path, max_bytes: int = 16_384) -> str:
    if not path.is_file():
        return ""
    with path.open("rb") as fh:
        fh.seek(max(0, path.stat().st_size - max_bytes))
        return fh.read().decode("utf-8", errors="replace")

"""Stopping a run cleanly: SIGTERM/SIGINT/SIGHUP finish the current step and write an emergency checkpoint.

A second signal exits at once (status 128 + the signal's number: 130 for SIGINT, 143 for SIGTERM) after
``on_force_exit`` (the trainer's: write training_log.json) ran. Tests and notebooks call ``request_stop()`` directly.
"""

from __future__ import annotations

import os
import signal
import sys
import threading
from types import FrameType
from typing import Callable

STOP_SIGNALS = tuple(s for s in (getattr(signal, "SIGTERM", None), signal.SIGINT, getattr(signal, "SIGHUP", None))
                     if s is not None)


class StopControl:
    def __init__(self) -> None:
        self.reason: str | None = None
        self.on_force_exit: Callable[[], None] | None = None
        self._previous: dict[int, object] = {}

    @property
    def requested(self) -> bool:
        return self.reason is not None

    def request_stop(self, reason: str = "requested") -> None:
        self.reason = self.reason or reason

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        name = signal.Signals(signum).name
        if self.requested:
            sys.stderr.write(f"\n{name} again: exiting now without a checkpoint (the training log is kept)\n")
            sys.stderr.flush()
            if self.on_force_exit is not None:
                try:
                    self.on_force_exit()
                except Exception:  # exiting anyway; the live events.jsonl still holds every logged step
                    pass
            os._exit(128 + signum)
        sys.stderr.write(f"\n{name} received: finishing this step, then writing an emergency checkpoint "
                         f"(send it again to quit at once)\n")
        sys.stderr.flush()
        self.request_stop(name)

    def install(self) -> "StopControl":
        """Install the handlers (main thread only; elsewhere this is a no-op)."""
        if threading.current_thread() is threading.main_thread():
            for sig in STOP_SIGNALS:
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def uninstall(self) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous.clear()

    def __enter__(self) -> "StopControl":
        return self.install()

    def __exit__(self, *exc) -> None:
        self.uninstall()

"""Progress lines for people; `--json` replaces them with one document at the end."""

from __future__ import annotations

import sys
import threading
import time


class Console:
    def __init__(self, quiet: bool = False, stream=None):
        self.quiet = quiet
        self.stream = stream or sys.stderr
        self._lock = threading.Lock()
        self._started: dict[str, float] = {}

    def say(self, message: str) -> None:
        if not self.quiet:
            with self._lock:
                print(message, file=self.stream, flush=True)

    def step_started(self, label: str, targets: list[str]) -> None:
        self._started[label] = time.monotonic()
        self.say(f"  run  {label}  ({', '.join(targets)})")

    def step_progress(self, label: str, message: str) -> None:
        elapsed = time.monotonic() - self._started.get(label, time.monotonic())
        self.say(f"       {label}: {message} [{elapsed:.0f}s]")

    def step_finished(self, label: str, status: str) -> None:
        elapsed = time.monotonic() - self._started.pop(label, time.monotonic())
        mark = {"executed": "done", "deferred": "defer", "cached": "hit"}.get(status, status)
        self.say(f"  {mark:<4} {label}  {elapsed:.1f}s")

    def step_failed(self, label: str, message: str) -> None:
        self._started.pop(label, None)
        self.say(f"  FAIL {label}: {message}")

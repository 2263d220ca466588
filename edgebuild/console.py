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

    # Steps are keyed by node id: two targets may each run a "quantize.tflite[int8]".
    def step_started(self, node) -> None:
        self._started[node.id] = time.monotonic()
        self.say(f"  run  {_name(node)}")

    def step_progress(self, node, message: str) -> None:
        elapsed = time.monotonic() - self._started.get(node.id, time.monotonic())
        self.say(f"       {_name(node)}: {message} [{elapsed:.0f}s]")

    def step_finished(self, node, status: str) -> None:
        elapsed = time.monotonic() - self._started.pop(node.id, time.monotonic())
        mark = {"executed": "done", "deferred": "defer", "cached": "hit"}.get(status, status)
        self.say(f"  {mark:<4} {_name(node)}  {elapsed:.1f}s")

    def step_failed(self, node, message: str) -> None:
        self._started.pop(node.id, None)
        self.say(f"  FAIL {_name(node)}: {message}")


def _name(node) -> str:
    """The step's label, with the targets it serves unless the label names them."""
    if node.kind in ("bundle", "validate"):
        return node.label
    return f"{node.label} ({', '.join(node.targets)})"

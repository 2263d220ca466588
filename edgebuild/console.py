"""Progress lines for people; `--json` replaces them with one document at the end.

On a terminal, a build shows live bars (live_progress, drawn by rich): the build's
N/M steps with an ETA, and one bar per running step. In CI or in a log file, bars
would garble the output, so progress is plain lines, and counted progress
(`ctx.progress(message, done, total)`) is throttled: a fine-tune that reports every
batch must not write a line per batch.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

PLAIN_EVERY_FRACTION = 0.1  # in plain mode, a counted step prints every 10% of its total,
PLAIN_EVERY_SECONDS = 10.0  # or every 10 seconds, whichever comes first,
PLAIN_MIN_GAP_SECONDS = 1.0  # but no closer together than a second
REDRAW_EVERY_SECONDS = 0.1  # a terminal bar redraws at most this often
BAR_WIDTH = 20


# -- the worker's wire format -------------------------------------------------------
# A worker writes "@progress PAYLOAD" lines on its stdout. PAYLOAD is the message as
# is when it carries no counts (what older workers wrote), and a JSON object
# {"message": ..., "done": ..., "total": ...} otherwise.

def format_progress(message: str, done: int | None = None, total: int | None = None) -> str:
    """The payload for one "@progress " line; `parse_progress` reads it back."""
    if done is None and total is None and not message.startswith("{") \
            and "\n" not in message and "\r" not in message:
        return message
    return json.dumps({"message": message, "done": done, "total": total})


def parse_progress(text: str) -> tuple[str, int | None, int | None]:
    """(message, done, total) from a "@progress " payload; any text that is not a
    progress object is a plain message."""
    if text.startswith("{"):
        try:
            data = json.loads(text)
        except ValueError:
            return text, None, None
        if isinstance(data, dict) and isinstance(data.get("message"), str):
            return data["message"], _count(data.get("done")), _count(data.get("total"))
    return text, None, None


def _count(value) -> int | None:
    if isinstance(value, bool) or not isinstance(value, int | float) or value < 0:
        return None
    return int(value)


def is_interactive(stream) -> bool:
    """A terminal a person watches, where "\\r" redraws a line in place."""
    try:
        tty = stream.isatty()
    except (AttributeError, ValueError):  # no isatty, or a closed stream
        return False
    return bool(tty) and not os.environ.get("CI") and os.environ.get("TERM") != "dumb"


@dataclass
class _Shown:
    """The last counted progress a step printed as a plain line."""

    done: int
    total: int | None
    at: float


class Console:
    def __init__(self, quiet: bool = False, stream=None,
                 clock: Callable[[], float] = time.monotonic):
        self.quiet = quiet
        self.stream = stream or sys.stderr
        self.interactive = not quiet and is_interactive(self.stream)
        self._clock = clock
        self._lock = threading.Lock()
        self._started: dict[str, float] = {}  # node id -> start time, for steps in flight
        self._shown: dict[str, _Shown] = {}
        self._bar: tuple[str, str, float] | None = None  # (node id, text, drawn at) on screen
        self._live = None  # LiveBars while a build runs steps on a terminal

    def say(self, message: str) -> None:
        with self._lock:
            self._line(message)

    def steps_begin(self, total: int) -> None:
        """`total` steps are about to run: on a terminal, the live bars start."""
        if self.interactive and total:
            from edgebuild.live_progress import LiveBars

            with self._lock:
                self._live = LiveBars(self.stream, total)

    def steps_end(self) -> None:
        with self._lock:
            live, self._live = self._live, None
        if live is not None:
            live.stop()

    # Steps are keyed by node id: two targets may each run a "quantize.tflite[int8]".
    def step_started(self, node) -> None:
        with self._lock:
            self._started[node.id] = self._clock()
            if self._live is not None:
                self._live.started(node.id, step_name(node))
                return
            self._line(f"  run  {step_name(node)}")

    def step_progress(self, node, message: str, done: int | None = None,
                      total: int | None = None) -> None:
        """Show how far a step is. Without counts, one plain line, as always. A raw
        "@progress" payload is understood too, so an executor that passes the text
        through unparsed still gets bars."""
        if done is None and total is None:
            message, done, total = parse_progress(message)
        if total is not None and done is None:
            done = 0
        with self._lock:
            now = self._clock()
            elapsed = now - self._started.get(node.id, now)
            if self._live is not None:
                self._live.update(node.id, step_name(node), message, done, total)
            elif done is None:
                self._line(f"       {step_name(node)}: {message} [{elapsed:.0f}s]")
            elif self.interactive and len(self._started) <= 1:
                self._draw_bar(node, message, done, total, elapsed, now)
            elif self._is_due(node.id, done, total, now):
                self._shown[node.id] = _Shown(done, total, now)
                self._line(f"       {step_name(node)}: {message}  {_counts(done, total)} "
                           f"[{elapsed:.0f}s]")

    def step_finished(self, node, status: str) -> None:
        with self._lock:
            now = self._clock()
            elapsed = now - self._started.pop(node.id, now)
            self._shown.pop(node.id, None)
            mark = {"executed": "done", "deferred": "defer", "cached": "hit"}.get(status, status)
            self._line(f"  {mark:<4} {step_name(node)}  {elapsed:.1f}s")
            if self._live is not None:
                self._live.finished(node.id)

    def step_failed(self, node, message: str) -> None:
        with self._lock:
            self._started.pop(node.id, None)
            self._shown.pop(node.id, None)
            # Quiet silences progress, not why a step failed.
            self._line(f"  FAIL {step_name(node)}: {message}", even_if_quiet=True)
            if self._live is not None:
                self._live.finished(node.id)

    # -- with the lock held ---------------------------------------------------------

    def _line(self, text: str, even_if_quiet: bool = False) -> None:
        if self.quiet and not even_if_quiet:
            return
        if self._live is not None:
            self._live.line(text)
            return
        self._clear_bar()
        print(text, file=self.stream, flush=True)

    def _clear_bar(self) -> None:
        if self._bar is not None:
            self.stream.write("\r" + " " * len(self._bar[1]) + "\r")
            self._bar = None

    def _draw_bar(self, node, message: str, done: int, total: int | None, elapsed: float,
                  now: float) -> None:
        if self.quiet:
            return
        last = self._bar
        finished = total is not None and done >= total
        if last is not None and last[0] == node.id and not finished \
                and now - last[2] < REDRAW_EVERY_SECONDS:
            return
        counts = f"{done}/{total}  {elapsed:.0f}s" if total else f"{done}  {elapsed:.0f}s"
        tail = f"  [{_bar(done, total)}]  {counts}" if total else f"  {counts}"
        room = _width(self.stream) - 1  # writing the last column wraps on some terminals
        if room - len(tail) < 20:
            tail = f"  {counts}"
        # Cut from the right: the message goes before the step's name does.
        text = _fit(f"  ...  {step_name(node)}  {message}", room - len(tail)) + tail
        pad = " " * max(0, min(len(last[1]), room) - len(text)) if last else ""
        self.stream.write("\r" + text + pad)
        self.stream.flush()
        self._bar = (node.id, text, now)

    def _is_due(self, node_id: str, done: int, total: int | None, now: float) -> bool:
        """Plain mode: the first update, then one per tenth of the total (a second
        apart at least) or per ten seconds, and always the last. A new total (or a
        count going back) starts over: the step has moved on to another phase."""
        shown = self._shown.get(node_id)
        if shown is None or total != shown.total or done < shown.done:
            return True
        if total is not None and done >= total:
            return shown.done < total
        if total and done - shown.done >= total * PLAIN_EVERY_FRACTION:
            return now - shown.at >= PLAIN_MIN_GAP_SECONDS  # short steps: first and last
        return done > shown.done and now - shown.at >= PLAIN_EVERY_SECONDS


def _counts(done: int, total: int | None) -> str:
    if not total:
        return str(done)
    return f"{done}/{total} ({100 * min(done, total) // total}%)"


def _bar(done: int, total: int) -> str:
    filled = BAR_WIDTH * min(done, total) // total
    return "#" * filled + "." * (BAR_WIDTH - filled)


def _fit(text: str, room: int) -> str:
    if len(text) <= room:
        return text
    return text[:max(0, room - 1)] + "…" if room > 0 else ""


def _width(stream) -> int:
    try:
        columns = os.get_terminal_size(stream.fileno()).columns
    except (AttributeError, OSError, ValueError):
        columns = 0
    return columns or shutil.get_terminal_size((100, 24)).columns  # a pty may say 0


def step_name(node) -> str:
    """A step as people read it (progress lines, graphs): its label, with the targets
    it serves where the label does not name them, so that three quantize.tflite[int8]
    steps are told apart."""
    if node.kind in ("bundle", "validate") or not node.targets:
        return node.label
    return f"{node.label} ({', '.join(node.targets)})"

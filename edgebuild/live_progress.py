"""Live progress on a terminal, drawn by rich: one bar for the build (N/M steps, time
so far and an ETA), and one per running step, so that `-j 2` shows two. The step's
own detail (epoch, loss, calibration count) is kept when a line must be cut to the
terminal's width: the step's name gives way first. console.py uses this only on an
interactive terminal; in CI and in logs it prints plain lines instead.
"""

from __future__ import annotations

BAR_COLUMNS = 64  # what the bar, the counts and the times take beside a description


class LiveBars:
    def __init__(self, stream, total: int):
        from rich.console import Console
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            TextColumn,
            TimeElapsedColumn,
            TimeRemainingColumn,
        )

        self.console = Console(file=stream, highlight=False)
        self.progress = Progress(
            TextColumn("{task.description}", markup=False), BarColumn(bar_width=24),
            MofNCompleteColumn(), TimeElapsedColumn(),
            TextColumn("{task.fields[eta]}", markup=False), TimeRemainingColumn(),
            console=self.console, refresh_per_second=8)
        self.overall = self.progress.add_task("build", total=total, eta="ETA")
        self.steps: dict[str, int] = {}  # node id -> task id
        self.progress.start()

    def started(self, node_id: str, name: str) -> None:
        self.steps[node_id] = self.progress.add_task(_fit(name, "", self._room()), total=None,
                                                     eta="")

    def update(self, node_id: str, name: str, message: str, done: int | None,
               total: int | None) -> None:
        task = self.steps.get(node_id)
        if task is not None:
            self.progress.update(task, description=_fit(name, message, self._room()),
                                 completed=done or 0, total=total)

    def _room(self) -> int:
        return max(30, self.console.width - BAR_COLUMNS)

    def finished(self, node_id: str) -> None:
        task = self.steps.pop(node_id, None)
        if task is not None:
            self.progress.remove_task(task)
        self.progress.advance(self.overall)

    def line(self, text: str) -> None:
        """A plain line above the bars (step starts, ends, failures)."""
        self.console.print(text, markup=False, soft_wrap=True)

    def stop(self) -> None:
        self.progress.stop()


def _fit(name: str, message: str, room: int) -> str:
    """`name: message` in `room` characters. What goes first: the targets after the
    step's label, then the start of the message; its end, where a step puts the epoch
    and the loss, stays."""
    if not message:
        return name if len(name) <= room else name[:room - 1] + "…"
    for label in (name, name.split(" (")[0]):
        if len(label) + 2 + len(message) <= room:
            return f"{label}: {message}"
    label = name.split(" (")[0]
    left = room - len(label) - 3  # ": …"
    if left >= 12:
        return f"{label}: …{message[-left:]}"
    return "…" + message[-(room - 1):]

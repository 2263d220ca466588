"""Progress on the console: a bar redrawn in place on a terminal, throttled plain
lines in CI and logs, only failures when quiet, and the worker's "@progress" lines read
back exactly as they were meant."""

from __future__ import annotations

import io
import subprocess
import sys
from dataclasses import dataclass

import pytest

from edgebuild.console import Console, format_progress, parse_progress, step_name
from edgebuild.worker import StepContext

pytestmark = pytest.mark.fast


@dataclass
class Node:
    id: str
    label: str = "quantize.tflite[int8]"
    kind: str = "quantize"
    targets: tuple = ("rpi4",)


class Clock:
    def __init__(self):
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


@pytest.fixture
def terminal_env(monkeypatch):
    monkeypatch.delenv("CI", raising=False)
    monkeypatch.setenv("TERM", "xterm-256color")
    monkeypatch.setenv("COLUMNS", "100")


def counted_lines(out: str) -> list[str]:
    return [line for line in out.splitlines() if "calibrating" in line]


def test_plain_lines_are_throttled_to_tenths_of_the_total():
    stream, clock = io.StringIO(), Clock()
    console, node = Console(stream=stream, clock=clock), Node("a")
    console.step_started(node)
    for done in range(101):
        clock.now += 0.25
        console.step_progress(node, "calibrating", done, 100)
    console.step_progress(node, "calibrating", 100, 100)  # the last, again: not twice
    console.step_finished(node, "executed")
    lines = counted_lines(stream.getvalue())
    assert [line.split("calibrating  ")[1].split()[0] for line in lines] == \
        [f"{done}/100" for done in range(0, 101, 10)]
    assert lines[5] == "       quantize.tflite[int8] (rpi4): calibrating  50/100 (50%) [13s]"


def test_a_short_step_prints_only_its_first_and_last_plain_line():
    stream, clock = io.StringIO(), Clock()
    console, node = Console(stream=stream, clock=clock), Node("a")
    console.step_started(node)
    for done in range(201):  # 200 samples calibrated in 0.4 s
        clock.now += 0.002
        console.step_progress(node, "calibrating", done, 200)
    shown = [line.split("calibrating  ")[1].split()[0] for line in
             counted_lines(stream.getvalue())]
    assert shown == ["0/200", "200/200"]
    assert "\r" not in stream.getvalue()


def test_plain_lines_also_come_every_ten_seconds_and_always_the_last():
    stream, clock = io.StringIO(), Clock()
    console, node = Console(stream=stream, clock=clock), Node("a")
    console.step_started(node)
    for done in range(21):  # 1,000 in all: 10% is never reached, only time passes
        clock.now += 3
        console.step_progress(node, "calibrating", done, 1000)
    console.step_progress(node, "calibrating", 1000, 1000)
    shown = [line.split("calibrating  ")[1].split()[0] for line in
             counted_lines(stream.getvalue())]
    assert shown == ["0/1000", "4/1000", "8/1000", "12/1000", "16/1000", "20/1000",
                     "1000/1000"]


def test_a_new_total_is_a_new_phase_and_prints_at_once():
    stream, clock = io.StringIO(), Clock()
    console, node = Console(stream=stream, clock=clock), Node("a")
    console.step_progress(node, "calibrating", 0, 100)
    console.step_progress(node, "calibrating", 1, 100)
    console.step_progress(node, "calibrating", 0, 8)
    assert [line.split("  ")[-1].split()[0] for line in counted_lines(stream.getvalue())] \
        == ["0/100", "0/8"]


def test_progress_without_counts_prints_every_message_as_before():
    stream = io.StringIO()
    console, node = Console(stream=stream, clock=Clock()), Node("a")
    console.step_started(node)
    for _ in range(3):
        console.step_progress(node, "converting to TFLite float32")
    assert stream.getvalue().splitlines()[1:] == \
        ["       quantize.tflite[int8] (rpi4): converting to TFLite float32 [0s]"] * 3


def test_a_terminal_gets_one_bar_redrawn_in_place(terminal_env):
    stream, clock = Terminal(), Clock()
    console, node = Console(stream=stream, clock=clock), Node("a")
    console.step_started(node)
    for done in range(11):
        clock.now += 1
        console.step_progress(node, "calibrating", done, 10)
    bar = stream.getvalue()
    clock.now += 1
    console.step_finished(node, "executed")
    out = stream.getvalue()

    frames = bar.split("\r")[1:]
    assert len(frames) == 11  # a redraw per update: they are a second apart
    assert frames[4].rstrip() == \
        "  ...  quantize.tflite[int8] (rpi4)  calibrating  [########............]  4/10  5s"
    assert frames[-1].startswith("  ...  quantize.tflite[int8] (rpi4)  calibrating  "
                                 "[####################]  10/10  11s")
    assert "\n" not in bar.split("  run  ")[1].split("\n", 1)[1]  # no newline while drawing
    # Finishing wipes the bar and ends with a newline-terminated line.
    assert out.endswith("\r  done quantize.tflite[int8] (rpi4)  12.0s\n")
    assert out[len(bar):].startswith("\r" + " " * len(frames[-1]) + "\r")


def test_a_terminal_bar_redraws_at_most_ten_times_a_second(terminal_env):
    stream, clock = Terminal(), Clock()
    console, node = Console(stream=stream, clock=clock), Node("a")
    console.step_started(node)
    for done in range(1, 1001):
        clock.now += 0.001
        console.step_progress(node, "calibrating", done, 1000)
    frames = stream.getvalue().split("\r")[1:]
    assert 8 <= len(frames) <= 12
    assert "1000/1000" in frames[-1]  # the last is always drawn


def test_another_line_clears_the_bar_first(terminal_env):
    stream, clock = Terminal(), Clock()
    console, node = Console(stream=stream, clock=clock), Node("a")
    console.step_started(node)
    console.step_progress(node, "calibrating", 3, 10)
    drawn = stream.getvalue().rsplit("\r", 1)[1]
    console.say("warning: something")
    assert stream.getvalue().endswith("\r" + " " * len(drawn) + "\rwarning: something\n")


def test_bars_fit_the_terminal_width(terminal_env, monkeypatch):
    monkeypatch.setenv("COLUMNS", "80")
    stream, clock = Terminal(), Clock()
    console = Console(stream=stream, clock=clock)
    console.step_progress(Node("a"), "calibrating on 2,000 images of the validation set",
                          5, 10)
    frame = stream.getvalue().split("\r")[1]
    assert len(frame) == 79 and frame.endswith("…  [##########..........]  5/10  0s")
    assert frame.startswith("  ...  quantize.tflite[int8] (rpi4)")
    monkeypatch.setenv("COLUMNS", "40")  # too narrow for a bar: the counts stay
    clock.now += 1
    console.step_progress(Node("a"), "calibrating", 6, 10)
    frame = stream.getvalue().split("\r")[-1].rstrip()  # padded over the longer bar
    assert len(frame) == 39 and frame.endswith("…  6/10  0s")


def test_several_steps_in_flight_get_plain_lines_on_a_terminal(terminal_env):
    stream, clock = Terminal(), Clock()
    console, a, b = Console(stream=stream, clock=clock), Node("a"), Node("b", targets=("x86",))
    console.step_started(a)
    console.step_started(b)
    for done in range(11):
        console.step_progress(a, "calibrating", done, 10)
        console.step_progress(b, "calibrating", done, 10)
    assert "\r" not in stream.getvalue()
    assert len(counted_lines(stream.getvalue())) == 4  # quick: first and last of each


@pytest.mark.parametrize("env", [{"CI": "true"}, {"TERM": "dumb"}])
def test_ci_and_dumb_terminals_get_plain_lines(terminal_env, monkeypatch, env):
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    stream = Terminal()
    console, node = Console(stream=stream, clock=Clock()), Node("a")
    for done in range(101):
        console.step_progress(node, "calibrating", done, 100)
    assert "\r" not in stream.getvalue()
    assert len(counted_lines(stream.getvalue())) == 2  # quick: first and last


@pytest.mark.parametrize("stream_type", [io.StringIO, Terminal])
def test_quiet_prints_only_failures(terminal_env, stream_type):
    stream, node = stream_type(), Node("a")
    console = Console(quiet=True, stream=stream, clock=Clock())
    console.say("hello")
    console.step_started(node)
    console.step_progress(node, "converting")
    for done in range(11):
        console.step_progress(node, "calibrating", done, 10)
    console.step_finished(node, "executed")
    assert stream.getvalue() == ""
    console.step_failed(node, "boom")
    assert stream.getvalue() == f"  FAIL {step_name(node)}: boom\n"


@pytest.mark.parametrize("message, done, total", [
    ("calibrating", 45, 100),
    ("converting to TFLite float32", None, None),
    ("epoch 1/3: loss 0.1", None, None),   # looks like counts, but is a plain message
    ('{"message": "x"}', None, None),     # looks like the JSON form, but is a message
    ("two\nlines", None, None),
    ("batches", 7, None),
    ("starting", 0, 12),
])
def test_worker_progress_round_trips(monkeypatch, tmp_path, message, done, total):
    out = io.StringIO()
    monkeypatch.setattr(sys, "__stdout__", out)
    ctx = StepContext(params={}, inputs={}, outdir=tmp_path, device={})
    ctx.progress(message, done, total)
    line = out.getvalue()
    assert line.endswith("\n") and line.count("\n") == 1
    assert line.startswith("@progress ")
    assert parse_progress(line[len("@progress "):-1]) == (message, done, total)


def test_messages_without_counts_keep_the_old_wire_format():
    assert format_progress("checking ONNX model") == "checking ONNX model"
    assert parse_progress("checking ONNX model") == ("checking ONNX model", None, None)
    assert parse_progress("{not json") == ("{not json", None, None)
    assert parse_progress('{"message": "x", "done": "lots", "total": -1}') == ("x", None, None)


def test_a_real_worker_process_line_parses(tmp_path):
    code = ("from pathlib import Path; from edgebuild.worker import StepContext; "
            f"StepContext({{}}, {{}}, Path({str(tmp_path)!r}), {{}}).progress('calibrating', 3, 8)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True).stdout
    (line,) = out.splitlines()
    assert line.startswith("@progress ")
    assert parse_progress(line[len("@progress "):]) == ("calibrating", 3, 8)


def test_console_reads_a_raw_payload_from_an_unchanged_executor():
    stream = io.StringIO()
    console = Console(stream=stream, clock=Clock())
    console.step_progress(Node("a"), format_progress("calibrating", 5, 10))
    assert stream.getvalue() == \
        "       quantize.tflite[int8] (rpi4): calibrating  5/10 (50%) [0s]\n"

"""Progress on a real terminal: a pseudo-terminal runs `edgebuild all -j 2`, and what
it shows is read back: the build's bar with N/M steps and an ETA, and two step bars
at once while two steps run."""

from __future__ import annotations

import os
import pty
import re
import select
import subprocess
import sys

ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")


def run_in_terminal(args: list[str], cwd, env: dict) -> str:
    leader, follower = pty.openpty()
    os.set_inheritable(follower, True)
    proc = subprocess.Popen(args, cwd=cwd, env=env, stdin=follower, stdout=follower,
                            stderr=follower, close_fds=True)
    os.close(follower)
    chunks = []
    while True:
        ready, _, _ = select.select([leader], [], [], 0.5)
        if ready:
            try:
                data = os.read(leader, 65536)
            except OSError:  # the terminal closed: the process is gone
                break
            if not data:
                break
            chunks.append(data)
        elif proc.poll() is not None:
            break
    proc.wait(timeout=60)
    os.close(leader)
    return b"".join(chunks).decode("utf-8", "replace")


def test_two_steps_show_two_bars_and_the_build_an_eta(tiny):
    env = {k: v for k, v in os.environ.items() if k != "CI"}
    env.update(TERM="xterm-256color", COLUMNS="160", LINES="40")
    out = run_in_terminal([sys.executable, "-m", "edgebuild", "all", str(tiny.recipe),
                           "-j", "2", *tiny.args()], tiny.root, env)
    assert "Traceback" not in out, out[-3000:]
    # rich redraws the block of bars in place: every redraw starts by moving up.
    frames = [ANSI.sub("", frame) for frame in re.split(r"\x1b\[\d*A", out)]
    build_lines = [line for frame in frames for line in frame.splitlines()
                   if line.lstrip().startswith("build ")]
    assert build_lines, out[-3000:]
    assert any(re.search(r"\d+/\d+", line) and "ETA" in line for line in build_lines)
    assert any(re.search(r"\b(\d+)/\1\b", line) for line in build_lines)  # it got to M/M
    step_bars = [sum(1 for line in frame.splitlines()
                     if ("tflite" in line or "baseline" in line or "bundle" in line)
                     and ("━" in line or "╸" in line or "╺" in line))
                 for frame in frames]
    assert max(step_bars) >= 2, "never two step bars at once:\n" + out[-3000:]
    # The plain lines still say what ran; the results table ends the build.
    assert "done convert.tflite" in ANSI.sub("", out)
    assert "latency ms (median / p90)" in ANSI.sub("", out)


def test_without_a_terminal_progress_is_plain_lines(tiny):
    env = {**os.environ, "CI": "1"}
    done = subprocess.run([sys.executable, "-m", "edgebuild", "all", str(tiny.recipe),
                           "-j", "2", *tiny.args()], cwd=tiny.root, env=env,
                          capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "\x1b[" not in done.stderr and "━" not in done.stderr
    assert "  run  convert.tflite" in done.stderr


def test_a_cut_line_keeps_the_steps_detail():
    from edgebuild.live_progress import _fit

    name = "cluster.tfmot[16] (clustered, cl_float, cl_int8)"
    message = "clustering into 16 centroids per layer: epoch 2, loss 0.0123"
    assert _fit(name, message, 200) == f"{name}: {message}"
    cut = _fit(name, message, 60)
    assert len(cut) <= 60 and cut.startswith("cluster.tfmot[16]: …")
    assert cut.endswith("epoch 2, loss 0.0123")

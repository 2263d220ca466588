"""User mistakes and unkind environments: a clear message and the right exit status
(2 for usage and recipe errors, 1 for build failures), never a traceback."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import TINY_RECIPE

from edgebuild.cli import main


def run(argv: list[str], capsys) -> tuple[int, str, str]:
    code = main(argv)
    out, err = capsys.readouterr()
    return code, out, err


def test_explain_names_an_unknown_target_and_lists_the_targets(tiny, capsys):
    code, _, err = run(["explain", str(tiny.recipe), "unknown:convert", *tiny.args()], capsys)
    assert code == 2
    assert "no target named 'unknown' (targets: rpi4, pixel)" in err, err
    assert "{" not in err and "TARGET:KIND" not in err  # the step was named right

    code, _, err = run(["explain", str(tiny.recipe), "unknown", *tiny.args()], capsys)
    assert code == 2
    assert "no target named 'unknown' (targets: rpi4, pixel)" in err
    assert "name a step as TARGET:KIND, e.g. rpi4:convert" in err

    code, _, err = run(["explain", str(tiny.recipe), "pixel", *tiny.args()], capsys)
    assert code == 2
    assert "name a step as TARGET:KIND, e.g. pixel:convert (the steps of 'pixel': " \
           "convert, quantize, baseline, validate, bundle)" in err, err
    assert "Traceback" not in err


@pytest.mark.parametrize("command", [["plan", "--json"], ["devices"]])
def test_a_reader_that_closes_the_pipe_early_is_no_error(tiny, command):
    """`edgebuild plan --json RECIPE | head -1`: the reader has gone before edgebuild
    writes, so every write meets a closed pipe (and so does Python's flush at exit)."""
    read_end, write_end = os.pipe()
    reader = subprocess.Popen([sys.executable, "-c", "pass"], stdin=read_end)
    os.close(read_end)
    assert reader.wait(timeout=60) == 0  # the pipe now has no reader at all
    args = [*command, str(tiny.recipe), *tiny.args()] if command[0] == "plan" else command
    proc = subprocess.run([sys.executable, "-m", "edgebuild", *args], cwd=tiny.root,
                          stdout=write_end, stderr=subprocess.PIPE, text=True, timeout=300)
    os.close(write_end)
    assert proc.returncode == 0, proc.stderr
    assert "Broken pipe" not in proc.stderr and "BrokenPipeError" not in proc.stderr
    assert "Traceback" not in proc.stderr and "Exception ignored" not in proc.stderr
    assert proc.stderr == ""


@pytest.mark.parametrize("jobs", ["0", "-1", "two"])
@pytest.mark.parametrize("command", [["all"], ["build", "--target", "rpi4"]])
def test_jobs_must_be_one_or_more(tiny, capsys, command, jobs):
    with pytest.raises(SystemExit) as exit_:
        main([command[0], str(tiny.recipe), *command[1:], "-j", jobs, *tiny.args()])
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert f"argument -j/--jobs: '{jobs}' is not a whole number of 1 or more" in err, err
    assert not tiny.cache.exists()  # refused before anything was opened


@pytest.mark.parametrize("flag", ["--cache-dir", "--dist"])
@pytest.mark.parametrize("command", ["plan", "all"])
def test_cache_and_dist_that_are_files_are_usage_errors(tiny, capsys, flag, command):
    a_file = tiny.root / "labels.txt"
    for path, message in ((a_file, f"'{a_file}' is a file, not a folder"),
                          (a_file / "sub", f"'{a_file / 'sub'}' cannot be a folder: "
                                           f"'{a_file}' is a file")):
        argv = [command, str(tiny.recipe), *tiny.args(), flag, str(path)]  # the last wins
        with pytest.raises(SystemExit) as exit_:
            main(argv)
        assert exit_.value.code == 2
        err = capsys.readouterr().err
        assert f"argument {flag}: {message}" in err, err
        assert "Errno" not in err and "Traceback" not in err


def test_a_cache_named_by_the_environment_that_is_a_file_is_a_usage_error(
        tiny, capsys, monkeypatch):
    monkeypatch.setenv("EDGEBUILD_CACHE", str(tiny.root / "labels.txt"))
    code, _, err = run(["plan", str(tiny.recipe), "--dist", str(tiny.dist)], capsys)
    assert code == 2
    assert f"$EDGEBUILD_CACHE: '{tiny.root / 'labels.txt'}' is a file, not a folder" in err


def test_help_shows_the_line_continuation_of_its_last_example(capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["--help"])
    assert exit_.value.code == 0
    out = capsys.readouterr().out
    assert "--remote-cache s3://bucket/edgebuild \\\n      --scheduler tcp://scheduler:8786\n" \
        in out, out


def test_clean_without_recipes_or_cache_says_what_it_takes(rebuilt, capsys):
    code, out, err = run(["clean", *rebuilt.args()], capsys)
    assert code == 2 and out == ""
    assert "name the recipes whose bundles to remove" in err and "--cache" in err, err
    assert (rebuilt.dist / "tiny" / "rpi4").is_dir() and rebuilt.cache.is_dir()  # untouched


TRAIN = "  validation: {path: data/val}\n  train: {path: data/calib, loss: distill, epochs: 1}\n"
OPTIMIZING = ("targets:\n  sparse: {device: rpi4, prune: {sparsity: 0.5}, cluster: {clusters: 4}}\n"
              "  server: {device: cloud-gpu}\n")  # cloud-gpu clusters given data.train


def optimizing_recipe() -> str:
    """The tiny recipe with prune and cluster steps, which look inside the source."""
    recipe = TINY_RECIPE.replace("  validation: {path: data/val}\n", TRAIN)
    return recipe[:recipe.index("targets:")] + OPTIMIZING


def detection_recipe(annotations: str) -> str:
    recipe = TINY_RECIPE.replace("task: classification", "task: detection\ndecode: grid")
    recipe = recipe.replace("{path: data/val}", f"{{path: data/val, annotations: {annotations}}}")
    return recipe.replace("{device: rpi4}", "{device: rpi4, budget: {max_drop_points: 5}}")


@pytest.mark.parametrize("recipe, where, message", [
    (optimizing_recipe().replace("model/tiny.keras", "model/missing.keras"), "source.path",
     "'model/missing.keras' does not exist"),
    (optimizing_recipe().replace("{path: model/tiny.keras}",
                                 "{path: model/missing.keras, format: keras}"),
     "source.path", "'model/missing.keras' does not exist"),
    (optimizing_recipe().replace("model/tiny.keras", "model"), "source.path",
     "cannot tell the model format of 'model'"),
    (TINY_RECIPE.replace("{path: model/tiny.keras}",
                         "{path: model/missing.onnx, input_shapes: {image: [1, 16, 16, 3]}}")
     .replace("{device: rpi4}", "{device: x86-cpu}").replace("{device: android-gpu}",
                                                             "{device: cloud-gpu}"),
     "source.path", "'model/missing.onnx' does not exist"),
    (detection_recipe("missing.json"), "data.validation.annotations",
     "'missing.json' does not exist"),
], ids=["source", "source-with-format", "source-of-unknown-format", "onnx-source",
        "annotations"])
def test_a_missing_file_is_one_problem_without_follow_on_errors(tiny, recipe, where, message):
    tiny.recipe.write_text(recipe)
    code, _ = tiny.run("plan")
    assert code == 2
    problems = tiny.last_stderr.strip().splitlines()
    assert len(problems) == 1, tiny.last_stderr
    assert f" {where}: {message}" in problems[0], problems[0]


def test_the_recipes_behind_those_problems_are_otherwise_sound(tiny):
    """With the file where it should be, the same recipes load: the one problem was
    all there was."""
    tiny.recipe.write_text(optimizing_recipe())
    assert tiny.run("plan")[0] == 0, tiny.last_stderr
    (tiny.root / "val.json").write_text('{"images": [], "annotations": [], "categories": []}')
    tiny.recipe.write_text(detection_recipe("val.json"))
    assert tiny.run("plan")[0] == 0, tiny.last_stderr


def test_a_failed_steps_log_holds_its_error_and_traceback(tiny):
    """A step error (here: calibration data without images) used to leave a one-byte
    log: the worker prints nothing, and only a crash's traceback was written."""
    shutil.rmtree(tiny.root / "data" / "calib")
    (tiny.root / "data" / "calib").mkdir()
    # No count: a count beyond the images there are is a recipe error, found at plan time.
    tiny.recipe.write_text(TINY_RECIPE.replace("  pixel: {device: android-gpu}\n", "").replace(
        "{device: rpi4}", "{device: rpi4, validate: false}").replace(", count: 8", ""))
    code, result = tiny.run("all", "-j", "2")
    assert code == 1
    failed = [s for s in result["step_list"] if s["status"] == "failed"]
    assert [s["kind"] for s in failed] == ["quantize"], result["step_list"]
    message = failed[0]["message"]
    assert "no images found" in message and "Traceback" not in message, message
    log = Path(re.search(r"\(full log: (.+)\)$", message).group(1))
    assert log.parent == tiny.cache / "logs"
    text = log.read_text()
    assert "error: " in text and "no images found" in text, text
    assert "Traceback (most recent call last)" in text and "StepError" in text, text


def test_plan_names_every_target_that_all_defers_with_its_reason(rebuilt):
    """An Edge TPU compile is deferred like a TensorRT engine without a GPU: plan said
    so only of TensorRT, and counted the Edge TPU compile as an ordinary step."""
    from edgebuild.toolchains.edgetpu import deferral

    rebuilt.recipe.write_text(TINY_RECIPE + "  coral: {device: coral-edgetpu}\n")
    code, planned = rebuilt.run("plan")
    assert code == 0, rebuilt.last_stderr
    assert planned["deferred"] == {"coral": deferral()}

    result = rebuilt.build()
    deferred = {name: target["deferred"] for name, target in result["targets"].items()
                if target["status"] == "deferred"}
    assert deferred == planned["deferred"]
    code, again = rebuilt.run("plan")  # now from the cache: the same word
    assert code == 0 and again["deferred"] == deferred

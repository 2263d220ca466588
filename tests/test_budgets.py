"""Validation as a gate: budgets pass or fail targets, fallback ladders step down,
and every build ends with a report. Real builds of the tiny classifier.

The tiny model's measured fidelity to its float source (softmax outputs, 6 images):
SNR about 43 dB for int8, 52 dB for int16x8 and 78 dB for fp16, so a 65 dB floor is
a failure planted in int8 and int16x8 that fp16 clears with a wide margin.
"""

from __future__ import annotations

import contextlib
import io
import json

import pytest

from edgebuild.budget import Measured, check, table
from edgebuild.cli import main

pytestmark = pytest.mark.slow


def add_targets(project, text: str) -> None:
    recipe = project.recipe.read_text().replace("  pixel: {device: android-gpu}\n", text)
    project.recipe.write_text(recipe)


def cli_text(project, *args: str) -> tuple[int, str]:
    out = io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(io.StringIO()):
        code = main([*args, str(project.recipe), *project.args()])
    return code, out.getvalue()


def manifest(project, target: str) -> dict:
    return json.loads((project.dist / "tiny" / target / "manifest.json").read_text())


# -- the budget check itself, on hand-made measurements -------------------------------

def test_budget_misses_say_what_by_how_much():
    measured = Measured(metric="top1", metric_label="top-1", value=0.90, baseline=0.95,
                        fidelity=[{"output": 0, "cosine": 0.97, "snr_db": 18.0}],
                        agreement=0.9, size_bytes=2_500_000, latency_ms=4.0, speedup=1.5)
    result = check({"max_drop_points": 2.0, "max_drop_percent": 10, "min_cosine": 0.99,
                    "min_snr_db": 20, "min_agreement": 0.95, "max_size_mb": 2.0,
                    "max_latency_ms": 5.0, "min_speedup": 2.0}, measured)
    misses = {m["budget"]: m for m in result.misses}
    assert set(misses) == {"max_drop_points", "min_cosine", "min_snr_db", "min_agreement",
                           "max_size_mb", "min_speedup"}  # relative drop 5.3% and latency hold
    assert misses["max_drop_points"]["actual"] == pytest.approx(5.0)
    assert misses["max_drop_points"]["by"] == pytest.approx(3.0)
    assert misses["max_size_mb"]["by"] == pytest.approx(0.5)
    assert misses["min_speedup"]["by"] == pytest.approx(0.5)
    assert "top-1 drop 5.00 points > max_drop_points 2.00 points (by 3.00 points)" in \
        misses["max_drop_points"]["text"]
    assert "size" in table(result.misses).splitlines()[-2]
    assert not result.passed


def test_unmeasured_limits_are_reported_not_passed_silently():
    result = check({"max_drop_points": 1.0, "min_speedup": 1.2}, Measured(metric_label="top-1"))
    assert result.passed and len(result.unchecked) == 2


# -- the gate in a real build ---------------------------------------------------------

def test_a_missed_budget_fails_its_target_only(tiny):
    add_targets(tiny, "  strict: {device: rpi4, budget: {max_size_mb: 0.000001}}\n"
                      "  roomy: {device: rpi4, budget: {max_size_mb: 10, min_cosine: 0.9}}\n")
    code, result = tiny.run("all")
    assert code == 1
    targets = result["targets"]
    assert targets["strict"]["status"] == "failed" and targets["strict"]["bundle"] is None
    (miss,) = targets["strict"]["misses"]
    assert miss["budget"] == "max_size_mb" and miss["by"] > 0
    assert targets["rpi4"]["status"] == targets["roomy"]["status"] == "ok"
    assert (tiny.dist / "tiny" / "roomy" / "manifest.json").exists()
    assert not (tiny.dist / "tiny" / "strict").exists()

    # The verdict is cached: a re-run measures nothing again and fails the same way,
    # and the text summary names the failure with its table.
    code, text = cli_text(tiny, "all")
    assert code == 1
    assert "failed: strict" in text and "strict: budget missed" in text
    assert "size" in text and "max_size_mb" in text
    code, result = tiny.run("all")
    assert result["steps"]["executed"] == 0 and result["steps"]["failed"] == 1


def test_the_ladder_steps_down_until_the_budget_holds(tiny):
    add_targets(tiny, "  laddered: {device: x86-cpu, format: tflite, budget: {min_snr_db: 65},\n"
                      "             fallback: [int8, int16x8, fp16]}\n")
    result = tiny.build()
    assert result["targets"]["laddered"]["fallback"]["chosen"] == "fp16"
    ladder = manifest(tiny, "laddered")["fallback"]
    assert [t["rung"] for t in ladder["tried"]] == ["int8", "int16x8", "fp16"]
    assert [t["passed"] for t in ladder["tried"]] == [False, False, True]
    assert "min_snr_db" in ladder["tried"][0]["misses"][0]
    assert manifest(tiny, "laddered")["artifact"]["precision"] == "fp16"
    lock = json.loads(tiny.recipe.with_suffix(".lock").read_text())
    assert lock["targets"]["laddered"]["fallback"]["chosen"] == "fp16"
    assert "int8 missed" in lock["targets"]["laddered"]["fallback"]["reason"]

    # Every rung is a cached step: the re-run starts at fp16 and runs nothing.
    again = tiny.build()
    assert again["steps"]["executed"] == 0
    assert again["targets"]["laddered"]["fallback"]["chosen"] == "fp16"


def test_a_ladder_that_runs_out_of_rungs_fails_with_every_miss(tiny):
    add_targets(tiny, "  hopeless: {device: rpi4, budget: {min_snr_db: 200},\n"
                      "            fallback: [int8, fp16]}\n")
    code, result = tiny.run("all")
    assert code == 1
    hopeless = result["targets"]["hopeless"]
    assert hopeless["status"] == "failed" and hopeless["fallback"]["chosen"] is None
    assert [t["passed"] for t in hopeless["fallback"]["tried"]] == [False, False]
    assert result["targets"]["rpi4"]["status"] == "ok"


def test_sensitive_layers_stay_float(tiny):
    add_targets(tiny, "  mixed: {device: x86-cpu, format: tflite, quantize: {mode: int8, "
                      "keep_float: {sensitive: 1}}}\n")
    result = tiny.build()
    assert result["targets"]["mixed"]["status"] == "ok"
    quantize = next(s for s in manifest(tiny, "mixed")["chain"] if s["kind"] == "quantize")
    assert len(quantize["facts"]["kept_float"]) == 1
    assert manifest(tiny, "mixed")["artifact"]["precision"] == "int8-sensitive-float"


def test_every_build_ends_with_a_report(built_tiny):
    folder = built_tiny.dist / "tiny"
    doc = json.loads((folder / "report.json").read_text())
    assert [row["target"] for row in doc["targets"]] == ["rpi4", "pixel"]
    rpi4 = doc["targets"][0]
    assert rpi4["precision"] == "int8" and rpi4["budget"]["status"] == "pass"
    assert rpi4["fidelity"]["agreement_label"] == "top-1 agreement"
    assert rpi4["latency"]["median_ms"] > 0 and rpi4["speedup"] > 0
    assert doc["host"]["note"] == "host latency, not device latency"
    assert "| rpi4 | rpi4 | tflite | int8 |" in (folder / "report.md").read_text()
    assert (folder / "pareto.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    code, text = cli_text(built_tiny, "report")
    assert code == 0 and "rpi4" in text and "report.md" in text

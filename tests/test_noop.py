"""A no-op build does no work and imports no toolchain."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

pytestmark = pytest.mark.fast

HEAVY = ("tensorflow", "tf_keras", "keras", "onnxruntime", "onnx", "tensorrt", "tf2onnx",
         "ai_edge_litert", "tensorflow_model_optimization")

PROBE = """
import json, sys
from edgebuild.cli import main
code = main(sys.argv[1:])
heavy = sorted(m for m in {heavy!r} if m in sys.modules)
print(json.dumps({{"code": code, "heavy": heavy}}), file=sys.stderr)
"""


def run_probe(project, *args) -> tuple[dict, dict]:
    proc = subprocess.run([sys.executable, "-c", PROBE.format(heavy=HEAVY), *args,
                           str(project.recipe), *project.args("--json")],
                          capture_output=True, text=True, cwd=project.root)
    probe = json.loads(proc.stderr.strip().splitlines()[-1])
    return probe, json.loads(proc.stdout) if proc.stdout.strip() else {}


def test_noop_build_imports_no_toolchain(rebuilt):
    rebuilt.build()  # the copy's stat cache is cold: warm it
    probe, result = run_probe(rebuilt, "all")
    assert probe == {"code": 0, "heavy": []}
    assert result["steps"]["executed"] == 0


def test_plan_and_help_import_no_toolchain(rebuilt):
    probe, plan = run_probe(rebuilt, "plan")
    assert {s["status"] for s in plan["step_list"]} == {"cached"}
    assert probe == {"code": 0, "heavy": []}
    code = ("import sys; from edgebuild.cli import _parser; _parser(); "
            f"print(sorted(m for m in {HEAVY!r} if m in sys.modules))")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert proc.stdout.strip() == "[]"

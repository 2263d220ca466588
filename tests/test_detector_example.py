"""The shipped example builds for real: recipes/detector.yaml, seven targets."""

from __future__ import annotations

import json
import shutil

import numpy as np
from conftest import REPO, Project


def test_detector_recipe_builds_one_bundle_per_target(tmp_path):
    # Build a copy so the repository's own lock file, cache and dist stay untouched.
    (tmp_path / "recipes").mkdir()
    shutil.copy(REPO / "recipes" / "detector.yaml", tmp_path / "recipes")
    for folder in ("models", "data"):
        (tmp_path / folder).symlink_to(REPO / folder)
    project = Project(tmp_path, "recipes/detector.yaml")
    result = project.build()

    devices = {name: json.loads((project.dist / "detector" / name / "manifest.json").read_text())
               ["device"]["name"] for name in result["targets"]}
    assert devices == {"rpi4": "rpi4", "pixel": "android-gpu", "coral": "coral-edgetpu",
                       "x86": "x86-cpu", "jetson": "jetson-orin", "server": "cloud-gpu",
                       "rpi4-sparse": "rpi4"}
    assert {name: t["status"] for name, t in result["targets"].items()} == {
        "rpi4": "ok", "pixel": "ok", "coral": "deferred", "x86": "ok", "jetson": "deferred",
        "server": "ok", "rpi4-sparse": "ok"}

    from ai_edge_litert.interpreter import Interpreter

    coral = Interpreter(model_path=str(project.dist / "detector" / "coral" / "model.tflite"))
    assert coral.get_input_details()[0]["dtype"] == np.int8  # int8 I/O for the Edge TPU
    assert coral.get_output_details()[0]["dtype"] == np.int8
    assert (project.dist / "detector" / "coral" / "compile_edgetpu.sh").exists()
    assert (project.dist / "detector" / "rpi4" / "labels.txt").read_text().split() == [
        "circle", "square", "triangle"]
    sizes = {name: (project.dist / "detector" / name / "model.tflite").stat().st_size
             for name in ("rpi4", "pixel")}
    assert sizes["rpi4"] < sizes["pixel"] / 1.5  # int8 weights against fp16 weights
    # Pruned and clustered, the same int8 model downloads much smaller.
    archives = {name: result["targets"][name]["archive"]["bytes"]
                for name in ("rpi4", "rpi4-sparse")}
    assert archives["rpi4-sparse"] < archives["rpi4"] * 0.7, archives

    # Every target is measured against the float source: COCO mAP@0.5 on the 200
    # validation images, within the default budget (2 points; rpi4-sparse allows 5).
    report = json.loads((project.dist / "detector" / "report.json").read_text())
    baseline = report["baseline"]["metrics"]["map50"]
    assert baseline > 0.9, report["baseline"]
    rows = {row["target"]: row for row in report["targets"]}
    for name, row in rows.items():
        assert row["budget"]["status"] == "pass", (name, row["budget"])
        assert row["fidelity"]["agreement_label"] == "box agreement"
    for name in ("rpi4", "coral", "x86"):  # full-integer int8
        assert rows[name]["drop"]["map50"] < 0.02, rows[name]
    # Host speed is the host's: int8 can be slower than float here (an x86 CPU without
    # VNNI runs LiteRT's float kernels fast). Whatever it is, it is said out loud.
    for name, row in rows.items():
        slower = row["speedup"] is not None and row["speedup"] < 1
        assert bool(row["slower"]) == slower, (name, row["speedup"], row["slower"])
        if slower:
            assert "ops compute in float" in row["slower"]["why"]
            assert result["targets"][name]["slower"]["speedup"] == row["speedup"]
    assert (project.dist / "detector" / "report.md").exists()
    assert (project.dist / "detector" / "pareto.png").exists()
    # The results table's rows: the chain, both COCO metrics, one row per target.
    table = {row["target"]: row for row in result["results"]}
    assert list(table) == list(devices)
    assert table["rpi4-sparse"]["chain"] == "prune 50% → 16 clusters → TFLite int8"
    assert table["jetson"]["chain"] == "ONNX fp16 → TensorRT engine"
    assert all(set(row["metrics"]) == {"map50", "map50_95"} for row in table.values())

    again = project.build()
    assert again["steps"]["executed"] == 0


def test_a_decoder_plug_in_beside_the_recipe_is_an_input(tmp_path):
    """`decode: module:function` loads the user's own decoder; editing it re-validates."""
    (tmp_path / "recipes").mkdir()
    for folder in ("models", "data"):
        (tmp_path / folder).symlink_to(REPO / folder)
    text = (REPO / "recipes" / "detector.yaml").read_text()
    (tmp_path / "recipes" / "detector.yaml").write_text(
        text.replace("decode: grid", "decode: {name: 'heads.shapes:decode', threshold: 0.05}"))
    (tmp_path / "recipes" / "heads").mkdir()
    plugin = tmp_path / "recipes" / "heads" / "shapes.py"
    plugin.write_text(
        "from edgebuild.metrics.decoders import load_decoder\n\n\n"
        "def decode(outputs, threshold):\n"
        "    return load_decoder({'name': 'grid', 'score_threshold': threshold})(outputs)\n")
    project = Project(tmp_path, "recipes/detector.yaml")
    code, result = project.run("build", "--target", "pixel")
    assert code == 0, project.last_stderr
    manifest = json.loads((project.dist / "detector" / "pixel" / "manifest.json").read_text())
    validation = manifest["validation"]
    assert validation["baseline"]["map50"] > 0.9  # the same head, decoded by the plug-in
    assert abs(validation["drop"]["map50"]) < 0.01

    plugin.write_text(plugin.read_text() + "# edited\n")
    code, again = project.run("build", "--target", "pixel")
    ran = {s["kind"] for s in again["step_list"] if s["status"] == "executed"}
    assert ran == {"baseline", "validate", "bundle"}, ran

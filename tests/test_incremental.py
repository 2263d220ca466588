"""Incremental behaviour: what runs, and only that, when something changes."""

from __future__ import annotations

import json
import os
import shutil

import numpy as np
from conftest import executed, write_images

from edgebuild.hashing import StatCache


def test_first_build_makes_one_bundle_per_target(built_tiny):
    result = built_tiny.first_build
    assert result["steps"]["failed"] == 0
    assert set(result["targets"]) == {"rpi4", "pixel"}
    for name, target in result["targets"].items():
        manifest = json.loads((built_tiny.dist / "tiny" / name / "manifest.json").read_text())
        assert target["status"] == "ok" and manifest["target"] == name
        assert set(manifest["files"]) == {"model.tflite", "labels.txt"}
        assert manifest["validation"]["passed"] is True
    rpi4 = json.loads((built_tiny.dist / "tiny" / "rpi4" / "manifest.json").read_text())
    assert rpi4["artifact"]["precision"] == "int8"
    assert [step["kind"] for step in rpi4["chain"]] == [
        "convert", "quantize", "baseline", "validate"]


def test_shared_prefix_is_one_node_built_once(built_tiny):
    steps = built_tiny.first_build["step_list"]
    converts = [s for s in steps if s["kind"] == "convert"]
    baselines = [s for s in steps if s["kind"] == "baseline"]
    assert len(converts) == 1 and sorted(converts[0]["targets"]) == ["pixel", "rpi4"]
    assert len(baselines) == 1 and sorted(baselines[0]["targets"]) == ["pixel", "rpi4"]
    assert len(steps) == 8  # convert, 2 quantize, baseline, 2 validate, 2 bundle


def test_unchanged_recipe_plans_all_cached_and_rebuilds_nothing(rebuilt):
    code, plan = rebuilt.run("plan")
    assert code == 0 and {s["status"] for s in plan["step_list"]} == {"cached"}
    again = rebuilt.build()
    assert again["steps"]["executed"] == 0 and executed(again) == []
    assert again["steps"]["cached"] == again["steps"]["total"] == 8


def test_changing_one_targets_parameter_reruns_only_that_target(rebuilt):
    text = rebuilt.recipe.read_text().replace(
        "pixel: {device: android-gpu}", "pixel: {device: android-gpu, quantize: {mode: dynamic}}")
    rebuilt.recipe.write_text(text)
    code, plan = rebuilt.run("plan")
    to_run = [s for s in plan["step_list"] if s["status"] == "run"]
    assert {s["kind"] for s in to_run} == {"quantize", "validate", "bundle"}
    assert all(s["targets"] == ["pixel"] for s in to_run)
    quantize = next(s for s in to_run if s["kind"] == "quantize")
    assert {"code": "changed", "field": "params.mode", "old": "fp16", "new": "dynamic",
            "message": "params.mode: 'fp16' -> 'dynamic'"} in quantize["reasons"]

    result = rebuilt.build()
    assert executed(result) == [("bundle", ("pixel",)), ("quantize", ("pixel",)),
                                ("validate", ("pixel",))]
    manifest = json.loads((rebuilt.dist / "tiny" / "pixel" / "manifest.json").read_text())
    assert manifest["artifact"]["precision"] == "dynamic"


def test_changing_validation_data_reruns_only_validation_and_bundles(rebuilt):
    write_images(rebuilt.root / "data" / "val", 1, seed=99)  # overwrites 000.png
    result = rebuilt.build()
    kinds = {kind for kind, _ in executed(result)}
    # baseline is the source model's half of validation: it reads the same data.
    assert kinds == {"baseline", "validate", "bundle"}
    assert all(s["status"] == "cached" for s in result["step_list"]
               if s["kind"] in ("convert", "quantize"))


def test_touch_without_change_rebuilds_and_rehashes_nothing(rebuilt):
    rebuilt.build()  # the copy lives at a new path: hash its files once
    source = rebuilt.root / "model" / "tiny.keras"
    stat = source.stat()
    os.utime(source, ns=(stat.st_atime_ns, stat.st_mtime_ns + 5_000_000_000))
    for image in (rebuilt.root / "data" / "val").iterdir():
        os.utime(image, ns=(stat.st_atime_ns, stat.st_mtime_ns + 5_000_000_000))
    result = rebuilt.build()
    assert result["steps"]["executed"] == 0

    # The next run finds the new stats in the state and reads no file contents at all.
    state = StatCache(rebuilt.cache / "state" / "stat")
    state.digest(source)
    state.digest(rebuilt.root / "data" / "val")
    assert state.hashed_bytes == 0


def test_content_change_is_detected_even_with_the_same_stat_size(rebuilt):
    image = rebuilt.root / "data" / "calib" / "000.png"
    data = bytearray(image.read_bytes())
    data[-20] ^= 0xFF  # same size, different bytes; mtime moves as it would in real life
    image.write_bytes(bytes(data))
    code, plan = rebuilt.run("plan")
    changed = [s for s in plan["step_list"] if s["status"] == "run"]
    assert [s["label"] for s in changed if s["kind"] == "quantize"] == ["quantize.tflite[int8]"]


def test_lock_file_is_deterministic_and_records_each_step(built_tiny, tiny, tmp_path):
    lock = built_tiny.recipe.with_suffix(".lock").read_bytes()
    data = json.loads(lock)
    assert lock == json.dumps(data, sort_keys=True, indent=2).encode() + b"\n"
    assert str(built_tiny.root) not in lock.decode()  # no absolute paths
    steps = data["targets"]["rpi4"]["steps"]
    assert [s["kind"] for s in steps] == ["convert", "quantize", "baseline", "validate", "bundle"]
    quantize = steps[1]
    assert quantize["params"]["mode"] == "int8"
    assert set(quantize["inputs"]) == {"model", "calibration"}
    assert quantize["toolchain"]["tensorflow"]
    assert set(quantize["outputs"]) == {"model"}
    assert "report" not in steps[3]["outputs"]  # timings are not reproducible

    tiny.build()  # an independent build, elsewhere, with its own cache
    assert tiny.recipe.with_suffix(".lock").read_bytes() == lock


def test_explain_diffs_the_key_document_field_by_field(rebuilt, capsys):
    from edgebuild.cli import main

    text = rebuilt.recipe.read_text().replace("count: 8", "count: 6")
    rebuilt.recipe.write_text(text)
    code = main(["explain", str(rebuilt.recipe), "rpi4:quantize", *rebuilt.args()])
    out = capsys.readouterr().out
    assert code == 0
    assert "params.calibration.count: 8 -> 6" in out and "cache:          miss" in out
    code, doc = rebuilt.run("explain", "pixel:quantize")
    assert code == 0 and doc["changes"] == [] and doc["cached"] is True


def test_removed_bundle_is_restored_from_the_cache(rebuilt):
    shutil.rmtree(rebuilt.dist / "tiny" / "rpi4")
    result = rebuilt.build()
    assert result["steps"]["executed"] == 0
    assert (rebuilt.dist / "tiny" / "rpi4" / "model.tflite").exists()


def test_artifacts_are_real_and_run(built_tiny):
    from ai_edge_litert.interpreter import Interpreter

    interpreter = Interpreter(model_path=str(built_tiny.dist / "tiny" / "rpi4" / "model.tflite"))
    interpreter.allocate_tensors()
    detail = interpreter.get_input_details()[0]
    assert detail["dtype"] == np.float32 and list(detail["shape"]) == [1, 16, 16, 3]
    ops = {op["op_name"] for op in interpreter._get_ops_details()}
    assert "CONV_2D" in ops and "QUANTIZE" in ops  # int8 inside, float at the edges

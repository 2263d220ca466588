"""ONNX sources on TFLite devices: prepare.onnx, onnx2tf's NHWC SavedModel, the TFLite
converter, and validation of every artifact against the ONNX model, built for real
from a small NCHW model with three outputs, two of them the same shape."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import Project, write_images
from onnx_models import make_two_head_onnx

SOURCE_ORDER = ["probs", "features", "logits"]

RECIPE = """\
name: heads
source: {path: heads.onnx}
task: classification
classifier_output: probs
data:
  preprocess: {resize: [16, 16], scale: 0.00392156862745098, layout: NCHW}
  calibration: {path: calib}
  validation: {path: val}
targets:
  pi: {device: rpi4}
  pi-io: {device: rpi4, quantize: {io: int8}}
  coral: {device: coral-edgetpu}
  pixel: {device: android-gpu}
  # fp16 keeps ~75 dB of SNR on this model, int8 ~40: int8 misses, the ladder steps down.
  ladder: {device: rpi4, fallback: [int8, fp16], budget: {min_snr_db: 60}}
"""

# Imported first by every Python process of the build (workers inherit PYTHONPATH):
# any connection attempt is refused and written down.
BLOCK_NETWORK = """\
import os, socket

def _refuse(self, address, *args):
    with open(os.environ["EDGEBUILD_TEST_CONNECTIONS"], "a") as log:
        log.write(f"{os.getpid()} {address}\\n")
    raise OSError("network blocked by the test")

socket.socket.connect = _refuse
socket.socket.connect_ex = _refuse
socket.getaddrinfo = lambda host, port, *args, **kwargs: _refuse(None, (host, port))
"""


def blocked_env(root: Path) -> dict:
    site = root / "no-network"
    site.mkdir(exist_ok=True)
    (site / "sitecustomize.py").write_text(BLOCK_NETWORK)
    log = root / "connections.log"
    log.touch()
    path = os.pathsep.join(p for p in (str(site), os.environ.get("PYTHONPATH")) if p)
    return {"PYTHONPATH": path, "EDGEBUILD_TEST_CONNECTIONS": str(log)}


@pytest.fixture(scope="module")
def heads(tmp_path_factory):
    """The recipe built once, with every process of the build cut off from the network."""
    root = tmp_path_factory.mktemp("heads")
    make_two_head_onnx(root / "heads.onnx")
    write_images(root / "val", 6, seed=3)
    write_images(root / "calib", 8, seed=4)
    (root / "heads.yaml").write_text(RECIPE)
    project = Project(root, "heads.yaml")
    env = {**os.environ, **blocked_env(root)}
    proc = subprocess.run([sys.executable, "-m", "edgebuild", "all", str(project.recipe),
                           *project.args("--json")], cwd=root, env=env, capture_output=True,
                          text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return project, json.loads(proc.stdout), root


def manifest(project: Project, target: str) -> dict:
    return json.loads((project.dist / "heads" / target / "manifest.json").read_text())


def measured(project: Project, target: str) -> dict:
    """The target's row of the build report: fidelity, agreement, latency."""
    report = json.loads((project.dist / "heads" / "report.json").read_text())
    return next(t for t in report["targets"] if t["target"] == target)


def test_every_tflite_device_builds_from_the_onnx_source(heads):
    project, result, _ = heads
    assert {t: r["status"] for t, r in result["targets"].items()} == {
        "pi": "ok", "pi-io": "ok", "coral": "deferred", "pixel": "ok", "ladder": "ok"}
    chain = [c["kind"] + "." + c["params"].get("mode", "") if c["kind"] == "quantize"
             else c["kind"] for c in manifest(project, "pi")["chain"]]
    assert chain[:4] == ["prepare", "convert", "convert", "quantize.int8"], chain


def test_inputs_are_nhwc_and_outputs_are_matched_by_name(heads):
    project, result, _ = heads
    for target in ("pi", "pi-io", "coral", "pixel"):
        artifact = manifest(project, target)["artifact"]
        [image] = artifact["inputs"]
        assert (image["shape"], image["layout"]) == ([1, 16, 16, 3], "NHWC"), target
        outputs = {o["source_output"]: o for o in artifact["outputs"]}
        assert set(outputs) == set(SOURCE_ORDER), artifact["outputs"]
        assert all(o["name"] == name for name, o in outputs.items())
        # onnx2tf writes the 4-D feature map channels-last; the manifest says how back.
        assert outputs["features"]["shape"] == [1, 16, 16, 4]
        assert outputs["features"]["to_source_layout"] == [0, 3, 1, 2]
    # The converter listed the outputs in another order than the ONNX model: position
    # alone would have compared probs with logits.
    order = [o["name"] for o in manifest(project, "pi")["artifact"]["outputs"]]
    assert order != SOURCE_ORDER
    # Each output matched its own: a swap of probs and logits would show here.
    for target in ("pi", "pi-io", "pixel"):
        fidelity = measured(project, target)["fidelity"]
        assert fidelity["cosine"] > 0.999 and fidelity["agreement"] == 1.0, (target, fidelity)


def test_int8_io_and_the_integer_only_guarantee(heads):
    project, _, _ = heads
    for target in ("pi-io", "coral"):
        artifact = manifest(project, target)["artifact"]
        entries = [*artifact["inputs"], *artifact["outputs"]]
        assert all(e["dtype"] == "int8" and e["quantization"]["scale"] > 0 for e in entries)
    quantize = next(c for c in manifest(project, "coral")["chain"] if c["kind"] == "quantize")
    assert quantize["facts"]["integer_only"]["float_ops"] == 0
    assert (project.dist / "heads" / "coral" / "compile_edgetpu.sh").is_file()
    assert manifest(project, "pi")["artifact"]["inputs"][0]["dtype"] == "float32"


def test_a_ladder_steps_down_from_int8_to_fp16(heads):
    project, result, _ = heads
    ladder = result["targets"]["ladder"]
    assert ladder["fallback"]["chosen"] == "fp16", ladder["fallback"]
    tried = ladder["fallback"]["tried"]
    assert [t["passed"] for t in tried] == [False, True]
    assert "SNR" in tried[0]["misses"][0]
    assert manifest(project, "ladder")["artifact"]["precision"] == "fp16"


def test_no_network_connection_is_attempted(heads, tmp_path):
    _, _, root = heads
    assert (root / "connections.log").read_text() == ""
    # The guard would have seen one: onnx2tf downloads its sample images unless the
    # file is in its working folder (the step writes it there).
    env = {**os.environ, **blocked_env(tmp_path)}
    code = "from onnx2tf.utils.common_functions import download_test_image_data as d\n" \
           "try:\n    d()\nexcept Exception:\n    pass\n"
    subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env, timeout=300,
                   capture_output=True)
    assert (tmp_path / "connections.log").read_text().strip(), "the guard saw nothing"


def test_same_bytes_from_a_fresh_cache(heads, tmp_path):
    project, result, _ = heads
    again = Project(project.root, "heads.yaml")
    again.cache, again.dist = tmp_path / "cache", tmp_path / "dist"
    rebuilt = again.build()
    first = {s["key"] for s in result["step_list"]}
    assert {s["key"] for s in rebuilt["step_list"]} == first
    for target in ("pi", "pixel", "coral"):
        one = (project.dist / "heads" / target / "model.tflite").read_bytes()
        two = (again.dist / "heads" / target / "model.tflite").read_bytes()
        assert one == two, target

"""TensorRT engines, built and validated on this host's GPU. Skipped, with the reason,
where there is no NVIDIA GPU or no TensorRT: those hosts defer engine builds, which
test_onnx_sources covers."""

from __future__ import annotations

import json

import numpy as np
import pytest
from conftest import Project, write_images
from test_onnx_sources import make_tiny_onnx, with_targets

from edgebuild.toolchains.nvidia import host

pytestmark = pytest.mark.skipif(host().deferral is not None,
                                reason=f"TensorRT engines need a GPU: {host().deferral}")


def test_engine_matches_onnx_runtime(tmp_path):
    from edgebuild.toolchains.runtimes import OnnxModel
    from edgebuild.toolchains.tensorrt import TensorRTModel, build_engine

    make_tiny_onnx(tmp_path / "tiny.onnx")
    engine, timing = build_engine(tmp_path / "tiny.onnx")
    assert engine and timing
    (tmp_path / "model.engine").write_bytes(engine)
    x = np.random.default_rng(0).random((3, 16, 16), np.float32)
    got = TensorRTModel(tmp_path / "model.engine")(x)[0]
    want = OnnxModel(tmp_path / "tiny.onnx")(x)[0]
    assert np.allclose(got, want, atol=1e-3)


def test_jetson_target_builds_and_validates_an_engine(tmp_path):
    make_tiny_onnx(tmp_path / "tiny.onnx", legacy=True)
    write_images(tmp_path / "val", 4, seed=3)
    write_images(tmp_path / "calib", 6, seed=4)
    (tmp_path / "tiny.yaml").write_text(with_targets(
        "jetson: {device: jetson-orin}",
        "jetson-int8: {device: jetson-orin, quantize: {mode: int8}}"))
    project = Project(tmp_path)
    result = project.build()
    assert {t["status"] for t in result["targets"].values()} == {"ok"}
    labels = {s["label"] for s in result["step_list"]}
    assert {"compile.tensorrt", "validate.tensorrt[jetson]"} <= labels
    for target in ("jetson", "jetson-int8"):
        bundle = project.dist / "tiny-onnx" / target
        assert {"model.engine", "timing.cache", "model.onnx"} <= {p.name for p in bundle.iterdir()}
        manifest = json.loads((bundle / "manifest.json").read_text())
        assert manifest["validation"]["passed"]
    again = project.build()
    assert again["steps"]["executed"] == 0

"""TensorRT targets. Engines are built and validated on this host's GPU where it has one
(skipped otherwise, with the reason; those hosts defer engine builds, which
test_onnx_sources covers). What TensorRT will meet is checked everywhere: the int8
ONNX it is given, and the adapter's handling of what TensorRT and CUDA return, with
TensorRT and cuda-python faked (fake_tensorrt)."""

from __future__ import annotations

import gc
import json
import sys

import numpy as np
import pytest
from conftest import Project, write_images
from fake_tensorrt import FakeCudart, Tensor, make_tensorrt, timing_cache_bytes
from test_onnx_sources import make_tiny_onnx, with_targets

from edgebuild.errors import StepError
from edgebuild.toolchains import gpu_probe
from edgebuild.toolchains.gpu_probe import host

needs_gpu = pytest.mark.skipif(host().deferral is not None,
                               reason=f"TensorRT engines need a GPU: {host().deferral}")


@needs_gpu
def test_engine_matches_onnx_runtime(tmp_path):
    from edgebuild.toolchains.runtimes import OnnxModel
    from edgebuild.toolchains.tensorrt import TensorRTModel, build_engine

    make_tiny_onnx(tmp_path / "tiny.onnx")
    built = build_engine(tmp_path / "tiny.onnx")
    assert built.engine and built.timing_cache
    (tmp_path / "model.engine").write_bytes(built.engine)
    x = np.random.default_rng(0).random((3, 16, 16), np.float32)
    got = TensorRTModel(tmp_path / "model.engine")(x)[0]
    want = OnnxModel(tmp_path / "tiny.onnx")(x)[0]
    assert np.allclose(got, want, atol=1e-3)


@needs_gpu
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


# -- The int8 ONNX that TensorRT is given ---------------------------------------------


def _dequantize_input_types(model) -> list[tuple[str, int]]:
    """(input, element type) of what each DequantizeLinear dequantizes."""
    import onnx

    inferred = onnx.shape_inference.infer_shapes(model)
    graph = inferred.graph
    types = {i.name: i.data_type for i in graph.initializer}
    types.update({v.name: v.type.tensor_type.elem_type
                  for v in [*graph.value_info, *graph.input, *graph.output]})
    return [(n.input[0], types[n.input[0]]) for n in graph.node if n.op_type == "DequantizeLinear"]


def test_tensorrt_int8_keeps_biases_float(tmp_path):
    """TensorRT's ONNX parser dequantizes int8 (fp8, int4), not int32 biases; ONNX
    Runtime's CPU targets keep their int32 biases, and their keys."""
    import onnx

    make_tiny_onnx(tmp_path / "tiny.onnx", legacy=True)
    write_images(tmp_path / "val", 2, seed=3)
    write_images(tmp_path / "calib", 4, seed=4)
    (tmp_path / "tiny.yaml").write_text(with_targets(
        "jetson-int8: {device: jetson-orin, quantize: {mode: int8}}",
        "x86: {device: x86-cpu}"))
    project = Project(tmp_path)
    project.build()

    trt_int8 = onnx.load(str(project.dist / "tiny-onnx" / "jetson-int8" / "model.onnx"))
    dequantized = _dequantize_input_types(trt_int8)
    assert dequantized and {t for _, t in dequantized} == {onnx.TensorProto.INT8}
    floats = {i.name for i in trt_int8.graph.initializer
              if i.data_type == onnx.TensorProto.FLOAT}
    biases = [n.input[2] for n in trt_int8.graph.node if n.op_type in ("Conv", "Gemm")]
    assert len(biases) == 2 and set(biases) <= floats

    x86 = onnx.load(str(project.dist / "tiny-onnx" / "x86" / "model.onnx"))
    assert onnx.TensorProto.INT32 in {t for _, t in _dequantize_input_types(x86)}
    lock = json.loads(project.recipe.with_suffix(".lock").read_text())
    quantize = {name: next(s for s in lock["targets"][name]["steps"] if s["kind"] == "quantize")
                for name in ("jetson-int8", "x86")}
    assert quantize["jetson-int8"]["params"]["quantize_bias"] is False
    assert "quantize_bias" not in quantize["x86"]["params"]


# -- hardware_compatibility -------------------------------------------------------------


@pytest.fixture
def fake_trt(monkeypatch):
    """Installs a fake `tensorrt` module (see fake_tensorrt); returns the installer."""
    from edgebuild.toolchains import tensorrt as adapter

    monkeypatch.setenv("CUDA_DEVICE_ORDER", "FASTEST_FIRST")  # restored after the test

    def install(**kwargs):
        trt = make_tensorrt(**kwargs)
        monkeypatch.setitem(sys.modules, "tensorrt", trt)
        cuda = FakeCudart()
        monkeypatch.setattr(adapter, "_cudart", lambda: cuda)
        trt.cuda = cuda
        return trt

    return install


def test_same_compute_capability_needs_tensorrt_10_9(tmp_path, fake_trt):
    from edgebuild.toolchains.tensorrt import build_engine

    fake_trt(version="10.8.0")
    with pytest.raises(StepError, match=r"same-compute-capability needs TensorRT 10\.9 or "
                                        r"later, and this host has TensorRT 10\.8\.0"):
        build_engine(tmp_path / "model.onnx", "same-compute-capability")
    trt = fake_trt(version="10.8.0")
    build_engine(tmp_path / "model.onnx", "ampere+")
    assert trt.configs[-1].hardware_compatibility_level == "AMPERE_PLUS"

    trt = fake_trt(version="10.9.0")
    build_engine(tmp_path / "model.onnx", "same-compute-capability")
    assert trt.configs[-1].hardware_compatibility_level == "SAME_COMPUTE_CAPABILITY"


def test_deferred_script_names_the_same_compatibility_level(tmp_path):
    from edgebuild.steps.compile import tensorrt as compile_tensorrt
    from edgebuild.worker import StepContext

    (tmp_path / "model.onnx").write_bytes(b"onnx")
    ctx = StepContext(params={"compiler": "tensorrt",
                              "hardware_compatibility": "same-compute-capability"},
                      inputs={"model": tmp_path / "model.onnx"}, outdir=tmp_path / "out",
                      device={"host": {"gpu": None, "compute_capability": None,
                                       "tensorrt": None}})
    ctx.outdir.mkdir()
    meta = compile_tensorrt(ctx)
    script = (ctx.outdir / "build" / "build_engine.sh").read_text()
    assert "--hardwareCompatibilityLevel=sameComputeCapability" in meta["command"]
    assert meta["command"] in script
    assert "# --hardwareCompatibilityLevel=sameComputeCapability needs TensorRT 10.9" in script


# -- timing caches ----------------------------------------------------------------------


def _compile_here(tmp_path, recipe_seed: bytes | None, shared_seed: bytes | None) -> dict:
    """compile.tensorrt on this host as if it had an H100 and TensorRT 10.9."""
    from edgebuild.steps.compile import tensorrt as compile_tensorrt
    from edgebuild.worker import StepContext

    (tmp_path / "model.onnx").write_bytes(b"onnx")
    inputs = {"model": tmp_path / "model.onnx"}
    if recipe_seed is not None:
        inputs["timing_cache"] = tmp_path / "seed.cache"
        inputs["timing_cache"].write_bytes(recipe_seed)
    state = tmp_path / "state"
    shared = state / "tensorrt" / "10.9.0-sm9.0.timing.cache"
    if shared_seed is not None:
        shared.parent.mkdir(parents=True)
        shared.write_bytes(shared_seed)
    ctx = StepContext(params={"compiler": "tensorrt", "hardware_compatibility": "none"},
                      inputs=inputs, outdir=tmp_path / "out", state=state,
                      device={"host": {"gpu": "NVIDIA H100", "compute_capability": "9.0",
                                       "tensorrt": "10.9.0"}})
    ctx.outdir.mkdir()
    meta = compile_tensorrt(ctx)
    meta["timing.cache"] = (ctx.outdir / "timing.cache").read_bytes()
    meta["shared"] = shared.read_bytes()
    return meta


def test_timing_caches_from_this_gpu_are_merged(tmp_path, fake_trt):
    fake_trt(gpu="NVIDIA H100")
    meta = _compile_here(tmp_path, timing_cache_bytes("NVIDIA H100", "recipe's"),
                         timing_cache_bytes("NVIDIA H100", "shared"))
    assert meta["facts"]["timing_cache"] == {"seeded_from": ["compile.timing_cache", "state"]}
    assert meta["timing.cache"] == meta["shared"] == timing_cache_bytes(
        "NVIDIA H100", "recipe's", "shared", "conv timed on NVIDIA H100")


def test_a_timing_cache_from_another_gpu_is_refused_and_said(tmp_path, fake_trt):
    fake_trt(gpu="NVIDIA H100")
    meta = _compile_here(tmp_path, timing_cache_bytes("NVIDIA A100", "recipe's"),
                         timing_cache_bytes("NVIDIA H100", "shared"))
    timing = meta["facts"]["timing_cache"]
    assert timing["seeded_from"] == ["state"] and timing["refused"] == ["compile.timing_cache"]
    assert "another GPU" in timing["note"]
    assert meta["timing.cache"] == timing_cache_bytes("NVIDIA H100", "shared",
                                                      "conv timed on NVIDIA H100")


def test_a_refused_timing_cache_starts_a_fresh_one(tmp_path, fake_trt):
    """A TensorRT whose combine lets a foreign cache in: set_timing_cache returns False
    for the merged cache, and the build starts from an empty one."""
    trt = fake_trt(gpu="NVIDIA H100", combine_checks_device=False)
    meta = _compile_here(tmp_path, timing_cache_bytes("NVIDIA A100", "recipe's"), None)
    assert meta["facts"]["timing_cache"]["seeded_from"] == []
    assert meta["facts"]["timing_cache"]["refused"] == ["compile.timing_cache"]
    assert trt.configs[-1].timing_cache.gpus == {"NVIDIA H100"}
    assert meta["timing.cache"] == timing_cache_bytes("NVIDIA H100", "conv timed on NVIDIA H100")


# -- running engines --------------------------------------------------------------------

IMAGE = Tensor("image", "INPUT", (-1, 3, 16, 16), "FLOAT")


def _engine_io(fake_trt, *outputs: Tensor, **kwargs):
    return fake_trt(tensors=[IMAGE, *outputs], **kwargs)


@pytest.mark.parametrize("dtype", ["BF16", "FP8", "INT4"])
def test_engine_io_numpy_cannot_hold_is_a_step_error(tmp_path, fake_trt, dtype):
    from edgebuild.toolchains.tensorrt import TensorRTModel

    trt = _engine_io(fake_trt, Tensor("boxes", "OUTPUT", (1, 4), dtype))
    (tmp_path / "model.engine").write_bytes(b"engine")
    with pytest.raises(StepError, match=f"'boxes' is DataType.{dtype}, which numpy cannot"):
        TensorRTModel(tmp_path / "model.engine")
    assert trt.cuda.allocated == []


def test_refused_shapes_and_addresses_are_step_errors(tmp_path, fake_trt):
    from edgebuild.toolchains.tensorrt import TensorRTModel

    (tmp_path / "model.engine").write_bytes(b"engine")
    scores = Tensor("scores", "OUTPUT", (1, 10), "FLOAT")
    _engine_io(fake_trt, scores, accepts_shapes=False)
    with pytest.raises(StepError, match=r"does not take shape \[1, 3, 16, 16\] for its input "
                                        "'image'"):
        TensorRTModel(tmp_path / "model.engine")
    trt = _engine_io(fake_trt, scores, accepts_addresses=False)
    with pytest.raises(StepError, match="refused the device buffer for 'image'"):
        TensorRTModel(tmp_path / "model.engine")
    gc.collect()
    assert trt.cuda.freed == trt.cuda.allocated and trt.cuda.allocated


def test_an_engine_gives_back_its_buffers_and_stream(tmp_path, fake_trt):
    from edgebuild.toolchains.tensorrt import TensorRTModel

    trt = _engine_io(fake_trt, Tensor("scores", "OUTPUT", (1, 10), "HALF"))
    (tmp_path / "model.engine").write_bytes(b"engine")
    model = TensorRTModel(tmp_path / "model.engine")
    assert model.host["image"].shape == (1, 3, 16, 16)
    assert model.host["scores"].dtype == np.float16
    assert len(trt.cuda.allocated) == 2 and trt.cuda.streams == ["stream 0"]
    del model
    gc.collect()
    assert trt.cuda.freed == trt.cuda.allocated and trt.cuda.destroyed == ["stream 0"]


def test_gpu_steps_number_gpus_as_nvidia_smi_does(tmp_path, fake_trt):
    import os

    from edgebuild.toolchains.tensorrt import build_engine

    fake_trt()
    build_engine(tmp_path / "model.onnx")
    assert os.environ["CUDA_DEVICE_ORDER"] == "PCI_BUS_ID"


# -- which GPU is probed ----------------------------------------------------------------

SMI = """\
0, GPU-aaaa1111-0000-0000-0000-000000000000, NVIDIA A100-SXM4-40GB, 8.0
1, GPU-bbbb2222-0000-0000-0000-000000000000, NVIDIA H100 80GB HBM3, 9.0
"""
SMI_L = """\
GPU 0: NVIDIA A100-SXM4-40GB (UUID: GPU-aaaa1111-0000-0000-0000-000000000000)
GPU 1: NVIDIA H100 80GB HBM3 (UUID: GPU-bbbb2222-0000-0000-0000-000000000000)
  MIG 3g.40gb     Device  0: (UUID: MIG-cccc3333-0000-0000-0000-000000000000)
"""


@pytest.mark.parametrize(("visible", "gpu"), [
    (None, "NVIDIA A100-SXM4-40GB"),
    ("1", "NVIDIA H100 80GB HBM3"),
    ("1,0", "NVIDIA H100 80GB HBM3"),
    ("GPU-bbbb2222", "NVIDIA H100 80GB HBM3"),        # a unique prefix of its UUID
    ("MIG-cccc3333-0000-0000-0000-000000000000", "NVIDIA H100 80GB HBM3"),
    ("MIG-GPU-bbbb2222-0000-0000-0000-000000000000/1/0", "NVIDIA H100 80GB HBM3"),
    ("", None), ("-1", None), ("2", None), ("GPU-", None),  # CUDA sees no GPU either
])
def test_the_probed_gpu_is_the_one_cuda_builds_on(monkeypatch, visible, gpu):
    def nvidia_smi(*args):
        return SMI_L if args == ("-L",) else SMI

    monkeypatch.setattr(gpu_probe, "_nvidia_smi", nvidia_smi)
    monkeypatch.setattr(gpu_probe.shutil, "which", lambda name: f"/usr/bin/{name}")
    if visible is None:
        monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    else:
        monkeypatch.setenv("CUDA_VISIBLE_DEVICES", visible)
    gpu_probe.host.cache_clear()
    try:
        probed = gpu_probe.host()
    finally:
        gpu_probe.host.cache_clear()
    assert probed.gpu == gpu
    assert probed.compute_capability == {None: None, "NVIDIA A100-SXM4-40GB": "8.0",
                                         "NVIDIA H100 80GB HBM3": "9.0"}[gpu]

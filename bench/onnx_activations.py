"""ONNX Runtime latency of MobileNetV3-style models, float32 against static int8 as
edgebuild quantized them before and as it does now.

    python bench/onnx_activations.py [--runs 100] [--threads 1] [--models pp-lcnet,mnv3-small]

Two models with random weights (nothing downloads), 224x224:

  pp-lcnet     PP-LCNet x1.0 built with the ONNX helper API, NCHW, hard-swish written
               as x * HardSigmoid(x) and squeeze-excite (GlobalAveragePool, Conv, Relu,
               Conv, HardSigmoid, Mul) in its last two blocks, as paddle2onnx exports
               it; logits out. Each convolution's weights are scaled as BatchNorm
               folded with the calibration images' statistics would scale them, so the
               activations have realistic ranges.
  mnv3-small   tf_keras MobileNetV3Small, BatchNorm statistics from the calibration
               images, through edgebuild's tf2onnx conversion (hard_sigmoid as
               Clip(x + 3, 0, 6) * 1/6, squeeze-excite pooling with ReduceMean).

edgebuild builds each (a recipe with an x86-fp32 and an x86 int8 target, calibrated on
16 of ../shared/models/ultraface/imgs); "before" quantizes the same float artifact with
edgebuild's previous quantize_static call: op_types_to_quantize None (no keep_float),
or ONNX Runtime's QDQRegistry, which is what any keep_float op type used to give. The
CPU execution provider runs every model, calls rotating through them, 10 warm-up
rounds first. Prints per model and variant the median latency, its speed against
float32, the Q/DQ nodes and the float compute ops left in the graph ONNX Runtime runs
(after its own QDQ fusions), and the lowest output cosine over 8 other images to
float32 and to "int8 before" (the rewrites compute what the QDQ graph computed, so
this one stays ~1; random weights make either model far more sensitive to int8 noise
than trained ones).
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
IMAGES = REPO.parent / "shared" / "models" / "ultraface" / "imgs"
SIZE, CALIBRATION, CHECKS = 224, 16, 8
# ImageNet-like normalization, as both models were "trained" with it.
PRE = {"resize": [SIZE, SIZE], "mean": 114.75, "std": 63.75, "scale": 1.0}
# PP-LCNet x1.0: (kernel, in, out, stride, squeeze-excite) per depthwise-separable block.
LCNET_BLOCKS = [(3, 16, 32, 1, False), (3, 32, 64, 2, False), (3, 64, 64, 1, False),
                (3, 64, 128, 2, False), (3, 128, 128, 1, False), (3, 128, 256, 2, False),
                *[(5, 256, 256, 1, False)] * 5, (5, 256, 512, 2, True), (5, 512, 512, 1, True)]
# Ops that move or reshape data: not float compute.
MOVES = {"Transpose", "Reshape", "Flatten", "Squeeze", "Unsqueeze", "Identity", "Pad",
         "ReorderInput", "ReorderOutput"}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=100)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--models", default="pp-lcnet,mnv3-small")
    args = parser.parse_args()
    if not IMAGES.is_dir():
        print(f"needs {IMAGES}", file=sys.stderr)
        return 2
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.models.split(","):
            folder = Path(tmp) / name
            folder.mkdir()
            rows += measure(name, folder, args.runs, args.threads)
    print(f"\n{args.runs} interleaved runs, {args.threads} thread(s), batch 1, {SIZE}x{SIZE}, "
          "ONNX Runtime CPU EP")
    print(f"{'model':<11} {'variant':<24} {'median ms':>9} {'vs fp32':>8} {'Q+DQ':>5} "
          f"{'cos fp32':>8} {'cos before':>10}  float compute ops left")
    for row in rows:
        print(f"{row['model']:<11} {row['variant']:<24} {row['median']:>9.2f} "
              f"{row['speed']:>7.2f}x {row['qdq']:>5} {row['cosine']:>8.4f} {row['same']:>10.4f}"
              f"  {row['float']}")
    return 0


def measure(name: str, folder: Path, runs: int, threads: int) -> list[dict]:
    from edgebuild.data import load_samples

    layout = "NCHW" if name == "pp-lcnet" else "NHWC"
    pre = {**PRE, "layout": layout}
    calibration = load_samples(IMAGES, {"preprocess": pre, "count": CALIBRATION})
    checks = load_samples(IMAGES, {"preprocess": pre})[CALIBRATION:][:CHECKS]
    if name == "pp-lcnet":
        source = folder / "pp_lcnet.onnx"
        save_lcnet(source, calibration[:8])
    else:
        source = folder / "mnv3_small.keras"
        save_mobilenet_v3(source, calibration[:8])
    dist = build(folder, source, layout)
    variants = {"float32": dist / "x86-fp32" / "model.onnx"}
    variants.update(quantize_as_before(variants["float32"], calibration, folder))
    variants["int8 now (edgebuild)"] = dist / "x86" / "model.onnx"
    times = time_models(variants, checks[0][None], runs, threads)
    outputs = {v: run_all(p, checks) for v, p in variants.items()}
    rows = []
    for variant, path in variants.items():
        ops = optimized_op_types(path, folder / f"{len(rows)}.opt.onnx")
        left = {op: n for op, n in sorted(ops.items()) if is_float_compute(op)}
        rows.append({"model": name, "variant": variant, "median": times[variant],
                     "speed": times["float32"] / times[variant],
                     "qdq": ops["QuantizeLinear"] + ops["DequantizeLinear"],
                     "cosine": min_cosine(outputs["float32"], outputs[variant]),
                     "same": min_cosine(outputs["int8 before"], outputs[variant]),
                     "float": ", ".join(f"{op} {n}" for op, n in left.items()) or "-"})
    return rows


def build(folder: Path, source: Path, layout: str) -> Path:
    recipe = folder / "bench.yaml"
    recipe.write_text(f"""name: bench
source: {{path: {source.name}}}
task: classification
data:
  preprocess: {{resize: [{SIZE}, {SIZE}], mean: {PRE['mean']}, std: {PRE['std']}, \
layout: {layout}}}
  calibration: {{path: {IMAGES}, count: {CALIBRATION}}}
  validation: {{path: {IMAGES}}}
targets:
  x86: {{device: x86-cpu, validate: false}}
  x86-fp32: {{device: x86-cpu, quantize: false, validate: false}}
""")
    started = time.perf_counter()
    subprocess.run([sys.executable, "-m", "edgebuild", "all", str(recipe), "-q",
                    "--cache-dir", str(folder / "cache"), "--dist", str(folder / "dist")],
                   check=True, stdout=subprocess.DEVNULL)
    print(f"{source.name}: built with edgebuild in {time.perf_counter() - started:.0f} s")
    return folder / "dist" / "bench"


def quantize_as_before(float_model: Path, samples: np.ndarray, folder: Path) -> dict:
    """edgebuild's previous quantize_static call, without and with a keep_float list."""
    import onnxruntime as ort
    from onnxruntime.quantization import (
        CalibrationDataReader,
        CalibrationMethod,
        QuantFormat,
        QuantType,
        quantize_static,
    )
    from onnxruntime.quantization.registry import QDQRegistry

    ort.set_default_logger_severity(3)
    name = ort.InferenceSession(str(float_model)).get_inputs()[0].name

    class Samples(CalibrationDataReader):
        def __init__(self):
            self.rest = iter(samples)

        def get_next(self):
            sample = next(self.rest, None)
            return None if sample is None else {name: sample[None]}

    made = {}
    for variant, op_types in (("int8 before", None),
                              ("int8 before, keep_float", list(QDQRegistry))):
        out = folder / f"{variant.replace(' ', '_').replace(',', '')}.onnx"
        quantize_static(str(float_model), str(out), Samples(), quant_format=QuantFormat.QDQ,
                        per_channel=True, activation_type=QuantType.QUInt8,
                        weight_type=QuantType.QInt8, op_types_to_quantize=op_types,
                        reduce_range=True, calibrate_method=CalibrationMethod.MinMax)
        made[variant] = out
    return made


def session(path: Path, threads: int = 1, optimized: Path | None = None):
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads, options.inter_op_num_threads = threads, 1
    if optimized:
        options.optimized_model_filepath = str(optimized)
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def time_models(models: dict[str, Path], sample: np.ndarray, runs: int,
                threads: int) -> dict[str, float]:
    sessions = {v: session(p, threads) for v, p in models.items()}
    feeds = {v: {s.get_inputs()[0].name: sample} for v, s in sessions.items()}
    times: dict[str, list[float]] = {v: [] for v in models}
    for round_ in range(10 + runs):
        for variant, s in sessions.items():
            begin = time.perf_counter()
            s.run(None, feeds[variant])
            if round_ >= 10:
                times[variant].append((time.perf_counter() - begin) * 1000)
    return {v: statistics.median(t) for v, t in times.items()}


def run_all(path: Path, samples: np.ndarray) -> np.ndarray:
    s = session(path)
    name = s.get_inputs()[0].name
    return np.stack([s.run(None, {name: x[None]})[0].ravel() for x in samples])


def min_cosine(ref: np.ndarray, out: np.ndarray) -> float:
    dots = (ref * out).sum(1) / np.linalg.norm(ref, axis=1) / np.linalg.norm(out, axis=1)
    return float(dots.min())


def optimized_op_types(path: Path, optimized: Path) -> Counter:
    import onnx

    session(path, optimized=optimized)
    return Counter(n.op_type for n in onnx.load(str(optimized)).graph.node)


def is_float_compute(op: str) -> bool:
    integer = op.startswith("QLinear") or op in ("QGemm", "QuantizeLinear", "DequantizeLinear")
    return not integer and op not in MOVES


def save_lcnet(path: Path, images: np.ndarray) -> None:
    import onnx
    from onnx import TensorProto, helper

    net = _Net()
    x = net.hard_swish(net.conv("input", 3, 16, 3, 2))
    for kernel, cin, cout, stride, squeeze in LCNET_BLOCKS:
        x = net.hard_swish(net.conv(x, cin, cin, kernel, stride, group=cin))
        if squeeze:
            x = net.squeeze_excite(x, cin)
        x = net.hard_swish(net.conv(x, cin, cout, 1))
    x = net.hard_swish(net.conv(net.op("GlobalAveragePool", [x]), 512, 1280, 1))
    fc = net.const(net.rng.normal(0, 1280 ** -0.5, (1280, 1000)))
    net.op("Gemm", [net.op("Flatten", [x]), fc, net.const(np.zeros(1000))], name="logits")
    graph = helper.make_graph(
        net.nodes, "pp_lcnet",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, [1, 3, SIZE, SIZE])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [1, 1000])], net.inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    net.fold_batch_statistics(model, images)
    onnx.checker.check_model(model)
    onnx.save(model, str(path))


class _Net:
    """Builds the PP-LCNet graph: nodes, initializers, the convolutions in order."""

    def __init__(self):
        self.rng = np.random.default_rng(0)
        self.nodes, self.inits, self.convs = [], [], []

    def const(self, value) -> str:
        from onnx import numpy_helper

        name = f"c{len(self.inits)}"
        self.inits.append(numpy_helper.from_array(np.asarray(value, np.float32), name))
        return name

    def op(self, op_type: str, inputs: list[str], name: str | None = None, **attrs) -> str:
        from onnx import helper

        name = name or f"{op_type.lower()}{len(self.nodes)}"
        self.nodes.append(helper.make_node(op_type, inputs, [name], name=name, **attrs))
        return name

    def conv(self, x: str, cin: int, cout: int, kernel: int, stride: int = 1,
             group: int = 1) -> str:
        fan_in = cin // group * kernel * kernel
        weight = self.const(self.rng.normal(0, (2 / fan_in) ** 0.5,
                                            (cout, cin // group, kernel, kernel)))
        bias = self.const(np.zeros(cout))
        y = self.op("Conv", [x, weight, bias], kernel_shape=[kernel, kernel],
                    strides=[stride, stride], pads=[kernel // 2] * 4, group=group)
        self.convs.append((y, weight, bias))
        return y

    def hard_swish(self, x: str) -> str:
        return self.op("Mul", [x, self.op("HardSigmoid", [x], alpha=1 / 6, beta=0.5)])

    def squeeze_excite(self, x: str, channels: int) -> str:
        pooled = self.op("GlobalAveragePool", [x])
        squeezed = self.op("Relu", [self.conv(pooled, channels, channels // 4, 1)])
        scale = self.op("HardSigmoid", [self.conv(squeezed, channels // 4, channels, 1)],
                        alpha=1 / 6, beta=0.5)
        return self.op("Mul", [x, scale])

    def fold_batch_statistics(self, model, images: np.ndarray) -> None:
        """Scale each convolution, in order, so that its output has zero mean and unit
        variance per channel on `images` (one scale per layer on 1x1 maps, where a
        per-channel one would blow up the differences between images)."""
        import onnx
        import onnxruntime as ort
        from onnx import helper, numpy_helper

        inits = {i.name: i for i in model.graph.initializer}
        for y, weight, bias in self.convs:
            probe = onnx.ModelProto()
            probe.CopyFrom(model)
            del probe.graph.output[:]
            probe.graph.output.append(helper.make_tensor_value_info(y, onnx.TensorProto.FLOAT,
                                                                    None))
            s = ort.InferenceSession(probe.SerializeToString(), providers=["CPUExecutionProvider"])
            out = np.concatenate([s.run(None, {"input": x[None]})[0] for x in images])
            axes = (0, 2, 3) if out.shape[2] > 1 else None
            mean = np.broadcast_to(out.mean(axes), out.shape[1])
            std = np.broadcast_to(out.std(axes) + 1e-5, out.shape[1])
            w, b = (numpy_helper.to_array(inits[n]) for n in (weight, bias))
            inits[weight].CopyFrom(numpy_helper.from_array(
                (w / std[:, None, None, None]).astype(np.float32), weight))
            inits[bias].CopyFrom(numpy_helper.from_array(((b - mean) / std).astype(np.float32),
                                                         bias))


def save_mobilenet_v3(path: Path, images: np.ndarray) -> None:
    """tf_keras MobileNetV3Small, random weights, BatchNorm moving statistics set from
    `images` (random initialisation alone gives every input the same output)."""
    os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import tf_keras as keras

    keras.utils.set_random_seed(0)
    model = keras.applications.MobileNetV3Small(
        weights=None, input_shape=(SIZE, SIZE, 3), include_preprocessing=False,
        classifier_activation=None)
    norms = [layer for layer in model.layers
             if isinstance(layer, keras.layers.BatchNormalization)]
    momentum = [layer.momentum for layer in norms]
    for layer in norms:
        layer.momentum = 0.0  # moving statistics := this batch's statistics
    model(images, training=True)
    for layer, value in zip(norms, momentum, strict=True):
        layer.momentum = value
    model.save(path)


if __name__ == "__main__":
    raise SystemExit(main())

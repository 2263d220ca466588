"""Check that models/detector.keras works with the toolchains edgebuild targets.

(a) loads with tf_keras.models.load_model (no custom objects)
(b) converts to TFLite float32 and full-integer int8 (calibrated on data/shapes/calib);
    reports val mAP of Keras, TFLite float32 and TFLite int8 (ai_edge_litert)
(c) converts to ONNX (tf2onnx, opset 17); onnxruntime output vs Keras (max abs diff)
(d) tfmot prune_low_magnitude and cluster_weights accept the model

Usage (from the repo root):
    python examples/shapes/check.py
"""

from __future__ import annotations

import os

os.environ["TF_USE_LEGACY_KERAS"] = "1"  # tfmot only handles Keras 2 models
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import argparse
import tempfile
from collections.abc import Callable
from pathlib import Path

import numpy as np
import tensorflow as tf
import tf_keras as keras
from coco_eval import coco_map, load_image

REPO_ROOT = Path(__file__).resolve().parents[2]


def representative_dataset(calib_dir: Path) -> Callable[[], object]:
    paths = sorted(calib_dir.glob("*.jpg"))

    def generator():
        for path in paths:
            yield [load_image(path)[None]]

    return generator


def to_tflite(model: keras.Model, calib_dir: Path | None) -> bytes:
    """Float32 model, or full-integer int8 (int8 input and output too) when calib_dir is given."""
    converter = tf.lite.TFLiteConverter.from_keras_model(model)
    if calib_dir is not None:
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
        converter.representative_dataset = representative_dataset(calib_dir)
        converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
        converter.inference_input_type = tf.int8
        converter.inference_output_type = tf.int8
    return converter.convert()


def tflite_predict_fn(model_bytes: bytes) -> Callable[[np.ndarray], np.ndarray]:
    from ai_edge_litert.interpreter import Interpreter

    interpreter = Interpreter(model_content=model_bytes)
    interpreter.allocate_tensors()
    inp, out = interpreter.get_input_details()[0], interpreter.get_output_details()[0]

    def predict(images: np.ndarray) -> np.ndarray:
        outputs = []
        for image in images:  # the converted model has a fixed batch of 1
            x = image[None]
            if inp["dtype"] != np.float32:
                scale, zero = inp["quantization"]
                x = np.clip(np.round(x / scale + zero), -128, 127).astype(inp["dtype"])
            interpreter.set_tensor(inp["index"], x)
            interpreter.invoke()
            y = interpreter.get_tensor(out["index"])
            if out["dtype"] != np.float32:
                scale, zero = out["quantization"]
                y = (y.astype(np.float32) - zero) * scale
            outputs.append(y[0])
        return np.stack(outputs)

    return predict


def check_onnx(model: keras.Model, images: np.ndarray, path: Path) -> float:
    import onnxruntime as ort
    import tf2onnx

    spec = (tf.TensorSpec((None, 128, 128, 3), tf.float32, name="image"),)
    proto, _ = tf2onnx.convert.from_keras(
        model, input_signature=spec, opset=17, output_path=str(path)
    )
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    print(
        f"ONNX inputs {[i.name for i in session.get_inputs()]}, "
        f"outputs {[(o.name, o.shape) for o in session.get_outputs()]}"
    )
    onnx_out = session.run(None, {session.get_inputs()[0].name: images})[0]
    return float(np.abs(onnx_out - model.predict(images, verbose=0)).max())


def check_tfmot(model: keras.Model) -> None:
    import tensorflow_model_optimization as tfmot

    pruned = tfmot.sparsity.keras.prune_low_magnitude(model)
    print(f"prune_low_magnitude OK ({len(pruned.layers)} layers)")
    clustered = tfmot.clustering.keras.cluster_weights(
        model,
        number_of_clusters=16,
        cluster_centroids_init=tfmot.clustering.keras.CentroidInitialization.KMEANS_PLUS_PLUS,
    )
    print(f"cluster_weights OK ({len(clustered.layers)} layers)")


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model", type=Path, default=REPO_ROOT / "models" / "detector.keras")
    parser.add_argument("--data", type=Path, default=REPO_ROOT / "data" / "shapes")
    parser.add_argument(
        "--out-dir",
        type=Path,
        default=None,
        help="keep the .tflite/.onnx files here (default: a temp dir)",
    )
    args = parser.parse_args()
    out_dir = args.out_dir or Path(tempfile.mkdtemp(prefix="shapes_check_"))
    out_dir.mkdir(parents=True, exist_ok=True)
    val_json, val_dir = args.data / "val.json", args.data / "val"

    model = keras.models.load_model(args.model)  # (a)
    print(
        f"(a) loaded {args.model}: input {model.input.name} {model.input.shape}, "
        f"output {model.output.name} {model.output.shape}, {model.count_params():,} params"
    )
    results = {"keras": coco_map(lambda x: model.predict(x, verbose=0), val_json, val_dir)}

    for name, calib in (("tflite_float32", None), ("tflite_int8", args.data / "calib")):  # (b)
        model_bytes = to_tflite(model, calib)
        (out_dir / f"{name}.tflite").write_bytes(model_bytes)
        print(f"(b) {name}: {len(model_bytes) / 1024:.0f} KiB")
        results[name] = coco_map(tflite_predict_fn(model_bytes), val_json, val_dir)

    images = np.stack([load_image(p) for p in sorted(val_dir.glob("*.jpg"))])
    diff = check_onnx(model, images, out_dir / "detector.onnx")  # (c)
    print(f"(c) ONNX vs Keras max abs diff over {len(images)} val images: {diff:.2e}")
    check_tfmot(model)  # (d)

    print(f"artefacts in {out_dir}")
    for name, metrics in results.items():
        print(
            f"{name:15s} mAP@0.5 = {metrics['map50']:.3f}  mAP@0.5:0.95 = {metrics['map50_95']:.3f}"
        )


if __name__ == "__main__":
    main()

"""TensorFlow and Keras: load any TF source, hand it to the TFLite converter or tf2onnx.

Sources come in three flavours: tf_keras (Keras 2) models, Keras 3 models and
SavedModels. tf_keras models go to the converters directly; the other two go
through a SavedModel, which every converter accepts.
"""

from __future__ import annotations

import json
import os
import zipfile
from pathlib import Path

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")  # tf.keras is tf_keras, as tfmot needs


def keras_flavour(path: Path) -> str:
    """'keras3' or 'tf_keras', from the file itself."""
    if path.suffix == ".keras" and zipfile.is_zipfile(path):
        with zipfile.ZipFile(path) as archive:
            try:
                version = json.loads(archive.read("metadata.json")).get("keras_version", "")
            except KeyError:
                version = ""
        return "keras3" if version.startswith("3.") else "tf_keras"
    return "tf_keras"


UNSAFE = ("edgebuild loads Keras models in safe mode: a model from elsewhere must not "
          "run code it brings along")


def load_keras(path: Path):
    """Load a .keras/.h5 model with the Keras that wrote it (safe mode, no custom code)."""
    from edgebuild.errors import StepError, first_line

    if path.suffix != ".keras":
        _refuse_h5_lambdas(path)  # Keras's safe mode does not cover .h5 files
    try:
        if keras_flavour(path) == "keras3":
            import keras

            return keras.models.load_model(path, compile=False, safe_mode=True)
        import tf_keras

        return tf_keras.models.load_model(path, compile=False, safe_mode=True)
    except (ValueError, TypeError) as exc:
        text = str(exc)
        if "Lambda" in text:
            raise StepError(f"{path.name}: has a Lambda layer holding Python code ({UNSAFE}); "
                            "replace it with a built-in layer") from None
        if "safe_mode" in text or "Unknown" in text or "Could not locate" in text:
            raise StepError(f"{path.name}: {first_line(exc)} ({UNSAFE}; custom objects "
                            "are refused)") from None
        raise


def _refuse_h5_lambdas(path: Path) -> None:
    """A Lambda layer in an .h5 file is marshalled Python bytecode that runs when the
    model is called, and Keras loads it even in safe mode: refuse it unread."""
    import h5py

    from edgebuild.errors import StepError

    try:
        with h5py.File(path, "r") as handle:
            config = handle.attrs.get("model_config")
    except OSError as exc:
        raise StepError(f"{path.name}: not a readable HDF5 model: {exc}") from None
    if isinstance(config, bytes):
        config = config.decode("utf-8", "replace")
    if config and _has_lambda(json.loads(config)):
        raise StepError(f"{path.name}: has a Lambda layer, whose Python bytecode would run "
                        f"when the model is called ({UNSAFE}); replace the Lambda with a "
                        "built-in layer, or re-save the model as .keras")


def _has_lambda(node) -> bool:
    if isinstance(node, dict):
        return node.get("class_name") == "Lambda" or any(map(_has_lambda, node.values()))
    if isinstance(node, list):
        return any(map(_has_lambda, node))
    return False


def is_tf_keras(model) -> bool:
    return type(model).__module__.startswith("tf_keras")


def saved_model_dir(source: Path, source_format: str, workdir: Path) -> Path:
    """A SavedModel folder for any TF source (exporting Keras 3 models if needed)."""
    if source_format == "saved_model":
        return source
    model = load_keras(source)
    export = workdir / "saved_model"
    if is_tf_keras(model):
        import tensorflow as tf

        tf.saved_model.save(model, str(export))
    else:
        model.export(str(export), format="tf_saved_model", verbose=False)
    return export


def tflite_converter(source: Path, source_format: str, workdir: Path):
    import tensorflow as tf

    if source_format == "keras":
        model = load_keras(source)
        if is_tf_keras(model):
            return tf.lite.TFLiteConverter.from_keras_model(model)
    return tf.lite.TFLiteConverter.from_saved_model(
        str(saved_model_dir(source, source_format, workdir)))


def run_source(source: Path, source_format: str, x, workdir: Path, batch: int = 32):
    """Outputs of the source model on `x`, as a list of arrays in the model's order."""
    import numpy as np
    import tensorflow as tf

    if source_format == "keras":
        model = load_keras(source)
        if is_tf_keras(model):
            parts = [model(x[i:i + batch], training=False) for i in range(0, len(x), batch)]
            names = list(model.output_names)
            parts = [p if isinstance(p, (list, tuple)) else [p] for p in parts]
            return names, [np.concatenate([np.asarray(p[i]) for p in parts])
                           for i in range(len(names))]
    loaded = tf.saved_model.load(str(saved_model_dir(source, source_format, workdir)))
    fn = loaded.signatures["serving_default"]
    arg = list(fn.structured_input_signature[1])[0]
    parts = [fn(**{arg: tf.constant(x[i:i + batch])}) for i in range(0, len(x), batch)]
    names = sorted(parts[0])
    return names, [np.concatenate([p[n].numpy() for p in parts]) for n in names]

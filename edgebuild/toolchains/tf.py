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


def load_keras(path: Path):
    """Load a .keras/.h5 model with the Keras that wrote it (safe mode, no custom code)."""
    if keras_flavour(path) == "keras3":
        import keras

        return keras.models.load_model(path, compile=False, safe_mode=True)
    import tf_keras

    return tf_keras.models.load_model(path, compile=False, safe_mode=True)


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

"""TensorFlow and Keras: load any TF source, hand it to the TFLite converter or tf2onnx.

Sources come in three flavours: tf_keras (Keras 2) models, Keras 3 models and
SavedModels. tf_keras models go to the converters directly; the other two go
through a SavedModel, which every converter accepts.
"""

from __future__ import annotations

import os
import traceback
import zipfile
import zlib
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING

from edgebuild.toolchains.keras_files import (
    OPT_IN,
    keras_flavour,
    listing,
    model_file_code,
    refusal,
)

if TYPE_CHECKING:
    from edgebuild.toolchains.keras_files import Trust

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")  # tf.keras is tf_keras, as tfmot needs


def load_keras(path: Path, trust: Trust | None = None):
    """Load a .keras/.h5 model with the Keras that wrote it: in safe mode, refusing any
    code the model brings, unless the recipe trusts it."""
    from edgebuild.errors import StepError, first_line

    if keras_flavour(path) == "keras3":
        import keras
    else:
        import tf_keras as keras
    code = model_file_code(path)
    custom_objects = None
    if trust is None:
        if code:
            raise StepError(refusal(path.name, code))
        hint = f"safe mode refuses custom layers and functions. {OPT_IN}"
    else:
        custom_objects = _custom_objects(trust)
        missing = [name for name in code.custom
                   if keras.saving.get_registered_object(name, custom_objects) is None]
        where = (f"the module '{trust.custom_objects}' does not define them"
                 if trust.custom_objects else "no module providing them is named")
        if missing:
            raise StepError(f"{path.name}: needs custom object(s) {listing(tuple(missing))}, "
                            f"and {where}; {PROVIDE}")
        hint = f"if it has custom layers or functions: {PROVIDE}"
    try:
        return keras.models.load_model(path, compile=False, safe_mode=trust is None,
                                       custom_objects=custom_objects)
    except (ValueError, TypeError) as exc:  # the model's config does not deserialize
        traceback.print_exc()  # into the step's log, whole
        reason = first_line(exc).split(". ")[0].rstrip(".")  # Keras adds generic advice
        raise StepError(f"{path.name}: Keras cannot load it: {reason}; {hint}") from None
    except (OSError, zipfile.BadZipFile, zlib.error) as exc:  # damaged weights
        traceback.print_exc()
        raise StepError(f"{path.name}: Keras cannot load it, the file is damaged: "
                        f"{first_line(exc)}") from None


PROVIDE = ("name the module that defines them with `custom_objects: package.module` under "
           "`source:`, and define them there (or list them in its CUSTOM_OBJECTS dict)")


def _custom_objects(trust: Trust) -> dict | None:
    """The objects `trust.custom_objects` provides: its CUSTOM_OBJECTS dict, or every
    class and function it defines. Importing it registers any Keras-serializable ones."""
    if not trust.custom_objects:
        return None
    from edgebuild.plugins import import_module

    module = import_module(trust.custom_objects, trust.module_file, "source.custom_objects")
    explicit = getattr(module, "CUSTOM_OBJECTS", None)
    if isinstance(explicit, dict):
        return dict(explicit)
    return {name: value for name, value in vars(module).items()
            if not name.startswith("_") and getattr(value, "__module__", None) == module.__name__
            and callable(value)}


def is_tf_keras(model) -> bool:
    return type(model).__module__.startswith("tf_keras")


def saved_model_dir(source: Path, source_format: str, workdir: Path,
                    trust: Trust | None = None) -> Path:
    """A SavedModel folder for any TF source (exporting Keras 3 models if needed)."""
    if source_format == "saved_model":
        return source
    model = load_keras(source, trust)
    export = workdir / "saved_model"
    if is_tf_keras(model):
        import tensorflow as tf

        tf.saved_model.save(model, str(export))
    else:
        model.export(str(export), format="tf_saved_model", verbose=False)
    return export


def tflite_converter(source: Path, source_format: str, workdir: Path,
                     trust: Trust | None = None):
    import tensorflow as tf

    if source_format == "keras":
        model = load_keras(source, trust)
        if is_tf_keras(model):
            from edgebuild.toolchains.tf_numerics import exact_batch_norm

            # Folded by numpy, not by TensorFlow's CPU-dependent rsqrt: same bytes anywhere.
            return tf.lite.TFLiteConverter.from_keras_model(exact_batch_norm(model))
    saved = saved_model_dir(source, source_format, workdir, trust)
    with _saved_model_errors(saved):
        return tf.lite.TFLiteConverter.from_saved_model(str(saved))


def tflite_converter_of(model):
    """The TFLite converter of a Keras model in memory (one trained with fake
    quantization converts with the ranges it learned)."""
    import tensorflow as tf

    return tf.lite.TFLiteConverter.from_keras_model(model)


def convert_tflite(converter) -> bytes:
    """converter.convert(), its failures as step errors."""
    from edgebuild.errors import StepError, first_line

    try:
        flatbuffer = converter.convert()
    except Exception as exc:  # the converter raises ConverterError and plain exceptions
        raise StepError(f"TFLite conversion failed: {first_line(exc)}") from None
    # A Keras model is converted through a temporary SavedModel; if writing it fails
    # (a full disk), TensorFlow silently converts another way, with other bytes.
    if getattr(converter, "_keras_model", None) is not None and not converter.saved_model_dir:
        raise StepError("TFLite conversion could not write its temporary SavedModel (is the "
                        "disk full?); refusing TensorFlow's fallback, which gives other bytes")
    return flatbuffer


def load_saved_model(path: Path):
    """tf.saved_model.load; keep the result alive, since it owns the variables."""
    import tensorflow as tf

    with _saved_model_errors(path):
        return tf.saved_model.load(str(path))


@contextmanager
def _saved_model_errors(path: Path):
    """TensorFlow reports a damaged saved_model.pb as an OSError: the user's file, not
    a crash of the step."""
    from edgebuild.errors import StepError, first_line

    try:
        yield
    except OSError as exc:
        raise StepError(f"{path.name}: TensorFlow cannot load this SavedModel: "
                        f"{first_line(exc)}") from None


def run_source(source: Path, source_format: str, x, workdir: Path, batch: int = 32,
               trust: Trust | None = None):
    """Outputs of the source model on `x`, as a list of float32 arrays in the model's
    order. tf_keras models compute in float64, rounded once: the same bits on any CPU."""
    import numpy as np
    import tensorflow as tf

    if source_format == "keras":
        model = load_keras(source, trust)
        if is_tf_keras(model):
            from edgebuild.toolchains.tf_numerics import float64_copy

            names = list(model.output_names)
            model = float64_copy(model) or model
            dtype = np.dtype(model.inputs[0].dtype.as_numpy_dtype)
            parts = [model(x[i:i + batch].astype(dtype), training=False)
                     for i in range(0, len(x), batch)]
            parts = [p if isinstance(p, (list, tuple)) else [p] for p in parts]
            return names, [np.concatenate([np.asarray(p[i]) for p in parts]).astype(np.float32)
                           for i in range(len(names))]
    loaded = load_saved_model(saved_model_dir(source, source_format, workdir, trust))
    fn = loaded.signatures["serving_default"]
    arg = list(fn.structured_input_signature[1])[0]
    parts = [fn(**{arg: tf.constant(x[i:i + batch])}) for i in range(0, len(x), batch)]
    names = sorted(parts[0])
    return names, [np.concatenate([p[n].numpy() for p in parts]) for n in names]


def step_trust(ctx) -> Trust | None:
    """The recipe's trust in the model a step loads (see chain: steps that load Keras
    models get it as a parameter, and the custom-objects module as an input)."""
    from edgebuild.toolchains.keras_files import Trust

    spec = ctx.params.get("trust_source")
    if spec is None:
        return None
    return Trust(spec.get("custom_objects"), ctx.inputs.get("custom_objects"))

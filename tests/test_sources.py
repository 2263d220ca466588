"""Every TensorFlow source flavour converts to TFLite and ONNX and matches itself."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from conftest import Project, make_tiny_keras, write_images


def make_keras3(path: Path) -> None:
    import keras  # Keras 3, whatever TF_USE_LEGACY_KERAS says

    keras.utils.set_random_seed(0)
    model = keras.Sequential([
        keras.Input((16, 16, 3), name="image"),
        keras.layers.Conv2D(4, 3, activation="relu"),
        keras.layers.GlobalAveragePooling2D(),
        keras.layers.Dense(3),
    ])
    model.save(path)


def make_saved_model(path: Path) -> None:
    import tensorflow as tf

    make_tiny_keras(path.parent / "tmp.keras")
    import tf_keras

    tf.saved_model.save(tf_keras.models.load_model(path.parent / "tmp.keras"), str(path))


def make_h5(path: Path) -> None:
    import tf_keras

    make_tiny_keras(path.parent / "tmp.keras")
    tf_keras.models.load_model(path.parent / "tmp.keras").save(path)


RECIPE = """\
name: {name}
source: {{path: {source}}}
task: classification
data:
  preprocess: {{resize: [16, 16], scale: 0.00392156862745098}}
  validation: {{path: val}}
targets:
  pi: {{device: rpi4, quantize: false}}
  x86: {{device: x86-cpu, format: onnx, quantize: false}}
"""


@pytest.mark.parametrize(("name", "source", "make"), [
    ("keras3", "model.keras", make_keras3),
    ("savedmodel", "saved", make_saved_model),
    ("h5", "model.h5", make_h5),
])
def test_source_flavour_converts_to_tflite_and_onnx(tmp_path, name, source, make):
    make(tmp_path / source)
    write_images(tmp_path / "val", 3, seed=4)
    (tmp_path / "r.yaml").write_text(RECIPE.format(name=name, source=source))
    project = Project(tmp_path, "r.yaml")
    result = project.build()
    assert {t["status"] for t in result["targets"].values()} == {"ok"}
    labels = {s["label"] for s in result["step_list"]}
    assert {"convert.tflite", "convert.onnx", "baseline.tf"} <= labels

    from edgebuild.cache import Cache

    cache = Cache(project.cache)
    lock = json.loads(project.recipe.with_suffix(".lock").read_text())
    for target in ("pi", "x86"):
        validate = next(s for s in lock["targets"][target]["steps"] if s["kind"] == "validate")
        report = json.loads(cache.read_blob(cache.entry(validate["key"]).outputs["report"].digest))
        # A float conversion must reproduce the source model.
        assert report["fidelity"][0]["cosine"] > 0.9999, (target, report["fidelity"])
        assert report["fidelity"][0]["max_abs_diff"] < 1e-3

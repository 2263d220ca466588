"""Damaged or foreign model files get a clear, located error, not a toolchain's
traceback: before anything runs where a cheap look tells, in the step otherwise."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from conftest import TINY_RECIPE

from edgebuild.errors import StepError
from edgebuild.toolchains.runtimes import LiteRTModel, OnnxModel


def damaged(root: Path, kind: str) -> str:
    """Write a damaged source of `kind`; return its path relative to the recipe."""
    good = (root / "model" / "tiny.keras").read_bytes()
    if kind == "truncated.keras":
        (root / kind).write_bytes(good[: len(good) // 2])
    elif kind == "zip-without-config.keras":
        import zipfile

        with zipfile.ZipFile(root / kind, "w") as archive:
            archive.writestr("weights.h5", b"x")
    elif kind == "random.h5":
        (root / kind).write_bytes(os.urandom(4096))
    elif kind == "empty.onnx":
        (root / kind).write_bytes(b"")
    elif kind == "not-a-savedmodel":
        (root / kind).mkdir()
        (root / kind / "variables").mkdir()
    elif kind == "folder.keras":
        (root / kind).mkdir()
    return kind


@pytest.mark.parametrize("kind, message", [
    ("truncated.keras", "is not a .keras archive (no zip directory: truncated"),
    ("zip-without-config.keras", "a zip file without config.json"),
    ("random.h5", "is not an HDF5 file"),
    ("empty.onnx", "'empty.onnx' is empty"),
    ("not-a-savedmodel", "has no saved_model.pb"),
    ("folder.keras", "is a folder"),
])
def test_damaged_sources_are_recipe_errors_at_source_path(tiny, kind, message):
    path = damaged(tiny.root, kind)
    recipe = TINY_RECIPE.replace("model/tiny.keras", path)
    if kind == "empty.onnx":
        recipe = recipe.replace("{device: rpi4}", "{device: x86-cpu}").replace(
            "{device: android-gpu}", "{device: cloud-gpu}")
    if kind in ("folder.keras", "not-a-savedmodel"):  # say what it should be
        fmt = "keras" if kind == "folder.keras" else "saved_model"
        recipe = recipe.replace(f"{{path: {kind}}}", f"{{path: {kind}, format: {fmt}}}")
    tiny.recipe.write_text(recipe)
    code, _ = tiny.run("plan")
    assert code == 2, tiny.last_stderr
    assert "tiny.yaml:2:" in tiny.last_stderr and "source.path" in tiny.last_stderr
    assert message in tiny.last_stderr, tiny.last_stderr
    assert "Traceback" not in tiny.last_stderr


def test_a_corrupt_onnx_source_fails_its_steps_with_clear_messages(tiny):
    (tiny.root / "junk.onnx").write_bytes(os.urandom(5000))
    tiny.recipe.write_text(TINY_RECIPE.replace("model/tiny.keras", "junk.onnx").replace(
        "{device: rpi4}", "{device: x86-cpu}").replace("{device: android-gpu}",
                                                       "{device: cloud-gpu}"))
    code, result = tiny.run("all")
    assert code == 1
    messages = {s["kind"]: s["message"] for s in result["step_list"] if s["status"] == "failed"}
    assert "not a valid ONNX model" in messages["prepare"]
    assert "ONNX Runtime cannot load it" in messages["baseline"]
    assert not any("crashed" in m for m in messages.values()), messages


@pytest.mark.parametrize("runtime, suffix", [(LiteRTModel, ".tflite"), (OnnxModel, ".onnx")])
def test_runtimes_refuse_foreign_files_with_a_step_error(tmp_path, runtime, suffix):
    path = tmp_path / f"junk{suffix}"
    path.write_bytes(os.urandom(3000))
    with pytest.raises(StepError, match="cannot load it"):
        runtime(path)


LAMBDA_MARKER = "/tmp/edgebuild-lambda-ran"  # written by the Lambda if it ever runs


@pytest.mark.parametrize("suffix", [".keras", ".h5"])
def test_lambda_layers_are_refused_without_running(tiny, suffix):
    import tf_keras as keras

    marker = Path(LAMBDA_MARKER)
    marker.unlink(missing_ok=True)
    model = keras.Sequential([
        keras.layers.Input((16, 16, 3), name="image"),
        keras.layers.Lambda(lambda x: (open(LAMBDA_MARKER, "w").close(), x)[1]),
        keras.layers.GlobalAveragePooling2D(),
        keras.layers.Dense(4, activation="softmax")])
    model.save(tiny.root / f"lambda{suffix}")
    marker.unlink(missing_ok=True)  # saving traced the Lambda once
    tiny.recipe.write_text(TINY_RECIPE.replace("model/tiny.keras", f"lambda{suffix}"))
    code, result = tiny.run("all")
    assert code == 1
    messages = [s["message"] for s in result["step_list"] if s["status"] == "failed"]
    assert messages and all("has a Lambda layer" in m and "safe mode" in m for m in messages)
    assert not marker.exists(), "the model's Lambda code ran"

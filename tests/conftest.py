"""Shared fixtures: a tiny real Keras classifier with real images, built for real.

Building is the slow part (each toolchain step runs in a fresh worker process), so
one session-wide build serves every test that only needs to *look* at a build, and
tests that change something work on a copy of it, cache included.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"

TINY_RECIPE = """\
name: tiny
source: {path: model/tiny.keras}
task: classification
labels: labels.txt
data:
  preprocess: {resize: [16, 16], scale: 0.00392156862745098}
  calibration: {path: data/calib, count: 8}
  validation: {path: data/val}
targets:
  rpi4: {device: rpi4}
  pixel: {device: android-gpu}
"""


def make_tiny_keras(path: Path, seed: int = 0) -> None:
    import tf_keras as keras

    keras.utils.set_random_seed(seed)
    model = keras.Sequential([
        keras.layers.Input((16, 16, 3), name="image"),
        keras.layers.Conv2D(4, 3, activation="relu"),
        keras.layers.GlobalAveragePooling2D(),
        keras.layers.Dense(4, activation="softmax"),
    ])
    path.parent.mkdir(parents=True, exist_ok=True)
    model.save(path)


def write_images(folder: Path, count: int, seed: int, size: int = 20) -> None:
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    for i in range(count):
        pixels = rng.integers(0, 256, (size, size, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(folder / f"{i:03d}.png")


@pytest.fixture(scope="session")
def tiny_assets(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("tiny-assets")
    make_tiny_keras(root / "model" / "tiny.keras")
    write_images(root / "data" / "calib", 8, seed=1)
    write_images(root / "data" / "val", 6, seed=2)
    (root / "labels.txt").write_text("a\nb\nc\nd\n")
    (root / "tiny.yaml").write_text(TINY_RECIPE)
    return root


class Project:
    """A recipe folder with its own cache and dist, driven through the real CLI."""

    def __init__(self, root: Path, recipe: str = "tiny.yaml"):
        self.root, self.recipe = root, root / recipe
        self.cache, self.dist = root / "cache", root / "dist"

    def args(self, *extra: str) -> list[str]:
        return [*extra, "--cache-dir", str(self.cache), "--dist", str(self.dist)]

    def run(self, command: str, *extra: str, recipe: Path | None = None) -> tuple[int, dict]:
        """Run the CLI in-process with --json; return (exit code, parsed stdout)."""
        from edgebuild.cli import main

        out, err = io.StringIO(), io.StringIO()
        argv = [command, str(recipe or self.recipe), *self.args("--json", *extra)]
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            code = main(argv)
        self.last_stderr = err.getvalue()
        return code, json.loads(out.getvalue()) if out.getvalue().strip() else {}

    def build(self, *extra: str) -> dict:
        code, result = self.run("all", "-j", "2", *extra)
        assert code == 0, self.last_stderr + json.dumps(result, indent=1)
        return result

    def spawn(self, command: str, *extra: str, **kwargs) -> subprocess.Popen:
        return subprocess.Popen(
            [sys.executable, "-m", "edgebuild", command, str(self.recipe), *self.args(*extra)],
            cwd=self.root, stdout=subprocess.PIPE, stderr=subprocess.PIPE, **kwargs)

    def copy(self, dest: Path) -> Project:
        shutil.copytree(self.root, dest, symlinks=True)
        return Project(dest, self.recipe.name)


def executed(result: dict) -> list[tuple[str, tuple[str, ...]]]:
    """(kind, targets) of the steps a build actually ran."""
    return sorted((s["kind"], tuple(s["targets"])) for s in result["step_list"]
                  if not s["from_cache"] and s["status"] in ("executed", "deferred"))


@pytest.fixture
def tiny(tiny_assets, tmp_path) -> Project:
    """A fresh, unbuilt copy of the tiny project."""
    shutil.copytree(tiny_assets, tmp_path / "tiny")
    return Project(tmp_path / "tiny")


@pytest.fixture(scope="session")
def built_tiny(tiny_assets, tmp_path_factory) -> Project:
    """The tiny project, built once for the session. Copy it before changing it."""
    root = tmp_path_factory.mktemp("built") / "tiny"
    shutil.copytree(tiny_assets, root)
    project = Project(root)
    project.first_build = project.build()
    return project


@pytest.fixture
def rebuilt(built_tiny, tmp_path) -> Project:
    """A private copy of the built project, cache and lock file included."""
    return built_tiny.copy(tmp_path / "copy")


@pytest.fixture(scope="session")
def seaweed(tmp_path_factory):
    """A real S3 server (SeaweedFS) for the session; tests take folders in its bucket."""
    from seaweedfs import SeaweedS3

    try:
        with SeaweedS3(tmp_path_factory.mktemp("seaweedfs")) as server:
            yield server
    except (RuntimeError, OSError, ImportError) as exc:
        pytest.skip(f"SeaweedFS (weed server -s3) could not start here: {exc}")

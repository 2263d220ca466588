"""The gate can be trusted: a dead artifact fails by default, without labels, and a
drop of exactly the limit passes, through a real fallback ladder.

The model is a real 1000-class classifier whose softmax is near-uniform (every
probability about 0.001). Full-integer int8 TFLite gives softmax outputs a scale of
1/256, so each probability rounds to 0: the int8 artifact outputs all zeros. That is
the collapse the default fidelity floors are for; fp16 keeps the outputs.
"""

from __future__ import annotations

import numpy as np
import pytest
from conftest import Project

from edgebuild.budget import Measured, check

pytestmark = pytest.mark.slow

CLASSES, SIZE = 1000, 16
RECIPE = """\
name: uniform
source: {path: uniform.keras}
task: classification
data:
  preprocess: {scale: 0.00392156862745098}
  calibration: {path: calib.npz}
  validation: {path: val.npz}
targets:
"""


def near_uniform_classifier(path) -> None:
    import tf_keras as keras

    keras.utils.set_random_seed(0)
    model = keras.Sequential([
        keras.layers.Input((SIZE, SIZE, 3)),
        keras.layers.GlobalAveragePooling2D(),
        # Logits within about +-0.3: the largest probability stays below 1/512.
        keras.layers.Dense(CLASSES, activation="softmax",
                           kernel_initializer=keras.initializers.RandomNormal(stddev=0.1)),
    ])
    model.save(path)


def solid_colours(count: int, seed: int) -> np.ndarray:
    colours = np.random.default_rng(seed).integers(0, 256, (count, 1, 1, 3), dtype=np.uint8)
    return np.broadcast_to(colours, (count, SIZE, SIZE, 3)).copy()


def float_predictions(path, x: np.ndarray) -> np.ndarray:
    import tf_keras as keras

    model = keras.models.load_model(path, compile=False)
    return model.predict(x.astype(np.float32) / 255, verbose=0).argmax(axis=1)


@pytest.fixture(scope="module")
def uniform(tmp_path_factory) -> Project:
    root = tmp_path_factory.mktemp("uniform")
    near_uniform_classifier(root / "uniform.keras")
    np.savez(root / "calib.npz", x=solid_colours(16, seed=1))
    np.savez(root / "val.npz", x=solid_colours(40, seed=2))  # no labels
    (root / "uniform.yaml").write_text(RECIPE)
    return Project(root, "uniform.yaml")


def with_targets(project: Project, tmp_path, targets: str) -> Project:
    copy = project.copy(tmp_path / "p")
    copy.recipe.write_text(RECIPE + targets)
    return copy


def test_a_collapsed_int8_artifact_fails_by_default_without_labels(uniform, tmp_path):
    project = with_targets(uniform, tmp_path,
                           "  rpi4: {device: rpi4}\n"
                           "  pixel: {device: android-gpu}\n"
                           "  laddered: {device: rpi4, fallback: [int8, fp16]}\n")
    code, result = project.run("all")
    assert code == 1
    rpi4 = result["targets"]["rpi4"]
    assert rpi4["status"] == "failed" and rpi4["bundle"] is None
    misses = {m["budget"]: m for m in rpi4["misses"]}
    assert set(misses) == {"min_cosine", "min_agreement"}, rpi4["misses"]
    assert misses["min_cosine"]["actual"] == 0.0
    assert misses["min_agreement"]["actual"] < 0.1
    # fp16 keeps the outputs: the floors let a healthy artifact through.
    assert result["targets"]["pixel"]["status"] == "ok"
    # A ladder steps down from the dead rung.
    ladder = result["targets"]["laddered"]
    assert ladder["status"] == "ok" and ladder["fallback"]["chosen"] == "fp16"
    assert "min_cosine" in ladder["fallback"]["tried"][0]["misses"][0]


def test_a_drop_of_exactly_the_limit_passes_through_the_ladder(uniform, tmp_path):
    """10 labelled images: the float model is right on 4, the dead int8 one (which
    always says class 0) on 3. Its drop is 10 points, and 0.4 - 0.3 is more than
    0.1 in floating point; the limit of 10 points must hold, so the ladder keeps int8
    instead of falling to the larger fp16 rung."""
    project = with_targets(uniform, tmp_path, "  exact:\n    device: rpi4\n"
                           "    budget: {max_drop_points: 10, min_cosine: 0, min_agreement: 0}\n"
                           "    fallback: [int8, fp16]\n")
    x = solid_colours(40, seed=3)
    predicted = float_predictions(project.root / "uniform.keras", x)
    chosen = x[predicted != 0][:10]
    says = predicted[predicted != 0][:10]
    y = np.full(10, CLASSES - 1)                # 3 images neither model gets right
    y[:4] = says[:4]                            # float right, int8 (class 0) wrong
    y[4:7] = 0                                  # int8 right, float wrong
    assert (says[7:] != CLASSES - 1).all()
    np.savez(project.root / "val.npz", x=chosen, y=y)

    result = project.build()
    exact = result["targets"]["exact"]
    assert exact["fallback"]["chosen"] == "int8", exact["fallback"]
    assert exact["fallback"]["tried"] == [{"rung": "int8", "passed": True, "misses": []}]

    # One image fewer for int8 is one too many, at that same resolution.
    y[6] = CLASSES - 1
    np.savez(project.root / "val.npz", x=chosen, y=y)
    result = project.build()
    tried = result["targets"]["exact"]["fallback"]["tried"]
    assert [t["passed"] for t in tried] == [False, True]
    assert "top-1 drop 20.00 points > max_drop_points 10.00 points" in tried[0]["misses"][0]


@pytest.mark.parametrize("value, baseline, samples, limit, passes", [
    (561 / 800, 565 / 800, 800, 0.5, True),    # 4 images in 800 is 0.5 points
    (560 / 800, 565 / 800, 800, 0.5, False),   # 5 are 0.625
    (0.3, 0.4, 10, 10, True),
    (0.3, 0.4, None, 10, True),                # not counts: compared at 0.01 points
])
def test_drops_compare_at_the_resolution_of_the_measurement(value, baseline, samples, limit,
                                                            passes):
    measured = Measured(metric="top1", metric_label="top-1", value=value, baseline=baseline,
                        samples=samples)
    result = check({"max_drop_points": limit, "max_drop_percent": 100}, measured)
    assert result.passed is passes, result.misses

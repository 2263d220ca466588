"""A bad recipe is reported with file:line:col and key path, exits 2, writes nothing."""

from __future__ import annotations

import subprocess
import sys

import pytest

from edgebuild.cli import main

pytestmark = pytest.mark.fast

BAD = """\
name: tiny
source: {path: model/tiny.keras}
task: classification
data:
  preprocess: {resize: [16, 16], scale: 0.0039, layot: NHWC}
  calibration: {path: data/calib}
  validation: {path: data/val}
targets:
  rpi4: {device: rpi4, quantize: {mode: int7}}
  pixel: {device: android-gpu, quantise: {mode: fp16}}
"""


def at(text: str, token: str, nth: int = 1) -> str:
    """'line:column' of the nth occurrence of `token` in `text` (1-based, like editors)."""
    index = -1
    for _ in range(nth):
        index = text.index(token, index + 1)
    line = text.count("\n", 0, index) + 1
    return f"{line}:{index - (text.rfind(chr(10), 0, index) + 1) + 1}"


def run(args, capsys) -> tuple[int, str]:
    code = main(args)
    return code, capsys.readouterr().err


def test_schema_errors_name_file_line_column_and_key_path(tiny, capsys):
    tiny.recipe.write_text(BAD)
    code, err = run(["all", str(tiny.recipe), *tiny.args()], capsys)
    assert code == 2
    assert f"{tiny.recipe}:{at(BAD, 'layot')}: data.preprocess.layot: unknown key 'layot'" in err
    assert "did you mean 'layout'?" in err
    assert f"{tiny.recipe}:{at(BAD, 'int7')}: targets.rpi4.quantize.mode: 'int7' is not " \
           "allowed" in err
    assert "fp16, dynamic, int8, int16x8" in err
    assert f"{tiny.recipe}:{at(BAD, 'quantise')}: targets.pixel.quantise: unknown key" in err
    assert "Traceback" not in err
    assert not tiny.cache.exists() and not tiny.dist.exists()
    assert not tiny.recipe.with_suffix(".lock").exists()


def test_unknown_device_lists_the_known_ones(tiny, capsys):
    text = tiny.recipe.read_text().replace("device: rpi4", "device: rpi5x")
    tiny.recipe.write_text(text)
    code, err = run(["plan", str(tiny.recipe), *tiny.args()], capsys)
    assert code == 2
    assert f"{tiny.recipe}:{at(text, 'rpi5x')}: targets.rpi4.device: 'rpi5x' is not a known " \
           "device (known: android-gpu, cloud-gpu, coral-edgetpu" in err
    assert not tiny.cache.exists()


def test_missing_files_and_impossible_chains_are_recipe_errors(tiny, capsys):
    text = tiny.recipe.read_text().replace("model/tiny.keras", "model/none.keras")
    text = text.replace("  calibration: {path: data/calib, count: 8}\n", "")
    text += "  coral: {device: coral-edgetpu, quantize: {mode: fp16}}\n"
    tiny.recipe.write_text(text)
    code, err = run(["all", str(tiny.recipe), *tiny.args()], capsys)
    assert code == 2
    assert "source.path: 'model/none.keras' does not exist" in err
    assert "targets.rpi4.quantize: int8 quantization calibrates on data.calibration" in err
    assert "targets.coral.quantize: device 'coral-edgetpu' runs integer ops only" in err
    assert not tiny.cache.exists()


def test_invalid_yaml_and_duplicate_keys(tiny, capsys):
    tiny.recipe.write_text("name: tiny\nname: again\n")
    code, err = run(["plan", str(tiny.recipe), *tiny.args()], capsys)
    assert (code, err.strip()) == (2, f"edgebuild: {tiny.recipe}:2:1: duplicate key 'name'")
    tiny.recipe.write_text("name: [unclosed\n")
    code, err = run(["plan", str(tiny.recipe), *tiny.args()], capsys)
    assert code == 2 and "invalid YAML" in err and f"{tiny.recipe}:2:1" in err


def test_alias_bomb_is_refused_quickly(tiny, capsys):
    lines = ["a0: &a0 [x, x, x, x, x, x, x, x, x, x]"]
    lines += [f"a{i}: &a{i} [*a{i-1}, *a{i-1}, *a{i-1}, *a{i-1}, *a{i-1}, *a{i-1}, *a{i-1}, "
              f"*a{i-1}, *a{i-1}, *a{i-1}]" for i in range(1, 9)]
    tiny.recipe.write_text("\n".join(lines) + "\n")
    code, err = run(["plan", str(tiny.recipe), *tiny.args()], capsys)
    assert code == 2 and "alias bomb" in err


def test_recipe_error_through_the_real_console_script(tiny):
    tiny.recipe.write_text(BAD)
    proc = subprocess.run([sys.executable, "-m", "edgebuild", "all", str(tiny.recipe),
                           *tiny.args()], capture_output=True, text=True)
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr
    assert f":{at(BAD, 'layot')}: data.preprocess.layot" in proc.stderr
    assert not tiny.cache.exists()


def test_unknown_target_is_a_usage_error(tiny, capsys):
    code, err = run(["build", str(tiny.recipe), "--target", "nope", *tiny.args()], capsys)
    assert code == 2 and "no target named 'nope' (targets: rpi4, pixel)" in err


def test_recipe_defined_devices_extend_the_catalog(tiny, capsys):
    tiny.recipe.write_text(tiny.recipe.read_text().replace("targets:\n", """\
devices:
  my-board: {extends: rpi4, description: A55 board, steps: {quantize: {mode: dynamic}}}
  ghost: {extends: nope}
targets:
  board: {device: my-board}
"""))
    code, err = run(["plan", str(tiny.recipe), *tiny.args()], capsys)
    assert code == 2 and "devices.ghost.extends: 'nope' is not a known device" in err
    tiny.recipe.write_text(tiny.recipe.read_text().replace("  ghost: {extends: nope}\n", ""))
    code, plan = tiny.run("plan")
    assert code == 0
    labels = {s["label"]: s["targets"] for s in plan["step_list"]}
    assert labels["quantize.tflite[dynamic]"] == ["board"]
    assert labels["quantize.tflite[int8]"] == ["rpi4"]


def test_budget_ladder_and_decoder_mistakes_are_located(tiny, capsys):
    text = tiny.recipe.read_text().replace("task: classification", "task: detection") \
        .replace("labels: labels.txt", "labels: labels.txt\ndecode: yolo9") \
        .replace("  pixel: {device: android-gpu}\n", """\
  pixel: {device: android-gpu, budget: {max_drop_points: 1}}
  coral: {device: coral-edgetpu, budget: {min_cosine: 0.9}, fallback: [int8, fp16]}
  quiet: {device: rpi4, validate: false, budget: {max_size_mb: 1}}
  lost: {device: rpi4, validate: false, fallback: [int8, fp16]}
  onnx: {device: x86-cpu, budget: {min_cosine: 0.9}, fallback: [int16x8, int8-sensitive-float]}
""")
    tiny.recipe.write_text(text)
    code, err = run(["plan", str(tiny.recipe), *tiny.args()], capsys)
    assert code == 2 and "Traceback" not in err
    assert f"{at(text, 'yolo9')}: decode: 'yolo9' is not a built-in decoder" in err
    assert "package.module:function" in err
    # Detection drops need annotations and a decoder; the validation set has neither.
    assert f"{at(text, '1}}')}: targets.pixel.budget.max_drop_points: an accuracy drop " \
           "needs task metrics" in err
    assert "targets.coral.fallback[1]: device 'coral-edgetpu' runs integer ops only" in err
    assert "targets.quiet.budget: a budget is checked by validation" in err
    assert "targets.lost.fallback: a fallback ladder steps down while the budget fails" in err
    assert "targets.onnx.fallback[0]: the rung 'int16x8' needs int16x8 quantization, which " \
           "is not available for onnx" in err
    assert "targets.onnx.fallback[1]: the rung 'int8-sensitive-float' is TFLite-only" in err
    assert not tiny.cache.exists()


def test_quantization_aware_training_mistakes_are_located(tiny, capsys):
    """qat fine-tunes a Keras model for TFLite int8: without data.train, for ONNX, for
    fp16 or per tensor it is a recipe error at the key, before any work."""
    text = tiny.recipe.read_text().replace("  pixel: {device: android-gpu}\n", """\
  qat: {device: rpi4, quantize: {qat: {epochs: 2}}}
  onnx: {device: x86-cpu, quantize: {qat: {}}}
  half: {device: android-gpu, quantize: {mode: fp16, qat: {}}}
  coral: {device: coral-edgetpu, budget: {min_cosine: 0.9}, fallback: [int8, int8-qat]}
""")
    tiny.recipe.write_text(text)
    code, err = run(["plan", str(tiny.recipe), *tiny.args()], capsys)
    assert code == 2 and "Traceback" not in err
    assert f"{at(text, '{epochs: 2}')}: targets.qat.quantize.qat: quantization-aware " \
           "training fine-tunes on data.train, which the recipe does not give" in err
    assert "targets.onnx.quantize.qat: quantization-aware training makes TFLite int8" in err
    assert "targets.half.quantize.qat: quantization-aware training trains for int8, not " \
           "fp16" in err
    assert "targets.coral.fallback[1]: quantization-aware training fine-tunes on " \
           "data.train" in err
    # With data.train the same rung is fine on an integer-only device.
    trained = text.replace("  validation: {path: data/val}\n", "  validation: {path: "
                           "data/val}\n  train: {path: data/calib, loss: distill, epochs: 1}\n")
    trained = "\n".join(line for line in trained.splitlines()
                        if not line.startswith(("  onnx:", "  half:"))) + "\n"
    tiny.recipe.write_text(trained)
    code, err = run(["plan", str(tiny.recipe), *tiny.args()], capsys)
    assert code == 0, err

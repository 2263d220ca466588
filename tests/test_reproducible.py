"""The same inputs give the same bytes on any x86 machine.

What made them differ (see edgebuild/toolchains/tf_numerics.py): TensorFlow's float32
arithmetic depends on the CPU. Its rsqrt is the CPU's approximate RSQRTPS (Intel and
AMD give other bits), and BatchNormalization folds through it; its products are
blocked and summed in an order that follows the instruction set oneDNN picks and the
thread count. These tests vary exactly that, on a model with BatchNormalization that
is converted, quantized, measured, pruned and clustered with fine-tuning:
- here: another instruction set for oneDNN (SSE4.1: no FMA), one thread instead of
  two and one core instead of all, which a control shows to change TensorFlow's own
  float32 results;
- on another CPU, emulated by QEMU (an AMD EPYC without AVX-512, whose RSQRTPS is
  exact), when qemu-x86_64 is installed.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

TRAINED = """\
  train: {path: data/calib, loss: distill, epochs: 2, batch_size: 4}
targets:
  rpi4: {device: rpi4}
  sparse: {device: rpi4, prune: {sparsity: 0.5}, cluster: {clusters: 8}}
"""

# What another machine does differently: oneDNN's kernels for another instruction set
# (SSE4.1 has no fused multiply-add, so every product rounds twice) and one thread.
OTHER_MACHINE = {"ONEDNN_MAX_CPU_ISA": "SSE41", "TF_NUM_INTRAOP_THREADS": "1"}

# TensorFlow's own float32 results for the same model: these must differ under
# OTHER_MACHINE, or the test below would prove nothing.
FLOAT32_OUTPUTS = """
import hashlib, sys
import numpy as np, tf_keras
model = tf_keras.models.load_model(sys.argv[1], compile=False)
x = np.random.default_rng(0).random((8, 16, 16, 3), dtype=np.float32)
print(hashlib.sha256(np.asarray(model(x, training=False)).tobytes()).hexdigest())
"""


def make_bn_keras(path: Path) -> None:
    """Convolutions wide enough to be blocked, each followed by BatchNormalization with
    statistics far from the identity, as a trained model has them."""
    import numpy as np
    import tf_keras as keras

    keras.utils.set_random_seed(0)
    layers = [keras.layers.Input((16, 16, 3), name="image")]
    for filters in (32, 64):
        layers += [keras.layers.Conv2D(filters, 3, padding="same", use_bias=False),
                   keras.layers.BatchNormalization(), keras.layers.ReLU(6.0)]
    model = keras.Sequential([*layers, keras.layers.GlobalAveragePooling2D(),
                              keras.layers.Dense(4, activation="softmax")])
    rng = np.random.default_rng(1)
    for layer in model.layers:
        if isinstance(layer, keras.layers.BatchNormalization):
            n = layer.gamma.shape[0]
            layer.set_weights([rng.uniform(0.5, 2, n), rng.normal(0, 0.5, n),
                               rng.normal(0, 1, n), rng.uniform(0.05, 3, n)])
    model.save(path)


@pytest.fixture
def bn_project(tiny):
    make_bn_keras(tiny.root / "model" / "tiny.keras")
    text = tiny.recipe.read_text()
    tiny.recipe.write_text(text[:text.index("targets:")] + TRAINED)
    return tiny


def float32_digest(model: Path, env: dict) -> str:
    run = subprocess.run([sys.executable, "-c", FLOAT32_OUTPUTS, str(model)], env=env,
                         capture_output=True, text=True, check=True)
    return run.stdout.split()[-1]


def test_another_instruction_set_and_thread_count_build_the_same_bytes(
        bn_project, tmp_path, monkeypatch):
    other = bn_project.copy(tmp_path / "other")
    model = bn_project.root / "model" / "tiny.keras"
    assert float32_digest(model, os.environ | OTHER_MACHINE) != \
        float32_digest(model, dict(os.environ)), "the variation no longer changes float32"

    bn_project.build()
    for name, value in OTHER_MACHINE.items():
        monkeypatch.setenv(name, value)  # workers inherit the environment
    cores = os.sched_getaffinity(0)
    os.sched_setaffinity(0, {min(cores)})  # and a machine with one core: so do they
    try:
        result = other.build()
    finally:
        os.sched_setaffinity(0, cores)

    ran = {s["kind"] for s in result["step_list"] if s["status"] == "executed"}
    assert {"convert", "quantize", "baseline", "prune", "cluster"} <= ran  # from cold
    assert other.recipe.with_suffix(".lock").read_bytes() == \
        bn_project.recipe.with_suffix(".lock").read_bytes()


QEMU = shutil.which("qemu-x86_64")


@pytest.mark.skipif(QEMU is None, reason="qemu-x86_64 is not installed (apt-get install "
                    "qemu-user): no other CPU to emulate")
def test_an_emulated_amd_cpu_builds_the_same_bytes(bn_project, tmp_path):
    """The whole build, workers included, on QEMU's AMD EPYC-Rome: other vendor, other
    CPUID, no AVX-512, and an exact RSQRTPS where Intel's approximates."""
    other = bn_project.copy(tmp_path / "other")
    python = _emulated_python(tmp_path / "venv", "EPYC-Rome")
    bn_project.build()
    for _attempt in range(3):
        run = subprocess.run([str(python), "-m", "edgebuild", "all", str(other.recipe),
                              *other.args("-q")], capture_output=True, text=True,
                             cwd=other.root)
        if run.returncode == 0 or not _emulator_crashed(run):
            break
    assert run.returncode == 0, _without_emulator_warnings(run.stdout + run.stderr)[-3000:]
    assert other.recipe.with_suffix(".lock").read_bytes() == \
        bn_project.recipe.with_suffix(".lock").read_bytes()


def _emulator_crashed(run: subprocess.CompletedProcess) -> bool:
    """qemu-user now and then dies of a signal in multithreaded code (seen here in the
    TFLite converter, once in several builds): no verdict on the bytes. The build reports
    a worker killed by a signal (or is killed itself), and the steps finished before stay
    cached, so running it again under the emulator finishes it there."""
    return run.returncode < 0 or "worker killed by SIG" in run.stdout + run.stderr


def _without_emulator_warnings(stderr: str) -> str:
    """QEMU warns once per process about every CPUID feature TCG cannot emulate; the
    build's own message would drown under them."""
    return "\n".join(line for line in stderr.splitlines()
                     if not line.startswith("qemu-x86_64: warning: TCG doesn't support"))


def _emulated_python(venv: Path, cpu: str) -> Path:
    """An interpreter that runs this virtual environment's Python under QEMU. Workers
    are started with sys.executable, so they run emulated too: argv[0] is this script,
    and Python finds the environment from the pyvenv.cfg beside it."""
    real = Path(sys.base_prefix) / "bin" / f"python{sys.version_info[0]}.{sys.version_info[1]}"
    (venv / "bin").mkdir(parents=True)
    shutil.copy(Path(sys.prefix) / "pyvenv.cfg", venv / "pyvenv.cfg")
    (venv / "lib").symlink_to(Path(sys.prefix) / "lib")
    script = venv / "bin" / "python"
    script.write_text(f"#!/bin/sh\nexec {QEMU} -cpu {cpu} -0 {script} {real} \"$@\"\n")
    script.chmod(0o755)
    assert json.loads(subprocess.run([str(script), "-c", "import json, sys; "
                                      "print(json.dumps(sys.prefix))"],
                                     capture_output=True, text=True).stdout) == str(venv)
    return script

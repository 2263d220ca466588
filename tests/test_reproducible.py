"""The same inputs give the same bytes on any x86 machine.

TensorFlow switches oneDNN on by itself on CPUs with AVX-512 VNNI, BF16 or AMX, and
off elsewhere; oneDNN's kernels round differently from TensorFlow's own, so Keras
outputs (the baseline every artifact is judged against) and tfmot fine-tuning came
out different on an Intel Xeon and on an AMD EPYC without AVX-512. Setting
TF_ENABLE_ONEDNN_OPTS=1 here takes the path those CPUs take by default: the build
must not notice.
"""

from __future__ import annotations

import pytest

pytestmark = pytest.mark.slow

TRAINED = """\
  train: {path: data/calib, loss: distill, epochs: 2, batch_size: 4}
targets:
  rpi4: {device: rpi4}
  sparse: {device: rpi4, prune: {sparsity: 0.5}}
"""


def test_oneDNN_on_or_off_builds_the_same_bytes(tiny, tmp_path, monkeypatch):
    text = tiny.recipe.read_text()
    head = text[:text.index("targets:")]
    tiny.recipe.write_text(head + TRAINED)
    other = tiny.copy(tmp_path / "onednn")

    tiny.build()
    monkeypatch.setenv("TF_ENABLE_ONEDNN_OPTS", "1")  # workers inherit the environment
    result = other.build()

    ran = {s["kind"] for s in result["step_list"] if s["status"] == "executed"}
    assert {"baseline", "prune", "quantize"} <= ran  # built again, from cold
    assert other.recipe.with_suffix(".lock").read_bytes() == \
        tiny.recipe.with_suffix(".lock").read_bytes()

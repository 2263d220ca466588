"""A build gives the same bytes wherever and however often it runs, and detects a
corrupt cache. (Kills, interrupts and races: test_faults.py.)"""

from __future__ import annotations

import filecmp
import hashlib
import json
import os
from pathlib import Path

from edgebuild.cache import Cache


def entry_keys(cache_dir: Path) -> set[str]:
    return {p.stem for p in (cache_dir / "entries").glob("*/*.json")}


def assert_cache_intact(cache_dir: Path) -> None:
    cache = Cache(cache_dir)
    for key in entry_keys(cache_dir):
        entry = cache.entry(key)
        assert entry is not None, f"entry {key} is torn or names a missing blob"
        for output in entry.outputs.values():
            data = cache.blob_path(output.digest).read_bytes()
            assert hashlib.sha256(data).hexdigest() == output.digest
    assert not list(cache.blobs.glob("*/*.tmp")), "half-written blob left behind"


# Host timings, measured anew on each machine; everything else in dist/ is reproducible.
HOST_REPORTS = ["report.json", "report.md", "pareto.png"]


def same_tree(a: Path, b: Path) -> bool:
    comparison = filecmp.dircmp(a, b, ignore=HOST_REPORTS)
    if comparison.left_only or comparison.right_only or comparison.funny_files:
        return False
    _, mismatch, errors = filecmp.cmpfiles(a, b, comparison.common_files, shallow=False)
    return not mismatch and not errors and all(
        same_tree(a / d, b / d) for d in comparison.common_dirs)


def test_bundles_are_byte_identical_across_checkouts_and_caches(built_tiny, tiny):
    tiny.build()
    assert tiny.root != built_tiny.root and tiny.cache != built_tiny.cache
    assert same_tree(built_tiny.dist, tiny.dist)
    # ... and again after throwing the cache away.
    Cache(tiny.cache).clear()
    rebuilt = tiny.build()
    assert rebuilt["steps"]["executed"] == rebuilt["steps"]["total"]
    assert same_tree(built_tiny.dist, tiny.dist)


def test_manifest_matches_its_schema_and_files(built_tiny):
    import jsonschema

    from edgebuild.schema import _validator

    for target in ("rpi4", "pixel"):
        folder = built_tiny.dist / "tiny" / target
        manifest = json.loads((folder / "manifest.json").read_text())
        _validator("manifest").validate(manifest)
        assert set(manifest["files"]) == {p.name for p in folder.iterdir()} - {"manifest.json"}
        assert manifest["toolchain"]["tensorflow"]
        assert "seconds" not in json.dumps(manifest) and "latency" not in json.dumps(manifest)
    assert jsonschema  # imported for the validator above


def test_corrupt_blob_is_detected_on_read_and_evicted(rebuilt):
    cache = Cache(rebuilt.cache)
    lock = json.loads(rebuilt.recipe.with_suffix(".lock").read_text())
    quantize = lock["targets"]["rpi4"]["steps"][1]
    blob = cache.blob_path(quantize["outputs"]["model"])
    blob.chmod(0o644)
    data = bytearray(blob.read_bytes())
    data[100] ^= 0x01  # one flipped bit
    blob.write_bytes(bytes(data))
    os.remove(rebuilt.dist / "tiny" / "rpi4" / "manifest.json")
    code, result = rebuilt.run("all")
    assert code == 1
    assert result["targets"]["rpi4"]["status"] == "failed"
    assert "corrupt" in result["targets"]["rpi4"]["message"]
    assert result["targets"]["pixel"]["status"] == "ok"  # the other target is unaffected
    assert not blob.exists()  # evicted, so the next run rebuilds it
    result = rebuilt.build()
    rerun = [s["kind"] for s in result["step_list"] if not s["from_cache"]]
    assert "quantize" in rerun


ONNX_RECIPE = """\
name: relu6
source: {path: relu6.keras}
task: classification
targets:
  x86: {device: x86-cpu, format: onnx, quantize: false, validate: false}
"""


def test_onnx_conversion_gives_the_same_bytes_every_time(tmp_path):
    """tf2onnx's duplicate-merging pass picked survivors in a run-dependent order;
    ReLU6 layers (Clip with shared min/max constants) showed it."""
    import tf_keras as keras
    from conftest import Project

    keras.utils.set_random_seed(0)
    layers = [keras.layers.Input((16, 16, 3))]
    for _ in range(4):
        layers += [keras.layers.Conv2D(4, 3, padding="same"), keras.layers.ReLU(6.0)]
    keras.Sequential(layers).save(tmp_path / "relu6.keras")
    (tmp_path / "relu6.yaml").write_text(ONNX_RECIPE)
    digests = set()
    for run in range(2):
        project = Project(tmp_path, "relu6.yaml")
        project.cache, project.dist = tmp_path / f"cache{run}", tmp_path / f"dist{run}"
        project.build()
        digests.add(hashlib.sha256(
            (project.dist / "relu6" / "x86" / "model.onnx").read_bytes()).hexdigest())
    assert len(digests) == 1

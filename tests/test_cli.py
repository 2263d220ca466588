"""The smaller commands: graph, devices, gc, clean, build --target."""

from __future__ import annotations

import json

from conftest import executed

from edgebuild.cli import main


def test_graph_renders_mermaid_and_dot_with_shared_nodes(built_tiny, capsys):
    assert main(["graph", str(built_tiny.recipe), *built_tiny.args()]) == 0
    mermaid = capsys.readouterr().out
    assert mermaid.startswith("flowchart LR")
    assert mermaid.count('["convert.tflite"]') == 1  # one node shared by both targets
    assert main(["graph", str(built_tiny.recipe), "--format", "dot", *built_tiny.args()]) == 0
    dot = capsys.readouterr().out
    assert dot.startswith("digraph edgebuild {") and "quantize.tflite[int8]" in dot


def test_devices_lists_the_catalog(capsys):
    assert main(["devices", "--json"]) == 0
    catalog = json.loads(capsys.readouterr().out)
    assert {"rpi4", "x86-cpu", "android-gpu", "coral-edgetpu", "mcu", "jetson-orin",
            "cloud-gpu"} <= set(catalog)
    assert catalog["coral-edgetpu"]["steps"]["quantize"] == {"mode": "int8", "io": "int8"}
    assert catalog["coral-edgetpu"]["integer_only"] is True
    assert catalog["android-gpu"]["steps"]["quantize"]["mode"] == "fp16"
    assert catalog["jetson-orin"]["runtime"] == "tensorrt"


def test_build_one_target_leaves_the_others_alone(tiny):
    code, result = tiny.run("build", "--target", "pixel")
    assert code == 0 and set(result["targets"]) == {"pixel"}
    assert not (tiny.dist / "tiny" / "rpi4").exists()
    lock = json.loads(tiny.recipe.with_suffix(".lock").read_text())
    assert set(lock["targets"]) == {"pixel"}
    result = tiny.build()
    # pixel's chain is cached; rpi4 adds only its own quantize, validate and bundle.
    assert executed(result) == [("bundle", ("rpi4",)), ("quantize", ("rpi4",)),
                                ("validate", ("rpi4",))]
    assert set(json.loads(tiny.recipe.with_suffix(".lock").read_text())["targets"]) == {
        "pixel", "rpi4"}


def test_gc_drops_only_unreferenced_entries(tiny):
    rebuilt = tiny  # its own cache: no other project's lock file roots entries in it
    rebuilt.build()
    text = rebuilt.recipe.read_text().replace(
        "pixel: {device: android-gpu}", "pixel: {device: android-gpu, quantize: {mode: dynamic}}")
    rebuilt.recipe.write_text(text)
    rebuilt.build()  # the fp16 chain of pixel is now unreferenced
    code, dry = rebuilt.run("gc", "--dry-run")
    assert code == 0 and dry["dry_run"] and dry["entries"] == 3  # quantize, validate, bundle
    assert dry["report_plots"] == 2  # one per build: pictures, drawn again when needed
    code, done = rebuilt.run("gc")
    assert done["entries"] == 3 and done["report_plots"] == 2 and done["blobs"] > 0
    again = rebuilt.build()
    assert again["steps"]["executed"] == 0  # everything the lock needs survived


def test_clean_removes_bundles_and_optionally_the_cache(rebuilt, capsys):
    assert main(["clean", str(rebuilt.recipe), *rebuilt.args()]) == 0
    assert not (rebuilt.dist / "tiny").exists() and rebuilt.cache.exists()
    assert main(["clean", "--cache", *rebuilt.args()]) == 0
    assert not rebuilt.cache.exists()

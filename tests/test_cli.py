"""The smaller commands: graph, devices, gc, clean, build --target."""

from __future__ import annotations

import json

from conftest import executed

from edgebuild.cli import main


def test_graph_renders_mermaid_dot_and_json_with_shared_nodes(built_tiny, capsys):
    assert main(["graph", str(built_tiny.recipe), *built_tiny.args()]) == 0
    mermaid = capsys.readouterr().out
    assert mermaid.startswith("flowchart LR")
    # One node shared by both targets, labelled with them.
    assert mermaid.count('["convert.tflite (rpi4, pixel)"]') == 1
    assert main(["graph", str(built_tiny.recipe), "--format", "dot", *built_tiny.args()]) == 0
    dot = capsys.readouterr().out
    assert dot.startswith("digraph edgebuild {") and "quantize.tflite[int8] (rpi4)" in dot
    edges = [line for line in dot.splitlines() if "->" in line]
    assert len(edges) == len(set(edges))  # validate reads two outputs of one node: one edge
    assert main(["graph", str(built_tiny.recipe), "--json", *built_tiny.args()]) == 0
    graph = json.loads(capsys.readouterr().out)
    labels = [node["label"] for node in graph["nodes"]]
    assert len(labels) == len(set(labels)) and "quantize.tflite[fp16] (pixel)" in labels
    ids = {node["id"] for node in graph["nodes"]}
    assert all(edge["from"] in ids and edge["to"] in ids for edge in graph["edges"])
    assert len(edges) == len(graph["edges"])


def test_devices_lists_the_catalog(capsys):
    assert main(["devices", "--json"]) == 0
    catalog = json.loads(capsys.readouterr().out)
    assert {"rpi4", "x86-cpu", "android-gpu", "coral-edgetpu", "mcu", "jetson-orin",
            "cloud-gpu"} <= set(catalog)
    assert catalog["coral-edgetpu"]["steps"]["quantize"] == {"mode": "int8", "io": "int8"}
    assert catalog["coral-edgetpu"]["integer_only"] is True
    assert catalog["android-gpu"]["steps"]["quantize"]["mode"] == "fp16"
    assert catalog["jetson-orin"]["runtime"] == "tensorrt"
    assert main(["devices"]) == 0
    table = capsys.readouterr().out.splitlines()
    assert table[0].split() == ["device", "format", "runtime", "steps", "for"]
    coral = next(line for line in table if line.startswith("coral-edgetpu"))
    assert "quantize mode int8, io int8; compile compiler edgetpu" in coral
    assert "{" not in "".join(table[2:])  # no Python dicts


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


def test_a_build_ends_with_the_results_table(built_tiny, capsys):
    """One row per target: chain, download and model size, every task metric with its
    change against float, fidelity, latency, speed-up and verdict; not under -q; in the
    JSON as `results`."""
    project = built_tiny.copy(built_tiny.root.parent / "results")
    assert main(["all", str(project.recipe), *project.args()]) in (0, 1)
    out = capsys.readouterr().out
    lines = out[out.index("\ntarget "):].strip().splitlines()
    header = lines[0]
    for column in ("chain", "download", "model", "fidelity",
                   "latency ms (median / p90)", "speed-up", "budget"):
        assert column in header, (column, header)
    rows = {line.split()[0]: line for line in lines[2:] if line.split()[0] in ("rpi4", "pixel")}
    assert set(rows) == {"rpi4", "pixel"}
    assert "TFLite int8" in rows["rpi4"] and "TFLite fp16" in rows["pixel"]
    assert "kB" in rows["rpi4"] and "×" in rows["rpi4"]
    assert "host latency, not device latency" in out
    assert main(["all", str(project.recipe), "-q", *project.args()]) in (0, 1)
    assert "\ntarget " not in capsys.readouterr().out
    assert main(["all", str(project.recipe), "--json", *project.args()]) in (0, 1)
    results = json.loads(capsys.readouterr().out)["results"]
    assert [r["target"] for r in results] == ["rpi4", "pixel"]
    assert results[0]["chain"] == "TFLite int8" and results[0]["download_bytes"] > 0


def test_diff_shows_exactly_the_changed_target_against_head(built_tiny, capsys):
    """After one target's quantize option changes and the recipe is rebuilt, `diff`
    against the committed lock file shows that target's figures and nothing else:
    as text, as Markdown for a pull request, and as JSON."""
    import subprocess

    project = built_tiny.copy(built_tiny.root.parent / "diffed")

    def git(*args: str) -> None:
        subprocess.run(["git", *args], cwd=project.root, check=True, capture_output=True)

    git("init", "-q")
    git("add", "tiny.yaml", "tiny.lock")
    git("-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "base")
    assert main(["diff", str(project.recipe), *project.args()]) == 0
    assert "no target changed" in capsys.readouterr().out

    project.recipe.write_text(project.recipe.read_text().replace(
        "rpi4: {device: rpi4}", "rpi4: {device: rpi4, quantize: {per_channel: false}}"))
    project.build()
    assert main(["diff", str(project.recipe), "--json", *project.args()]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["against"] == "HEAD:tiny.lock" and doc["unchanged"] == ["pixel"]
    changes = {c["figure"]: c for c in doc["changes"]}
    assert {c["target"] for c in doc["changes"]} == {"rpi4"}
    assert changes["precision"] == {"target": "rpi4", "figure": "precision", "before": "int8",
                                    "after": "int8-per-tensor", "change": "changed",
                                    "notable": True}
    assert "size" in changes  # per-tensor: no per-channel scales to store
    assert main(["diff", str(project.recipe), "--format", "markdown", *project.args()]) == 0
    markdown = capsys.readouterr().out
    assert markdown.startswith("### edgebuild diff: ")
    assert "| target | figure | before | after | change |" in markdown
    assert "| rpi4 | precision | int8 | int8-per-tensor | **changed** |" in markdown
    assert "Unchanged: pixel." in markdown and "| pixel |" not in markdown
    # Against a lock file instead of a revision; and a revision without it is a usage error.
    assert main(["diff", str(project.recipe), str(project.recipe.with_suffix(".lock")),
                 *project.args()]) == 0
    assert "no target changed" in capsys.readouterr().out
    assert main(["diff", str(project.recipe), "no-such-rev", *project.args()]) == 2
    assert "git has no tiny.lock at no-such-rev" in capsys.readouterr().err

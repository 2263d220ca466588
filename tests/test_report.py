"""Reports from a build's document: the Markdown table says what each target got,
the Pareto plot is a real PNG, and importing the module stays cheap."""

from __future__ import annotations

import copy
import json
import subprocess
import sys

import pytest

from edgebuild import report, report_plot

pytestmark = pytest.mark.fast

HOST = {"cpu": "AMD EPYC 7B13", "threads": 1, "note": "host latency, not device latency"}


def _miss(budget, metric, actual, limit, unit):
    by = round(actual - limit, 4)
    return {"budget": budget, "metric": metric, "actual": actual, "limit": limit, "by": by,
            "unit": unit, "text": f"{metric} {actual:.2f} {unit} > {budget} {limit:.2f} {unit} "
                                  f"(by {by:.2f})"}


def _target(name, device, fmt, precision, *, status="ok", size=None, gzip=None, map50=None,
            map50_95=None, latency=None, budget="none", misses=(), rung=None, cosine=None,
            agreement=None):
    base = DETECTION_BASELINE["metrics"]
    metrics = None if map50 is None else {"map50": map50, "map50_95": map50_95}
    return {
        "target": name, "device": device, "format": fmt, "precision": precision,
        "status": status, "bytes": size, "gzip_bytes": gzip, "metrics": metrics,
        "drop": None if metrics is None else {k: round(base[k] - v, 6) for k, v in metrics.items()},
        "fidelity": None if cosine is None else {"cosine": cosine, "snr_db": 20.0,
                                                 "agreement": agreement,
                                                 "agreement_label": "box agreement"},
        "latency": None if latency is None else {"median_ms": latency, "p90_ms": latency * 1.1,
                                                 "runs": 20, "threads": 1},
        "speedup": None if latency is None else round(8.1 / latency, 2),
        "budget": {"status": budget, "misses": list(misses)},
        "rung": rung,
    }


DETECTION_BASELINE = {"metrics": {"map50": 0.955, "map50_95": 0.677},
                      "latency": {"median_ms": 8.1, "p90_ms": 8.5}}
DROP_MISS = _miss("max_drop", "mAP@0.5 drop", 3.2, 1.0, "points")
SIZE_MISS = _miss("max_bytes", "size", 1_150_000, 1_000_000, "bytes")


def detection_doc() -> dict:
    rung = {"chosen": "int16x8", "tried": [{"rung": "int8", "passed": False,
                                            "misses": [DROP_MISS]},
                                           {"rung": "int16x8", "passed": True, "misses": []}]}
    return {
        "recipe": "detector", "task": "detection", "metric": "map50", "metric_label": "mAP@0.5",
        "host": HOST, "baseline": DETECTION_BASELINE,
        "targets": [
            _target("rpi4", "rpi4", "tflite", "int16x8", size=312_345, gzip=280_000, map50=0.951,
                    map50_95=0.66, latency=4.2, budget="pass", rung=rung, cosine=0.998,
                    agreement=0.97),
            _target("pixel", "android-gpu", "tflite", "fp16", size=598_000, gzip=538_300,
                    map50=0.955, map50_95=0.677, latency=7.9, budget="pass", cosine=0.99999,
                    agreement=1.0),
            _target("coral", "coral-edgetpu", "edgetpu", "int8", status="deferred",
                    size=313_000, gzip=281_400, map50=0.949, map50_95=0.65, cosine=0.997),
            _target("x86", "x86-cpu", "tflite", "int8", size=276_000, gzip=248_200, map50=0.948,
                    map50_95=0.649, latency=3.1, budget="pass", cosine=0.997, agreement=0.96),
            _target("jetson", "jetson-orin", "tensorrt", "fp16", status="deferred",
                    size=1_150_000, gzip=1_100_000, budget="fail", misses=[SIZE_MISS]),
            _target("server", "cloud-gpu", "onnx", "fp16", size=305_000, gzip=273_900,
                    map50=0.954, map50_95=0.676, latency=9.8, budget="none", cosine=0.99998),
            _target("rpi4-sparse", "rpi4", "tflite", "int8", size=181_000, gzip=163_000,
                    map50=0.923, map50_95=0.61, latency=3.9, budget="fail",
                    misses=[DROP_MISS], cosine=0.981, agreement=0.91),
        ],
    }


def classification_doc() -> dict:
    def target(name, device, precision, size, acc, latency, budget, misses=()):
        return {"target": name, "device": device, "format": "tflite", "precision": precision,
                "status": "ok", "bytes": size, "gzip_bytes": int(size * 0.8),
                "metrics": {"accuracy": acc}, "drop": {"accuracy": round(0.912 - acc, 6)},
                "fidelity": {"cosine": 0.999, "snr_db": 30.0, "agreement": 0.98,
                             "agreement_label": "top-1 agreement"},
                "latency": {"median_ms": latency, "p90_ms": latency * 1.2, "runs": 50,
                            "threads": 1},
                "speedup": round(1.9 / latency, 2), "budget": {"status": budget,
                                                               "misses": list(misses)},
                "rung": None}

    return {
        "recipe": "cifar", "task": "classification", "metric": "accuracy",
        "metric_label": "top-1 accuracy", "host": HOST,
        "baseline": {"metrics": {"accuracy": 0.912}, "latency": None},
        "targets": [
            target("rpi4", "rpi4", "int8", 62_000, 0.905, 0.41, "pass"),
            target("pixel", "android-gpu", "fp16", 121_000, 0.912, 0.95, "pass"),
            target("mcu", "mcu", "int8", 40_500, 0.861, 0.38, "fail",
                   [_miss("max_drop", "top-1 accuracy drop", 5.1, 2.0, "points")]),
        ],
    }


def _rows(md: str, header_start: str) -> dict[str, list[str]]:
    """The rows of the Markdown table whose header starts with `header_start`,
    keyed by first cell."""
    lines = md.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith(header_start))
    header = [c.strip() for c in lines[start].strip("|").split("|")]
    rows = {}
    for line in lines[start + 2:]:
        if not line.startswith("|"):
            break
        cells = [c.strip() for c in line.strip("|").split("|")]
        assert len(cells) == len(header), line
        rows[cells[0]] = dict(zip(header, cells, strict=True))
    return rows


def test_detection_report_has_one_formatted_row_per_target(tmp_path):
    doc = detection_doc()
    paths = report.render(doc, tmp_path / "out")
    assert set(paths) == {"json", "md", "png"}
    assert json.loads(paths["json"].read_text()) == doc
    md = paths["md"].read_text()
    assert md.startswith("# detector")
    assert "AMD EPYC 7B13, 1 thread" in md and "host latency, not device latency" in md
    assert "mAP@0.5 95.5%" in md and "map50_95 67.7%" in md  # the float baseline

    rows = _rows(md, "| target |")
    assert list(rows) == [t["target"] for t in doc["targets"]]
    rpi4, sparse, jetson = rows["rpi4"], rows["rpi4-sparse"], rows["jetson"]
    assert rpi4["mAP@0.5"] == "95.1%"
    assert rpi4["drop (points)"] == "+0.40"
    assert rpi4["size"] == "312.3 kB" and rpi4["gzip"] == "280.0 kB"
    assert rpi4["fidelity"] == "cos 0.998, box agreement 97.0%"
    assert rpi4["latency ms (median / p90)"] == "4.20 / 4.62"
    assert rpi4["speed-up"] == "1.93×"
    assert rpi4["budget"] == "pass" and rpi4["rung"] == "int16x8"
    assert rows["pixel"]["drop (points)"] == "0.00"
    assert sparse["drop (points)"] == "+3.20" and sparse["budget"] == "FAIL"
    assert rows["server"]["budget"] == "—" and rows["server"]["rung"] == "—"
    assert rows["server"]["fidelity"] == "cos 1.000"  # no agreement measured
    assert jetson["size"] == "1.1 MB" and jetson["status"] == "deferred"
    for column in ("mAP@0.5", "drop (points)", "fidelity", "latency ms (median / p90)",
                   "speed-up"):
        assert jetson[column] == "—"
    assert rows["coral"]["latency ms (median / p90)"] == "—"


def test_budget_misses_and_ladders_sections(tmp_path):
    md = report.render(detection_doc(), tmp_path)["md"].read_text()
    misses = md[md.index("## Budget misses"):md.index("## Fallback ladders")]
    # One small table per failing target, in target order, and none for passing ones.
    assert misses.index("### jetson") < misses.index("### rpi4-sparse")
    assert "### rpi4\n" not in misses and "### x86" not in misses
    sparse = _rows(misses[misses.index("### rpi4-sparse"):], "| budget |")
    assert sparse["max_drop"] == {"budget": "max_drop", "measure": "mAP@0.5 drop",
                                  "actual": "3.20 points", "limit": "1.00 points",
                                  "by": "2.20 points"}
    jetson = _rows(misses[misses.index("### jetson"):], "| budget |")
    assert jetson["max_bytes"]["actual"] == "1.1 MB" and jetson["max_bytes"]["by"] == "150.0 kB"

    ladders = md[md.index("## Fallback ladders"):]
    assert "### rpi4: chose int16x8" in ladders
    tried = _rows(ladders, "| rung |")
    assert tried["int8"]["result"] == "failed" and "max_drop 1.00 points" in tried["int8"]["misses"]
    assert tried["int16x8"] == {"rung": "int16x8", "result": "passed", "misses": "—"}
    assert "## Accuracy against host latency\n\n![Pareto](pareto.png)" in md


def test_classification_report(tmp_path):
    md = report.render(classification_doc(), tmp_path)["md"].read_text()
    rows = _rows(md, "| target |")
    assert list(rows) == ["rpi4", "pixel", "mcu"]
    assert "rung" not in rows["rpi4"]  # no target has a ladder: no column for one
    assert rows["mcu"]["top-1 accuracy"] == "86.1%" and rows["mcu"]["drop (points)"] == "+5.10"
    assert rows["mcu"]["budget"] == "FAIL" and rows["mcu"]["size"] == "40.5 kB"
    assert rows["rpi4"]["latency ms (median / p90)"] == "0.41 / 0.49"
    assert "top-1 accuracy 91.2%" in md
    assert "No target fell back along a ladder." in md


def test_a_doc_of_nothing_but_nulls_still_renders(tmp_path):
    doc = detection_doc()
    doc["baseline"] = {"metrics": None, "latency": None}
    for t in doc["targets"]:
        t.update(status="failed", bytes=None, gzip_bytes=None, metrics=None, drop=None,
                 fidelity=None, latency=None, speedup=None, rung=None,
                 budget={"status": "none", "misses": []})
    paths = report.render(doc, tmp_path)
    rows = _rows(paths["md"].read_text(), "| target |")
    assert set(rows["x86"].values()) == {"x86", "x86-cpu", "tflite", "int8", "failed", "—"}
    assert "None: every target with a budget meets it." in paths["md"].read_text()
    assert paths["png"].stat().st_size > 0


@pytest.mark.parametrize("make", [detection_doc, classification_doc])
def test_pareto_png_is_a_real_image(tmp_path, make):
    from matplotlib.image import imread

    path = report.render(make(), tmp_path)["png"]
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    height, width = imread(path).shape[:2]
    assert width > 500 and height > 500
    again = report.render(copy.deepcopy(make()), tmp_path / "again")["png"]
    assert again.read_bytes() == path.read_bytes()  # same doc, same bytes


def test_pareto_front_keeps_only_undominated_points():
    points = [{"x": 4.2, "y": 95.1}, {"x": 7.9, "y": 95.5}, {"x": 3.1, "y": 94.8},
              {"x": 9.8, "y": 95.4}, {"x": 3.9, "y": 92.3}]
    assert [(p["x"], p["y"]) for p in report_plot.pareto_front(points)] == \
        [(3.1, 94.8), (4.2, 95.1), (7.9, 95.5)]


def test_importing_the_module_does_not_import_matplotlib():
    code = ("import sys, edgebuild.report; "
            "print(sorted(m for m in sys.modules if m.split('.')[0] in "
            "('matplotlib', 'numpy', 'PIL')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True).stdout
    assert out.strip() == "[]"


def crowded_doc() -> dict:
    """Nine targets where labels fight for room: three at exactly the same latency
    and mAP, pairs a hair apart, one far slower (a log axis) and one failing."""
    def target(name, precision, latency, map50, size, budget="pass"):
        return _target(name, "rpi4", "tflite", precision, size=size, gzip=size // 2,
                       map50=map50, map50_95=map50 - 0.3, latency=latency, budget=budget,
                       cosine=0.99, agreement=0.98)

    targets = [target("rpi4", "int8", 0.34, 0.955, 329_000),
               target("coral", "int8-io-int8", 0.34, 0.955, 329_000),
               target("mcu", "int8-io-int8", 0.34, 0.955, 329_000),
               target("x86", "int8", 0.33, 0.954, 343_000),
               target("pixel", "fp16", 0.58, 0.955, 592_000),
               target("jetson", "fp16", 0.581, 0.9551, 589_000),
               target("server", "fp16", 0.61, 0.943, 589_000),
               target("rpi4-sparse", "int8", 0.345, 0.922, 164_000),
               target("slow", "float32", 9.5, 0.95, 1_200_000, budget="fail")]
    return {"recipe": "crowded", "task": "detection", "metric": "map50",
            "metric_label": "mAP@0.5", "host": HOST, "baseline": DETECTION_BASELINE,
            "targets": targets}


@pytest.mark.parametrize("make", [crowded_doc, detection_doc, classification_doc])
def test_pareto_labels_overlap_no_marker_no_label_and_name_every_target(make):
    """The placement, checked on its bounding boxes: no label covers another label, any
    marker or the legend; targets at the same point share one label naming them all."""
    from matplotlib.transforms import Bbox

    doc = make()
    fig = report_plot.draw(doc)
    renderer = fig.canvas.get_renderer()
    ax = fig.axes[0]
    labels = [t for t in ax.texts if t.get_gid() == "label"]
    label_boxes = [report_plot.label_box(t, renderer) for t in labels]
    marker_boxes = []
    for collection in ax.collections:
        if collection.get_gid() != "marker":
            continue
        sizes = collection.get_sizes()
        for i, (x, y) in enumerate(ax.transData.transform(collection.get_offsets())):
            half = (sizes[i % len(sizes)] ** 0.5) / 2 * fig.dpi / 72
            marker_boxes.append(Bbox([[x - half, y - half], [x + half, y + half]]))
    legend = ax.get_legend().get_window_extent(renderer)

    def overlap(a, b) -> bool:
        return min(a.x1, b.x1) - max(a.x0, b.x0) > 0.5 and \
            min(a.y1, b.y1) - max(a.y0, b.y0) > 0.5

    for i, box in enumerate(label_boxes):
        assert not overlap(box, legend), labels[i].get_text()
        for other in label_boxes[i + 1:]:
            assert not overlap(box, other), labels[i].get_text()
        for marker in marker_boxes:
            assert not overlap(box, marker), labels[i].get_text()
    named = "\n".join(t.get_text() for t in labels)
    plotted = [t for t in doc["targets"] if (t.get("metrics") or {}).get("map50" if
               doc["metric"] == "map50" else doc["metric"]) is not None and t.get("latency")]
    for t in plotted:
        assert t["target"] in named, (t["target"], named)
    if make is crowded_doc:  # targets at one point (as plotted): one marker, one label
        assert len(marker_boxes) == len(plotted) - 3  # rpi4+coral+mcu, pixel+jetson
        assert sorted(t.get_text().count("\n") for t in labels) == [0, 0, 0, 0, 1, 2]


def test_report_notes_latency_noise_and_says_what_made_it():
    doc = detection_doc()
    doc["provenance"] = {"edgebuild": "0.1.0", "toolchain": {"tensorflow": "2.21.0"},
                         "recipe_commit": "23db16ae0b0b1234"}
    noisy = doc["targets"][0]
    noisy["latency"] = {**noisy["latency"], "p90_ms": noisy["latency"]["median_ms"] * 4}
    md = report.markdown(doc)
    assert f"- {noisy['target']}: p90 " in md and "× the median" in md
    assert "- edgebuild 0.1.0\n- toolchain: tensorflow 2.21.0\n- recipe at commit " \
           "23db16ae0b0b\n- written 20" in md
    quiet = report.markdown(detection_doc())
    assert "× the median" not in quiet  # p90 at 1.1x the median: no timing is suspect
    # A speed-up smaller than the spread of the runs is said to be none.
    assert "is inside the run-to-run spread" in quiet

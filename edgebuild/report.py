"""Render a build's results for people: report.json, report.md and pareto.png.

The document comes from the build; this module only formats it, so a report can be
re-rendered from its report.json. Every latency in it was measured on the build
host, and the report says so wherever a latency appears: a Raspberry Pi is not an
EPYC core. matplotlib is imported inside `plot`, never at module level, so planning
and no-op builds do not pay for it.
"""

from __future__ import annotations

import io
import json
import math
import textwrap
from pathlib import Path

from edgebuild.fsutil import atomic_write

DASH = "—"
HOST_STATEMENT = "Latencies are host latency, not device latency."


def render(doc: dict, folder: Path) -> dict[str, Path]:
    """Write the three files into `folder`; return their paths by kind."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    paths = {"json": folder / "report.json", "md": folder / "report.md",
             "png": folder / "pareto.png"}
    # Each file whole or not at all: a full disk must not leave half a report.
    atomic_write(paths["json"], (json.dumps(doc, sort_keys=True, indent=2) + "\n").encode())
    atomic_write(paths["md"], markdown(doc, paths["png"].name).encode())
    png = io.BytesIO()
    plot(doc, png)
    atomic_write(paths["png"], png.getvalue())
    return paths


# -- Markdown -----------------------------------------------------------------------

def markdown(doc: dict, png_name: str = "pareto.png") -> str:
    lines = [f"# {doc.get('recipe') or 'build'}: build report", "", _host_line(doc), "",
             _baseline_line(doc), "", *_targets_table(doc), "", "## Budget misses", "",
             *_misses_section(doc), "", "## Slower than float", "", *_slower_section(doc), "",
             "## Fallback ladders", "", *_ladders_section(doc),
             "", "## Accuracy against host latency", "", f"![Pareto]({png_name})", ""]
    return "\n".join(lines)


def _host_line(doc: dict) -> str:
    host = doc.get("host") or {}
    threads = host.get("threads")
    where = host.get("cpu") or "unknown CPU"
    if threads is not None:
        where += f", {threads} thread{'s' if threads != 1 else ''}"
    line = f"Host: {where}. {HOST_STATEMENT}"
    note = host.get("note")
    if note and note.lower() not in line.lower():
        line += f" ({note})"
    return line


def _baseline_line(doc: dict) -> str:
    baseline = doc.get("baseline") or {}
    metrics = baseline.get("metrics")
    label = doc.get("metric_label") or doc.get("metric")
    if metrics:
        labels = {**doc.get("metric_labels", {}), doc.get("metric"): label}
        shown = [f"{labels.get(key, key)} {_percent(value)}"
                 for key, value in _primary_first(metrics, doc.get("metric"))]
        text = "Float baseline: " + ", ".join(shown)
    else:
        text = f"Float baseline: {DASH} (not measured)"
    latency = baseline.get("latency")
    if latency:
        text += (f"; host latency {_ms(latency.get('median_ms'))} ms median, "
                 f"{_ms(latency.get('p90_ms'))} ms p90")
    return text + "."


def _primary_first(metrics: dict, primary: str | None) -> list[tuple[str, object]]:
    return sorted(metrics.items(), key=lambda kv: (kv[0] != primary, kv[0]))


def _targets_table(doc: dict) -> list[str]:
    targets = doc.get("targets") or []
    with_rung = any(t.get("rung") for t in targets)
    header = ["target", "device", "format", "precision", "status", "size", "gzip",
              doc.get("metric_label") or doc.get("metric") or "metric", "drop (points)",
              "fidelity", "latency ms (median / p90)", "speed-up", "budget"]
    if with_rung:
        header.append("rung")
    rows = [_target_row(t, doc.get("metric"), with_rung) for t in targets]
    if not rows:
        return ["No targets."]
    return _table(header, rows)


def _target_row(t: dict, metric: str | None, with_rung: bool) -> list[str]:
    metrics, drop = t.get("metrics") or {}, t.get("drop") or {}
    latency = t.get("latency") or {}
    row = [t.get("target"), t.get("device"), t.get("format"), t.get("precision"),
           t.get("status"), _size(t.get("bytes")), _size(t.get("gzip_bytes")),
           _percent(metrics.get(metric)), _points(drop.get(metric)), _fidelity(t.get("fidelity")),
           _latency(latency), _speedup(t.get("speedup")), _budget(t.get("budget"))]
    if with_rung:
        row.append((t.get("rung") or {}).get("chosen") or DASH)
    return [DASH if cell is None else str(cell) for cell in row]


def _misses_section(doc: dict) -> list[str]:
    lines = []
    for t in doc.get("targets") or []:
        budget = t.get("budget") or {}
        if budget.get("status") != "fail":
            continue
        lines += [f"### {t.get('target')}", "", *_misses_table(budget.get("misses") or []), ""]
    return lines[:-1] if lines else ["None: every target with a budget meets it."]


def _misses_table(misses: list[dict]) -> list[str]:
    if not misses:
        return ["(failed, but no miss was recorded)"]
    rows = [[m.get("budget"), m.get("metric"), *(_quantity(m.get(k), m.get("unit"))
                                                 for k in ("actual", "limit", "by"))]
            for m in misses]
    return _table(["budget", "measure", "actual", "limit", "by"], rows)


def _slower_section(doc: dict) -> list[str]:
    rows = [[t.get("target"), _speedup(t["slower"].get("speedup")), t["slower"].get("why")]
            for t in doc.get("targets") or [] if t.get("slower")]
    if not rows:
        return ["None: no artifact is slower than its float artifact on this host."]
    return [f"On this host ({HOST_STATEMENT.lower().rstrip('.')}):", "",
            *_table(["target", "speed-up", "why"], rows)]


def _ladders_section(doc: dict) -> list[str]:
    lines = []
    for t in doc.get("targets") or []:
        rung = t.get("rung")
        if not rung:
            continue
        rows = [[step.get("rung"), "passed" if step.get("passed") else "failed",
                 "; ".join(_miss_text(m) for m in step.get("misses") or []) or DASH]
                for step in rung.get("tried") or []]
        lines += [f"### {t.get('target')}: chose {rung.get('chosen') or DASH}", "",
                  *_table(["rung", "result", "misses"], rows), ""]
    return lines[:-1] if lines else ["No target fell back along a ladder."]


def _miss_text(miss) -> str:
    """A miss as the manifest and lock file record it (its text), or as validate
    reports it (a mapping)."""
    return miss if isinstance(miss, str) else miss.get("text") or miss.get("budget") or ""


def _table(header: list[str], rows: list[list]) -> list[str]:
    def line(cells) -> str:
        return "| " + " | ".join(_cell(c) for c in cells) + " |"

    return [line(header), "|" + "|".join("---" for _ in header) + "|",
            *(line(row) for row in rows)]


def _cell(value) -> str:
    return DASH if value is None or value == "" else str(value).replace("|", "\\|")


# -- formatting ---------------------------------------------------------------------

def _size(n) -> str:
    if n is None:
        return DASH
    if n < 1000:
        return f"{n} B"
    return f"{n / 1e3:.1f} kB" if n < 1e6 else f"{n / 1e6:.1f} MB"


def _percent(value) -> str:
    return DASH if value is None else f"{value * 100:.1f}%"


def _points(drop) -> str:
    """Signed, in percentage points: positive means the artifact is worse."""
    if drop is None:
        return DASH
    points = drop * 100
    return "0.00" if abs(points) < 0.005 else f"{points:+.2f}"


def _ms(value) -> str:
    if value is None:
        return DASH
    return f"{value:.2f}" if value < 10 else f"{value:.1f}"


def _latency(latency: dict) -> str:
    if latency.get("median_ms") is None:
        return DASH
    return f"{_ms(latency.get('median_ms'))} / {_ms(latency.get('p90_ms'))}"


def _speedup(value) -> str:
    return DASH if value is None else f"{value:.2f}×"


def _fidelity(fidelity: dict | None) -> str:
    if not fidelity:
        return DASH
    parts = []
    if fidelity.get("cosine") is not None:
        parts.append(f"cos {fidelity['cosine']:.3f}")
    if fidelity.get("agreement") is not None:
        label = fidelity.get("agreement_label") or "agreement"
        parts.append(f"{label} {_percent(fidelity['agreement'])}")
    return ", ".join(parts) or DASH


def _budget(budget: dict | None) -> str:
    status = (budget or {}).get("status")
    return {"pass": "pass", "fail": "FAIL"}.get(status, DASH)


def _quantity(value, unit) -> str:
    """A budget figure exactly as the budget check judged and printed it."""
    if value is None:
        return DASH
    if unit in ("B", "bytes"):
        return _size(value)
    from edgebuild.budget import fmt

    return fmt(value, unit)


# -- Pareto plot --------------------------------------------------------------------

PASS_COLOUR, FAIL_COLOUR, BASE_COLOUR, FRONT_COLOUR = "#1f77b4", "#d62728", "#444444", "#2ca02c"
MAX_AREA, MIN_AREA = 900.0, 50.0  # marker areas in pt², the largest artifact gets MAX_AREA


def plot(doc: dict, path: Path | io.BytesIO) -> None:
    """Primary metric against host latency, one marker per target, area ~ size."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    metric, label = doc.get("metric"), doc.get("metric_label") or doc.get("metric")
    points, missing = _plot_points(doc.get("targets") or [], metric)
    fig = Figure(figsize=(8, 5.5), dpi=150)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    baseline = doc.get("baseline") or {}
    base_metric = (baseline.get("metrics") or {}).get(metric)
    base_latency = (baseline.get("latency") or {}).get("median_ms")

    lines = _draw_front(ax, points)
    _draw_points(ax, points)
    if base_metric is not None:
        ax.axhline(base_metric * 100, color=BASE_COLOUR, linestyle="--", linewidth=1,
                   label="float baseline", zorder=1)
        ax.annotate(f"float baseline {base_metric * 100:.1f}%", (0, base_metric * 100),
                    xycoords=ax.get_yaxis_transform(), xytext=(4, 2),
                    textcoords="offset points", fontsize=8, color=BASE_COLOUR, va="bottom",
                    gid="baseline")
        if base_latency is not None:
            ax.scatter([base_latency], [base_metric * 100], marker="*", s=260,
                       color=BASE_COLOUR, edgecolors="white", linewidths=0.8, zorder=4,
                       label="float baseline (host latency)")
    _axes(ax, points, base_latency, base_metric)
    ax.set_xlabel("median host latency (ms), not device latency")
    ax.set_ylabel(f"{label} (%)")
    ax.set_title(f"{doc.get('recipe') or 'build'}: {label} against host latency")
    ax.grid(True, which="major", alpha=0.3)
    if not points:
        ax.text(0.5, 0.5, "no target has both a metric and a latency", ha="center",
                va="center", transform=ax.transAxes, color=BASE_COLOUR)
    _legend(ax, points, base_metric is not None)
    if base_metric is not None:
        lines.append(((ax.get_xlim()[0], base_metric * 100), (ax.get_xlim()[1], base_metric * 100)))
    _place_labels(fig, ax, points, lines)
    _footnote(fig, doc, points, missing)
    fig.savefig(path, format="png", dpi=150, bbox_inches="tight", pad_inches=0.2,
                metadata={"Software": None})


def _plot_points(targets: list[dict], metric: str | None) -> tuple[list[dict], list[dict]]:
    points, missing = [], []
    for t in targets:
        value = (t.get("metrics") or {}).get(metric)
        latency = (t.get("latency") or {}).get("median_ms")
        if value is None or latency is None or latency <= 0:
            missing.append(t)
            continue
        points.append({"x": latency, "y": value * 100, "bytes": t.get("bytes"),
                       "failed": (t.get("budget") or {}).get("status") == "fail",
                       "text": " ".join(str(s) for s in (t.get("target"), t.get("precision"))
                                        if s)})
    largest = max((p["bytes"] or 0 for p in points), default=0)
    for p in points:
        share = (p["bytes"] or 0) / largest if largest else 0
        p["area"] = max(MIN_AREA, MAX_AREA * share) if p["bytes"] else 120.0
    return points, missing


def pareto_front(points: list[dict]) -> list[dict]:
    """The points no other point beats on both counts: faster and more accurate."""
    front, best = [], -math.inf
    for p in sorted(points, key=lambda p: (p["x"], -p["y"])):
        if p["y"] > best:
            front.append(p)
            best = p["y"]
    return front


def _draw_front(ax, points: list[dict]) -> list[tuple]:
    """Draw the front as a staircase; return its segments, which labels should avoid."""
    front = pareto_front(points)
    if len(front) < 2:
        return []
    ax.step([p["x"] for p in front], [p["y"] for p in front], where="post",
            color=FRONT_COLOUR, linewidth=1.5, alpha=0.8, zorder=2, label="Pareto front")
    segments = []
    for a, b in zip(front, front[1:], strict=False):
        segments += [((a["x"], a["y"]), (b["x"], a["y"])), ((b["x"], a["y"]), (b["x"], b["y"]))]
    return segments


def _draw_points(ax, points: list[dict]) -> None:
    for failed in (False, True):
        group = [p for p in points if p["failed"] == failed]
        if group:
            ax.scatter([p["x"] for p in group], [p["y"] for p in group],
                       s=[p["area"] for p in group], marker="s" if failed else "o",
                       color=FAIL_COLOUR if failed else PASS_COLOUR, alpha=0.55,
                       edgecolors="black", linewidths=0.8, zorder=3)


def _axes(ax, points: list[dict], base_latency, base_metric) -> None:
    """A log latency axis when latencies span an order of magnitude, and room around
    the markers for their labels."""
    from matplotlib.ticker import FormatStrFormatter, LogLocator, NullFormatter

    xs = [p["x"] for p in points] + ([base_latency] if base_latency else [])
    ys = [p["y"] for p in points] + ([base_metric * 100] if base_metric is not None else [])
    if not xs or not ys:
        return
    lo, hi = min(xs), max(xs)
    if hi / lo > 8:
        ax.set_xscale("log")
        ax.xaxis.set_major_locator(LogLocator(base=10, subs=(1.0, 2.0, 3.0, 5.0)))
        ax.xaxis.set_major_formatter(FormatStrFormatter("%g"))
        ax.xaxis.set_minor_formatter(NullFormatter())
        ax.set_xlim(lo / 1.6, hi * 1.6)
    else:
        pad = max((hi - lo) * 0.18, hi * 0.08)
        ax.set_xlim(max(0.0, lo - pad), hi + pad)
    ylo, yhi = min(ys), max(ys)
    pad = max((yhi - ylo) * 0.2, 0.5)
    ax.set_ylim(ylo - pad, yhi + pad)


def _legend(ax, points: list[dict], has_baseline: bool) -> None:
    """Legend markers at one size: the plotted sizes encode bytes, not the category."""
    from matplotlib.lines import Line2D

    handles = []
    if any(not p["failed"] for p in points):
        handles.append(Line2D([], [], marker="o", linestyle="", color=PASS_COLOUR, alpha=0.55,
                              markeredgecolor="black", markersize=9, label="within budget"))
    if any(p["failed"] for p in points):
        handles.append(Line2D([], [], marker="s", linestyle="", color=FAIL_COLOUR, alpha=0.55,
                              markeredgecolor="black", markersize=9, label="over budget"))
    labelled = {h.get_label() for h in handles}
    for handle, text in zip(*ax.get_legend_handles_labels(), strict=True):
        if text not in labelled:
            handles.append(handle)
    largest = max((p["bytes"] or 0 for p in points), default=0)
    if largest:
        handles.append(Line2D([], [], linestyle="", label=f"marker area ∝ size "
                              f"(largest {_size(largest)})"))
    if handles:
        # Beside the axes, not in them: it can never hide a target.
        ax.legend(handles=handles, loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=8,
                  framealpha=0.9, borderaxespad=0.0)


# Where a label may go, relative to its marker, in order of preference.
_OFFSETS = [(1, 1), (1, -1), (-1, 1), (-1, -1), (1, 0), (-1, 0), (0, 1), (0, -1)]


def _place_labels(fig, ax, points: list[dict], lines: list[tuple]) -> None:
    """Greedy placement: each label takes the first spot around its marker that
    covers no marker, no earlier label, the legend or the axes' edge, and as little
    of the plotted lines as it can."""
    renderer = fig.canvas.get_renderer()
    solid = [_marker_box(ax, p) for p in points]
    legend = ax.get_legend()
    if legend is not None:
        solid.append(legend.get_window_extent(renderer))
    solid += [t.get_window_extent(renderer) for t in ax.texts if t.get_gid() == "baseline"]
    thin = [_segment_box(ax, a, b) for a, b in lines]
    frame = ax.get_window_extent(renderer)
    # Labels of the biggest markers first: they have the fewest free spots.
    for p in sorted(points, key=lambda p: -p["area"]):
        radius = math.sqrt(p["area"]) / 2 + 2  # points
        best, best_cost = None, math.inf
        for dx, dy in _OFFSETS:
            shrink = 0.75 if dx and dy else 1.0  # diagonal: closer to the marker's rim
            text = ax.annotate(p["text"], (p["x"], p["y"]),
                               xytext=(dx * radius * shrink, dy * radius * shrink),
                               textcoords="offset points", fontsize=8, zorder=5,
                               ha={1: "left", -1: "right", 0: "center"}[dx],
                               va={1: "bottom", -1: "top", 0: "center"}[dy],
                               bbox={"boxstyle": "round,pad=0.15", "fc": "white",
                                     "ec": "none", "alpha": 0.75})
            box = text.get_window_extent(renderer)
            cost = (sum(_overlap(box, other) for other in solid)
                    + 0.3 * sum(_overlap(box, other) for other in thin)
                    + 10 * (box.width * box.height - _overlap(box, frame)))
            if cost < best_cost:
                if best is not None:
                    best[0].remove()
                best, best_cost = (text, box), cost
            else:
                text.remove()
            if cost == 0:
                break
        solid.append(best[1])


def _segment_box(ax, a: tuple, b: tuple):
    """A line segment, given in data coordinates, as a box a few pixels thick."""
    from matplotlib.transforms import Bbox

    (x0, y0), (x1, y1) = ax.transData.transform([a, b])
    return Bbox([[min(x0, x1) - 2, min(y0, y1) - 2], [max(x0, x1) + 2, max(y0, y1) + 2]])


def _marker_box(ax, p: dict):
    from matplotlib.transforms import Bbox

    x, y = ax.transData.transform((p["x"], p["y"]))
    half = math.sqrt(p["area"]) / 2 * ax.figure.dpi / 72
    return Bbox([[x - half, y - half], [x + half, y + half]])


def _overlap(a, b) -> float:
    width = min(a.x1, b.x1) - max(a.x0, b.x0)
    height = min(a.y1, b.y1) - max(a.y0, b.y0)
    return width * height if width > 0 and height > 0 else 0.0


def _footnote(fig, doc: dict, points: list[dict], missing: list[dict]) -> None:
    notes = []
    if missing:
        names = ", ".join(f"{t.get('target')} ({_why_missing(t, doc.get('metric'))})"
                          for t in missing)
        notes.append(f"Not plotted: {names}.")
    host = doc.get("host") or {}
    if host.get("cpu"):
        threads = host.get("threads")
        notes.append(f"Latency measured on {host['cpu']}"
                     + (f", {threads} thread{'s' if threads != 1 else ''}" if threads else "")
                     + f". {HOST_STATEMENT}")
    if notes:
        text = "\n".join(textwrap.fill(n, 130) for n in notes)
        fig.text(0.01, -0.01, text, ha="left", va="top", fontsize=7, color=BASE_COLOUR)


def _why_missing(t: dict, metric: str | None) -> str:
    status = t.get("status")
    if status and status != "ok":
        return status
    lacks = [what for what, present in
             (("metric", (t.get("metrics") or {}).get(metric) is not None),
              ("latency", (t.get("latency") or {}).get("median_ms") is not None)) if not present]
    return "no " + " or ".join(lacks) if lacks else "latency not positive"

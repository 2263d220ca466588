"""The report's Pareto plot: the primary metric against host latency, one marker per
target (targets that coincide share one, and one label naming them all), area by
download size with a size key, p90 as error bars, labels that never overlap markers,
each other or the legend.
matplotlib is imported inside `plot`, never at module level, so planning and no-op
builds do not pay for it."""

from __future__ import annotations

import io
import math
import textwrap
from pathlib import Path

DASH = "—"
HOST_STATEMENT = "Latencies are host latency, not device latency."


def size_text(n) -> str:
    if n is None:
        return DASH
    if n < 1000:
        return f"{n} B"
    return f"{n / 1e3:.1f} kB" if n < 1e6 else f"{n / 1e6:.1f} MB"

PASS_COLOUR, FAIL_COLOUR, BASE_COLOUR, FRONT_COLOUR = "#1f77b4", "#d62728", "#444444", "#2ca02c"
MAX_AREA, MIN_AREA = 900.0, 50.0  # marker areas in pt², the largest artifact gets MAX_AREA


def png(doc: dict) -> bytes:
    """The plot as PNG bytes."""
    buffer = io.BytesIO()
    plot(doc, buffer)
    return buffer.getvalue()


def plot(doc: dict, path: Path | io.BytesIO) -> None:
    """Primary metric against host latency, one marker per target, area ~ size."""
    draw(doc).savefig(path, format="png", dpi=150, bbox_inches="tight", pad_inches=0.2,
                      metadata={"Software": None})


def draw(doc: dict):
    """The plot's matplotlib Figure (labels carry gid "label", markers gid "marker")."""
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

    lines = _draw_front(ax, points) + _draw_points(ax, points)
    if base_metric is not None:
        # Named in the legend, not beside the line, where it could cover a marker.
        ax.axhline(base_metric * 100, color=BASE_COLOUR, linestyle="--", linewidth=1,
                   label=f"float baseline {base_metric * 100:.1f}%", zorder=1)
        if base_latency is not None:
            ax.scatter([base_latency], [base_metric * 100], marker="*", s=260,
                       color=BASE_COLOUR, edgecolors="white", linewidths=0.8, zorder=4,
                       label="float baseline (host latency)")
    _axes(ax, points, base_latency, base_metric)
    ax.set_xlabel("median host latency (ms), not device latency; bars reach the p90")
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
    return fig


def _plot_points(targets: list[dict], metric: str | None) -> tuple[list[dict], list[dict]]:
    """One point per marker. Targets at the same latency and metric (as plotted) share
    one marker and one label naming them all, so that none hides another."""
    points, missing = [], []
    for t in targets:
        value = (t.get("metrics") or {}).get(metric)
        latency = t.get("latency") or {}
        median = latency.get("median_ms")
        if value is None or median is None or median <= 0:
            missing.append(t)
            continue
        text = " ".join(str(s) for s in (t.get("target"), t.get("precision")) if s)
        size = t.get("download_bytes") or t.get("bytes")
        failed = (t.get("budget") or {}).get("status") == "fail"
        same = next((p for p in points if p["failed"] == failed
                     and abs(p["y"] - value * 100) < 0.05
                     and abs(p["x"] - median) <= 0.01 * median), None)
        if same is not None:
            same["text"] += "\n" + text
            same["bytes"] = max(same["bytes"] or 0, size or 0) or None
            continue
        points.append({"x": median, "y": value * 100, "bytes": size, "failed": failed,
                       "p90": latency.get("p90_ms"), "text": text})
    largest = max((p["bytes"] or 0 for p in points), default=0)
    for p in points:
        p["area"] = _area(p["bytes"], largest)
    return points, missing


def _area(size, largest: int) -> float:
    return max(MIN_AREA, MAX_AREA * size / largest) if size and largest else 120.0


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


def _draw_points(ax, points: list[dict]) -> list[tuple]:
    """Markers and their p90 bars; returns the bars, which labels should avoid."""
    for failed in (False, True):
        group = [p for p in points if p["failed"] == failed]
        if not group:
            continue
        colour = FAIL_COLOUR if failed else PASS_COLOUR
        # The p90 as a bar to the right of the median: how far the slow runs reach.
        spread = [max(0.0, (p["p90"] or p["x"]) - p["x"]) for p in group]
        ax.errorbar([p["x"] for p in group], [p["y"] for p in group],
                    xerr=[[0.0] * len(group), spread], fmt="none", ecolor=colour,
                    elinewidth=1.0, capsize=3, alpha=0.8, zorder=2.5)
        ax.scatter([p["x"] for p in group], [p["y"] for p in group],
                   s=[p["area"] for p in group], marker="s" if failed else "o",
                   color=colour, alpha=0.55, edgecolors="black", linewidths=0.8, zorder=3,
                   gid="marker")
    return [((p["x"], p["y"]), (p["p90"], p["y"])) for p in points
            if p["p90"] and p["p90"] > p["x"]]


def _axes(ax, points: list[dict], base_latency, base_metric) -> None:
    """A log latency axis when latencies span an order of magnitude, and room around
    the markers for their labels."""
    from matplotlib.ticker import FormatStrFormatter, LogLocator, NullFormatter

    xs = [p["x"] for p in points] + [p["p90"] for p in points if p["p90"]] + \
        ([base_latency] if base_latency else [])
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
        # The size key: markers of a quarter, half and all of the largest download.
        for share in (0.25, 0.5, 1.0):
            handles.append(Line2D([], [], marker="o", linestyle="", color="none",
                                  markeredgecolor=BASE_COLOUR,
                                  markersize=math.sqrt(_area(largest * share, largest)),
                                  label=f"{size_text(int(largest * share))} download"))
    if handles:
        # Beside the axes, not in them: it can never hide a target.
        ax.legend(handles=handles, loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=8,
                  framealpha=0.9, borderaxespad=0.0, labelspacing=1.6, borderpad=1.0,
                  handlelength=3.0, handletextpad=1.2)


# Where a label may go, relative to its marker: 16 directions (the diagonals and the
# sides first), on rings further and further out; beyond the first ring a leader line
# leads back to the marker.
_DIRECTIONS = [45, -45, 135, -135, 0, 180, 90, -90, 22.5, -22.5, 157.5, -157.5,
               67.5, -67.5, 112.5, -112.5]
_RINGS = 7
_RING_STEP = 14.0  # points between rings


def _spots(radius: float):
    """(dx, dy, ha, va, leader) in offset points, in order of preference."""
    for ring in range(_RINGS):
        for angle in _DIRECTIONS:
            dx, dy = math.cos(math.radians(angle)), math.sin(math.radians(angle))
            distance = radius + ring * _RING_STEP
            ha = "left" if dx > 0.3 else "right" if dx < -0.3 else "center"
            va = "bottom" if dy > 0.3 else "top" if dy < -0.3 else "center"
            yield dx * distance, dy * distance, ha, va, ring > 0


def _place_labels(fig, ax, points: list[dict], lines: list[tuple]) -> None:
    """Greedy placement: each label takes the first spot around its marker, ring by
    ring, that covers no marker, no earlier label, the legend or the axes' edge, and as
    little of the plotted lines as it can. A spot that overlaps something solid is taken
    only when no spot on any ring is free."""
    renderer = fig.canvas.get_renderer()
    solid = [_marker_box(ax, p) for p in points]
    legend = ax.get_legend()
    if legend is not None:
        solid.append(legend.get_window_extent(renderer))
    thin = [_segment_box(ax, a, b) for a, b in lines]
    frame = ax.get_window_extent(renderer)
    # Labels of the biggest markers first: they have the fewest free spots.
    for p in sorted(points, key=lambda p: -p["area"]):
        radius = math.sqrt(p["area"]) / 2 + 2  # points
        best, best_cost = None, math.inf
        for dx, dy, ha, va, leader in _spots(radius):
            text = ax.annotate(
                p["text"], (p["x"], p["y"]), xytext=(dx, dy), textcoords="offset points",
                fontsize=8, zorder=5, gid="label", ha=ha, va=va,
                bbox={"boxstyle": "round,pad=0.15", "fc": "white", "ec": "none",
                      "alpha": 0.75},
                arrowprops={"arrowstyle": "-", "lw": 0.6, "color": BASE_COLOUR,
                            "shrinkA": 0, "shrinkB": radius} if leader else None)
            box = label_box(text, renderer)
            blocked = sum(_overlap(box, other) for other in solid) + 10 * (
                box.width * box.height - _overlap(box, frame))
            # Anything solid in the way rules a spot out while a free one is left.
            cost = 1e6 * (blocked > 0) + blocked \
                + 0.3 * sum(_overlap(box, other) for other in thin) + 0.01 * math.hypot(dx, dy)
            if cost < best_cost:
                if best is not None:
                    best[0].remove()
                best, best_cost = (text, box), cost
            else:
                text.remove()
            if best_cost < 1e6 and not leader and cost < 1:  # free, close, clear of lines
                break
        solid.append(best[1])


def label_box(text, renderer):
    """Where a label's text is, without its leader line (an Annotation's own extent
    covers the line too, which starts at the marker)."""
    from matplotlib.text import Text

    text.update_positions(renderer)  # where the offset puts it, as drawing would
    return Text.get_window_extent(text, renderer)


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

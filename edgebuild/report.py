"""Render a build's results for people: report.json, report.md and pareto.png.

The document comes from the build; this module only formats it, so a report can be
re-rendered from its report.json. Every latency in it was measured on the build
host, and the report says so wherever a latency appears: a Raspberry Pi is not an
EPYC core. matplotlib is imported inside `plot`, never at module level, so planning
and no-op builds do not pay for it.
"""

from __future__ import annotations

import json
from pathlib import Path

from edgebuild.fsutil import atomic_write
from edgebuild.report_plot import DASH, HOST_STATEMENT
from edgebuild.report_plot import png as plot_png
from edgebuild.report_plot import size_text as _size


def render(doc: dict, folder: Path, png: bytes | None = None) -> dict[str, Path]:
    """Write the three files into `folder` (the plot drawn here unless `png` is given);
    return their paths by kind."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    paths = {"json": folder / "report.json", "md": folder / "report.md",
             "png": folder / "pareto.png"}
    # Each file whole or not at all: a full disk must not leave half a report.
    atomic_write(paths["json"], (json.dumps(doc, sort_keys=True, indent=2) + "\n").encode())
    atomic_write(paths["md"], markdown(doc, paths["png"].name).encode())
    atomic_write(paths["png"], png if png is not None else plot_png(doc))
    return paths


# -- Markdown -----------------------------------------------------------------------

def markdown(doc: dict, png_name: str = "pareto.png") -> str:
    lines = [f"# {doc.get('recipe') or 'build'}: build report", "", _host_line(doc), "",
             _baseline_line(doc), "", *_targets_table(doc), "", *_noise_notes(doc),
             "## Budget misses", "",
             *_misses_section(doc), "", "## Slower than float", "", *_slower_section(doc), "",
             "## Fallback ladders", "", *_ladders_section(doc),
             "", "## Accuracy against host latency", "", f"![Pareto]({png_name})", "",
             "## Provenance", "", *_provenance_lines(doc), ""]
    return "\n".join(lines)


NOISY_P90 = 3.0  # a p90 this many times the median: the timing is not to be trusted


def _noise_notes(doc: dict) -> list[str]:
    """Where host latency is too noisy to read much into: a p90 over 3x the median,
    or a speed-up smaller than the run-to-run spread."""
    notes = []
    for t in doc.get("targets") or []:
        latency = t.get("latency") or {}
        median, p90 = latency.get("median_ms"), latency.get("p90_ms")
        if not median or not p90:
            continue
        spread = (p90 - median) / median
        if p90 > NOISY_P90 * median:
            notes.append(f"- {t.get('target')}: p90 {ms(p90)} ms is {p90 / median:.1f}× "
                         f"the median {ms(median)} ms; the host was busy or the model "
                         "is too small to time well.")
        elif t.get("speedup") is not None and abs(t["speedup"] - 1) < spread:
            notes.append(f"- {t.get('target')}: its speed-up {speedup_text(t['speedup'])} "
                         f"is inside the run-to-run spread (p90 {spread * 100:.0f}% above "
                         "the median): read it as no difference.")
    return ["**Latency noise.**", "", *notes, ""] if notes else []


def _provenance_lines(doc: dict) -> list[str]:
    from datetime import UTC, datetime

    provenance = doc.get("provenance") or {}
    toolchain = ", ".join(f"{name} {version}" for name, version in
                          (provenance.get("toolchain") or {}).items() if version)
    commit = provenance.get("recipe_commit")
    return [f"- edgebuild {provenance.get('edgebuild') or DASH}",
            f"- toolchain: {toolchain or DASH}",
            f"- recipe at commit {commit[:12]}" if commit else "- recipe not in git",
            # When the figures last changed: the report is rewritten only then.
            f"- written {datetime.now(UTC).strftime('%Y-%m-%d %H:%M UTC')}"]


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
        shown = [f"{labels.get(key, key)} {percent(value)}"
                 for key, value in _primary_first(metrics, doc.get("metric"))]
        text = "Float baseline: " + ", ".join(shown)
    else:
        text = f"Float baseline: {DASH} (not measured)"
    latency = baseline.get("latency")
    if latency:
        text += (f"; host latency {ms(latency.get('median_ms'))} ms median, "
                 f"{ms(latency.get('p90_ms'))} ms p90")
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
    return markdown_table(header, rows)


def _target_row(t: dict, metric: str | None, with_rung: bool) -> list[str]:
    metrics, drop = t.get("metrics") or {}, t.get("drop") or {}
    latency = t.get("latency") or {}
    row = [t.get("target"), t.get("device"), t.get("format"), t.get("precision"),
           t.get("status"), _size(t.get("bytes")), _size(t.get("gzip_bytes")),
           percent(metrics.get(metric)), points(drop.get(metric)), fidelity_text(t.get("fidelity")),
           latency_text(latency), speedup_text(t.get("speedup")), budget_text(t.get("budget"))]
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
    return markdown_table(["budget", "measure", "actual", "limit", "by"], rows)


def _slower_section(doc: dict) -> list[str]:
    rows = [[t.get("target"), speedup_text(t["slower"].get("speedup")), t["slower"].get("why")]
            for t in doc.get("targets") or [] if t.get("slower")]
    if not rows:
        return ["None: no artifact is slower than its float artifact on this host."]
    return [f"On this host ({HOST_STATEMENT.lower().rstrip('.')}):", "",
            *markdown_table(["target", "speed-up", "why"], rows)]


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
                  *markdown_table(["rung", "result", "misses"], rows), ""]
    return lines[:-1] if lines else ["No target fell back along a ladder."]


def _miss_text(miss) -> str:
    """A miss as the manifest and lock file record it (its text), or as validate
    reports it (a mapping)."""
    return miss if isinstance(miss, str) else miss.get("text") or miss.get("budget") or ""


def markdown_table(header: list[str], rows: list[list]) -> list[str]:
    def line(cells) -> str:
        return "| " + " | ".join(_cell(c) for c in cells) + " |"

    return [line(header), "|" + "|".join("---" for _ in header) + "|",
            *(line(row) for row in rows)]


def text_table(header: list[str], rows: list[list]) -> list[str]:
    """Columns aligned with spaces, a rule under the header: for terminals."""
    cells = [[str(c) for c in row] for row in (header, *rows)]
    widths = [max(len(row[i]) for row in cells) for i in range(len(header))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip()
             for row in cells]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return lines


def _cell(value) -> str:
    return DASH if value is None or value == "" else str(value).replace("|", "\\|")


# -- formatting (the CLI's results table writes figures the same way) -------------

def percent(value) -> str:
    return DASH if value is None else f"{value * 100:.1f}%"


def points(drop) -> str:
    """Signed, in percentage points: positive means the artifact is worse."""
    if drop is None:
        return DASH
    value = drop * 100
    return "0.00" if abs(value) < 0.005 else f"{value:+.2f}"


def ms(value) -> str:
    if value is None:
        return DASH
    return f"{value:.2f}" if value < 10 else f"{value:.1f}"


def latency_text(latency: dict) -> str:
    if latency.get("median_ms") is None:
        return DASH
    return f"{ms(latency.get('median_ms'))} / {ms(latency.get('p90_ms'))}"


def speedup_text(value) -> str:
    return DASH if value is None else f"{value:.2f}×"


def fidelity_text(fidelity: dict | None) -> str:
    if not fidelity:
        return DASH
    parts = []
    if fidelity.get("cosine") is not None:
        parts.append(f"cos {fidelity['cosine']:.3f}")
    if fidelity.get("agreement") is not None:
        label = fidelity.get("agreement_label") or "agreement"
        parts.append(f"{label} {percent(fidelity['agreement'])}")
    return ", ".join(parts) or DASH


def budget_text(budget: dict | None) -> str:
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

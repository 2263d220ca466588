"""The results table that ends a build on the terminal: one row per target, what it
went through, what it weighs, what validation measured against the float model, and
whether it ships. Like `yolo benchmark`'s table, from the build report's rows (so the
figures are report.md's, in its units)."""

from __future__ import annotations

from edgebuild.report import (
    budget_text,
    fidelity_text,
    latency_text,
    percent,
    speedup_text,
    text_table,
)
from edgebuild.report_plot import DASH
from edgebuild.report_plot import size_text as size


def render(doc: dict) -> str:
    """The table as aligned text, with a line saying what latency was measured on."""
    targets = doc.get("targets") or []
    if not targets:
        return ""
    labels = doc.get("metric_labels", {})
    metric_keys = _metric_keys(targets, doc.get("metric"))
    header = ["target", "chain", "download", "model",
              *(labels.get(key, key) for key in metric_keys), "fidelity",
              "latency ms (median / p90)", "speed-up", "budget"]
    rows = [[t["target"], t.get("chain") or t.get("precision"), size(t.get("download_bytes")),
             size(t.get("bytes")), *(_metric(t, key) for key in metric_keys),
             fidelity_text(t.get("fidelity")), latency_text(t.get("latency") or {}),
             speedup_text(t.get("speedup")), _verdict(t)] for t in targets]
    return "\n".join(text_table(header, rows)) + (
        "\nChanges, in points, are against the float model (+ better, − worse). Latency is "
        "host latency, not device latency; speed-up is against the float artifact of the "
        "same format, on this host.")


def _metric_keys(targets: list[dict], primary: str | None) -> list[str]:
    """Every task metric the data allowed, the primary one first."""
    keys = {key for t in targets for key in (t.get("metrics") or {})}
    return sorted(keys, key=lambda key: (key != primary, key))


def _metric(target: dict, key: str) -> str:
    """The value and its change against float, signed as a reader expects: a drop of
    0.4 points reads -0.4."""
    value = (target.get("metrics") or {}).get(key)
    if value is None:
        return DASH
    drop = (target.get("drop") or {}).get(key)
    if drop is None or abs(drop * 100) < 0.005:
        return f"{percent(value)} (±0)"
    return f"{percent(value)} ({-drop * 100:+.2f})".replace("-", "−")


def _verdict(target: dict) -> str:
    verdict = budget_text(target.get("budget"))
    status = target.get("status")
    return f"{verdict} ({status})" if status not in ("ok", "failed", None) else verdict

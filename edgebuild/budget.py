"""Budgets: compare what validation measured with what the target allows.

Pure data in, data out: each miss says which limit, the measured value, the limit
and by how much, so the CLI, the report and the manifest can all show it.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class Measured:
    """What validate measured of one artifact; None where it could not be measured."""

    metric: str | None = None          # key of the metric drops are measured on
    metric_label: str = ""
    value: float | None = None         # the artifact's metric (fraction)
    baseline: float | None = None      # the float source's metric (fraction)
    fidelity: list[dict] = field(default_factory=list)  # per output: cosine, snr_db
    agreement: float | None = None
    agreement_label: str = "agreement"
    size_bytes: int | None = None
    latency_ms: float | None = None
    speedup: float | None = None


@dataclass
class Check:
    misses: list[dict] = field(default_factory=list)
    unchecked: list[str] = field(default_factory=list)  # limits nothing measured

    @property
    def passed(self) -> bool:
        return not self.misses


def check(budget: dict, m: Measured) -> Check:
    result = Check()

    def at_most(key: str, what: str, actual: float | None, unit: str, scale: float = 1.0):
        _compare(result, budget, key, what, actual, unit, scale, above=True)

    def at_least(key: str, what: str, actual: float | None, unit: str, scale: float = 1.0):
        _compare(result, budget, key, what, actual, unit, scale, above=False)

    drop = None if m.value is None or m.baseline is None else m.baseline - m.value
    at_most("max_drop_points", f"{m.metric_label} drop", drop, "points", 100.0)
    relative = drop / m.baseline if drop is not None and m.baseline else None
    at_most("max_drop_percent", f"{m.metric_label} relative drop", relative, "%", 100.0)
    for output in m.fidelity:
        at_least("min_cosine", f"output {output['output']} cosine", output["cosine"], "")
        snr = output["snr_db"] if output["snr_db"] is not None else float("inf")
        at_least("min_snr_db", f"output {output['output']} SNR", snr, "dB")
    if not m.fidelity:
        at_least("min_cosine", "cosine", None, "")
        at_least("min_snr_db", "SNR", None, "dB")
    at_least("min_agreement", m.agreement_label, m.agreement, "")  # a fraction, like the limit
    at_most("max_size_mb", "size", m.size_bytes, "MB", 1e-6)
    at_most("max_latency_ms", "host latency (median)", m.latency_ms, "ms")
    at_least("min_speedup", "speed-up", m.speedup, "x")
    return result


def _compare(result: Check, budget: dict, key: str, what: str, actual: float | None,
             unit: str, scale: float, above: bool) -> None:
    limit = budget.get(key)
    if limit is None:
        return
    if actual is None:
        result.unchecked.append(f"{key}: {what} was not measured")
        return
    value = actual * scale
    missed = value > limit if above else value < limit
    if not missed:
        return
    by = value - limit if above else limit - value
    sign = ">" if above else "<"
    text = f"{what} {_fmt(value, unit)} {sign} {key} {_fmt(limit, unit)} (by {_fmt(by, unit)})"
    result.misses.append({"budget": key, "metric": what, "actual": round(value, 6),
                          "limit": limit, "by": round(by, 6), "unit": unit, "text": text})


def _fmt(value: float, unit: str) -> str:
    if value == float("inf"):
        return "inf"
    digits = 4 if unit in ("", "MB") else 2
    return f"{value:.{digits}f}" + (f" {unit}" if unit and unit != "%" else unit)


def table(misses: list[dict]) -> str:
    """Misses as an aligned text table, for the terminal."""
    rows = [("budget", "measured", "limit", "missed by")] + [
        (m["metric"], _fmt(m["actual"], m["unit"]), f"{m['budget']} {_fmt(m['limit'], m['unit'])}",
         _fmt(m["by"], m["unit"])) for m in misses]
    widths = [max(len(r[i]) for r in rows) for i in range(4)]
    return "\n".join("  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip()
                     for row in rows)


def ladder_outcome(rungs: list[str], verdicts: list[dict | None]) -> dict:
    """A fallback ladder from the verdicts of the rungs tried so far, in order (None:
    not validated): each rung with its misses, the rung chosen, and why."""
    tried = [{"rung": name, "passed": bool(verdict and verdict["passed"]),
              "misses": [m["text"] for m in (verdict or {}).get("misses", [])]}
             for name, verdict in zip(rungs, verdicts, strict=False)]
    last = tried[-1]
    if verdicts[-1] is None:
        reason, chosen = f"{last['rung']} is not validated yet", None
    elif not last["passed"]:
        reason, chosen = "no rung is within budget", None
    elif len(tried) == 1:
        reason, chosen = f"{last['rung']}, the first rung, is within budget", last["rung"]
    else:
        reason = f"{last['rung']} is the first rung within budget; " + "; ".join(
            f"{t['rung']} missed {', '.join(t['misses'])}" for t in tried[:-1])
        chosen = last["rung"]
    return {"rungs": list(rungs), "chosen": chosen, "tried": tried, "reason": reason}

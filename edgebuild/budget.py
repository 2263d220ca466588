"""Budgets: compare what validation measured with what the target allows.

Pure data in, data out: each miss says which limit, the measured value, the limit
and by how much, so the CLI, the report and the manifest can all show it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from fractions import Fraction


@dataclass
class Measured:
    """What validate measured of one artifact; None where it could not be measured."""

    metric: str | None = None          # key of the metric drops are measured on
    metric_label: str = ""
    value: float | None = None         # the artifact's metric (fraction)
    baseline: float | None = None      # the float source's metric (fraction)
    # With `samples`, value and baseline are counts of samples over `samples` (top-1,
    # top-5), and drops are compared as whole samples: 4 images in 800 is 0.5 points.
    samples: int | None = None
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


def drop(value: float, baseline: float, samples: int | None = None) -> Fraction | float:
    """How far `value` fell below `baseline` (fractions). Counts over `samples` give an
    exact fraction, so that a drop of exactly a limit is not a hair above it."""
    return _exact(baseline, samples) - _exact(value, samples)


def _exact(value: float, samples: int | None) -> Fraction | float:
    """A fraction of `samples` as the exact count it stands for; else as it is."""
    return Fraction(round(value * samples), samples) if samples else value


def check(budget: dict, m: Measured) -> Check:
    result = Check()

    def at_most(key: str, what: str, actual, unit: str, scale: float = 1.0):
        _compare(result, budget, key, what, actual, unit, scale, above=True)

    def at_least(key: str, what: str, actual, unit: str, scale: float = 1.0):
        _compare(result, budget, key, what, actual, unit, scale, above=False)

    fell = None if m.value is None or m.baseline is None else drop(m.value, m.baseline,
                                                                   m.samples)
    at_most("max_drop_points", f"{m.metric_label} drop", fell, "points", 100)
    relative = fell / _exact(m.baseline, m.samples) if fell is not None and m.baseline \
        else None
    at_most("max_drop_percent", f"{m.metric_label} relative drop", relative, "%", 100)
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


def _compare(result: Check, budget: dict, key: str, what: str, actual, unit: str,
             scale: float, above: bool) -> None:
    limit = budget.get(key)
    if limit is None:
        return
    if actual is None:
        result.unchecked.append(f"{key}: {what} was not measured")
        return
    # Compared at the resolution it is shown in: the figure in the miss table, the
    # report and the manifest is the figure that was judged. Exact counts stay exact.
    if isinstance(actual, Fraction):
        value, bound = actual * scale, Fraction(repr(limit))
    else:
        value, bound = resolution(actual * scale, unit), limit
    missed = value > bound if above else value < bound
    if not missed:
        return
    value = float(value)
    by = resolution(value - limit if above else limit - value, unit)
    sign = ">" if above else "<"
    text = f"{what} {fmt(value, unit)} {sign} {key} {fmt(limit, unit)} (by {fmt(by, unit)})"
    result.misses.append({"budget": key, "metric": what, "actual": resolution(value, unit),
                          "limit": limit, "by": by, "unit": unit, "text": text})


def _digits(unit: str) -> int:
    return 4 if unit in ("", "MB") else 2


def resolution(value: float, unit: str) -> float:
    """`value` rounded to the digits it is shown with."""
    return value if value in (float("inf"), float("-inf")) else round(value, _digits(unit))


def fmt(value: float, unit: str) -> str:
    if value == float("inf"):
        return "inf"
    return f"{value:.{_digits(unit)}f}" + (f" {unit}" if unit and unit != "%" else unit)


def table(misses: list[dict]) -> str:
    """Misses as an aligned text table, for the terminal."""
    rows = [("budget", "measured", "limit", "missed by")] + [
        (m["metric"], fmt(m["actual"], m["unit"]), f"{m['budget']} {fmt(m['limit'], m['unit'])}",
         fmt(m["by"], m["unit"])) for m in misses]
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

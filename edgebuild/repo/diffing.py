"""`edgebuild diff`: what changed in what a recipe ships, between this build's lock
file and another revision's (HEAD's by default) or another lock file, per target:
precision, sizes, task metrics, fidelity and verdicts, as `dvc metrics diff` does
for a pull request. Host latency is not in lock files (it differs run to run), so it
is not compared."""

from __future__ import annotations

import json
import subprocess
from dataclasses import asdict, dataclass
from pathlib import Path

from edgebuild.errors import UsageError
from edgebuild.lockfile import LOCK_VERSION, read_lock
from edgebuild.metrics import METRIC_LABELS
from edgebuild.report import markdown_table, text_table
from edgebuild.report_plot import size_text

# A change at least this large is marked: it is what a reviewer should look at.
NOTABLE = {"metric": 0.005, "drop": 0.005, "cosine": 0.005, "agreement": 0.01,
           "size": 0.05}  # fractions; size relative to the old size


@dataclass(frozen=True)
class Change:
    target: str
    figure: str  # e.g. "mAP@0.5", "gzip size", "verdict"
    before: str
    after: str
    change: str
    notable: bool


def diff(lock_path: Path, against: str | None) -> dict:
    """This lock file against `against`: a revision (default HEAD) or a lock file."""
    label, old = _other_lock(lock_path, against)
    new = read_lock(lock_path)
    if not new:
        raise UsageError(f"{lock_path}: no lock file; build the recipe first")
    changes, unchanged = [], []
    old_targets, new_targets = old.get("targets", {}), new.get("targets", {})
    for target in sorted(set(old_targets) | set(new_targets)):
        found = _target_changes(target, old_targets.get(target), new_targets.get(target))
        if found:
            changes += found
        else:
            unchanged.append(target)
    return {"lock": str(lock_path), "against": label, "changes": [asdict(c) for c in changes],
            "unchanged": unchanged}


def _other_lock(lock_path: Path, against: str | None) -> tuple[str, dict]:
    if against is not None and Path(against).is_file():
        return against, read_lock(Path(against))
    revision = against or "HEAD"
    folder = lock_path.resolve().parent
    try:
        top = subprocess.run(["git", "rev-parse", "--show-toplevel"], cwd=folder,
                             capture_output=True, text=True, check=True).stdout.strip()
        relative = lock_path.resolve().relative_to(Path(top).resolve()).as_posix()
        shown = subprocess.run(["git", "show", f"{revision}:{relative}"], cwd=top,
                               capture_output=True, text=True)
    except (OSError, subprocess.CalledProcessError, ValueError):
        raise UsageError(f"{lock_path} is not in a git repository; give a lock file to "
                         "compare with instead of a revision") from None
    if shown.returncode != 0:
        raise UsageError(f"git has no {relative} at {revision}: "
                         f"{shown.stderr.strip().splitlines()[-1] if shown.stderr else ''}")
    try:
        lock = json.loads(shown.stdout)
    except ValueError:
        raise UsageError(f"{relative} at {revision} is not a lock file") from None
    if lock.get("lock_version") != LOCK_VERSION:
        raise UsageError(f"{relative} at {revision} has lock_version "
                         f"{lock.get('lock_version')}, not {LOCK_VERSION}")
    return f"{revision}:{relative}", lock


def _target_changes(target: str, old: dict | None, new: dict | None) -> list[Change]:
    if old is None or new is None:
        return [Change(target, "target", "absent" if old is None else "present",
                       "absent" if new is None else "present", "added" if old is None
                       else "removed", True)]
    before, after = _figures(old), _figures(new)
    changes = []
    for name in sorted(set(before) | set(after), key=_figure_order):
        a, b = before.get(name), after.get(name)
        if a == b:
            continue
        changes.append(_change(target, name, a, b))
    return changes


def _figures(record: dict) -> dict[str, object]:
    """A target's comparable figures, by display name."""
    shipped = record.get("shipped") or {}
    bundle = next((s for s in record.get("steps", []) if s.get("kind") == "bundle"), {})
    figures: dict[str, object] = {"precision": (bundle.get("params") or {}).get("precision")}
    size = shipped.get("size") or {}
    figures["size"] = size.get("bytes")
    figures["gzip size"] = size.get("gzip_bytes")
    for key, value in (shipped.get("metrics") or {}).items():
        figures[METRIC_LABELS.get(key, key)] = value
    for key, value in (shipped.get("drop") or {}).items():
        figures[f"{METRIC_LABELS.get(key, key)} drop"] = value
    fidelity = shipped.get("fidelity") or {}
    figures["cosine"] = fidelity.get("cosine")
    figures["agreement"] = fidelity.get("agreement")
    figures["verdict"] = shipped.get("verdict")
    return {k: v for k, v in figures.items() if v is not None}


def _figure_order(name: str) -> tuple[int, str]:
    order = ["precision", "verdict", "size", "gzip size"]
    return (order.index(name), name) if name in order else (len(order), name)


def _change(target: str, name: str, a, b) -> Change:
    if a is None or b is None or isinstance(a, str) or isinstance(b, str):
        return Change(target, name, _show(name, a), _show(name, b), "changed", True)
    delta = b - a
    if name.endswith("size"):
        relative = delta / a if a else float("inf")
        return Change(target, name, _show(name, a), _show(name, b),
                      f"{relative * 100:+.1f}%".replace("-", "−"),
                      abs(relative) >= NOTABLE["size"])
    kind = ("drop" if name.endswith(" drop") else "cosine" if name == "cosine"
            else "agreement" if name == "agreement" else "metric")
    shown = f"{delta:+.4f}" if kind == "cosine" else f"{delta * 100:+.2f} points"
    return Change(target, name, _show(name, a), _show(name, b), shown.replace("-", "−"),
                  abs(delta) >= NOTABLE[kind])


def _show(name: str, value) -> str:
    if value is None:
        return "—"
    if isinstance(value, str):
        return value
    if name.endswith("size"):
        return size_text(value)
    if name == "cosine":
        return f"{value:.4f}"
    if name.endswith(" drop"):
        return f"{value * 100:.2f} points"
    return f"{value * 100:.2f}%"


# -- output ------------------------------------------------------------------------

HEADER = ["target", "figure", "before", "after", "change"]


def text(doc: dict) -> str:
    rows = _rows(doc, mark="*")
    lines = [f"{doc['lock']} against {doc['against']}:"]
    if rows:
        lines += ["  " + line for line in text_table(HEADER, rows)]
        lines.append("  * a change beyond the marking threshold")
    else:
        lines.append("  no target changed")
    if doc["unchanged"]:
        lines.append(f"  unchanged: {', '.join(doc['unchanged'])}")
    return "\n".join(lines) + "\n"


def markdown(doc: dict) -> str:
    """For a pull-request comment."""
    lines = [f"### edgebuild diff: `{doc['lock']}` against `{doc['against']}`", ""]
    rows = _rows(doc, mark="**")
    if rows:
        lines += [*markdown_table(HEADER, rows), "",
                  "Bold: a change beyond the marking threshold (0.5 points, 5% of a size, "
                  "0.005 cosine, or any change of precision or verdict)."]
    else:
        lines.append("No target changed.")
    if doc["unchanged"]:
        lines += ["", f"Unchanged: {', '.join(doc['unchanged'])}."]
    return "\n".join(lines) + "\n"


def _rows(doc: dict, mark: str) -> list[list[str]]:
    rows = []
    for c in doc["changes"]:
        change = f"{mark}{c['change']}{mark}" if c["notable"] else c["change"]
        rows.append([c["target"], c["figure"], c["before"], c["after"], change])
    return rows

"""The lock file beside each recipe: what was built, from what, with what.

It is sorted, indented JSON with no timestamps or absolute paths, so it diffs
cleanly in git and is byte-identical for identical builds. edgebuild never trusts it
for reuse (the cache decides that); it explains changes and roots `gc`.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from edgebuild.fsutil import pretty_json, write_if_changed

LOCK_VERSION = 1
DOC_FIELDS = ("kind", "impl", "params", "inputs", "device", "toolchain", "chain")


def read_lock(path: Path) -> dict:
    """The lock's contents, or an empty lock if it is missing or unreadable (it only
    informs explanations, so a damaged one costs nothing but those)."""
    try:
        data = json.loads(path.read_bytes())
        if data.get("lock_version") == LOCK_VERSION and isinstance(data.get("targets"), dict):
            return data
        raise ValueError("unknown lock_version")
    except FileNotFoundError:
        return {}
    except (OSError, ValueError, AttributeError) as exc:
        print(f"warning: ignoring unreadable lock file {path}: {exc}", file=sys.stderr)
        return {}


def previous_steps(lock: dict) -> dict[tuple[str, str], dict]:
    """(target, implementation) -> the recorded step, with its key document as `doc`."""
    found = {}
    for target, record in lock.get("targets", {}).items():
        for step in record.get("steps", []):
            impl = step.get("impl", "").split("@")[0]
            found[(target, impl)] = {**step, "doc": {k: step[k] for k in DOC_FIELDS if k in step}}
    return found


def step_record(key: str, doc: dict, outputs: dict[str, str], status: str,
                facts: dict | None = None) -> dict:
    """`facts`: what the step measured of its result (sparsity, sizes), reproducible."""
    record = {**doc, "key": key, "outputs": outputs, "status": status}
    if facts:
        record["facts"] = facts
    return record


def lock_keys(lock: dict) -> set[str]:
    return {step["key"] for record in lock.get("targets", {}).values()
            for step in record.get("steps", []) if "key" in step}


def write_lock(path: Path, recipe_name: str, source: dict, known_targets: list[str],
               built: dict[str, dict], previous: dict) -> bool:
    """Merge this build's targets into the lock: targets not built this time keep
    their record, targets no longer in the recipe are dropped. True if it changed."""
    merged = {name: rec for name, rec in previous.get("targets", {}).items()
              if name in known_targets}
    merged.update(built)
    lock = {"lock_version": LOCK_VERSION, "recipe": recipe_name, "source": source,
            "targets": merged}
    return write_if_changed(path, pretty_json(lock))

"""Content digests of user files, with a stat cache so unchanged files are hashed once.

The state maps (device, inode, mtime_ns, size) to a sha256 per file, one small JSON
document per input root. A file that was touched but not changed is hashed again
once, then its new stat is remembered, so later runs do not hash it again.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

from edgebuild.fsutil import atomic_write, canonical_json


def sha256_file(path: Path) -> str:
    with open(path, "rb") as handle:
        return hashlib.file_digest(handle, "sha256").hexdigest()


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _stat_key(st: os.stat_result) -> list[int]:
    return [st.st_dev, st.st_ino, st.st_mtime_ns, st.st_size]


class StatCache:
    """Digests of files and folders, keyed by their stat; `state_dir` None keeps
    nothing between runs (used when the cache must not be written)."""

    def __init__(self, state_dir: Path | None):
        self.state_dir = state_dir
        self.hashed_bytes = 0  # what this run actually had to read, for benchmarks
        self._memo: dict[Path, str] = {}

    def digest(self, path: Path) -> str:
        path = Path(path)
        if path not in self._memo:
            self._memo[path] = self._digest(path)
        return self._memo[path]

    def _digest(self, path: Path) -> str:
        state_file = self._state_file(path)
        old = self._read(state_file)
        files = walk_files(path)
        known = old.get("files", {})
        entries = {}
        for rel, full in files:
            st = full.stat()
            previous = known.get(rel)
            if previous and previous[0] == _stat_key(st):
                entries[rel] = previous
            else:
                entries[rel] = [_stat_key(st), sha256_file(full)]
                self.hashed_bytes += st.st_size
        if path.is_dir():
            listing = {rel: entry[1] for rel, entry in entries.items()}
            digest = sha256_bytes(canonical_json({"tree": listing}))
        else:
            digest = entries[""][1]
        new = {"path": str(path), "files": entries}
        if new != old and state_file is not None:
            atomic_write(state_file, json.dumps(new).encode())
        return digest

    def _state_file(self, path: Path) -> Path | None:
        if self.state_dir is None:
            return None
        name = hashlib.sha256(str(path.resolve()).encode()).hexdigest()[:32]
        return self.state_dir / name[:2] / f"{name}.json"

    @staticmethod
    def _read(state_file: Path | None) -> dict:
        if state_file is None:
            return {}
        try:
            return json.loads(state_file.read_bytes())
        except (OSError, ValueError):
            return {}  # missing or torn state only costs a re-hash


def walk_files(path: Path) -> list[tuple[str, Path]]:
    """Files under `path` in sorted order; hidden files are not content."""
    if not path.is_dir():
        return [("", path)]
    found = []
    for dirpath, dirnames, filenames in os.walk(path):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        for name in sorted(filenames):
            if not name.startswith("."):
                full = Path(dirpath, name)
                found.append((full.relative_to(path).as_posix(), full))
    return found

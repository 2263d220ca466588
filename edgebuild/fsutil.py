"""Small file-system helpers for crash-safe writes."""

from __future__ import annotations

import atexit
import json
import os
import shutil
import tempfile
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


def canonical_json(value: object) -> bytes:
    """The one serialization that digests and keys are computed over."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False,
                      allow_nan=False).encode()


def pretty_json(value: object) -> bytes:
    """Sorted, indented JSON for files people diff (lock files, manifests)."""
    return (json.dumps(value, sort_keys=True, indent=2, ensure_ascii=False, allow_nan=False)
            + "\n").encode()


def folder_problem(path: Path) -> str | None:
    """Why `path` cannot be a folder edgebuild writes into (it, or a folder it would be
    made in, is a file), or None. Said up front: mkdir's ENOTDIR names neither."""
    existing = next((p for p in (path, *path.parents) if p.exists()), None)
    if existing is None or existing.is_dir():
        return None
    if existing == path:
        return f"'{path}' is a file, not a folder"
    return f"'{path}' cannot be a folder: '{existing}' is a file"


def atomic_write(path: Path, data: bytes, tmp_dir: Path | None = None) -> None:
    """Write to a temporary file beside the target, fsync, then rename over it, so a
    reader sees the old file or the new one, never half of one."""
    path.parent.mkdir(parents=True, exist_ok=True)
    # Gone once renamed; removed if anything fails first.
    with scratch_file(tmp_dir or path.parent, f".{path.name}.", ".tmp") as (fd, tmp):
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)


def write_if_changed(path: Path, data: bytes) -> bool:
    try:
        if path.read_bytes() == data:
            return False
    except OSError:
        pass
    atomic_write(path, data)
    return True


def file_sizes(path: Path) -> dict:
    """Raw and gzip (level 9) size: pruning and clustering only pay off compressed."""
    import zlib

    compressor = zlib.compressobj(9, zlib.DEFLATED, 31)  # wbits 31: the gzip format
    gzip_bytes = 0
    with open(path, "rb") as handle:
        while chunk := handle.read(1 << 20):
            gzip_bytes += len(compressor.compress(chunk))
    gzip_bytes += len(compressor.flush())
    return {"bytes": path.stat().st_size, "gzip_bytes": gzip_bytes}


# Temporary files and folders in use. Steps run in doit's daemon threads, which die
# with the process without running their `finally` blocks (Ctrl-C), so what they
# hold is also removed at exit. They are made and registered under one lock, and none
# is made once the exit's clean-up has begun: nothing can slip in between.
_scratch: set[Path] = set()
_scratch_lock = threading.Lock()
_closed = False  # the process is exiting: no new temporary files


class Exiting(OSError):
    """A temporary file was asked for while the process exits (after Ctrl-C)."""


@contextmanager
def scratch_file(folder: Path, prefix: str, suffix: str = "") -> Iterator[tuple[int, Path]]:
    """A new file in `folder` (an open descriptor and its path), removed when the block
    ends or the process does."""
    with _scratch_lock:
        if _closed:
            raise Exiting("the process is exiting")
        fd, name = tempfile.mkstemp(dir=folder, prefix=prefix, suffix=suffix)
        _scratch.add(Path(name))
    with _held(Path(name)):
        yield fd, Path(name)


@contextmanager
def scratch_dir(folder: Path, prefix: str) -> Iterator[Path]:
    """A new folder in `folder`, removed when the block ends or the process does."""
    with _scratch_lock:
        if _closed:
            raise Exiting("the process is exiting")
        path = Path(tempfile.mkdtemp(dir=folder, prefix=prefix))
        _scratch.add(path)
    with _held(path):
        yield path


@contextmanager
def _held(path: Path) -> Iterator[Path]:
    try:
        yield path
    finally:
        _remove(path)
        with _scratch_lock:
            _scratch.discard(path)


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)


@atexit.register
def _remove_scratch() -> None:
    global _closed
    with _scratch_lock:
        _closed = True
        leftovers = list(_scratch)
    for path in leftovers:
        _remove(path)

"""Small file-system helpers for crash-safe writes."""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path


def canonical_json(value: object) -> bytes:
    """The one serialization that digests and keys are computed over."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False,
                      allow_nan=False).encode()


def pretty_json(value: object) -> bytes:
    """Sorted, indented JSON for files people diff (lock files, manifests)."""
    return (json.dumps(value, sort_keys=True, indent=2, ensure_ascii=False, allow_nan=False)
            + "\n").encode()


def atomic_write(path: Path, data: bytes, tmp_dir: Path | None = None) -> None:
    """Write to a temporary file beside the target, fsync, then rename over it, so a
    reader sees the old file or the new one, never half of one."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=tmp_dir or path.parent, prefix=f".{path.name}.",
                               suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


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

"""Publishing bundles from the cache to dist/<recipe>/<target>/.

The cache holds the bundle; dist is a copy for people and CI. A published bundle is
replaced whole (built beside it, then swapped under a lock), so concurrent builds
and interrupted ones never leave a mix of two bundles.
"""

from __future__ import annotations

import fcntl
import os
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path

from edgebuild.cache import Cache, Output


def is_published(cache: Cache, bundle: Output, dest: Path) -> bool:
    """Cheap check for the no-op path: same manifest bytes, same file sizes."""
    listing = cache.tree_listing(bundle)
    try:
        manifest = (dest / "manifest.json").read_bytes()
    except OSError:
        return False
    if manifest != cache.read_blob(listing["manifest.json"][0]):
        return False
    present = {p.relative_to(dest).as_posix(): p.stat().st_size
               for p in dest.rglob("*") if p.is_file()}
    return present == {rel: entry[1] for rel, entry in listing.items()}


def publish(cache: Cache, bundle: Output, dest: Path) -> bool:
    """Make `dest` hold exactly this bundle. Returns True if anything was written."""
    if is_published(cache, bundle, dest):
        return False
    dest.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(dir=dest.parent, prefix=f".{dest.name}.new-"))
    try:
        cache.materialize(bundle, staging)
        with _locked(dest.parent / ".lock"):
            if dest.exists():
                old = Path(tempfile.mkdtemp(dir=dest.parent, prefix=f".{dest.name}.old-"))
                os.replace(dest, old / "bundle")
                os.replace(staging, dest)
                shutil.rmtree(old, ignore_errors=True)
            else:
                os.replace(staging, dest)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return True


@contextmanager
def _locked(path: Path):
    with open(path, "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)

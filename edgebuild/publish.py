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


def publish(cache: Cache, bundle: Output, dest: Path, archive: Output | None = None) -> bool:
    """Make `dest` hold exactly this bundle, and `dest`.tar.gz its archive. Returns True
    if anything was written."""
    wrote = False
    if not is_published(cache, bundle, dest):
        _swap_in(cache, bundle, dest)
        wrote = True
    if archive is not None:
        path = archive_path(dest)
        if wrote or not (path.is_file() and path.stat().st_size == archive.size):
            fd, tmp = tempfile.mkstemp(dir=dest.parent, prefix=f".{path.name}.")
            os.close(fd)
            try:
                cache.materialize(archive, Path(tmp))
                os.chmod(tmp, 0o644)  # mkstemp's 0600 would hide it from other users
                os.replace(tmp, path)
            finally:
                Path(tmp).unlink(missing_ok=True)
            wrote = True
    return wrote


def archive_path(dest: Path) -> Path:
    return dest.with_name(f"{dest.name}.tar.gz")


def _swap_in(cache: Cache, bundle: Output, dest: Path) -> None:
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


@contextmanager
def _locked(path: Path):
    with open(path, "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)

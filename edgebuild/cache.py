"""The local content-addressed cache: the source of truth for what is built.

    blobs/ab/<sha256>       file contents, read-only, named by their digest
    entries/ab/<key>.json   one step result: its key document and output digests
    state/                  stat cache and validated-recipe memo
    tmp/                    work folders and half-written files (same file system)
    roots/                  lock files that reference entries, for `gc`

Writes go blob first, then entry, each through a temporary file and a rename, so an
entry is never visible before everything it names is complete. Entries are written
once: two builds producing the same key write the same content, so racing writers
need no lock.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

from edgebuild.errors import BuildError
from edgebuild.fsutil import atomic_write, canonical_json
from edgebuild.hashing import StatCache, sha256_bytes

ENTRY_VERSION = 1


class CorruptBlob(BuildError):
    pass


@dataclass(frozen=True)
class Output:
    digest: str
    size: int
    name: str  # file name the step gave it; inputs are materialized under this name
    tree: bool = False

    def to_dict(self) -> dict:
        return {"digest": self.digest, "size": self.size, "name": self.name, "tree": self.tree}


@dataclass(frozen=True)
class Entry:
    key: str
    kind: str
    doc: dict
    outputs: dict[str, Output]
    meta: dict

    @property
    def status(self) -> str:
        return self.meta.get("status", "executed")


class Cache:
    def __init__(self, root: Path):
        self.root = Path(root).resolve()
        self.blobs = self.root / "blobs"
        self.entries = self.root / "entries"
        self.tmp = self.root / "tmp"
        self.state = self.root / "state"

    def ensure(self) -> None:
        for folder in (self.blobs, self.entries, self.tmp, self.state, self.root / "roots"):
            folder.mkdir(parents=True, exist_ok=True)

    def stat_cache(self) -> StatCache:
        return StatCache(self.state / "stat")

    # -- entries ---------------------------------------------------------------------

    def _entry_path(self, key: str) -> Path:
        return self.entries / key[:2] / f"{key}.json"

    def entry(self, key: str) -> Entry | None:
        """The entry for `key` if it and every blob it names are present."""
        try:
            raw = json.loads(self._entry_path(key).read_bytes())
            outputs = {name: Output(**out) for name, out in raw["outputs"].items()}
            entry = Entry(key=raw["key"], kind=raw["kind"], doc=raw["doc"], outputs=outputs,
                          meta=raw.get("meta", {}))
        except FileNotFoundError:
            return None
        except (OSError, ValueError, KeyError, TypeError):
            self.evict(key)  # torn or foreign file: never reuse it
            return None
        if entry.key != key or not all(self.has_blob(o.digest) for o in outputs.values()):
            return None
        return entry

    def commit(self, key: str, kind: str, doc: dict, outputs: dict[str, Output],
               meta: dict) -> Entry:
        record = {"entry_version": ENTRY_VERSION, "key": key, "kind": kind, "doc": doc,
                  "outputs": {n: o.to_dict() for n, o in outputs.items()}, "meta": meta}
        atomic_write(self._entry_path(key), json.dumps(record, sort_keys=True, indent=1).encode(),
                     tmp_dir=self.tmp)
        return Entry(key=key, kind=kind, doc=doc, outputs=outputs, meta=meta)

    def evict(self, key: str) -> None:
        self._entry_path(key).unlink(missing_ok=True)

    def entry_keys(self) -> list[str]:
        return [p.stem for p in self.entries.glob("*/*.json")]

    # -- blobs -----------------------------------------------------------------------

    def blob_path(self, digest: str) -> Path:
        return self.blobs / digest[:2] / digest

    def has_blob(self, digest: str) -> bool:
        return self.blob_path(digest).is_file()

    def put_file(self, path: Path) -> Output:
        """Store a file, hashing it as it is copied."""
        hasher = hashlib.sha256()
        fd, tmp = tempfile.mkstemp(dir=self.tmp, prefix="blob-")
        try:
            with open(path, "rb") as src, os.fdopen(fd, "wb") as dst:
                while chunk := src.read(1 << 20):
                    hasher.update(chunk)
                    dst.write(chunk)
                dst.flush()
                os.fsync(dst.fileno())
            digest = hasher.hexdigest()
            self._install(Path(tmp), digest)
        finally:
            Path(tmp).unlink(missing_ok=True)
        return Output(digest=digest, size=path.stat().st_size, name=path.name)

    def put_bytes(self, data: bytes, name: str) -> Output:
        digest = sha256_bytes(data)
        if not self.has_blob(digest):
            fd, tmp = tempfile.mkstemp(dir=self.tmp, prefix="blob-")
            with os.fdopen(fd, "wb") as dst:
                dst.write(data)
            try:
                self._install(Path(tmp), digest)
            finally:
                Path(tmp).unlink(missing_ok=True)
        return Output(digest=digest, size=len(data), name=name)

    def put_tree(self, folder: Path) -> Output:
        """Store a folder as its files plus a listing blob (like a git tree)."""
        listing = {}
        for path in sorted(p for p in folder.rglob("*") if p.is_file()):
            out = self.put_file(path)
            executable = bool(path.stat().st_mode & 0o100)  # scripts in bundles stay runnable
            listing[path.relative_to(folder).as_posix()] = [out.digest, out.size, executable]
        tree = self.put_bytes(canonical_json({"tree": listing}), folder.name)
        return Output(digest=tree.digest, size=sum(e[1] for e in listing.values()),
                      name=folder.name, tree=True)

    def _install(self, tmp: Path, digest: str) -> None:
        final = self.blob_path(digest)
        if final.exists():
            return
        final.parent.mkdir(parents=True, exist_ok=True)
        os.chmod(tmp, 0o444)
        os.replace(tmp, final)

    def read_blob(self, digest: str) -> bytes:
        data = self.blob_path(digest).read_bytes()
        if sha256_bytes(data) != digest:
            self._quarantine(digest)
            raise CorruptBlob(f"cache blob {digest[:12]} is corrupt and was removed; run again")
        return data

    def tree_listing(self, output: Output) -> dict[str, tuple[str, int, bool]]:
        """relative path -> (digest, size, executable) for a tree output."""
        listing = json.loads(self.read_blob(output.digest))["tree"]
        return {rel: tuple(entry) for rel, entry in listing.items()}

    def materialize(self, output: Output, dest: Path) -> Path:
        """Place an output at `dest` (a file, or a folder for trees), verified."""
        if output.tree:
            dest.mkdir(parents=True, exist_ok=True)
            dest.chmod(0o755)
            for rel, (digest, _size, executable) in self.tree_listing(output).items():
                target = dest / rel
                target.parent.mkdir(parents=True, exist_ok=True)
                self._copy_verified(digest, target)
                target.chmod(0o755 if executable else 0o644)
        else:
            dest.parent.mkdir(parents=True, exist_ok=True)
            self._copy_verified(output.digest, dest)
        return dest

    def _copy_verified(self, digest: str, dest: Path) -> None:
        hasher = hashlib.sha256()
        with open(self.blob_path(digest), "rb") as src, open(dest, "wb") as dst:
            while chunk := src.read(1 << 20):
                hasher.update(chunk)
                dst.write(chunk)
        if hasher.hexdigest() != digest:
            dest.unlink(missing_ok=True)
            self._quarantine(digest)
            raise CorruptBlob(f"cache blob {digest[:12]} is corrupt and was removed; run again")

    def _quarantine(self, digest: str) -> None:
        self.blob_path(digest).unlink(missing_ok=True)

    # -- housekeeping ----------------------------------------------------------------

    def workdir(self, label: str) -> Path:
        self.tmp.mkdir(parents=True, exist_ok=True)
        return Path(tempfile.mkdtemp(dir=self.tmp, prefix=f"{label}-"))

    def add_root(self, lock_path: Path) -> None:
        name = hashlib.sha256(str(lock_path.resolve()).encode()).hexdigest()[:32]
        root_file = self.root / "roots" / name
        if not root_file.exists():
            atomic_write(root_file, str(lock_path.resolve()).encode(), tmp_dir=self.tmp)

    def roots(self) -> list[Path]:
        folder = self.root / "roots"
        return [Path(p.read_text()) for p in folder.iterdir()] if folder.is_dir() else []

    def clear(self) -> None:
        if self.root.is_dir():
            shutil.rmtree(self.root)


class RecipeMemo:
    """Digests of recipes that already passed schema validation (see recipe.load)."""

    def __init__(self, cache: Cache):
        self.folder = cache.state / "valid"

    def seen(self, digest: str) -> bool:
        return (self.folder / digest).exists()

    def add(self, digest: str) -> None:
        if not self.seen(digest):
            self.folder.mkdir(parents=True, exist_ok=True)
            (self.folder / digest).touch()

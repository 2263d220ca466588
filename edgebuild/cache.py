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

With a remote cache (remote.py) behind it, a local miss asks the remote for the
entry, and blobs are downloaded only when their bytes are read here; an entry that
came from the remote says so (`origin`), and is trusted without its blobs only while
that remote is in use. Executed steps are uploaded as they are committed.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from edgebuild.errors import BuildError
from edgebuild.fsutil import atomic_write, canonical_json, scratch_dir, scratch_file
from edgebuild.hashing import StatCache, sha256_bytes, walk_files
from edgebuild.remote import in_parallel

if TYPE_CHECKING:
    from edgebuild.remote import RemoteStore

ENTRY_VERSION = 1


class CorruptBlob(BuildError):
    """A blob whose bytes do not match its digest, or that no cache has any more. The
    entries naming it are evicted, so the steps that made it run again."""


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
    def __init__(self, root: Path, remote: RemoteStore | None = None):
        self.root = Path(root).resolve()
        self.blobs = self.root / "blobs"
        self.entries = self.root / "entries"
        self.tmp = self.root / "tmp"
        self.state = self.root / "state"
        self.remote = remote
        self._remote_misses: set[str] = set()  # keys the remote lacked, this run
        self._reading = None  # a background read_through, until it is waited for

    def ensure(self) -> None:
        for folder in (self.blobs, self.entries, self.tmp, self.state, self.root / "roots"):
            folder.mkdir(parents=True, exist_ok=True)

    def stat_cache(self) -> StatCache:
        return StatCache(self.state / "stat")

    # -- entries ---------------------------------------------------------------------

    def _entry_path(self, key: str) -> Path:
        return self.entries / key[:2] / f"{key}.json"

    def entry(self, key: str, fresh: bool = False) -> Entry | None:
        """The entry for `key` if it and every blob it names are at hand (here, or in
        the remote it came from). `fresh`: ask the remote again even if it lacked the
        key earlier in this run (a Dask worker has just committed it)."""
        try:
            raw = json.loads(self._entry_path(key).read_bytes())
            entry = _parse_entry(raw)
        except FileNotFoundError:
            return self._remote_entry(key, fresh)
        except (OSError, ValueError, KeyError, TypeError):
            self.evict(key)  # torn or foreign file: never reuse it
            return None
        if entry.key != key:
            return None
        if all(self.has_blob(o.digest) for o in entry.outputs.values()):
            return entry
        if self.remote is not None and self.remote.usable:
            # Blobs that are not here are read from the remote when needed: trusted
            # for an entry that came from it, looked up for one built here.
            return entry if raw.get("origin") == "remote" else self._remote_entry(key, fresh)
        return None

    def _remote_entry(self, key: str, fresh: bool) -> Entry | None:
        """Read through: the remote's entry, kept here; its blobs stay there until read."""
        if self.remote is None or (key in self._remote_misses and not fresh):
            return None
        self.wait_for_read_through()
        return self._read_through([key]).get(key)

    def _read_through(self, keys: list[str]) -> dict[str, Entry]:
        """Bring these keys' remote entries here, as many at once as the remote allows:
        one round of entry requests, then one of checks for the blobs they name. An
        entry whose blobs are not all here or there is a miss, built here instead.
        Returns the entries found."""
        if self.remote is None or not self.remote.usable or not keys:
            return {}
        found: dict[str, tuple[dict, Entry]] = {}
        for key, data in self.remote.get_entries(keys).items():
            with contextlib.suppress(ValueError, KeyError, TypeError):  # another version's
                raw = json.loads(data)
                entry = _parse_entry(raw)
                if entry.key == key:
                    found[key] = raw, entry
        elsewhere = {o.digest: None if o.tree else o.size for _, entry in found.values()
                     for o in entry.outputs.values() if not self.has_blob(o.digest)}
        present = self.remote.blobs_present(elsewhere)
        found = {key: hit for key, hit in found.items() if all(
            o.digest in present or self.has_blob(o.digest) for o in hit[1].outputs.values())}
        self._remote_misses.update(set(keys) - set(found))
        self._remote_misses.difference_update(found)
        self.ensure()

        def keep(key: str) -> None:  # each write waits on its fsync: side by side
            atomic_write(self._entry_path(key),
                         json.dumps({**found[key][0], "origin": "remote"}).encode(),
                         tmp_dir=self.tmp)
        in_parallel(keep, list(found))
        return {key: entry for key, (_, entry) in found.items()}

    def read_through_in_background(self, keys: list[str]) -> None:
        """`_read_through` on a thread while the caller plans (the storage library's
        import and the round trips overlap hashing the inputs); every later remote
        lookup waits for it first."""
        if not keys or self.remote is None:
            return
        from concurrent.futures import ThreadPoolExecutor

        pool = ThreadPoolExecutor(1, thread_name_prefix="remote-read-through")
        self._reading = pool.submit(self._read_through, keys)
        pool.shutdown(wait=False)  # the thread ends with its one task

    def wait_for_read_through(self) -> None:
        """Wait for a background read_through; its errors (a storage library that is
        not installed) are raised here, in the caller's thread."""
        reading, self._reading = self._reading, None
        if reading is not None:
            reading.result()

    def is_local(self, key: str) -> bool:
        """Whether this cache holds an entry file for `key` (not checked further)."""
        return self._entry_path(key).is_file()

    def commit(self, key: str, kind: str, doc: dict, outputs: dict[str, Output],
               meta: dict) -> Entry:
        record = {"entry_version": ENTRY_VERSION, "key": key, "kind": kind, "doc": doc,
                  "outputs": {n: o.to_dict() for n, o in outputs.items()}, "meta": meta}
        data = json.dumps(record, sort_keys=True, indent=1).encode()
        atomic_write(self._entry_path(key), data, tmp_dir=self.tmp)
        if self.remote is not None and not self.remote.readonly and \
                self.upload(outputs.values()):
            self.remote.put_entry(key, data)  # only once every blob it names is there
        return Entry(key=key, kind=kind, doc=doc, outputs=outputs, meta=meta)

    def upload(self, outputs) -> bool:
        """Write through: put these outputs' blobs (a tree's files before its listing)
        in the remote. False if any upload failed."""
        for output in outputs:
            if output.tree:
                for digest, size, _ in self.tree_listing(output).values():
                    if not self.remote.put_blob(self._local_blob(digest), digest, size):
                        return False
            blob = self._local_blob(output.digest)
            if not self.remote.put_blob(blob, output.digest, blob.stat().st_size):
                return False
        return True

    def evict(self, key: str) -> None:
        self._entry_path(key).unlink(missing_ok=True)

    def entry_keys(self) -> list[str]:
        return [p.stem for p in self.entries.glob("*/*.json")]

    def _evict_referencing(self, digest: str) -> None:
        """Evict every entry that names `digest`, directly or in a tree it names."""
        for key in self.entry_keys():
            try:
                entry = _parse_entry(json.loads(self._entry_path(key).read_bytes()))
            except (OSError, ValueError, KeyError, TypeError):
                continue
            if any(out.digest == digest or digest in self._members(out)
                   for out in entry.outputs.values()):
                self.evict(key)

    def _members(self, output: Output) -> list[str]:
        """The digests in a tree output's listing, as far as this cache can read it
        without downloading or verifying (this runs while handling a bad blob)."""
        if not output.tree:
            return []
        try:
            listing = json.loads(self.blob_path(output.digest).read_bytes())["tree"]
        except (OSError, ValueError, KeyError, TypeError):
            return []
        return [member[0] for member in listing.values()]

    # -- blobs -----------------------------------------------------------------------

    def blob_path(self, digest: str) -> Path:
        return self.blobs / digest[:2] / digest

    def has_blob(self, digest: str) -> bool:
        return self.blob_path(digest).is_file()

    def put_file(self, path: Path) -> Output:
        """Store a file, hashing it as it is copied."""
        hasher = hashlib.sha256()
        with scratch_file(self.tmp, "blob-") as (fd, tmp):
            with open(path, "rb") as src, os.fdopen(fd, "wb") as dst:
                while chunk := src.read(1 << 20):
                    hasher.update(chunk)
                    dst.write(chunk)
                dst.flush()
                os.fsync(dst.fileno())
            digest = hasher.hexdigest()
            self._install(tmp, digest)
        return Output(digest=digest, size=path.stat().st_size, name=path.name)

    def put_bytes(self, data: bytes, name: str) -> Output:
        digest = sha256_bytes(data)
        if not self.has_blob(digest):
            with scratch_file(self.tmp, "blob-") as (fd, tmp):
                with os.fdopen(fd, "wb") as dst:
                    dst.write(data)
                self._install(tmp, digest)
        return Output(digest=digest, size=len(data), name=name)

    def put_tree(self, folder: Path) -> Output:
        """Store a folder as its files plus a listing blob (like a git tree). Hidden
        files are left out, as they are from input digests."""
        listing = {}
        for rel, path in walk_files(folder):
            out = self.put_file(path)
            executable = bool(path.stat().st_mode & 0o100)  # scripts in bundles stay runnable
            listing[rel] = [out.digest, out.size, executable]
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
        data = self._local_blob(digest).read_bytes()
        if sha256_bytes(data) != digest:
            self._quarantine(digest)
            raise CorruptBlob(f"cache blob {digest[:12]} is corrupt and was removed; run again")
        return data

    def _local_blob(self, digest: str) -> Path:
        """The blob's path here, downloading it first if only the remote has it."""
        path = self.blob_path(digest)
        if path.is_file() or self.remote is None or not self.remote.usable:
            return path
        self.ensure()
        with scratch_file(self.tmp, "fetch-") as (fd, tmp):
            os.close(fd)
            if not self.remote.fetch_blob(digest, tmp):
                self._evict_referencing(digest)
                raise CorruptBlob(f"blob {digest[:12]} is in no cache any more (remote: "
                                  f"{self.remote.failure or 'missing'}); run again to rebuild it")
            with open(tmp, "rb") as handle:
                if hashlib.file_digest(handle, "sha256").hexdigest() != digest:
                    self.remote.delete_blob(digest)
                    self._evict_referencing(digest)
                    raise CorruptBlob(f"remote cache blob {digest[:12]} is corrupt and was "
                                      "removed; run again to rebuild it")
            self._install(tmp, digest)
        return path

    def prefetch(self, outputs: list[Output]) -> None:
        """Download what these outputs need from the remote, many blobs at once (tree
        listings first, then their files), so that reading them later costs no round
        trip. A blob that cannot be fetched is left to the read that needs it."""
        if self.remote is None or not self.remote.usable:
            return
        digests = {o.digest for o in outputs}
        self._fetch_all(digests)
        for tree in (o for o in outputs if o.tree):
            try:
                digests |= {d for d, _size, _x in self.tree_listing(tree).values()}
            except (OSError, ValueError, KeyError):
                continue
        self._fetch_all(digests)

    def _fetch_all(self, digests: set[str]) -> None:
        def fetch(digest: str) -> None:
            with contextlib.suppress(OSError):  # CorruptBlob too: the read that needs it says so
                self._local_blob(digest)

        in_parallel(fetch, [d for d in sorted(digests) if not self.blob_path(d).is_file()])

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
        with open(self._local_blob(digest), "rb") as src, open(dest, "wb") as dst:
            while chunk := src.read(1 << 20):
                hasher.update(chunk)
                dst.write(chunk)
        if hasher.hexdigest() != digest:
            dest.unlink(missing_ok=True)
            self._quarantine(digest)
            raise CorruptBlob(f"cache blob {digest[:12]} is corrupt and was removed; run again")

    def _quarantine(self, digest: str) -> None:
        self.blob_path(digest).unlink(missing_ok=True)
        self._evict_referencing(digest)

    # -- housekeeping ----------------------------------------------------------------

    def workdir(self, label: str):
        """A private work folder under tmp/, removed when the block ends (or the
        process exits)."""
        self.tmp.mkdir(parents=True, exist_ok=True)
        return scratch_dir(self.tmp, f"{label}-")

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


def _parse_entry(raw: dict) -> Entry:
    outputs = {name: Output(**out) for name, out in raw["outputs"].items()}
    return Entry(key=raw["key"], kind=raw["kind"], doc=raw["doc"], outputs=outputs,
                 meta=raw.get("meta", {}))


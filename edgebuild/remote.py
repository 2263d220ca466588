"""The remote cache: the local cache's layout on any fsspec file system.

    <url>/blobs/ab/<sha256>       file contents, named by their digest
    <url>/entries/ab/<key>.json   one step result, naming the blobs it produced

It is shared by CI runners and Dask workers. The local cache reads through it (an
entry first; a blob only when something here needs its bytes, as Bazel's "download
minimal") and writes through it (every blob an entry names, then the entry), so a
visible entry never names a missing blob. Every object appears whole: a PUT to an
object store is atomic, and on file systems a temporary name is renamed into place.
Entries are written once (S3 refuses a second writer with If-None-Match), so
concurrent writers need no lock. Downloads are verified against their digest.

The remote cache only ever saves work, so its failures never fail a build: the first
one is reported, and the build goes on without it. Credentials come from fsspec's
and the storage library's usual environment and configuration; nothing here writes
them anywhere, and messages go through `scrub` in case a library quotes them.
"""

from __future__ import annotations

import contextlib
import os
import re
import threading
import time
import uuid
from dataclasses import asdict, dataclass, field
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

from edgebuild.errors import UsageError

# Object stores: a PUT appears whole or not at all. Other protocols (file, sftp, ...)
# write to a temporary name and rename.
ATOMIC_PUT = {"s3", "s3a", "gs", "gcs", "abfs", "az", "memory"}
RETRIES = 2  # after the first try, with 0.25 s and 0.5 s pauses
# Environment variables and storage options that hold secrets, for `scrub`.
SECRET_ENV = ("AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_ACCESS_KEY_ID",
              "AZURE_STORAGE_KEY", "AZURE_STORAGE_SAS_TOKEN", "AZURE_STORAGE_CONNECTION_STRING")
SECRET_OPTIONS = ("key", "secret", "token", "password", "access_key", "secret_key",
                  "account_key", "sas_token", "connection_string")


@dataclass
class Traffic:
    """What this run moved, for the build summary and the benchmarks."""

    entries_fetched: int = 0
    blobs_fetched: int = 0
    bytes_fetched: int = 0
    entries_uploaded: int = 0
    blobs_uploaded: int = 0
    bytes_uploaded: int = 0

    def count(self, **amounts: int) -> None:
        """Add to the counters; many download threads count at once."""
        with _COUNTING:
            for name, amount in amounts.items():
                setattr(self, name, getattr(self, name) + amount)

    def to_dict(self) -> dict:
        return asdict(self)


_COUNTING = threading.Lock()


@dataclass
class RemoteStore:
    url: str
    readonly: bool = False
    options: dict = field(default_factory=dict)  # fsspec storage options (API callers)
    traffic: Traffic = field(default_factory=Traffic)
    failure: str | None = None  # why the remote was dropped for the rest of this run
    _opened: tuple | None = None  # (file system, root path), once opened
    _opening: threading.Lock = field(default_factory=threading.Lock, repr=False)

    # -- connection ------------------------------------------------------------------

    @property
    def display_url(self) -> str:
        """The URL without user, password or query: safe to print."""
        return display_url(self.url)

    @property
    def usable(self) -> bool:
        return self.failure is None

    @property
    def fs(self):
        return self._open()[0]

    @property
    def root(self) -> str:
        return self._open()[1]

    def _open(self) -> tuple:
        """The fsspec file system and the remote folder in it, opened on first use: a
        no-op build that finds everything locally never imports fsspec or s3fs."""
        if self._opened is None:
            with self._opening:  # one opening, however many threads ask at once
                if self._opened is None:
                    self._opened = self._connect()
        return self._opened

    def _connect(self) -> tuple:
        import fsspec

        try:
            fs, root = fsspec.core.url_to_fs(self.url, **self.options)
        except ImportError as exc:
            raise UsageError(f"remote cache {self.display_url}: {scrub(str(exc), self)} "
                             "(for s3:// URLs: pip install 'edgebuild[remote]')") from None
        except ValueError as exc:
            raise UsageError(f"remote cache {self.display_url}: {scrub(str(exc), self)}") \
                from None
        root = root.rstrip("/")
        if _protocol_of(fs) not in ATOMIC_PUT and not self.readonly:
            fs.makedirs(root, exist_ok=True)
        return fs, root

    @property
    def protocol(self) -> str:
        return _protocol_of(self.fs)

    def _entry_path(self, key: str) -> str:
        return f"{self.root}/entries/{key[:2]}/{key}.json"

    def _blob_path(self, digest: str) -> str:
        return f"{self.root}/blobs/{digest[:2]}/{digest}"

    def _guard(self, action: str, call, default=None):
        """Run one remote call, retrying what may be transient (Bazel's
        --remote_retries); a call that still fails drops the remote for this run."""
        if self.failure is not None:
            return default
        for attempt in range(RETRIES + 1):
            try:
                return call()
            except UsageError:
                raise
            except Exception as exc:  # noqa: BLE001 - network, auth, storage: "not now"
                if attempt == RETRIES or isinstance(exc, PermissionError):
                    self.failure = f"{action} failed: " \
                        f"{scrub(f'{type(exc).__name__}: {exc}', self)}"
                    return default
                time.sleep(0.25 * 2 ** attempt)

    # -- entries ---------------------------------------------------------------------

    def get_entries(self, keys: list[str]) -> dict[str, bytes]:
        """The entries the remote has of `keys`, asked for all at once."""
        def fetch():
            found = {}
            for key, data in zip(keys, self._each("cat_file", map(self._entry_path, keys)),
                                 strict=True):
                if data is not None:
                    found[key] = data
            self.traffic.count(entries_fetched=len(found))
            return found
        return self._guard("reading entries", fetch, default={}) if keys else {}

    def put_entry(self, key: str, data: bytes) -> None:
        """Write once. The first writer wins; a later writer with the same key has the
        same inputs, so either entry is right."""
        if self.readonly:
            return

        def upload():
            path = self._entry_path(key)
            if self.protocol in ("s3", "s3a"):
                try:
                    self.fs.pipe_file(path, data, mode="create")  # If-None-Match: *
                except OSError:
                    if not self.fs.exists(path):
                        raise
                    return  # someone else's entry for this key
            elif self.fs.exists(path):
                return
            else:
                self._put_whole(path, data)
            self.traffic.count(entries_uploaded=1)
        self._guard("uploading an entry", upload)

    # -- blobs -----------------------------------------------------------------------

    def has_blob(self, digest: str, size: int | None = None) -> bool:
        def check():
            try:
                info = self.fs.info(self._blob_path(digest))
            except FileNotFoundError:
                return False
            return size is None or info.get("size") == size
        return bool(self._guard("checking a blob", check, default=False))

    def blobs_present(self, sizes: dict[str, int | None]) -> set[str]:
        """Which of these blobs the remote has, at the size given (None: any size),
        asked about all at once."""
        def check():
            digests = sorted(sizes)
            infos = self._each("info", map(self._blob_path, digests))
            return {d for d, info in zip(digests, infos, strict=True) if info is not None
                    and sizes[d] in (None, info.get("size"))}
        return self._guard("checking blobs", check, default=set()) if sizes else set()

    def _each(self, method: str, paths) -> list:
        """fs.<method>(path) for every path, concurrently: one asyncio gather on an
        async file system (s3fs, gcsfs), threads on others. None where a path is
        missing; any other failure is raised, for `_guard`."""
        fs, paths = self.fs, list(paths)
        if getattr(fs, "async_impl", False):
            import asyncio

            from fsspec.asyn import sync

            async def gather():
                limit = asyncio.Semaphore(REMOTE_CONNECTIONS * 4)

                async def one(path):
                    async with limit:
                        return await getattr(fs, "_" + method)(path)
                return await asyncio.gather(*map(one, paths), return_exceptions=True)
            results = sync(fs.loop, gather)
        else:
            def one(path):
                try:
                    return getattr(fs, method)(path)
                except Exception as exc:  # noqa: BLE001 - sorted out below
                    return exc
            results = in_parallel(one, paths)
        for result in results:
            if isinstance(result, BaseException) and not isinstance(result, FileNotFoundError):
                raise result
        return [None if isinstance(r, FileNotFoundError) else r for r in results]

    def fetch_blob(self, digest: str, dest: Path) -> bool:
        """Download a blob to `dest` (unverified: the caller checks the digest).
        False if the remote does not have it."""
        def fetch():
            try:
                self.fs.get_file(self._blob_path(digest), str(dest))
            except FileNotFoundError:
                return False
            self.traffic.count(blobs_fetched=1, bytes_fetched=dest.stat().st_size)
            return True
        return bool(self._guard("downloading a blob", fetch, default=False))

    def put_blob(self, path: Path, digest: str, size: int) -> bool:
        """Upload unless a blob of that digest and size is there already (a partial
        upload, on a store that could show one, has the wrong size and is replaced).
        Returns False if the upload failed."""
        if self.readonly:
            return True
        if self.has_blob(digest, size):
            return True

        def upload():
            target = self._blob_path(digest)
            if self.protocol in ATOMIC_PUT:
                self.fs.put_file(str(path), target)
            else:
                self._put_whole(target, path)
            self.traffic.count(blobs_uploaded=1, bytes_uploaded=size)
            return True
        return bool(self._guard("uploading a blob", upload, default=False))

    def delete_blob(self, digest: str) -> None:
        """Remove a blob whose bytes do not match its name (its producer re-uploads it)."""
        if not self.readonly:
            self._guard("removing a corrupt blob", lambda: self.fs.rm_file(self._blob_path(digest)))

    def _put_whole(self, target: str, source: Path | bytes) -> None:
        """A file system write: a temporary name beside the target, then a rename."""
        parent = target.rsplit("/", 1)[0]
        self.fs.makedirs(parent, exist_ok=True)
        tmp = f"{parent}/.tmp-{uuid.uuid4().hex}"
        try:
            if isinstance(source, bytes):
                self.fs.pipe_file(tmp, source)
            else:
                self.fs.put_file(str(source), tmp)
            self.fs.mv(tmp, target)
        except BaseException:
            with contextlib.suppress(Exception):  # nothing to clean up, or no way to
                self.fs.rm_file(tmp)
            raise


REMOTE_CONNECTIONS = 16  # threads for remote round trips on file systems without asyncio


def in_parallel(call, items: list) -> list:
    """`call` over `items`, up to REMOTE_CONNECTIONS at once (remote round trips)."""
    if len(items) < 2:
        return [call(item) for item in items]
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(min(REMOTE_CONNECTIONS, len(items))) as pool:
        return list(pool.map(call, items))


def _protocol_of(fs) -> str:
    protocol = fs.protocol
    return (protocol[0] if isinstance(protocol, (tuple, list)) else protocol) or "file"


def display_url(url: str) -> str:
    parts = urlsplit(url)
    host = parts.hostname or ""
    if parts.port:
        host += f":{parts.port}"
    return urlunsplit((parts.scheme, host, parts.path, "", ""))


def scrub(text: str, store: RemoteStore | None = None) -> str:
    """`text` with every credential we can know of replaced by ***."""
    secrets = [os.environ.get(name, "") for name in SECRET_ENV]
    if store is not None:
        secrets += [str(store.options.get(name, "")) for name in SECRET_OPTIONS]
        parts = urlsplit(store.url)
        secrets += [parts.password or "", parts.username or "", parts.query]
    for secret in sorted({s for s in secrets if len(s) >= 4}, key=len, reverse=True):
        text = text.replace(secret, "***")
    return re.sub(r"(?i)(signature|credential|x-amz-security-token)=[^&\s]+", r"\1=***", text)

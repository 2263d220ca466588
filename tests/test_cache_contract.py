"""One contract for every cache backend: the local cache on its own, and a fresh local
cache in front of a remote one (a shared file system via file://, and a real S3
server, SeaweedFS). Writers and readers are separate Cache objects; with a remote,
each has its own local folder, as two CI runners would."""

from __future__ import annotations

import hashlib
import json
import os
import random
import signal
import subprocess
import sys
import textwrap
import threading
import time
import uuid
from pathlib import Path

import pytest
from seaweedfs import SECRET_KEY

from edgebuild.cache import Cache, CorruptBlob
from edgebuild.remote import RemoteStore


class Backend:
    """Makes writer and reader caches over one backend, and reaches into its storage."""

    def __init__(self, name: str, tmp: Path, url: str | None = None, options=None,
                 storage=None):
        self.name, self.tmp, self.url, self.options = name, tmp, url, options or {}
        self.storage = storage  # an fsspec file system rooted like the remote, or None
        self._count = 0

    def cache(self, readonly: bool = False) -> Cache:
        if self.url is None:
            cache = Cache(self.tmp / "local")  # one folder: every "runner" shares it
        else:
            self._count += 1
            cache = Cache(self.tmp / f"runner-{self._count}",
                          RemoteStore(self.url, readonly, dict(self.options)))
        cache.ensure()
        return cache

    def blob_location(self, digest: str) -> str:
        if self.url is None:
            return str(self.tmp / "local" / "blobs" / digest[:2] / digest)
        root = self.url.split("://", 1)[1].rstrip("/")
        return f"{root}/blobs/{digest[:2]}/{digest}"

    def read(self, location: str) -> bytes:
        return Path(location).read_bytes() if self.url is None else \
            self.storage.cat_file(location)

    def write(self, location: str, data: bytes) -> None:
        if self.url is None:
            Path(location).chmod(0o644)
            Path(location).write_bytes(data)
        else:
            self.storage.pipe_file(location, data)

    def exists(self, location: str) -> bool:
        return Path(location).exists() if self.url is None else self.storage.exists(location)


@pytest.fixture(params=["local", "file", "s3"])
def backend(request, tmp_path) -> Backend:
    if request.param == "local":
        return Backend("local", tmp_path)
    if request.param == "file":
        import fsspec

        remote = tmp_path / "shared-fs"
        return Backend("file", tmp_path, f"file://{remote}", storage=fsspec.filesystem("file"))
    seaweed = request.getfixturevalue("seaweed")
    url = seaweed.prefix("contract")
    return Backend("s3", tmp_path, url, seaweed.options(), seaweed.filesystem())


def commit_step(cache: Cache, tmp: Path, key: str, payload: bytes, tag: str = "a"):
    """Commit an entry with a file output and a tree output, as an executed step would."""
    work = tmp / f"work-{uuid.uuid4().hex[:8]}"
    (work / "bundle").mkdir(parents=True)
    (work / "model.bin").write_bytes(payload)
    (work / "bundle" / "model.bin").write_bytes(payload)
    (work / "bundle" / "run.sh").write_text("#!/bin/sh\necho hi\n")
    (work / "bundle" / "run.sh").chmod(0o755)
    outputs = {"model": cache.put_file(work / "model.bin"),
               "bundle": cache.put_tree(work / "bundle")}
    return cache.commit(key, "quantize", {"kind": "quantize", "tag": tag}, outputs,
                        {"status": "executed", "writer": tag})


def new_key() -> str:
    return hashlib.sha256(uuid.uuid4().bytes).hexdigest()


def test_hit_gives_the_same_bytes(backend, tmp_path):
    writer, reader = backend.cache(), backend.cache()
    key, payload = new_key(), os.urandom(50_000)
    committed = commit_step(writer, tmp_path, key, payload)

    entry = reader.entry(key)
    assert entry is not None and entry.outputs == committed.outputs
    model = reader.materialize(entry.outputs["model"], tmp_path / "out" / "model.bin")
    assert model.read_bytes() == payload
    bundle = reader.materialize(entry.outputs["bundle"], tmp_path / "out" / "bundle")
    assert (bundle / "model.bin").read_bytes() == payload
    assert os.access(bundle / "run.sh", os.X_OK)


def test_miss_is_none_and_leaves_nothing_behind(backend):
    reader = backend.cache()
    assert reader.entry(new_key()) is None
    assert reader.entry_keys() == []


def test_remote_reads_download_only_what_is_read(backend, tmp_path):
    if backend.url is None:
        pytest.skip("the local cache has nothing to download")
    writer, reader = backend.cache(), backend.cache()
    key = new_key()
    committed = commit_step(writer, tmp_path, key, os.urandom(10_000))
    assert reader.entry(key) is not None
    assert not reader.has_blob(committed.outputs["model"].digest), "downloaded before use"
    reader.read_blob(committed.outputs["model"].digest)
    assert reader.has_blob(committed.outputs["model"].digest)
    assert reader.remote.traffic.blobs_fetched == 1


def test_corrupt_blob_is_detected_evicted_and_rebuilt(backend, tmp_path):
    writer, reader = backend.cache(), backend.cache()
    key, payload = new_key(), os.urandom(20_000)
    committed = commit_step(writer, tmp_path, key, payload)
    location = backend.blob_location(committed.outputs["model"].digest)
    data = bytearray(backend.read(location))
    data[1234] ^= 0x10  # one flipped bit
    backend.write(location, bytes(data))

    entry = reader.entry(key)
    assert entry is not None  # the entry is fine; its blob is not, which only reading shows
    with pytest.raises(CorruptBlob, match="corrupt"):
        reader.materialize(entry.outputs["model"], tmp_path / "out.bin")
    assert not (tmp_path / "out.bin").exists()
    assert reader.entry(key) is None, "an entry naming a corrupt blob was kept"
    assert not reader.has_blob(committed.outputs["model"].digest)

    # The step runs again (here: commits the same output again) and heals the cache.
    commit_step(backend.cache(), tmp_path, key, payload)
    healed = backend.cache()
    entry = healed.entry(key)
    assert entry is not None
    out = healed.materialize(entry.outputs["model"], tmp_path / "healed.bin")
    assert out.read_bytes() == payload


def test_concurrent_writers_of_one_key_leave_one_whole_entry(backend, tmp_path):
    key, writers = new_key(), 6
    payloads = {f"w{i}": os.urandom(200_000) for i in range(writers)}  # nondeterministic step
    caches = {tag: backend.cache() for tag in payloads}
    barrier, errors = threading.Barrier(writers), []

    def write(tag: str) -> None:
        try:
            barrier.wait()
            commit_step(caches[tag], tmp_path, key, payloads[tag], tag)
        except Exception as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=write, args=(tag,)) for tag in payloads]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not errors
    assert all(c.remote is None or c.remote.failure is None for c in caches.values())

    reader = backend.cache()
    entry = reader.entry(key)
    assert entry is not None
    winner = entry.meta["writer"]
    out = reader.materialize(entry.outputs["model"], tmp_path / "winner.bin")
    assert out.read_bytes() == payloads[winner], "the entry names another writer's blob"
    bundle = reader.materialize(entry.outputs["bundle"], tmp_path / "winner")
    assert (bundle / "model.bin").read_bytes() == payloads[winner]


def test_failed_upload_never_becomes_an_entry(backend, tmp_path, monkeypatch):
    """The worst case a store could show: half a blob under its final name, then the
    connection drops. No entry may appear; the next writer replaces the half blob."""
    if backend.url is None:
        pytest.skip("the local cache uploads nothing (its writes are covered by kill -9 "
                    "trials below)")
    key, payload = new_key(), os.urandom(300_000)
    writer = backend.cache()

    def broken_upload(self, path, digest, size):
        def half_then_drop():
            target = self._blob_path(digest)
            self.fs.makedirs(target.rsplit("/", 1)[0], exist_ok=True)
            self.fs.pipe_file(target, Path(path).read_bytes()[: size // 2])
            raise ConnectionError("connection reset by peer")
        return bool(self._guard("uploading a blob", half_then_drop, default=False))

    monkeypatch.setattr(RemoteStore, "put_blob", broken_upload)
    commit_step(writer, tmp_path, key, payload)
    assert writer.remote.failure and "connection reset" in writer.remote.failure
    assert writer.entry(key) is not None, "the local cache keeps what it built"
    monkeypatch.undo()

    assert backend.cache().entry(key) is None, "a failed upload became a visible entry"
    commit_step(backend.cache(), tmp_path, key, payload)  # a healthy writer
    reader = backend.cache()
    entry = reader.entry(key)
    out = reader.materialize(entry.outputs["model"], tmp_path / "ok.bin")
    assert out.read_bytes() == payload


KILL_WRITER = textwrap.dedent("""
    import sys, json
    from pathlib import Path
    sys.path.insert(0, {tests!r})
    from test_cache_contract import commit_step
    from edgebuild.cache import Cache
    from edgebuild.remote import RemoteStore
    url, options, local, key = sys.argv[1], json.loads(sys.argv[2]), sys.argv[3], sys.argv[4]
    cache = Cache(Path(local), RemoteStore(url, False, options) if url else None)
    cache.ensure()
    payload = bytes(range(256)) * (24 * 4096)  # 24 MiB: an upload takes a while
    print("ready", flush=True)
    commit_step(cache, Path(local), key, payload + key.encode())
""")


def test_kill_9_during_writes_never_shows_a_partial_entry(backend, tmp_path):
    """Writers killed at random moments: each entry a reader sees is whole."""
    script = tmp_path / "writer.py"
    script.write_text(KILL_WRITER.format(tests=str(Path(__file__).parent)))
    rng, outcomes = random.Random(6), []
    for trial in range(6):
        key = new_key()
        local = backend.tmp / "local" if backend.url is None else tmp_path / f"killed-{trial}"
        proc = subprocess.Popen(
            [sys.executable, str(script), backend.url or "", json.dumps(backend.options),
             str(local), key], stdout=subprocess.PIPE, start_new_session=True)
        assert proc.stdout.readline().strip() == b"ready"
        time.sleep(rng.uniform(0.0, 0.6))
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        reader = backend.cache()
        entry = reader.entry(key)
        outcomes.append(entry is not None)
        if entry is not None:
            data = reader.materialize(entry.outputs["model"], tmp_path / f"k{trial}").read_bytes()
            assert data.endswith(key.encode()) and len(data) == 24 * 4096 * 256 + 64
    assert len(outcomes) == 6  # both outcomes are fine; a torn entry is not


def test_read_only_remote_reads_but_never_writes(backend, tmp_path):
    if backend.url is None:
        pytest.skip("read-only mode applies to remote caches")
    key_shared, key_private = new_key(), new_key()
    commit_step(backend.cache(), tmp_path, key_shared, b"shared" * 1000)

    untrusted = backend.cache(readonly=True)
    assert untrusted.entry(key_shared) is not None
    commit_step(untrusted, tmp_path, key_private, b"untrusted" * 1000)
    assert untrusted.entry(key_private) is not None  # kept locally
    assert untrusted.remote.traffic.entries_uploaded == 0
    assert untrusted.remote.traffic.blobs_uploaded == 0
    assert backend.cache().entry(key_private) is None

    # A corrupt remote blob is reported, but a read-only reader leaves it for writers.
    entry = backend.cache().entry(key_shared)
    location = backend.blob_location(entry.outputs["model"].digest)
    backend.write(location, b"garbage")
    with pytest.raises(CorruptBlob):
        backend.cache(readonly=True).read_blob(entry.outputs["model"].digest)
    assert backend.exists(location)


def test_unreachable_remote_is_reported_once_and_the_build_goes_on(tmp_path):
    store = RemoteStore("s3://nowhere/cache", False, {
        "endpoint_url": "http://127.0.0.1:9", "key": "AKIA-not-real",
        "secret": SECRET_KEY, "config_kwargs": {"retries": {"max_attempts": 1},
                                                "connect_timeout": 1}})
    cache = Cache(tmp_path / "local", store)
    cache.ensure()
    key = new_key()
    assert cache.entry(key) is None
    assert store.failure is not None and SECRET_KEY not in store.failure
    commit_step(cache, tmp_path, key, b"built anyway")
    assert cache.entry(key) is not None

"""Step executions on a Dask cluster (dask.distributed).

doit still decides what is stale and in which order; only the execution of a step
moves, as one Dask task. Nothing but digests travel: the task names its inputs by
digest, the worker reads them from the shared (remote) cache, runs the step as it
would run here, and commits the result to that cache; the client then reads the new
entry. User files (the source model, datasets) are put in the shared cache first.

GPU steps (TensorRT engines and their validation) ask for the worker resource
`GPU=1`, on the workers whose GPU and TensorRT version the step's key names; start
such workers with `dask worker SCHEDULER --resources GPU=1`. A cluster without one
defers those steps, exactly as a machine without a GPU does.
"""

from __future__ import annotations

import threading
from dataclasses import replace
from pathlib import Path

from edgebuild.cache import Cache, Entry, Output
from edgebuild.errors import BuildError, EdgebuildError, UsageError
from edgebuild.executor import StepJob, run_step
from edgebuild.graph import Node
from edgebuild.toolchains.gpu_probe import NvidiaHost

GPU_RESOURCE = "GPU"


class DaskRunner:
    def __init__(self, address: str, remote_cache: str, remote_options: dict):
        try:
            from distributed import Client
        except ImportError:
            raise UsageError("--scheduler needs dask.distributed: "
                             "pip install 'edgebuild[dask]'") from None
        try:
            self.client = Client(address, timeout="20s", set_as_default=False)
        except (OSError, TimeoutError, ValueError) as exc:
            raise UsageError(f"cannot reach the Dask scheduler at {address}: {exc}") from None
        self.remote = (remote_cache, remote_options)
        self._sent: dict[str, Output] = {}  # user file path -> its blob, sent this run
        self._lock = threading.Lock()
        try:
            self._check_versions()
            self.gpu_host, self.gpu_workers = self._find_gpus()
        except BaseException:
            self.close()
            raise
        self.threads = sum(self.client.nthreads().values()) or 1

    def close(self) -> None:
        self.client.close()

    def _check_versions(self) -> None:
        """Keys name toolchain versions as this machine has them: workers must match."""
        ours = toolchain_versions()
        try:
            theirs = self.client.run(toolchain_versions)
        except Exception as exc:  # noqa: BLE001 - e.g. edgebuild is not installed there
            raise UsageError(f"the Dask workers cannot run edgebuild ({type(exc).__name__}: "
                             f"{exc}); install the same edgebuild on every worker") from None
        for worker, versions in sorted(theirs.items()):
            differ = {k: (ours[k], versions.get(k)) for k in ours if versions.get(k) != ours[k]}
            if differ:
                shown = ", ".join(f"{k} {a} here, {b} there" for k, (a, b) in differ.items())
                raise UsageError(f"Dask worker {worker} has other toolchain versions: {shown}; "
                                 "workers must run the same versions as this machine")

    def _find_gpus(self) -> tuple[NvidiaHost, list[str]]:
        """The GPU that TensorRT steps are keyed by and the workers that have it: the
        first (by address) worker offering GPU=1 that can build engines."""
        from edgebuild.toolchains.gpu_probe import tensorrt_version

        try:
            workers = self.client.scheduler_info(n_workers=-1)["workers"]  # all of them
        except TypeError:  # an older distributed: no n_workers, and it lists them all
            workers = self.client.scheduler_info()["workers"]
        offering = sorted(a for a, w in workers.items()
                          if w.get("resources", {}).get(GPU_RESOURCE, 0) >= 1)
        hosts = {a: NvidiaHost(**h) for a, h in
                 (self.client.run(probe_gpu, workers=offering) if offering else {}).items()}
        usable = sorted(a for a, h in hosts.items() if h.deferral is None)
        if not usable:
            return NvidiaHost(tensorrt=tensorrt_version()), []
        chosen = hosts[usable[0]]
        return chosen, [a for a in usable if hosts[a] == chosen]

    def run(self, cache: Cache, job: StepJob, node: Node) -> Entry:
        sent = {name: self._send(cache, Path(path)) for name, path in job.files.items()}
        job = replace(job, inputs={**job.inputs, **sent}, files={})
        future = self.client.submit(execute, self.remote, job, pure=False,
                                    key=f"edgebuild-{job.kind}-{job.key[:16]}-{id(job):x}",
                                    **placement(node, self.gpu_workers))
        try:
            result = future.result()
        except EdgebuildError:
            raise
        except Exception as exc:  # noqa: BLE001 - a lost worker, a scheduler gone away
            raise BuildError(f"Dask: {type(exc).__name__}: {exc}") from None
        entry = cache.entry(job.key, fresh=True)
        if entry is None:
            raise BuildError("a Dask worker built the step, but its entry is not in the "
                             f"remote cache ({result['remote_failure'] or 'not found'})")
        return entry

    def _send(self, cache: Cache, path: Path) -> Output:
        """Put a user file or folder in the shared cache, once per run."""
        with self._lock:
            if str(path) in self._sent:
                return self._sent[str(path)]
        output = cache.put_tree(path) if path.is_dir() else cache.put_file(path)
        if not cache.upload([output]):
            raise BuildError(f"could not send {path} to the remote cache: "
                             f"{cache.remote.failure}")
        with self._lock:
            self._sent[str(path)] = output
        return output


def placement(node: Node, gpu_workers: list[str]) -> dict:
    """Where a step may run: GPU steps that are not deferred need GPU=1 on a worker
    with the GPU their key names; everything else runs anywhere."""
    if node.impl.gpu and NvidiaHost(**node.device["host"]).deferral is None:
        return {"resources": {GPU_RESOURCE: 1}, "workers": gpu_workers,
                "allow_other_workers": False}
    return {}


def connect(scheduler: str, remote_cache: str | None, readonly: bool,
            remote_options: dict) -> DaskRunner:
    if not remote_cache:
        raise UsageError("--scheduler needs a cache every worker can reach: add "
                         "--remote-cache URL (s3://..., or file:// on a shared file system)")
    if readonly:
        raise UsageError("--scheduler needs a writable remote cache: workers upload what "
                         "they build (drop --remote-cache-readonly)")
    return DaskRunner(scheduler, remote_cache, remote_options)


# -- on the workers --------------------------------------------------------------------

_worker_caches: dict[str, Cache] = {}
_worker_lock = threading.Lock()


def execute(remote: tuple[str, dict], job: StepJob) -> dict:
    """A Dask task: run one step against this worker's cache and the shared remote."""
    cache = _worker_cache(*remote)
    cache.remote.failure = None  # a failure belongs to the task that met it
    if cache.entry(job.key, fresh=True) is None:  # else another build has made it
        run_step(cache, job)
    return {"remote_failure": cache.remote.failure}


def _worker_cache(url: str, options: dict) -> Cache:
    from distributed import get_worker

    from edgebuild.remote import RemoteStore

    with _worker_lock:
        if url not in _worker_caches:
            root = Path(get_worker().local_directory) / "edgebuild-cache"
            _worker_caches[url] = Cache(root, RemoteStore(url, False, options))
            _worker_caches[url].ensure()
        return _worker_caches[url]


def toolchain_versions() -> dict[str, str | None]:
    from edgebuild import __version__
    from edgebuild.steps import IMPLS
    from edgebuild.toolchains.versions import versions

    names = sorted({name for impl in IMPLS.values() for name in impl.toolchain})
    return {"edgebuild": __version__, **versions(tuple(names))}


def probe_gpu() -> dict:
    from edgebuild.toolchains.gpu_probe import host

    return host().key()

"""How a run is set up: where the cache and bundles go, how many steps run at once,
and the shared cache and cluster, from flags, the environment and edgebuild.toml."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

from edgebuild.cache import Cache
from edgebuild.errors import UsageError
from edgebuild.fsutil import folder_problem


@dataclass
class Settings:
    cache_dir: Path = Path("cache")
    dist_dir: Path = Path("dist")
    jobs: int | None = None  # steps at once; default 1, or the cluster's threads
    require_engines: bool = False  # a deferred TensorRT engine fails its target
    remote_cache: str | None = None  # an fsspec URL shared by runners and workers
    remote_readonly: bool = False
    remote_options: dict = field(default_factory=dict)  # fsspec storage options
    scheduler: str | None = None  # a Dask scheduler address: steps run on its workers
    shard: tuple[int, int] | None = None  # (i, n): build the i-th of n target shards

    @classmethod
    def from_env(cls, cache_dir: str | None = None, dist_dir: str | None = None,
                 jobs: int | None = None, require_engines: bool = False,
                 remote_cache: str | None = None, remote_readonly: bool = False,
                 scheduler: str | None = None, shard: tuple[int, int] | None = None
                 ) -> Settings:
        """Flags, then the environment, then edgebuild.toml (see config.py)."""
        from edgebuild.config import resolve

        config = resolve(remote_cache, remote_readonly, scheduler)
        if not cache_dir and os.environ.get("EDGEBUILD_CACHE"):
            problem = folder_problem(Path(os.environ["EDGEBUILD_CACHE"]))
            if problem:
                raise UsageError(f"$EDGEBUILD_CACHE: {problem}")
        return cls(cache_dir=Path(cache_dir or os.environ.get("EDGEBUILD_CACHE") or "cache"),
                   dist_dir=Path(dist_dir or "dist"), jobs=jobs,
                   require_engines=require_engines, remote_cache=config.remote_cache,
                   remote_readonly=config.remote_readonly, scheduler=config.scheduler,
                   shard=shard)

    def open_cache(self) -> Cache:
        remote = None
        if self.remote_cache:
            from edgebuild.remote import RemoteStore

            remote = RemoteStore(self.remote_cache, self.remote_readonly, self.remote_options)
        return Cache(self.cache_dir, remote)


def folder_argument_problem(text: str) -> str | None:
    """Why a --cache-dir or --dist value cannot be a folder, if it cannot."""
    return folder_problem(Path(text))

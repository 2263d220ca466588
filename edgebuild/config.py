"""Project settings that are not part of any recipe: where the shared remote cache is
and where the Dask scheduler listens. From the command line, else the environment
(EDGEBUILD_REMOTE_CACHE, EDGEBUILD_REMOTE_CACHE_READONLY, EDGEBUILD_SCHEDULER), else
the nearest `edgebuild.toml` from the current folder up:

    [remote_cache]
    url = "s3://team-artifacts/edgebuild"   # any fsspec URL: s3://, gs://, file://
    readonly = false                         # true for untrusted (pull-request) builds

    [dask]
    scheduler = "tcp://scheduler:8786"

Credentials never go here: the storage library reads its own environment and files
(AWS_* variables and ~/.aws for S3, FSSPEC_S3_ENDPOINT_URL for other S3 servers).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from edgebuild.errors import UsageError

CONFIG_NAME = "edgebuild.toml"
KNOWN = {"remote_cache": {"url": str, "readonly": bool}, "dask": {"scheduler": str}}


@dataclass(frozen=True)
class ProjectConfig:
    remote_cache: str | None = None
    remote_readonly: bool = False
    scheduler: str | None = None


def resolve(remote_cache: str | None = None, readonly: bool = False,
            scheduler: str | None = None, start: Path | None = None) -> ProjectConfig:
    """Flags win over the environment, which wins over the config file."""
    file = load_file(find_file(start or Path.cwd()))
    env_readonly = os.environ.get("EDGEBUILD_REMOTE_CACHE_READONLY", "").lower()
    return ProjectConfig(
        remote_cache=remote_cache or os.environ.get("EDGEBUILD_REMOTE_CACHE")
        or file.get("remote_cache", {}).get("url"),
        remote_readonly=readonly or env_readonly in ("1", "true", "yes")
        or file.get("remote_cache", {}).get("readonly", False),
        scheduler=scheduler or os.environ.get("EDGEBUILD_SCHEDULER")
        or file.get("dask", {}).get("scheduler"))


def find_file(start: Path) -> Path | None:
    for folder in (start.resolve(), *start.resolve().parents):
        if (folder / CONFIG_NAME).is_file():
            return folder / CONFIG_NAME
    return None


def load_file(path: Path | None) -> dict:
    if path is None:
        return {}
    import tomllib

    try:
        data = tomllib.loads(path.read_text())
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise UsageError(f"{path}: {exc}") from None
    for section, value in data.items():
        if section not in KNOWN or not isinstance(value, dict):
            raise UsageError(f"{path}: unknown section [{section}] "
                             f"(known: {', '.join(f'[{k}]' for k in KNOWN)})")
        for key, item in value.items():
            expected = KNOWN[section].get(key)
            if expected is None:
                raise UsageError(f"{path}: [{section}] has no key '{key}' "
                                 f"(known: {', '.join(KNOWN[section])})")
            if not isinstance(item, expected):
                raise UsageError(f"{path}: [{section}] {key} must be a "
                                 f"{'boolean' if expected is bool else 'string'}, "
                                 f"not {item!r}")
    return data

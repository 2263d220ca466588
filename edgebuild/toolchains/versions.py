"""Installed toolchain versions, for step keys, lock files and manifests.

Read from package metadata: importing TensorFlow just to learn its version would
cost seconds on every no-op run.
"""

from __future__ import annotations

from functools import cache


@cache
def version(package: str) -> str | None:
    from importlib import metadata

    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return None


def versions(packages: tuple[str, ...]) -> dict[str, str | None]:
    return {name: version(name) for name in packages}

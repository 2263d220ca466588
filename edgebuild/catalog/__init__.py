"""The device catalog: data inside the package, validated by its schema."""

from __future__ import annotations

from functools import cache
from importlib import resources


@cache
def catalog_text() -> str:
    return resources.files("edgebuild.catalog").joinpath("devices.yaml").read_text()


@cache
def load_catalog(validate: bool = True) -> dict[str, dict]:
    """Profiles by name, as plain mappings (the recipe layer merges and types them)."""
    from edgebuild import yamlpos

    profiles = yamlpos.load(catalog_text()).data or {}
    if validate:
        from edgebuild.schema import validate as check

        problems = check("device-catalog", profiles)
        if problems:  # a packaging bug, not a user error
            raise RuntimeError(f"device catalog is invalid: {problems}")
    return profiles

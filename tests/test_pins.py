"""The same inputs give the same bytes on a fresh machine: every toolchain package that
can change an artifact's bytes is in the step keys, and installs take the tested
versions from constraints.txt, so a new release cannot slip in unkeyed or rebuild
everything unasked."""

from __future__ import annotations

import json
import re
import tomllib

import pytest
from conftest import REPO

from edgebuild.steps import IMPLS
from edgebuild.toolchains import versions as versions_module


def pins() -> dict[str, str]:
    found = {}
    for line in (REPO / "constraints.txt").read_text().splitlines():
        if line and not line.startswith("#"):
            name, _, version = line.partition("==")
            found[_normal(name)] = version.strip()
    return found


def _normal(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def toolchain_packages() -> set[str]:
    return {_normal(p) for impl in IMPLS.values() for p in impl.toolchain}


def test_every_keyed_toolchain_and_dependency_is_pinned():
    pyproject = tomllib.loads((REPO / "pyproject.toml").read_text())
    deps = {_normal(re.split(r"[<>=!~; \[]", d, maxsplit=1)[0])
            for d in [*pyproject["project"]["dependencies"],
                      *pyproject["project"]["optional-dependencies"]["dev"]]}
    gpu_only = {"tensorrt", "cuda-python"}  # the optional extra, only where a GPU is
    missing = sorted((toolchain_packages() | deps) - gpu_only - set(pins()))
    assert not missing, f"not pinned in constraints.txt: {missing}"


def test_installed_toolchains_are_the_tested_versions():
    """What CI and the README install: otherwise keys differ from the lock files."""
    pinned = pins()
    wrong = {name: (versions_module.version(name), pinned[name])
             for name in sorted(toolchain_packages() & set(pinned))
             if versions_module.version(name) != pinned[name]}
    assert not wrong, ("installed (got, pinned) differ from constraints.txt; install with "
                       f"`pip install -c constraints.txt -e '.[dev]'`: {wrong}")


@pytest.mark.parametrize("impl", ["convert.tflite", "quantize.tflite"])
def test_flatbuffers_is_keyed_for_the_tflite_converter(impl):
    """flatbuffers 25.9.23 and 25.12.19 write different bytes for the same conversion."""
    assert "flatbuffers" in IMPLS[impl].toolchain


def test_a_flatbuffers_release_changes_the_tflite_keys_only(built_tiny, monkeypatch, capsys):
    """Vary the package: every step that writes TFLite through the converter is stale,
    with the reason named, and nothing else is."""
    from edgebuild.cli import main

    def another_flatbuffers(packages):
        found = versions_module.versions(packages)
        return {**found, "flatbuffers": "0.0.1"} if "flatbuffers" in found else found

    monkeypatch.setattr("edgebuild.plan.versions", another_flatbuffers)
    assert main(["plan", "--json", str(built_tiny.recipe), *built_tiny.args()]) == 0
    steps = json.loads(capsys.readouterr().out)["step_list"]
    stale = {s["label"] for s in steps if s["status"] == "run"}
    direct = {s["label"] for s in steps if any(
        r.get("field") == "toolchain.flatbuffers" or "flatbuffers" in r.get("message", "")
        for r in s["reasons"])}
    assert direct and all(label.startswith(("convert", "quantize")) for label in direct), steps
    assert stale >= direct
    assert not any(s["label"].startswith("baseline") for s in steps if s["status"] == "run")

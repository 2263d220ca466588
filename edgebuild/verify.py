"""`edgebuild verify BUNDLE`: is this bundle, byte for byte, what its manifest says?

BUNDLE is a bundle folder (dist/<recipe>/<target>) or its .tar.gz. Checked: the
manifest's own digest (`self_digest`: any changed byte of manifest.json shows), the
sha256 and size of every file it lists, and that no file is missing or extra. An
archive is read without unpacking it, and its members must be regular files with
normalized relative names under one folder: nothing that could write elsewhere when
someone unpacks it.
"""

from __future__ import annotations

import hashlib
import json
import posixpath
import tarfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO

from edgebuild.errors import UsageError
from edgebuild.steps.bundle import is_sealed

MANIFEST = "manifest.json"


@dataclass
class Verdict:
    path: str
    files: int = 0  # files whose bytes matched the manifest
    problems: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems

    def to_dict(self) -> dict:
        return {"path": self.path, "ok": self.ok, "files": self.files, "problems": self.problems}


def verify(path: Path) -> Verdict:
    path = Path(path)
    if not path.exists():
        raise UsageError(f"{path}: no such bundle (give a bundle folder or its .tar.gz)")
    verdict = Verdict(str(path))
    if path.is_dir():
        members = _folder_members(path, verdict)
    else:
        try:
            archive = tarfile.open(path, "r:*")  # noqa: SIM115 - closed below
        except (tarfile.TarError, OSError) as exc:
            verdict.problems.append(f"not a bundle folder or a readable archive: {exc}")
            return verdict
        with archive:
            return _check(_archive_members(archive, verdict), verdict)
    return _check(members, verdict)


def _check(members: Iterator[tuple[str, BinaryIO]], verdict: Verdict) -> Verdict:
    """Hash every member; then compare with the manifest (which may come last)."""
    found: dict[str, tuple[str, int]] = {}
    manifest_bytes = None
    for name, handle in members:
        if name == MANIFEST:
            manifest_bytes = handle.read(1 << 24)
            continue
        digest, size = hashlib.sha256(), 0
        while chunk := handle.read(1 << 20):
            digest.update(chunk)
            size += len(chunk)
        found[name] = (digest.hexdigest(), size)
    manifest = _read_manifest(manifest_bytes, verdict)
    if manifest is None:
        return verdict
    listed = manifest.get("files") or {}
    for name, info in sorted(listed.items()):
        if name not in found:
            verdict.problems.append(f"{name}: listed in the manifest, but missing")
            continue
        digest, size = found[name]
        if digest != info.get("sha256"):
            verdict.problems.append(f"{name}: sha256 {digest[:16]}… is not the manifest's "
                                    f"{str(info.get('sha256'))[:16]}…")
        elif size != info.get("size"):
            verdict.problems.append(f"{name}: {size} bytes, the manifest says {info.get('size')}")
        else:
            verdict.files += 1
    for name in sorted(set(found) - set(listed)):
        verdict.problems.append(f"{name}: not listed in the manifest")
    return verdict


def _read_manifest(data: bytes | None, verdict: Verdict) -> dict | None:
    if data is None:
        verdict.problems.append(f"no {MANIFEST}")
        return None
    try:
        manifest = json.loads(data)
        sealed = manifest["self_digest"]
    except (ValueError, KeyError, TypeError) as exc:
        verdict.problems.append(f"{MANIFEST} is not a bundle manifest: {exc}")
        return None
    if not isinstance(sealed, str) or not is_sealed(data, sealed):
        verdict.problems.append(f"{MANIFEST}: changed after it was written "
                                "(its bytes do not match its self_digest)")
        return None
    return manifest


def _folder_members(folder: Path, verdict: Verdict) -> Iterator[tuple[str, BinaryIO]]:
    for path in sorted(folder.rglob("*")):
        name = path.relative_to(folder).as_posix()
        if path.is_symlink() or not (path.is_file() or path.is_dir()):
            verdict.problems.append(f"{name}: not a regular file")
        elif path.is_dir():
            verdict.problems.append(f"{name}: a folder (bundles are flat)")
        else:
            with open(path, "rb") as handle:
                yield name, handle


def _archive_members(archive: tarfile.TarFile, verdict: Verdict
                     ) -> Iterator[tuple[str, BinaryIO]]:
    prefixes = set()
    try:
        for member in archive:
            name = member.name
            parts = name.split("/")
            if name.startswith("/") or posixpath.normpath(name) != name or ".." in parts:
                verdict.problems.append(f"{name}: not a normalized relative path")
            elif not member.isreg():
                verdict.problems.append(f"{name}: not a regular file")
            elif len(parts) != 2:
                verdict.problems.append(f"{name}: not a file directly under the bundle folder")
            else:
                prefixes.add(parts[0])
                yield parts[1], archive.extractfile(member)
    except (tarfile.TarError, OSError, EOFError) as exc:
        verdict.problems.append(f"the archive is damaged: {exc}")
    if len(prefixes) > 1:
        verdict.problems.append(f"files under several folders: {', '.join(sorted(prefixes))}")

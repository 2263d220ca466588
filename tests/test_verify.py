"""`edgebuild verify`: any changed byte of a bundle, its manifest included, is found;
archives that could write outside their folder are refused."""

from __future__ import annotations

import io
import json
import random
import shutil
import tarfile

import pytest

from edgebuild.cli import main
from edgebuild.verify import verify


def run_verify(*paths) -> tuple[int, dict]:
    import contextlib

    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        code = main(["verify", "--json", *map(str, paths)])
    return code, json.loads(out.getvalue())


def test_built_bundles_and_archives_verify(built_tiny):
    folders = [built_tiny.dist / "tiny" / t for t in ("rpi4", "pixel")]
    archives = [f.with_name(f"{f.name}.tar.gz") for f in folders]
    code, result = run_verify(*folders, *archives)
    assert code == 0
    assert all(b["ok"] and b["files"] >= 2 for b in result["bundles"])


def test_one_changed_byte_anywhere_is_rejected(built_tiny, tmp_path):
    rng = random.Random(7)
    source = built_tiny.dist / "tiny" / "rpi4"
    for name in sorted(p.name for p in source.iterdir()):  # the manifest included
        for trial in range(5):
            bundle = tmp_path / f"{name}-{trial}"
            shutil.copytree(source, bundle)
            target = bundle / name
            data = bytearray(target.read_bytes())
            at = rng.randrange(len(data))
            data[at] = (data[at] + rng.randrange(1, 256)) % 256  # a different byte
            target.write_bytes(bytes(data))
            code, result = run_verify(bundle)
            assert code == 1, f"{name}: byte {at} changed, and verify passed"
            assert result["bundles"][0]["problems"]


def test_missing_and_extra_files_are_rejected(built_tiny, tmp_path):
    bundle = tmp_path / "bundle"
    shutil.copytree(built_tiny.dist / "tiny" / "rpi4", bundle)
    (bundle / "labels.txt").unlink()
    (bundle / "extra.bin").write_bytes(b"x")
    verdict = verify(bundle)
    assert not verdict.ok
    assert any("labels.txt: listed in the manifest, but missing" in p for p in verdict.problems)
    assert any("extra.bin: not listed" in p for p in verdict.problems)


@pytest.mark.parametrize("member, problem", [
    ("../escape.txt", "not a normalized relative path"),
    ("/etc/passwd", "not a normalized relative path"),
    ("rpi4/./model.tflite", "not a normalized relative path"),
    ("rpi4/link", "not a regular file"),
])
def test_archives_that_could_write_elsewhere_are_rejected(built_tiny, tmp_path, member, problem):
    good = built_tiny.dist / "tiny" / "rpi4.tar.gz"
    bad = tmp_path / "bad.tar.gz"
    with tarfile.open(good) as src, tarfile.open(bad, "w:gz") as dst:
        for info in src.getmembers():
            dst.addfile(info, src.extractfile(info))
        info = tarfile.TarInfo(member)
        if member.endswith("link"):
            info.type, info.linkname = tarfile.SYMTYPE, "/etc/passwd"
            dst.addfile(info)
        else:
            info.size = 1
            dst.addfile(info, io.BytesIO(b"x"))
    verdict = verify(bad)
    assert not verdict.ok and any(problem in p for p in verdict.problems), verdict.problems


def test_not_a_bundle_is_a_clear_error(tmp_path, capsys):
    assert main(["verify", str(tmp_path / "nope")]) == 2
    assert "no such bundle" in capsys.readouterr().err
    (tmp_path / "junk.tar.gz").write_bytes(b"not an archive")
    assert main(["verify", str(tmp_path / "junk.tar.gz")]) == 1
    assert "not a bundle folder or a readable archive" in capsys.readouterr().out

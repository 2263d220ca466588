"""Which files of a dataset are samples, how many there are and whether they carry
labels, found without numpy or PIL: the recipe loader checks counts and labels at plan
time, data.py loads the samples themselves.
"""

from __future__ import annotations

import ast
import os
import struct
import zipfile
from pathlib import Path

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp"}


def is_image(path: Path) -> bool:
    return path.suffix.lower() in IMAGE_SUFFIXES and not path.name.startswith(".")


def image_files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if is_image(p))


def has_class_folders(folder: Path) -> bool:
    """Whether images sit in sub-folders, which name their classes (data.load_labelled)."""
    with os.scandir(folder) as entries:
        return any(entry.is_dir() and any(is_image(p) for p in Path(entry.path).rglob("*"))
                   for entry in entries)


def npz_shapes(path: Path) -> dict[str, tuple[int, ...]]:
    """Array name -> shape of an .npz, from each .npy header: nothing is loaded or
    decompressed beyond the headers. ValueError (or zipfile.BadZipFile) if unreadable."""
    shapes = {}
    with zipfile.ZipFile(path) as archive:
        for member in archive.namelist():
            if member.endswith(".npy"):
                with archive.open(member) as handle:
                    shapes[member[:-4]] = _npy_shape(handle)
    return shapes


def _npy_shape(handle) -> tuple[int, ...]:
    """The shape in a .npy header: magic, version, header length, then a dict literal
    (numpy.lib.format, versions 1 to 3)."""
    head = handle.read(12)
    if head[:6] != b"\x93NUMPY" or len(head) < 10:
        raise ValueError("not a .npy array")
    if head[6] == 1:
        length, start = struct.unpack("<H", head[8:10])[0], 10
    else:
        length, start = struct.unpack("<I", head[8:12])[0], 12
    header = (head[start:] + handle.read(length - (len(head) - start)))[:length]
    fields = ast.literal_eval(header.decode("latin1"))
    if not isinstance(fields, dict) or not isinstance(fields.get("shape"), tuple):
        raise ValueError("a .npy header without a shape")
    return tuple(int(d) for d in fields["shape"])

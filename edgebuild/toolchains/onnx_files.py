"""ONNX files and the external data they name, read without onnx.

A model saved with `save_as_external_data=True` keeps its weights in other files
beside it, named in each tensor's `external_data` ("location"). Those files are part
of the model: the recipe loader finds them at plan time (a byte scan, no protobuf
parser), so they are step inputs, in the keys; steps stage them beside the model.
"""

from __future__ import annotations

import mmap
import shutil
from pathlib import Path, PurePosixPath

# StringStringEntryProto {key: "location", value: ...}: field 1 (key, 8 bytes), then
# field 2 (value), inside TensorProto.external_data (field 13, length-delimited: 0x6a).
_LOCATION = b"\x0a\x08location\x12"
_EXTERNAL_DATA_TAG = 0x6A


def external_data(path: Path) -> list[str]:
    """The locations an ONNX file's tensors name, in order of first appearance."""
    if path.stat().st_size == 0:
        return []
    found: dict[str, None] = {}
    with open(path, "rb") as handle, mmap.mmap(handle.fileno(), 0, access=mmap.ACCESS_READ) as data:
        at = data.find(_LOCATION)
        while at != -1:
            # The entry's own tag sits 2 or 3 bytes before (1- or 2-byte length);
            # anything else is weight bytes that happen to spell the pattern.
            if _EXTERNAL_DATA_TAG in (data[at - 2] if at >= 2 else -1,
                                      data[at - 3] if at >= 3 else -1):
                value = _string_at(data, at + len(_LOCATION))
                if value is not None:
                    found[value] = None
            at = data.find(_LOCATION, at + 1)
    return list(found)


def _string_at(data: mmap.mmap, at: int) -> str | None:
    length, shift = 0, 0
    while at < len(data) and shift < 35:
        byte = data[at]
        at += 1
        length |= (byte & 0x7F) << shift
        shift += 7
        if not byte & 0x80:
            raw = data[at:at + length]
            try:
                return raw.decode("utf-8") if len(raw) == length else None
            except UnicodeDecodeError:
                return None
    return None


def location_problem(location: str) -> str | None:
    """Why a location may not be read: it must stay in the model's folder."""
    pure = PurePosixPath(location)
    if not location or pure.is_absolute() or ".." in pure.parts or "\\" in location \
            or "\0" in location:
        return f"'{location}' is not a relative path inside the model's folder"
    return None


def source_model(ctx) -> Path:
    """A step's ONNX source, with its external data staged beside it if it has any."""
    locations = ctx.params.get("external_data") or []
    if not locations:
        return ctx.inputs["model"]
    model = ctx.inputs["model"]
    files = [ctx.inputs[f"external_data.{i}"] for i in range(len(locations))]
    if all(file == model.parent / loc for file, loc in zip(files, locations, strict=True)):
        return model  # the user's own files, in place (a local build)
    return staged_model(model, locations, files, ctx.outdir.parent / "source")


def staged_model(model: Path, locations: list[str], files: list[Path], folder: Path) -> Path:
    """`model` with its external data beside it under `folder`, as ONNX loaders look
    for it, copied from the step's inputs (onnx refuses linked external data)."""
    staged = folder / model.name
    for source, target in ((model, staged), *zip(files, (folder / loc for loc in locations),
                                                   strict=True)):
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(source, target)
    return staged

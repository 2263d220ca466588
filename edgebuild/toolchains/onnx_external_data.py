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


# Field numbers of the messages on the way to a graph's inputs and outputs (onnx.proto).
_MODEL_GRAPH, _GRAPH_INITIALIZER, _GRAPH_INPUT, _GRAPH_OUTPUT = 7, 5, 11, 12
_TENSOR_NAME, _VALUE_NAME, _VALUE_TYPE, _TYPE_TENSOR, _TENSOR_SHAPE = 8, 1, 2, 1, 2
_SHAPE_DIM, _DIM_VALUE = 1, 1


def graph_io(path: Path) -> tuple[dict[str, tuple], tuple[str, ...]]:
    """(input name -> shape, output names) of an ONNX model's graph, in order, read
    from the protocol buffer's wire format (importing onnx costs over a second).
    Inputs that are also initializers (weights, as old exporters list them) are left
    out; dimensions without a fixed value are None. ValueError if it does not parse."""
    with open(path, "rb") as handle, mmap.mmap(handle.fileno(), 0, access=mmap.ACCESS_READ) as data:
        graph = next((v for f, v in _fields(data, 0, len(data)) if f == _MODEL_GRAPH), None)
        if not isinstance(graph, tuple):
            raise ValueError("no graph")
        weights, inputs, outputs = set(), {}, []
        for field, value in _fields(data, *graph):
            if field == _GRAPH_INITIALIZER and isinstance(value, tuple):
                weights.add(_string(data, value, _TENSOR_NAME))
            elif field in (_GRAPH_INPUT, _GRAPH_OUTPUT) and isinstance(value, tuple):
                name = _string(data, value, _VALUE_NAME)
                if field == _GRAPH_INPUT:
                    inputs[name] = _shape(data, value)
                else:
                    outputs.append(name)
    return {n: shape for n, shape in inputs.items() if n not in weights}, tuple(outputs)


def _fields(data, start: int, end: int):
    """(field number, value) of each field of the message in data[start:end]: an int
    for varints, (start, end) of the bytes for length-delimited fields, else None."""
    at = start
    while at < end:
        key, at = _varint(data, at)
        wire = key & 7
        if wire == 0:
            value, at = _varint(data, at)
        elif wire == 2:
            length, at = _varint(data, at)
            value, at = (at, at + length), at + length
        elif wire in (1, 5):
            value, at = None, at + (8 if wire == 1 else 4)
        else:
            raise ValueError(f"wire type {wire}")
        if at > end:
            raise ValueError("truncated")
        yield key >> 3, value


def _varint(data, at: int) -> tuple[int, int]:
    value, shift = 0, 0
    while shift < 70:
        if at >= len(data):
            raise ValueError("truncated")
        byte = data[at]
        value |= (byte & 0x7F) << shift
        at, shift = at + 1, shift + 7
        if not byte & 0x80:
            return value, at
    raise ValueError("varint too long")


def _string(data, span: tuple[int, int], number: int) -> str:
    for field, value in _fields(data, *span):
        if field == number and isinstance(value, tuple):
            return bytes(data[value[0]:value[1]]).decode("utf-8", "replace")
    return ""


def _shape(data, value_info: tuple[int, int]) -> tuple | None:
    """A ValueInfoProto's tensor shape; None where the type gives none."""
    span = value_info
    for number in (_VALUE_TYPE, _TYPE_TENSOR, _TENSOR_SHAPE):  # type.tensor_type.shape
        span = next((v for f, v in _fields(data, *span)
                     if f == number and isinstance(v, tuple)), None)
        if span is None:
            return None
    dims = []
    for field, dim in _fields(data, *span):
        if field == _SHAPE_DIM and isinstance(dim, tuple):
            fixed = [v for f, v in _fields(data, *dim) if f == _DIM_VALUE and isinstance(v, int)]
            dims.append(fixed[0] if fixed and fixed[0] > 0 else None)
    return tuple(dims)


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

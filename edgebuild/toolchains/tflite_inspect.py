"""Read a TFLite flatbuffer's ops and tensors, with TensorFlow's generated schema.

What the integer-only guarantee and the prune/cluster composition check look at:
each op's builtin name, each tensor's type, and the values of constant tensors.
"""

from __future__ import annotations

import fnmatch
from dataclasses import dataclass

import numpy as np

FLOAT_TYPES = {"FLOAT32", "FLOAT16", "FLOAT64", "BFLOAT16", "COMPLEX64", "COMPLEX128"}
NUMPY_TYPES = {"FLOAT32": np.float32, "FLOAT16": np.float16, "FLOAT64": np.float64,
               "INT8": np.int8, "UINT8": np.uint8, "INT16": np.int16, "INT32": np.int32,
               "INT64": np.int64}


@dataclass
class Tensor:
    name: str
    type: str
    shape: tuple[int, ...]
    channel_axis: int | None  # per-channel quantization axis, if any
    data: np.ndarray | None   # constant tensors only


@dataclass
class Op:
    index: int
    subgraph: int
    name: str
    inputs: list[Tensor]
    outputs: list[Tensor]


def read_ops(flatbuffer: bytes) -> list[Op]:
    from tensorflow.lite.python import schema_py_generated as schema
    from tensorflow.lite.tools import flatbuffer_utils

    model = flatbuffer_utils.read_model_from_bytearray(bytearray(flatbuffer))
    op_names = {v: k for k, v in vars(schema.BuiltinOperator).items() if not k.startswith("_")}
    type_names = {v: k for k, v in vars(schema.TensorType).items() if not k.startswith("_")}
    ops = []
    for g, subgraph in enumerate(model.subgraphs):
        tensors = [_tensor(t, model.buffers, type_names) for t in subgraph.tensors]
        for i, op in enumerate(subgraph.operators):
            code = model.operatorCodes[op.opcodeIndex]
            builtin = max(code.builtinCode, code.deprecatedBuiltinCode)
            name = op_names.get(builtin, f"op{builtin}")
            if name == "CUSTOM" and code.customCode:
                name = f"CUSTOM:{code.customCode.decode()}"
            ops.append(Op(i, g, name, [tensors[t] for t in op.inputs if t >= 0],
                          [tensors[t] for t in op.outputs if t >= 0]))
    return ops


def _tensor(t, buffers, type_names) -> Tensor:
    type_name = type_names.get(t.type, str(t.type))
    shape = tuple(int(d) for d in t.shape) if t.shape is not None else ()
    raw = buffers[t.buffer].data if t.buffer < len(buffers) else None
    data = None
    if raw is not None and len(raw) and type_name in NUMPY_TYPES:
        data = np.frombuffer(bytes(raw), NUMPY_TYPES[type_name]).reshape(shape)
    q = t.quantization
    axis = q.quantizedDimension if q is not None and q.scale is not None and len(q.scale) > 1 \
        else None
    return Tensor(t.name.decode(errors="replace"), type_name, shape, axis, data)


def float_offenders(ops: list[Op]) -> list[str]:
    """Every op that reads or writes a float tensor, described for an error message."""
    offenders = []
    for op in ops:
        floats = [t for t in (*op.inputs, *op.outputs) if t.type in FLOAT_TYPES]
        if floats:
            what = ", ".join(f"'{t.name}' {t.type.lower()}" for t in floats)
            where = f"subgraph {op.subgraph} " if op.subgraph else ""
            offenders.append(f"{where}op {op.index} {op.name}: {what}")
    return offenders


def layer_nodes(ops: list[Op], patterns) -> list[str]:
    """Output tensor names of the ops that implement the Keras layers matching
    `patterns` (converters name tensors model/<layer>/<op>, fused names joined by ;)."""
    nodes = []
    for op in ops:
        for tensor in op.outputs:
            segments = {s for part in tensor.name.split(";") for s in part.split("/")}
            if any(fnmatch.fnmatchcase(s, p) for s in segments for p in patterns):
                nodes.append(tensor.name)
    return nodes


def kernel_stats(ops: list[Op], layer_names) -> dict[str, dict]:
    """Per Keras layer: sparsity and the most unique values in any output channel of
    its weight tensor, as stored in the flatbuffer (int8, fp16 or fp32)."""
    constants = {}
    for op in ops:
        for t in op.inputs:
            if t.data is not None and t.data.ndim >= 2:
                constants.setdefault(t.name, t)
    stats = {}
    for layer in layer_names:
        # tfmot's quantization-aware wrappers name a layer's tensors quant_<layer>.
        names = {layer, f"quant_{layer}"}
        found = [t for t in constants.values()
                 if names & {s for part in t.name.split(";") for s in part.split("/")}]
        if not found:
            continue
        t = max(found, key=lambda t: t.data.size)
        axis = t.channel_axis if t.channel_axis is not None else 0
        channels = np.moveaxis(t.data, axis, 0).reshape(t.data.shape[axis], -1)
        stats[layer] = {"type": t.type.lower(),
                        "sparsity": round(float(np.mean(t.data == 0)), 4),
                        "unique_per_channel": int(max(np.unique(c).size for c in channels))}
    return stats

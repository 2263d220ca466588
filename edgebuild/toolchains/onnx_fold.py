"""Fold a per-channel Mul and Add that follow a Conv into the Conv's weights and bias.

An inference-mode BatchNormalization that a converter lowered to `x * scale + shift`
is exactly such a chain. ONNX Runtime's own fusions (run by quant_pre_process) fold
it only when the constant is the second operand and shaped [C,1,1] or [1,C,1,1]; this
pass takes the rest: constants first, or shaped [1] or [1,1,1,1]. Left unfolded, the
Mul and Add each get their own int8 quantization, which costs accuracy and time.
"""

from __future__ import annotations

from collections import Counter

FOLDABLE = ("Mul", "Add")


def fold_conv_affine(model) -> int:
    """Fold, in place, every Mul by and Add of a per-channel constant that reads a
    Conv's output where nothing else reads it. Returns how many nodes were folded."""
    graph = model.graph
    inits = {init.name: init for init in graph.initializer}
    folded, constants = 0, set()
    for conv in [n for n in graph.node if n.op_type == "Conv"]:
        while (after := _foldable_successor(graph, inits, conv)) is not None:
            node, constant, vector = after
            _fold(graph, inits, conv, node, vector)
            folded, constants = folded + 1, constants | {constant}
    # Drop the folded constants that nothing reads any more.
    read = {name for n in graph.node for name in n.input}
    for init in [i for i in graph.initializer if i.name in constants and i.name not in read]:
        graph.initializer.remove(init)
    return folded


def _foldable_successor(graph, inits: dict, conv):
    """(node, its constant's name, that constant per channel) for the Mul or Add that
    is the only reader of `conv`'s output, when folding it is exact; None otherwise."""
    from onnx import numpy_helper

    out = conv.output[0]
    readers = [n for n in graph.node if out in n.input]
    if len(readers) != 1 or out in {o.name for o in graph.output}:
        return None
    node = readers[0]
    if node.op_type not in FOLDABLE or list(node.input).count(out) != 1:
        return None
    if not _owned(graph, inits, conv):
        return None
    other = node.input[1] if node.input[0] == out else node.input[0]
    if other not in inits or other in {i.name for i in graph.input}:
        return None  # not a constant (a graph input may be overridden at run time)
    weight = numpy_helper.to_array(inits[conv.input[1]])
    constant = numpy_helper.to_array(inits[other])
    vector = _per_channel(constant, weight.ndim, weight.shape[0])
    if vector is None or constant.dtype != weight.dtype:
        return None
    return node, other, vector


def _owned(graph, inits: dict, conv) -> bool:
    """The Conv's weight (and bias) are constants that no other node reads, so that
    rewriting them changes this Conv alone."""
    names = [name for name in conv.input[1:] if name]
    inputs = {i.name for i in graph.input}
    if not all(name in inits and name not in inputs for name in names):
        return False
    readers = Counter(name for n in graph.node for name in n.input)
    return all(readers[name] == 1 for name in names)


def _per_channel(constant, rank: int, channels: int):
    """`constant` as one value per output channel, if it broadcasts against an
    N,C,spatial... output without changing its shape and varies only over C."""
    import numpy as np

    if constant.ndim > rank:
        return None
    shape = (1,) * (rank - constant.ndim) + constant.shape
    if shape[0] != 1 or any(d != 1 for d in shape[2:]) or shape[1] not in (1, channels):
        return None
    return np.broadcast_to(constant.reshape(-1), (channels,))


def _fold(graph, inits: dict, conv, node, vector) -> None:
    import numpy as np
    from onnx import numpy_helper

    weight = numpy_helper.to_array(inits[conv.input[1]])
    has_bias = len(conv.input) > 2 and conv.input[2]
    bias = (numpy_helper.to_array(inits[conv.input[2]]) if has_bias
            else np.zeros(weight.shape[0], weight.dtype))
    if node.op_type == "Mul":  # (W x + b) s = (W s) x + b s
        weight = weight * vector.reshape((-1,) + (1,) * (weight.ndim - 1))
        bias = bias * vector
        inits[conv.input[1]].CopyFrom(numpy_helper.from_array(weight, conv.input[1]))
    else:  # W x + b + t = W x + (b + t)
        bias = bias + vector
    if has_bias:
        inits[conv.input[2]].CopyFrom(numpy_helper.from_array(bias, conv.input[2]))
    else:
        name = _unused_name(graph, f"{conv.name or conv.output[0]}_bias")
        graph.initializer.append(numpy_helper.from_array(bias.astype(weight.dtype), name))
        inits[name] = graph.initializer[-1]
        del conv.input[2:]
        conv.input.append(name)
    # The Conv now writes the folded node's output; its old output is gone.
    stale = conv.output[0]
    conv.output[0] = node.output[0]
    graph.node.remove(node)
    kept = [v for v in graph.value_info if v.name != stale]
    del graph.value_info[:]
    graph.value_info.extend(kept)


def _unused_name(graph, name: str) -> str:
    taken = {init.name for init in graph.initializer}
    taken.update(o for n in graph.node for o in n.output)
    taken.update(i.name for i in graph.input)
    while name in taken:
        name += "_"
    return name

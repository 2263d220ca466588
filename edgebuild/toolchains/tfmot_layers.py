"""Which Keras layers tfmot can prune, cluster or train for int8, by class name,
without tfmot.

One source of truth for the recipe loader (which reads layer classes from the model's
config at plan time) and the prune and cluster steps (which check the loaded layers
before wrapping them). The names are those of tfmot 0.8's PruneRegistry and
ClusteringRegistry; tests/test_plan_time_errors.py checks them against tfmot itself.
"""

from __future__ import annotations

import fnmatch
from dataclasses import dataclass

PRUNE_LAYERS = frozenset({
    "Activation", "ActivityRegularization", "Add", "AlphaDropout", "Average",
    "AveragePooling1D", "AveragePooling2D", "AveragePooling3D", "BatchNormalization",
    "Concatenate", "Conv1D", "Conv2D", "Conv2DTranspose", "Conv3D", "Conv3DTranspose",
    "Cropping1D", "Cropping2D", "Cropping3D", "Dense", "DepthwiseConv2D", "Dot", "Dropout",
    "ELU", "Embedding", "Flatten", "GaussianDropout", "GaussianNoise",
    "GlobalAveragePooling1D", "GlobalAveragePooling2D", "GlobalAveragePooling3D",
    "GlobalMaxPooling1D", "GlobalMaxPooling2D", "GlobalMaxPooling3D", "Lambda",
    "LayerNormalization", "LeakyReLU", "LocallyConnected1D", "LocallyConnected2D", "Masking",
    "MaxPooling1D", "MaxPooling2D", "MaxPooling3D", "Maximum", "Minimum",
    "MultiHeadAttention", "Multiply", "Permute", "ReLU", "RepeatVector", "Reshape",
    "SeparableConv1D", "SeparableConv2D", "Softmax", "SpatialDropout1D", "SpatialDropout2D",
    "SpatialDropout3D", "Subtract", "SyncBatchNormalization", "ThresholdedReLU",
    "UpSampling1D", "UpSampling2D", "UpSampling3D", "ZeroPadding1D", "ZeroPadding2D",
    "ZeroPadding3D",
})
PRUNE_RNN_LAYERS = frozenset({"GRU", "LSTM", "RNN", "SimpleRNN"})  # if every cell is:
PRUNE_RNN_CELLS = frozenset({"GRUCell", "LSTMCell", "SimpleRNNCell"})

CLUSTER_LAYERS = frozenset({
    "BatchNormalization", "Conv1D", "Conv1DTranspose", "Conv2D", "Conv2DTranspose", "Conv3D",
    "Conv3DTranspose", "Dense", "DepthwiseConv2D", "Embedding", "LayerNormalization",
    "LocallyConnected1D", "LocallyConnected2D", "SeparableConv1D", "SeparableConv2D",
    "MultiHeadAttention",
})
CLUSTER_RNN_LAYERS = frozenset({"Bidirectional", "GRU", "LSTM", "RNN", "SimpleRNN"})
CLUSTER_RNN_CELLS = frozenset({"Bidirectional", "GRUCell", "LSTMCell", "SimpleRNNCell",
                               "StackedRNNCells"})
# Clustering takes any layer without trainable weights. These built-in layers always
# have some (while trainable), so a config naming one outside the lists above is
# refused; for other classes only the loaded layer tells.
WEIGHTED_LAYERS = frozenset({
    *CLUSTER_LAYERS, *CLUSTER_RNN_LAYERS, "PReLU", "DepthwiseConv1D", "EinsumDense",
    "GroupNormalization", "ConvLSTM1D", "ConvLSTM2D", "ConvLSTM3D",
})
# Recurrent layers: clustering looks at their cells even when they are frozen.
RNN_LAYERS = frozenset({"GRU", "LSTM", "RNN", "SimpleRNN", "ConvLSTM1D", "ConvLSTM2D",
                        "ConvLSTM3D"})
# Quantization-aware training: tfmot 0.8's Default8BitQuantizeRegistry. Other layers
# train in float and are quantized after training (calibrated); BatchNormalization is
# folded into the convolution before it by tfmot's transforms.
QAT_LAYERS = frozenset({
    "Activation", "ActivityRegularization", "Add", "AveragePooling1D", "AveragePooling2D",
    "Concatenate", "Conv2D", "Conv2DTranspose", "Cropping1D", "Cropping2D", "Cropping3D",
    "Dense", "DepthwiseConv2D", "Dropout", "Flatten", "GlobalAveragePooling1D",
    "GlobalAveragePooling2D", "GlobalAveragePooling3D", "GlobalMaxPooling1D",
    "GlobalMaxPooling2D", "GlobalMaxPooling3D", "LeakyReLU", "MaxPooling2D", "Permute",
    "ReLU", "Reshape", "Softmax", "SpatialDropout1D", "SpatialDropout2D", "SpatialDropout3D",
    "UpSampling2D", "ZeroPadding1D", "ZeroPadding2D",
})
QAT_FOLDED = frozenset({"BatchNormalization"})

# The cell an RNN layer builds for itself.
IMPLIED_CELLS = {"GRU": "GRUCell", "LSTM": "LSTMCell", "SimpleRNN": "SimpleRNNCell"}


@dataclass(frozen=True)
class Layer:
    """A layer as far as support goes: from a loaded model, or from its config."""

    name: str
    kind: str              # class name
    builtin: bool = True   # a Keras layer; a custom one may implement tfmot's protocols
    weights: bool | None = None  # has trainable weights; None: the config cannot tell
    cells: tuple[str, ...] = ()  # an RNN layer's cells, by class name


def supports(slot: str, layer: Layer) -> bool | None:
    """Whether tfmot can `slot` this layer; None where only tfmot can tell (custom
    layers, and layers whose weights the config does not reveal)."""
    if slot == "prune":
        if layer.kind in PRUNE_LAYERS:
            return True
        if layer.kind in PRUNE_RNN_LAYERS:
            return all(cell in PRUNE_RNN_CELLS for cell in layer.cells)
    else:
        if (layer.weights is False and layer.kind not in RNN_LAYERS) \
                or layer.kind in CLUSTER_LAYERS or layer.kind in CLUSTER_RNN_CELLS:
            return True
        if layer.kind in CLUSTER_RNN_LAYERS:
            return all(cell in CLUSTER_RNN_CELLS for cell in layer.cells)
        if layer.weights is None and layer.kind not in WEIGHTED_LAYERS:
            return None
    return False if layer.builtin else None


def not_trained_quantized(layers: list[Layer], keep_float) -> list[Layer]:
    """Layers that quantization-aware training leaves in float while training: built-in
    ones tfmot has no rule for (keep_float's are left out on purpose)."""
    return [layer for layer in layers if layer.builtin and not matches(layer, keep_float)
            and layer.kind not in QAT_LAYERS | QAT_FOLDED and layer.kind != "InputLayer"]


def matches(layer: Layer, patterns) -> bool:
    """include/exclude: layer names, patterns like conv*, or class names like Dense."""
    return any(fnmatch.fnmatchcase(layer.name, p) or layer.kind == p for p in patterns)


def unmatched(layers: list[Layer], include, exclude) -> tuple[str, str] | None:
    """(option, why) for an include/exclude pattern that matches no layer of the model."""
    for option, patterns in (("include", include), ("exclude", exclude)):
        for pattern in patterns:
            if not any(matches(layer, [pattern]) for layer in layers):
                names = ", ".join(layer.name for layer in layers)
                return option, (f"'{pattern}' matches no layer name or type of this model "
                                f"(its layers: {names})")
    return None


def is_chosen(layer: Layer, include, exclude) -> bool:
    return (not include or matches(layer, include)) and not matches(layer, exclude)


def refusal(slot: str, unsupported: list[Layer], at_plan_time: bool = False) -> str:
    """What to tell a user whose chosen layers tfmot cannot `slot`, and the fixes: one
    line for the recipe loader (which also offers switching the slot off), a list for
    the step."""
    names = ", ".join(layer.name for layer in unsupported)
    exclude = (f"`{slot}: {{exclude: [{names}]}}` on the target (layer types work too, e.g. "
               f"exclude: [{unsupported[0].kind}])")
    include = f"`{slot}: {{include: [...]}}`"
    what = f"tfmot cannot {slot} {len(unsupported)} layer(s) of this model:"
    if at_plan_time:
        listing = ", ".join(f"'{layer.name}' ({layer.kind})" for layer in unsupported)
        return (f"{what} {listing}. Leave them out with {exclude}, list the layers to {slot} "
                f"with {include}, or set `{slot}: false`")
    listing = "\n".join(f"  - '{layer.name}' ({layer.kind})" for layer in unsupported)
    return (f"{what}\n{listing}\nLeave them out with {exclude}, or list the layers to {slot} "
            f"with {include}.")

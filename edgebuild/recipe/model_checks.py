"""Checks of a recipe against what its source model declares (toolchains/signature):
mistakes that would otherwise surface only after conversion has run. Pure functions
from the recipe's values and the signature to (key path, message) pairs, which the
loader locates.
"""

from __future__ import annotations

from edgebuild.toolchains import tfmot_layers
from edgebuild.toolchains.signature import ModelSignature

Problems = list[tuple[tuple, str]]


def layer_problems(at: tuple, slot: str, params, signature: ModelSignature) -> Problems:
    """prune/cluster: include/exclude patterns that match nothing, and chosen layers
    tfmot refuses (those the config can tell about; the step checks the rest)."""
    layers = list(signature.layers)
    if not layers:
        return []
    wrong = tfmot_layers.unmatched(layers, params.include, params.exclude)
    if wrong:
        option, why = wrong
        if at[-1] == slot:  # the target's own slot: point at the option
            return [((*at, option), why)]
        return [(at, f"{slot}.{option} (from the device profile): {why}")]
    refused = [layer for layer in layers
               if tfmot_layers.is_chosen(layer, params.include, params.exclude)
               and tfmot_layers.supports(slot, layer) is False]
    if refused:
        return [(at, tfmot_layers.refusal(slot, refused, at_plan_time=True))]
    return []


CHANNELS = {"NHWC": 3, "NCHW": 1}  # where each layout puts the 3 colour channels


def preprocess_problems(preprocess: dict, signature: ModelSignature,
                        fixed: dict[str, list]) -> Problems:
    """data.preprocess against the model's image input, its one 4-D input: the layout
    must put the colour channels where the model takes them (images are always 3
    channels), and a fixed height and width must be what `resize` makes. `fixed`:
    source.input_shapes, which fix an ONNX model's dynamic dimensions."""
    if len(signature.inputs) != 1:
        return []
    name, shape = next(iter(signature.inputs.items()))
    shape = tuple(fixed.get(name, shape or ()))
    if len(shape) != 4:
        return []
    layout = preprocess.get("layout", "NHWC")
    other = next(k for k in CHANNELS if k != layout)
    dims = "[" + ", ".join("None" if d is None else str(d) for d in shape) + "]"
    # Images put a spatial dimension where the other layout has its channels: fine
    # only where the model takes 3 there too.
    if shape[CHANNELS[other]] == 3 and shape[CHANNELS[layout]] != 3:
        default = "" if "layout" in preprocess else " (the default)"
        where = "first" if other == "NCHW" else "last"
        return [(("data", "preprocess", "layout"),
                 f"layout is {layout}{default}, but the model's input '{name}' has shape "
                 f"{dims}, channels {where} ({other}); set layout: {other}")]
    height, width = shape[1:3] if layout == "NHWC" else shape[2:4]
    resize = preprocess.get("resize")
    if resize and height and width and tuple(resize) != (height, width):
        return [(("data", "preprocess", "resize"),
                 f"resize [{resize[0]}, {resize[1]}] makes images {resize[0]} high and "
                 f"{resize[1]} wide, and the model's input '{name}' takes {height} by "
                 f"{width} (shape {dims}); set resize: [{height}, {width}]")]
    return []


def scores_output(task: str, name: str | None, signature: ModelSignature | None,
                  validated: bool) -> tuple[str | None, Problems]:
    """classifier_output, as the baseline step will name it: a classifier's metrics
    need to know which output holds the class scores where the model has several
    (`validated`: the recipe gives data.validation, so metrics are computed)."""
    if task != "classification":
        if name is None:
            return None, []
        return None, [(("classifier_output",), "classifier_output is for classification; "
                       "a detector's decoder (`decode:`) takes every output")]
    if signature is None or not signature.outputs:
        return name, []  # a SavedModel: the baseline step checks the name
    if name is None:
        if len(signature.outputs) > 1 and validated:
            return None, [(("task",), f"the model has {len(signature.outputs)} outputs "
                           f"({signature.describe_outputs()}); name the one holding the class "
                           "scores with `classifier_output: NAME`")]
        return None, []
    resolved = signature.output(name)
    if resolved is None:
        return None, [(("classifier_output",), f"'{name}' is not an output of the model (its "
                       f"outputs: {signature.describe_outputs()})")]
    return resolved, []

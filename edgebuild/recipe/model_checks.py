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

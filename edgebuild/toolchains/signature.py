"""What a source model declares about itself, read at plan time without its toolchain:
its inputs' shapes, its outputs' names and, for Keras, its layers. The recipe loader
checks a recipe against it, so that a preprocessing layout, an output name or a layer
tfmot cannot handle is a recipe error before minutes of conversion, not after.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from edgebuild.toolchains.tfmot_layers import Layer


@dataclass(frozen=True)
class ModelSignature:
    inputs: dict[str, tuple]     # name -> shape, None for a dynamic dimension
    outputs: tuple[str, ...]     # as the baseline step names them, in its order
    output_labels: tuple[str, ...] = ()  # as the file names them, same order (Keras 3
    #                                       models run as SavedModels: output_0, ...)
    layers: tuple[Layer, ...] = ()       # Keras: the leaf layers

    def output(self, name: str) -> str | None:
        """The baseline's name for the output a recipe names (either way), if any."""
        if name in self.outputs:
            return name
        labels = self.output_labels or self.outputs
        return self.outputs[labels.index(name)] if name in labels else None

    def describe_outputs(self) -> str:
        labels = self.output_labels or self.outputs
        return ", ".join(f"'{label}'" if label == name else f"'{label}' ({name})"
                         for label, name in zip(labels, self.outputs, strict=True))


def keras_signature(config, flavour: str, custom_possible: bool) -> ModelSignature:
    """`custom_possible`: see keras_files.config_layers. Layers only for tf_keras
    models, the only ones tfmot rewrites."""
    from edgebuild.toolchains.keras_files import config_inputs, config_layers, config_outputs

    outputs, labels = config_outputs(config, flavour)
    layers = config_layers(config, custom_possible) if flavour == "tf_keras" else []
    return ModelSignature(config_inputs(config), outputs, labels, tuple(layers))


def onnx_signature(path: Path) -> ModelSignature:
    from edgebuild.toolchains.onnx_external_data import graph_io

    inputs, outputs = graph_io(path)
    return ModelSignature(inputs, outputs)

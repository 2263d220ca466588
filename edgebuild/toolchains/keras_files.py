"""What a Keras model file says about itself, read without Keras: which Keras wrote
it, and what code it brings along. The recipe loader uses this at plan time (a
.keras config is a small JSON file), the steps before Keras loads anything.
"""

from __future__ import annotations

import json
import zipfile
from dataclasses import dataclass
from pathlib import Path

from edgebuild.toolchains.tfmot_layers import IMPLIED_CELLS, WEIGHTED_LAYERS, Layer


def keras_flavour(path: Path) -> str:
    """'keras3' or 'tf_keras', from the file itself."""
    if path.suffix == ".keras" and zipfile.is_zipfile(path):
        with zipfile.ZipFile(path) as archive:
            try:
                version = json.loads(archive.read("metadata.json")).get("keras_version", "")
            except KeyError:
                version = ""
        return "keras3" if version.startswith("3.") else "tf_keras"
    return "tf_keras"


@dataclass(frozen=True)
class Trust:
    """source.trust_source: the recipe vouches for the model's code, so Keras loads it
    outside safe mode (Lambda layers run their code) and resolves custom layers and
    functions from `custom_objects`, a module the recipe names."""

    custom_objects: str | None = None  # package.module
    module_file: Path | None = None    # its source, when next to the recipe (an input)

    def to_dict(self) -> dict:
        return {"custom_objects": self.custom_objects}


@dataclass(frozen=True)
class ModelCode:
    """Code a Keras model brings along: Lambda layers, whose Python is stored in the
    file, and custom objects, classes and functions Keras imports by name."""

    lambdas: tuple[str, ...] = ()
    custom: tuple[str, ...] = ()

    def __bool__(self) -> bool:
        return bool(self.lambdas or self.custom)

    def describe(self) -> str:
        parts = []
        if self.lambdas:
            parts.append(f"Lambda layer(s) {listing(self.lambdas)} (their Python code is "
                         "stored in the file)")
        if self.custom:
            parts.append(f"custom object(s) {listing(self.custom)} (code Keras imports "
                         "by name)")
        return " and ".join(parts)


def model_code(config) -> ModelCode:
    """What code a model config (config.json of a .keras, model_config of an .h5) needs.
    Custom objects show as a `registered_name` outside Keras's modules, which only the
    .keras format records."""
    lambdas, custom = [], []

    def visit(node) -> None:
        if isinstance(node, dict):
            if node.get("class_name") == "Lambda":
                lambdas.append(str((node.get("config") or {}).get("name", "?")))
            registered = node.get("registered_name")
            if isinstance(registered, str) and registered and (
                    registered == "function" or not _from_keras(node.get("module"))):
                name = node.get("config") if registered == "function" else registered
                custom.append(str(name))
            for value in node.values():
                visit(value)
        elif isinstance(node, list):
            for value in node:
                visit(value)

    visit(config)
    return ModelCode(tuple(dict.fromkeys(lambdas)), tuple(dict.fromkeys(custom)))


def _from_keras(module) -> bool:
    """Whether a config's `module` is Keras's own (built-ins such as Functional carry a
    registered_name too; a custom object's module is its own, or None)."""
    return isinstance(module, str) and module.split(".")[0] in ("keras", "tf_keras")


def archive_config(path: Path):
    """The model config of a .keras archive (a zip holding config.json); cheap."""
    with zipfile.ZipFile(path) as archive:
        return json.loads(archive.read("config.json"))


def model_config(path: Path):
    """The model config of a .keras or .h5 file, read without Keras."""
    return archive_config(path) if path.suffix == ".keras" else h5_config(path)


def refusal(name: str, code: ModelCode) -> str:
    """Why a model is not loaded, and how a recipe opts in to it."""
    return (f"{name} has {code.describe()}. edgebuild loads Keras models in safe mode, so a "
            "model from elsewhere cannot run code it brings along. " + OPT_IN)


OPT_IN = ("If you trust this model as you would a program, set `trust_source: true` under "
          "`source:`, and name the module that defines its custom layers and functions "
          "with `custom_objects: package.module` (a .py file next to the recipe, or "
          "installed); otherwise replace them with built-in layers")


def model_file_code(path: Path) -> ModelCode:
    """The code a .keras or .h5 model file brings."""
    return _h5_code(path) if path.suffix != ".keras" else model_code(archive_config(path))


def _h5_code(path: Path) -> ModelCode:
    """Lambda layers of an .h5 model, read before Keras loads it: their marshalled
    bytecode runs when the model is called, and Keras loads it even in safe mode."""
    from edgebuild.errors import StepError

    try:
        config = h5_config(path)
    except OSError as exc:
        raise StepError(f"{path.name}: not a readable HDF5 model: {exc}") from None
    return model_code(config) if config else ModelCode()


def h5_config(path: Path):
    """The model config an .h5 file keeps in its `model_config` attribute (None for a
    weights-only file). h5py, not Keras: it costs about 0.2 s to import, numpy included."""
    import h5py

    with h5py.File(path, "r") as handle:
        config = handle.attrs.get("model_config")
    if isinstance(config, bytes):
        config = config.decode("utf-8", "replace")
    return json.loads(config) if config else None


def listing(names: tuple[str, ...], most: int = 5) -> str:
    shown = ", ".join(f"'{n}'" for n in names[:most])
    return shown + (f" and {len(names) - most} more" if len(names) > most else "")


# -- interface and layers, from the config ------------------------------------------

MODEL_CLASSES = ("Functional", "Sequential", "Model")  # configs that nest `layers`


def config_layers(config, custom_possible: bool = False) -> list[Layer]:
    """The leaf layers of a model config (inside nested models, without InputLayers),
    as tfmot_layers sees them. `custom_possible`: any class name may be a custom
    object (an .h5 file loaded with a custom-objects module, which records no module)."""
    found: list[Layer] = []

    def visit(node, trainable: bool) -> None:
        if not isinstance(node, dict):
            return
        config = node.get("config") if isinstance(node.get("config"), dict) else {}
        trainable = trainable and config.get("trainable", True) is not False
        if node.get("class_name") in MODEL_CLASSES and isinstance(config.get("layers"), list):
            for layer in config["layers"]:
                visit(layer, trainable)
        elif node.get("class_name") != "InputLayer":
            found.append(_layer(node, config, trainable, custom_possible))

    visit(config, True)
    return found


def _layer(node: dict, config: dict, trainable: bool, custom_possible: bool) -> Layer:
    kind = str(node.get("class_name"))
    registered = node.get("registered_name")
    builtin = not custom_possible and (node.get("module") is None or _from_keras(
        node.get("module"))) and not (isinstance(registered, str) and registered)
    weights = False if not trainable else (True if kind in WEIGHTED_LAYERS else None)
    return Layer(str(config.get("name", node.get("name", "?"))), kind, builtin, weights,
                 _cells(kind, config))


def _cells(kind: str, config: dict) -> tuple[str, ...]:
    """An RNN layer's cells by class name: implied by GRU, LSTM and SimpleRNN, named
    (alone or stacked) by RNN."""
    if kind in IMPLIED_CELLS:
        return (IMPLIED_CELLS[kind],)
    cell = config.get("cell")
    if kind != "RNN" or not isinstance(cell, dict):
        return ()
    if cell.get("class_name") == "StackedRNNCells":
        cells = (cell.get("config") or {}).get("cells") or []
        return tuple(str(c.get("class_name")) for c in cells if isinstance(c, dict))
    return (str(cell.get("class_name")),)


def config_inputs(config) -> dict[str, tuple]:
    """Input name -> batch shape (None for dynamic dimensions), from the InputLayers
    (tf_keras: batch_input_shape, Keras 3: batch_shape)."""
    body = config.get("config") if isinstance(config, dict) else None
    if not isinstance(body, dict) or not isinstance(body.get("layers"), list):
        return {}
    layers = [layer for layer in body["layers"] if isinstance(layer, dict)]
    inputs = {}
    for layer in layers:
        if layer.get("class_name") == "InputLayer":
            spec = layer.get("config") or {}
            shape = spec.get("batch_input_shape") or spec.get("batch_shape")
            if isinstance(shape, list):
                inputs[str(spec.get("name", layer.get("name")))] = tuple(shape)
    if not inputs and layers:  # Sequential(input_shape=...) on its first layer
        spec = layers[0].get("config") or {}
        shape = spec.get("batch_input_shape") or body.get("build_input_shape")
        if isinstance(shape, list):
            inputs[str(spec.get("name", "input"))] = tuple(shape)
    return inputs


def config_outputs(config, flavour: str) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """(the names the baseline step gives the outputs, the names the file gives them),
    both in the baseline's order. tf_keras names outputs after their layers, made
    unique as Functional.output_names does; Keras 3 models run as SavedModels, whose
    outputs are output_0, output_1, ... (or the keys of a dict of outputs)."""
    body = config.get("config") if isinstance(config, dict) else None
    if not isinstance(body, dict):
        return (), ()
    if config.get("class_name") == "Sequential":
        layers = body.get("layers") or []
        last = layers[-1] if layers and isinstance(layers[-1], dict) else {}
        labels = [str((last.get("config") or {}).get("name", "?"))] if last else []
    else:
        spec = body.get("output_layers")
        if isinstance(spec, dict):
            keys = tuple(sorted(spec))
            return keys, keys
        if isinstance(spec, list) and spec and isinstance(spec[0], str):
            spec = [spec]  # Keras 3 writes a single output unnested
        labels = [str(item[0]) for item in spec or [] if isinstance(item, list) and item]
    if flavour == "keras3":  # the baseline sorts them by name: output_10 before output_2
        pairs = sorted((f"output_{i}", label) for i, label in enumerate(labels))
        return tuple(p[0] for p in pairs), tuple(p[1] for p in pairs)
    unique: list[str] = []
    counts: dict[str, int] = {}
    for label in labels:
        proposal = label
        while proposal in unique:
            counts[label] = counts.get(label, 1)
            proposal = f"{label}_{counts[label]}"
            counts[label] += 1
        unique.append(proposal)
    return tuple(unique), tuple(unique)

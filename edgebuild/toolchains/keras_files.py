"""What a Keras model file says about itself, read without Keras: which Keras wrote
it, and what code it brings along. The recipe loader uses this at plan time (a
.keras config is a small JSON file), the steps before Keras loads anything.
"""

from __future__ import annotations

import json
import zipfile
from dataclasses import dataclass
from pathlib import Path


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
    import h5py

    from edgebuild.errors import StepError

    try:
        with h5py.File(path, "r") as handle:
            config = handle.attrs.get("model_config")
    except OSError as exc:
        raise StepError(f"{path.name}: not a readable HDF5 model: {exc}") from None
    if isinstance(config, bytes):
        config = config.decode("utf-8", "replace")
    return model_code(json.loads(config)) if config else ModelCode()


def listing(names: tuple[str, ...], most: int = 5) -> str:
    shown = ", ".join(f"'{n}'" for n in names[:most])
    return shown + (f" and {len(names) - most} more" if len(names) > most else "")

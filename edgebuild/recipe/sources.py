"""The source model: its path, format and trust, what is plainly wrong with the
file, the external data an ONNX model names, and what the file declares about itself
(inputs, outputs, layers), all read without importing its toolchain."""

from __future__ import annotations

import hashlib
from pathlib import Path

from edgebuild import __version__
from edgebuild.catalog import catalog_text
from edgebuild.plugins import is_module_name, local_module_file
from edgebuild.recipe.model import Source
from edgebuild.recipe.problems import ProblemLog
from edgebuild.toolchains.keras_files import Trust

HDF5_SIGNATURE = b"\x89HDF\r\n\x1a\n"
PROTOBUF_LIMIT = 2 ** 31  # bytes: ONNX files and SavedModel graphs are protocol buffers


class SourceInspection(ProblemLog):
    path: Path
    text: str
    memo: object
    model_memo: str | None

    def _source(self, spec: dict) -> Source:
        path = self._existing(("source", "path"), spec["path"])
        fmt = spec.get("format") or (_infer_format(path) if path else None)
        if path and fmt is None:
            self.complain(("source", "path"), f"cannot tell the model format of '{spec['path']}' "
                          "(expected .keras, .h5, .onnx or a SavedModel folder); "
                          "set source.format")
        problem = _source_problem(path, fmt) if path and fmt else None
        if problem:
            self.complain(("source", "path"), problem)
        shapes = {name: list(dims) for name, dims in spec.get("input_shapes", {}).items()}
        if shapes and fmt not in ("onnx", None):  # None: source.path says why already
            self.complain(("source", "input_shapes"), "input_shapes fixes dynamic dimensions of "
                          "ONNX sources; Keras and SavedModel sources declare their own shapes")
        external = self._external_data(path) if fmt == "onnx" and not problem else ()
        trust = self._trust(spec, fmt)
        self.signature = self._signature(path, fmt, trust) if path and not problem else None
        return Source(path=path or Path(spec["path"]), format=fmt or "unknown",
                      input_shapes=shapes, trust=trust, external_data=external,
                      written=spec["path"])

    def _external_data(self, path: Path) -> tuple[str, ...]:
        """Files an ONNX model keeps its weights in: inputs, so editing them rebuilds."""
        from edgebuild.toolchains.onnx_external_data import external_data, location_problem

        locations = external_data(path)
        for location in locations:
            problem = location_problem(location) or (
                None if (path.parent / location).is_file() else
                f"'{location}' does not exist beside it")
            if problem:
                self.complain(("source", "path"), f"'{path.name}' keeps weights in external "
                              f"data, and {problem}; save the model again with its data "
                              "beside it (onnx.save(..., save_as_external_data=True))")
        return tuple(locations)

    def _trust(self, spec: dict, fmt: str | None) -> Trust | None:
        """source.trust_source and the module it names (imported only by the steps)."""
        module = spec.get("custom_objects")
        if not spec.get("trust_source"):
            if module is not None:
                self.complain(("source", "custom_objects"), f"loading '{module}' runs its "
                              "code while the model loads; set `trust_source: true` under "
                              "`source:` if you trust the model and the module")
            return None
        if fmt in ("saved_model", "onnx"):
            self.complain(("source", "trust_source"), f"a {fmt} model is a graph, with no "
                          "code of its own to trust; drop trust_source")
            return None
        if module is None:
            return Trust()
        local = local_module_file(self.path.parent, module)
        if local is None and not is_module_name(module):
            self.complain(("source", "custom_objects"), f"'{module}' is not a module name "
                          "(package.module, a .py file next to the recipe or installed)")
        return Trust(custom_objects=module, module_file=local)

    def _signature(self, path: Path, fmt: str | None, trust: Trust | None):
        """What the model file declares (inputs, outputs, layers), read once per plan
        without its toolchain. A .keras model that brings code is refused here, before
        anything runs (.h5 Lambdas are refused by the steps, before Keras reads them).
        None where the file cannot tell, or where its steps will say why it is unreadable."""
        import zipfile
        import zlib

        from edgebuild.toolchains import keras_files, signature

        if fmt == "onnx":
            try:
                return signature.onnx_signature(path)
            except (ValueError, OSError):
                return None  # prepare.onnx's checker says what is wrong with it
        if fmt != "keras" or (path.suffix != ".keras" and self._h5_checked(path)):
            return None
        try:
            config = keras_files.model_config(path)  # .keras: read and CRC-checked in full
        except (zipfile.BadZipFile, zlib.error, ValueError, OSError) as exc:
            if path.suffix == ".keras":
                self.complain(("source", "path"), f"'{path.name}' is damaged: its "
                              f"config.json cannot be read ({exc})")
            return None
        if trust is None and path.suffix == ".keras":
            code = keras_files.model_code(config)
            if code:
                self.complain(("source", "path"), keras_files.refusal(f"'{path.name}'", code))
        if not isinstance(config, dict):
            return None
        custom = trust is not None and trust.custom_objects is not None \
            and path.suffix != ".keras"  # .h5 configs do not say which classes are custom
        return signature.keras_signature(config, keras_files.keras_flavour(path), custom)

    def _h5_checked(self, path: Path) -> bool:
        """Whether this recipe passed with this .h5 file before: reading its config
        takes h5py (and numpy), 0.2 s or more, so no-op runs skip it while the recipe,
        the catalog and the file's stat, as the hashing stat cache keys it, are unchanged."""
        stat = path.stat()
        self.model_memo = hashlib.sha256("\0".join(
            ["h5 model checks", __version__, self.text, catalog_text(), str(path),
             *map(str, (stat.st_dev, stat.st_ino, stat.st_mtime_ns, stat.st_size))]
        ).encode()).hexdigest()
        return bool(self.memo and self.memo.seen(self.model_memo))


def _source_problem(path: Path, fmt: str) -> str | None:
    """What is plainly wrong with a source file, found without loading it (a model
    may come from anywhere; toolchains give poor messages for damaged files)."""
    import zipfile

    name = path.name
    if fmt == "saved_model":
        if not path.is_dir():
            return f"'{name}' is a file; a SavedModel is a folder with saved_model.pb"
        graphs = [path / f for f in ("saved_model.pb", "saved_model.pbtxt")
                  if (path / f).is_file()]
        if not graphs:
            return f"'{name}' has no saved_model.pb: it is not a SavedModel folder"
        size = graphs[0].stat().st_size
        if size == 0:
            return f"'{name}/{graphs[0].name}' is empty"
        if size >= PROTOBUF_LIMIT:
            return (f"'{name}/{graphs[0].name}' is {size / 2 ** 30:.1f} GiB, past the 2 GiB "
                    "a protocol buffer can hold; keep large constants as variables (which "
                    "a SavedModel stores beside the graph, in variables/)")
        return None
    if not path.is_file():
        return f"'{name}' is a folder; a {fmt} model is one file"
    size = path.stat().st_size
    if size == 0:
        return f"'{name}' is empty"
    if fmt == "keras" and path.suffix == ".keras":
        if not zipfile.is_zipfile(path):
            return (f"'{name}' is not a .keras archive (no zip directory: truncated, or "
                    "another format?)")
        with zipfile.ZipFile(path) as archive:
            if "config.json" not in archive.namelist():
                return f"'{name}' is a zip file without config.json, not a .keras model"
    elif fmt == "keras":  # .h5: HDF5, whose signature may follow a user block
        with open(path, "rb") as handle:
            head = handle.read(2056)
        if not any(head[at:at + 8] == HDF5_SIGNATURE for at in (0, 512, 1024, 2048)):
            return f"'{name}' is not an HDF5 file (no HDF5 signature): not a Keras .h5 model"
    elif fmt == "onnx" and size >= PROTOBUF_LIMIT:
        return (f"'{name}' is {size / 2 ** 30:.1f} GiB; ONNX files over 2 GiB must keep their "
                "weights as external data (onnx.save(..., save_as_external_data=True))")
    return None


def _infer_format(path: Path) -> str | None:
    if path.is_dir():
        return "saved_model" if (path / "saved_model.pb").exists() else None
    return {".keras": "keras", ".h5": "keras", ".hdf5": "keras", ".onnx": "onnx"}.get(
        path.suffix.lower())


def keras_flavour_of(path: Path) -> str:
    from edgebuild.toolchains.keras_files import keras_flavour

    return keras_flavour(path) if path.is_file() else "none"


"""Load a recipe: YAML in, schema-checked, resolved against the device catalog and the
model file, typed `Recipe` out, with every problem located (file, line, column, key).

The reader is assembled from one part per concern: device profiles (devices.py),
target slots (targets.py), cross-field rules (rules.py) and the source model
(sources.py); problems.py locates what they find.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Protocol

from edgebuild import __version__, yamlpos
from edgebuild.catalog import catalog_text
from edgebuild.errors import Problem, RecipeError
from edgebuild.recipe.devices import DeviceProfiles
from edgebuild.recipe.model import Dataset, Preprocess, Recipe, Training
from edgebuild.recipe.problems import dotted
from edgebuild.recipe.sources import SourceInspection
from edgebuild.recipe.targets import TargetSlots


class ValidationMemo(Protocol):
    """Remembers digests of recipes that passed schema validation, so that no-op runs
    skip importing jsonschema (repo.project's RecipeMemo, kept in the cache's state).
    None means always validate."""

    def seen(self, digest: str) -> bool: ...

    def add(self, digest: str) -> None: ...


def load_recipe(path: str | Path, memo: ValidationMemo | None = None) -> Recipe:
    path = Path(path)
    display = str(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise RecipeError([Problem(display, None, None, "", "no such recipe file")]) from None
    except (OSError, UnicodeDecodeError) as exc:
        problem = Problem(display, None, None, "", f"cannot read recipe: {exc}")
        raise RecipeError([problem]) from None
    try:
        doc = yamlpos.load(text)
    except yamlpos.YamlError as exc:
        raise RecipeError([Problem(display, exc.line, exc.column, dotted(exc.path),
                                   exc.message)]) from None
    return _RecipeReader(path.resolve(), display, text, doc, memo).resolve()



class _RecipeReader(DeviceProfiles, TargetSlots, SourceInspection):
    def __init__(self, path: Path, display: str, text: str, doc: yamlpos.Located,
                 memo: ValidationMemo | None):
        self.path, self.display, self.text, self.doc, self.memo = path, display, text, doc, memo
        self.problems: list[Problem] = []
        self.warnings: list[Problem] = []
        self.model_memo: str | None = None  # an .h5 model checked once, while unchanged

    def resolve(self) -> Recipe:
        data = self.doc.data
        if not isinstance(data, dict):
            self.complain((), "a recipe is a mapping with keys name, source, task and targets")
            self.fail_if_problems()
        digest = hashlib.sha256("\0".join(
            [__version__, self.text, catalog_text(), *_schema_texts()]).encode()).hexdigest()
        self.known_valid = bool(self.memo and self.memo.seen(digest))
        if not self.known_valid:
            from edgebuild.schema import validate

            for key_path, message, about_key in validate("recipe", data):
                self.complain(key_path, message, about_key)
            self.fail_if_problems()
        recipe = self._build(data, digest)
        self.fail_if_problems()
        if self.memo:
            self.memo.add(digest)
            if self.model_memo:
                self.memo.add(self.model_memo)
        return recipe

    def _build(self, data: dict, digest: str) -> Recipe:
        devices = self._devices(data.get("devices", {}))
        source = self._source(data["source"])
        raw_data = data.get("data", {})
        self._check_preprocess(raw_data.get("preprocess", {}), source)
        calibration = self._dataset(raw_data, "calibration")
        validation = self._dataset(raw_data, "validation")
        self.train = self._training(raw_data.get("train"))
        self.source = source
        self.task = data["task"]
        self.decode, decoder_file = self._decode(data.get("decode"))
        classifier_output = self._classifier_output(data.get("classifier_output"), validation)
        self.measures_task = self._measures_task(validation)
        targets = {name: self._target(name, spec, devices, calibration, validation)
                   for name, spec in data["targets"].items()}
        labels = self._existing(("labels",), data["labels"]) if "labels" in data else None
        warnings = sorted(self.warnings, key=lambda p: (p.line or 0, p.column or 0))
        return Recipe(
            path=self.path, name=data["name"], task=data["task"], source=source,
            preprocess=_preprocess(raw_data.get("preprocess", {})), targets=targets,
            labels=labels, calibration=calibration, validation=validation, train=self.train,
            decode=self.decode, decoder_file=decoder_file, classifier_output=classifier_output,
            text_digest=digest,
            warnings=tuple(str(w) for w in warnings))

    def _training(self, spec: dict | None) -> Training | None:
        if spec is None:
            return None
        path = self._existing(("data", "train", "path"), spec["path"])
        if path:
            self._check_samples("train", path, spec.get("count"), False)
            self._check_labels(path, spec["loss"])
        known = {k: spec[k] for k in ("count", "epochs", "batch_size", "learning_rate", "seed")
                 if k in spec}
        return Training(path=path or Path(spec["path"]), loss=spec["loss"], **known)

    def _dataset(self, data: dict, role: str) -> Dataset | None:
        spec = data.get(role)
        if spec is None:
            return None
        path = self._existing(("data", role, "path"), spec["path"])
        if path:
            self._check_samples(role, path, spec.get("count"), "annotations" in spec)
        # Missing annotations are reported here; for the rest of the recipe they are given.
        annotations = (self._existing(("data", role, "annotations"), spec["annotations"])
                       or Path(spec["annotations"]) if "annotations" in spec else None)
        return Dataset(path=path or Path(spec["path"]), annotations=annotations,
                       count=spec.get("count"))

    def _check_samples(self, role: str, path: Path, count: int | None, annotated: bool) -> None:
        """data.<role> holds samples, and at least `count` of them (else fewer were used)."""
        from edgebuild.recipe.data_checks import sample_problems

        for key_path, message in sample_problems(role, path, count, annotated):
            self.complain(key_path, message)

    def _check_labels(self, path: Path, loss: str) -> None:
        """Fine-tuning losses other than distill compare the model's outputs with labels."""
        from edgebuild.recipe.data_checks import LABELLED, is_labelled

        if loss != "distill" and not is_labelled(path):
            self.complain(("data", "train", "loss"), f"loss {loss} needs labels, and "
                          f"'{path.name}' has none (labels: {LABELLED}); add them, or use "
                          "loss: distill, which learns from the source model's outputs")

    def _existing(self, key_path: tuple, value: str) -> Path | None:
        path = (self.path.parent / value).resolve()
        if not path.exists():
            self.complain(key_path, f"'{value}' does not exist (looked for {path})")
            return None
        return path


def _preprocess(spec: dict) -> Preprocess:
    def triple(value, default):
        if value is None:
            return default
        return tuple(float(v) for v in value) if isinstance(value, list) else (float(value),) * 3

    return Preprocess(resize=tuple(spec["resize"]) if "resize" in spec else None,
                      scale=float(spec.get("scale", 1.0)),
                      mean=triple(spec.get("mean"), (0.0, 0.0, 0.0)),
                      std=triple(spec.get("std"), (1.0, 1.0, 1.0)),
                      layout=spec.get("layout", "NHWC"), color=spec.get("color", "RGB"))


def _schema_texts() -> list[str]:
    from edgebuild.schema import SCHEMAS, schema_text

    return [schema_text(name) for name in SCHEMAS]


"""Load a recipe: parse with positions, validate, resolve devices, check paths.

Every complaint becomes a located `Problem`, and all of them are reported at once,
before anything is hashed, built or written.
"""

from __future__ import annotations

import hashlib
from dataclasses import replace
from pathlib import Path
from typing import Protocol

from edgebuild import __version__, yamlpos
from edgebuild.catalog import catalog_text, load_catalog
from edgebuild.errors import Problem, RecipeError
from edgebuild.metrics import TASK_METRICS
from edgebuild.plugins import is_module_name, local_module_file
from edgebuild.recipe.model import (
    KERAS_SLOTS,
    SLOTS,
    Dataset,
    Device,
    Preprocess,
    Recipe,
    Source,
    Target,
    Training,
)
from edgebuild.steps.params import RUNGS, SLOT_PARAMS, Budget, QuantizeParams
from edgebuild.toolchains.keras_files import Trust

DEFAULT_RUNTIME = {"tflite": "litert", "onnx": "onnxruntime"}  # a device's other format
ON_BY_DEFAULT = {"convert", "validate", "bundle"}  # the rest run where a profile asks
QUANTIZE_MODES = {"tflite": {"fp16", "dynamic", "int8", "int16x8"},
                  "onnx": {"fp16", "dynamic", "int8"}}
# Built-in decoders and their options; any other name is a module:function plug-in.
_COMMON = ("score_threshold", "iou_threshold", "max_detections")
DECODERS = {"grid": _COMMON, "boxes-scores": (*_COMMON, "box_format", "activation",
                                              "background")}


class ValidationMemo(Protocol):
    """Remembers digests of recipes that passed schema validation, so that no-op runs
    skip importing jsonschema (the cache's RecipeMemo). None means always validate."""

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
        raise RecipeError([Problem(display, exc.line, exc.column, _dotted(exc.path),
                                   exc.message)]) from None
    return _Resolver(path.resolve(), display, text, doc, memo).resolve()


class _Resolver:
    def __init__(self, path: Path, display: str, text: str, doc: yamlpos.Located,
                 memo: ValidationMemo | None):
        self.path, self.display, self.text, self.doc, self.memo = path, display, text, doc, memo
        self.problems: list[Problem] = []
        self.warnings: list[Problem] = []
        self.model_memo: str | None = None  # an .h5 model checked once, while unchanged

    def complain(self, key_path: tuple, message: str, about_key: bool = False) -> None:
        self.problems.append(self._located(key_path, message, about_key))

    def warn(self, key_path: tuple, message: str) -> None:
        self.warnings.append(self._located(key_path, message, False))

    def _located(self, key_path: tuple, message: str, about_key: bool) -> Problem:
        line, column = self.doc.position(key_path, of_value=not about_key)
        return Problem(self.display, line, column, _dotted(key_path), message)

    def fail_if_problems(self) -> None:
        if self.problems:
            raise RecipeError(sorted(self.problems, key=lambda p: (p.line or 0, p.column or 0)))

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

    # -- devices ---------------------------------------------------------------------

    def _devices(self, own: dict) -> dict[str, Device]:
        profiles = dict(load_catalog(validate=not self.known_valid))
        for name, spec in own.items():
            base = spec.get("extends")
            if base is not None and base not in profiles:
                self.complain(("devices", name, "extends"),
                              f"'{base}' is not a known device (known: {', '.join(profiles)})")
                continue
            merged = dict(profiles.get(base, {})) if base else {}
            for slots in ("steps", "with_training_data"):
                merged[slots] = _merge_slots(merged.get(slots, {}), spec.get(slots, {}))
            merged["budget"] = {**merged.get("budget", {}), **spec.get("budget", {})}
            merged.update({k: v for k, v in spec.items()
                           if k not in ("extends", "steps", "with_training_data", "budget")})
            missing = [k for k in ("family", "runtime", "format") if k not in merged]
            if missing:
                self.complain(("devices", name), f"missing {', '.join(missing)} "
                              "(set them, or `extends:` a catalog device)")
                continue
            merged.setdefault("description", name)
            profiles[name] = merged
        return {name: _device(name, spec) for name, spec in profiles.items()
                if "format" in spec}

    def _target(self, name: str, spec: dict, devices: dict[str, Device],
                calibration: Dataset | None, validation: Dataset | None) -> Target | None:
        where = ("targets", name)
        device = devices.get(spec["device"])
        if device is None:
            self.complain((*where, "device"), f"'{spec['device']}' is not a known device "
                          f"(known: {', '.join(sorted(devices))})")
            return None
        fmt = spec.get("format", device.format)
        if fmt not in device.formats:
            self.complain((*where, "format"), f"'{fmt}' is not a format of device "
                          f"'{device.name}' (choose one of: {', '.join(device.formats)})")
        profile = device.steps
        if self.train is not None:  # e.g. cloud-gpu clusters once it can fine-tune
            profile = _merge_slots(profile, device.with_training_data)
        slots = _merge_slots(profile, {k: v for k, v in spec.items() if k in SLOTS})
        steps = {}
        for slot in SLOTS:
            value = slots.get(slot, {} if slot in ON_BY_DEFAULT else False)
            if value is False:
                continue
            steps[slot] = SLOT_PARAMS[slot].from_dict(value if isinstance(value, dict) else {})
        self._check_target(where, device, fmt, steps, calibration, validation)
        self._check_optimizations(where, spec, steps)
        self._check_layers(where, spec, steps)
        budget = self._budget(where, device, spec.get("budget", {}), steps)
        fallback = self._fallback(where, spec.get("fallback"), device, fmt, steps, budget)
        fallback = tuple((rung, _resolved_quantize(q, fmt)) for rung, q in fallback)
        if "quantize" in steps:
            steps["quantize"] = _resolved_quantize(steps["quantize"], fmt)
        if fallback:
            steps = _with_quantize(steps, fallback[0][1])  # the ladder starts at its top
        runtime = spec.get("runtime") or (device.runtime if fmt == device.format
                                          else DEFAULT_RUNTIME[fmt])
        return Target(name=name, device=device, format=fmt, runtime=runtime, steps=steps,
                      budget=budget, fallback=fallback)

    # -- validation: budgets, fallback ladders, decoders ------------------------------

    def _measures_task(self, validation: Dataset | None) -> bool:
        """Whether validation can compute task metrics (and so accuracy drops). For
        classification that depends on labels in the data (an .npz's y, class folders)."""
        from edgebuild.recipe.data_checks import is_labelled

        if validation is None:
            return False
        if self.task == "classification":  # a missing path is reported already
            return not validation.path.exists() or is_labelled(validation.path)
        return bool(validation.annotations and self.decode)

    def _budget(self, where: tuple, device: Device, own: dict, steps: dict) -> Budget:
        # A profile's default drop budget applies where drops can be measured; a
        # target's own must be measurable.
        defaults = dict(device.budget)
        if not self.measures_task:
            defaults = {k: v for k, v in defaults.items() if not k.startswith("max_drop")}
        if self.task == "detection" and not self.decode:  # no boxes to agree on
            defaults.pop("min_agreement", None)
        budget = Budget.from_dict({**defaults, **own})
        drops = [k for k in own if k.startswith("max_drop") or k == "metric"]
        if drops and not self.measures_task and "validate" in steps:
            need = ("data.validation.annotations and `decode:`" if self.task == "detection"
                    else "labelled data.validation (an .npz with y, or images in class "
                    "sub-folders)")
            self.complain((*where, "budget", drops[0]), f"an accuracy drop needs task metrics, "
                          f"which need {need}; add them or drop `{drops[0]}`")
        if budget.metric and budget.metric not in TASK_METRICS[self.task]:
            self.complain((*where, "budget", "metric"), f"'{budget.metric}' is not a "
                          f"{self.task} metric (choose one of: "
                          f"{', '.join(TASK_METRICS[self.task])})")
        if budget.min_agreement is not None and self.task == "detection" and not self.decode:
            self.complain((*where, "budget", "min_agreement"), "box agreement compares "
                          "decoded boxes; add `decode:` to the recipe")
        if budget.min_speedup is not None and "quantize" not in steps and not steps.get("prune") \
                and not steps.get("cluster"):
            self.complain((*where, "budget", "min_speedup"), "this target ships the float "
                          "artifact itself, so there is nothing to be faster than")
        if own and "validate" not in steps:
            self.complain((*where, "budget"), "a budget is checked by validation, which this "
                          "target switches off; drop `validate: false` or the budget")
        return budget

    def _fallback(self, where: tuple, rungs: list | None, device: Device, fmt: str,
                  steps: dict, budget: Budget) -> tuple:
        if not rungs:
            return ()
        at = (*where, "fallback")
        if "validate" not in steps:
            self.complain(at, "a fallback ladder steps down while the budget fails, which "
                          "validation finds out; drop `validate: false` or the ladder")
        elif not budget:
            self.complain(at, "a fallback ladder steps down while the budget fails, so it "
                          "needs a budget; add `budget:` to the target")
        base = steps.get("quantize") or QuantizeParams()
        ladder = []
        for i, name in enumerate(rungs):
            overrides = RUNGS[name]
            params = None
            if overrides is not None:
                full_integer = overrides["mode"] == "int8" and "keep_float" not in overrides
                params = QuantizeParams.from_dict(
                    {**overrides, "io": base.io if full_integer else "float32"})
            problem = _rung_problem(name, params, device, fmt)
            if problem:
                self.complain((*at, i), problem)
            ladder.append((name, params))
        return tuple(ladder)

    def _decode(self, spec) -> tuple[dict | None, Path | None]:
        if spec is None:
            return None, None
        decode = {"name": spec} if isinstance(spec, str) else dict(spec)
        name = decode["name"]
        if ":" not in name:
            if name not in DECODERS:
                self.complain(("decode",), f"'{name}' is not a built-in decoder (built in: "
                              f"{', '.join(sorted(DECODERS))}); for your own, name it as "
                              "package.module:function")
                return decode, None
            unknown = sorted(set(decode) - set(DECODERS[name]) - {"name"})
            if unknown:
                self.complain(("decode", unknown[0]), f"the {name} decoder has no option "
                              f"'{unknown[0]}' (options: {', '.join(DECODERS[name])})")
            return decode, None
        module, _, function = name.partition(":")
        # A plug-in next to the recipe is an input: editing it re-runs validation.
        local = local_module_file(self.path.parent, module)
        if local is None and not (function and is_module_name(module)):
            self.complain(("decode",), f"'{name}' is not of the form package.module:function")
        return decode, local

    def _check_target(self, where, device, fmt, steps, calibration, validation) -> None:
        quantize = steps.get("quantize")
        if quantize is not None:
            if quantize.mode not in QUANTIZE_MODES[fmt]:
                self.complain((*where, "quantize", "mode"),
                              f"'{quantize.mode}' quantization is not available for {fmt} "
                              f"(choose one of: {', '.join(sorted(QUANTIZE_MODES[fmt]))})")
            if quantize.mode in ("int8", "int16x8") and calibration is None:
                self.complain((*where, "quantize"), f"{quantize.mode} quantization calibrates "
                              "on data.calibration; add it, or choose mode fp16 or dynamic")
            self._check_quantize((*where, "quantize"), fmt, quantize, steps.get("compile"))
        if device.integer_only:
            if quantize is None or quantize.mode != "int8":
                self.complain((*where, "quantize"), f"device '{device.name}' runs integer ops "
                              "only; it needs `quantize: {mode: int8, io: int8}`")
            elif quantize.io == "float32":
                self.complain((*where, "quantize", "io"), f"device '{device.name}' runs integer "
                              "ops only, so float32 input and output would leave float ops; "
                              "use io: int8 or uint8")
            elif quantize.keep_float:
                self.complain((*where, "quantize", "keep_float"), f"device '{device.name}' runs "
                              "integer ops only; it cannot keep layers in float")
        if "validate" in steps and validation is None:
            self.complain((*where, "validate"), "validation needs data.validation; add it, "
                          "or set `validate: false` to ship unvalidated")
        compile_ = steps.get("compile")
        if compile_ is not None and (compile_.compiler == "edgetpu") != (fmt == "tflite"):
            self.complain((*where, "compile", "compiler"),
                          f"the {compile_.compiler} compiler does not take {fmt} models")
        if compile_ is not None and compile_.timing_cache is not None:
            self._existing((*where, "compile", "timing_cache"), compile_.timing_cache)

    def _check_quantize(self, at: tuple, fmt: str, quantize: QuantizeParams, compile_) -> None:
        """Options that only some formats and modes take, and TensorRT's limits."""
        mode, tflite = quantize.mode, fmt == "tflite"
        io_ok = (quantize.io == "float32" or (quantize.io in ("int8", "uint8") and mode == "int8"
                                               and tflite)
                 or (quantize.io == "float16" and mode == "fp16" and not tflite))
        if not io_ok:
            self.complain((*at, "io"), f"io: {quantize.io} is for full-integer TFLite models "
                          "(int8, uint8) or fp16 ONNX models (float16); this target quantizes "
                          f"{fmt} to {mode}")
        if not quantize.per_channel and not (mode in ("int8", "int16x8") or
                                             (mode == "dynamic" and not tflite)):
            self.complain((*at, "per_channel"), "per_channel applies to int8 and int16x8 "
                          "weights (and ONNX dynamic); drop it")
        if tflite and quantize.keep_float and (mode != "int8" or quantize.io != "float32"):
            self.complain((*at, "keep_float"), "keep_float leaves layers out of full-integer "
                          "TFLite quantization; it needs mode int8 and io float32")
        if not tflite and quantize.keep_float.sensitive:
            self.complain((*at, "keep_float", "sensitive"), "choosing the most sensitive layers "
                          "uses TFLite's QuantizationDebugger; for ONNX, name the nodes or op "
                          "types to keep in float with keep_float.layers or keep_float.ops")
        if quantize.calibration_method is not None and (tflite or mode != "int8"):
            self.complain((*at, "calibration_method"), "calibration_method is for ONNX static "
                          "int8 (TFLite calibrates with min/max); drop it")
        if quantize.weight_type is not None and (tflite or mode != "dynamic"):
            self.complain((*at, "weight_type"), "weight_type is for ONNX dynamic quantization; "
                          "drop it")
        if compile_ is not None and compile_.compiler == "tensorrt" and mode == "dynamic":
            self.complain((*at, "mode"), "TensorRT does not run dynamically quantized models; "
                          "use fp16, or int8 (static QDQ, calibrated)")

    def _check_optimizations(self, where: tuple, spec: dict, steps: dict) -> None:
        """prune and cluster: a Keras 2 source, and fine-tuning where the options need it."""
        for slot in KERAS_SLOTS:
            params = steps.get(slot)
            if params is None:
                continue
            at = (*where, slot) if slot in spec else (*where, "device")
            source = self.source
            # A missing or damaged source is reported already; which Keras it is, unknown.
            unread = any(p.key_path == "source.path" for p in self.problems)
            if source.format in ("onnx", "saved_model") or (
                    not unread and _keras_flavour(source.path) != "tf_keras"):
                what = {"onnx": "an ONNX model", "saved_model": "a SavedModel"}.get(
                    source.format, "a Keras 3 model")
                self.complain(at, f"{slot} rewrites Keras 2 (tf_keras) models with tfmot, and the "
                              f"source is {what}; save the source with tf_keras as .keras/.h5, "
                              f"or set `{slot}: false`")
                continue
            epochs = params.epochs if params.epochs is not None else (
                self.train.epochs if self.train else 0)
            if epochs and self.train is None:
                self.complain((*at, "epochs"), f"{slot} fine-tunes for {epochs} epochs on "
                              "data.train, which the recipe does not give; add data.train")
            elif not epochs:
                how = ("give it epochs to fine-tune on data.train" if self.train
                       else "add data.train to fine-tune")
                self.warn(at, f"{slot} runs one-shot, without fine-tuning, so accuracy may "
                          f"drop; {how}")
            if slot == "prune":
                self._check_prune(at, spec.get("prune"), params, epochs)
            steps[slot] = replace(params, **self._resolved(slot, params, epochs, steps))

    def _classifier_output(self, name: str | None, validation: Dataset | None) -> str | None:
        """The output holding a classifier's scores, checked against the model's outputs."""
        from edgebuild.recipe.model_checks import scores_output

        resolved, problems = scores_output(self.task, name, self.signature,
                                           validation is not None)
        for key_path, message in problems:
            self.complain(key_path, message)
        return resolved

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

    def _check_preprocess(self, spec: dict, source: Source) -> None:
        """data.preprocess against the model's image input: its layout and size."""
        from edgebuild.recipe.model_checks import preprocess_problems

        if self.signature is not None:
            for key_path, message in preprocess_problems(spec, self.signature,
                                                         source.input_shapes):
                self.complain(key_path, message)

    def _check_layers(self, where: tuple, spec: dict, steps: dict) -> None:
        """prune and cluster against the layers the model's config lists, so that a layer
        tfmot refuses is a recipe error, not a failed step."""
        from edgebuild.recipe.model_checks import layer_problems

        for slot in KERAS_SLOTS:
            if slot in steps and self.signature is not None:
                at = (*where, slot) if slot in spec else (*where, "device")
                for key_path, message in layer_problems(at, slot, steps[slot], self.signature):
                    self.complain(key_path, message)

    def _resolved(self, slot: str, params, epochs: int, steps: dict) -> dict:
        """Defaults that depend on the rest of the recipe, filled in once, so that step
        keys and lock files record what actually runs."""
        tunes = bool(epochs and self.train)  # else one-shot, or already a recipe error
        resolved = {"epochs": epochs, "learning_rate": (
            params.learning_rate or self.train.learning_rate) if tunes else None}
        if slot == "prune":
            resolved["schedule"] = params.schedule or ("polynomial" if epochs else "constant")
            if params.m_by_n and params.m_by_n[0] < params.m_by_n[1]:
                resolved["sparsity"] = params.m_by_n[0] / params.m_by_n[1]
        elif params.preserve_sparsity is None:
            resolved["preserve_sparsity"] = "prune" in steps
        return resolved

    def _check_prune(self, at: tuple, raw, params, epochs: int) -> None:
        raw = raw if isinstance(raw, dict) else {}
        if params.schedule == "polynomial" and not epochs:
            self.complain((*at, "schedule"), "a polynomial schedule ramps sparsity up while "
                          "fine-tuning; without data.train use schedule: constant")
        if params.structure is not None:
            m, n = params.m_by_n
            if m >= n:
                self.complain((*at, "structure"), f"'{params.structure}': m zeros in every n "
                              "weights needs m < n, e.g. 2:4")
            elif "sparsity" in raw and abs(raw["sparsity"] - m / n) > 1e-9:
                self.complain((*at, "sparsity"), f"structure {params.structure} fixes the "
                              f"sparsity at {m / n:g}; drop `sparsity`")

    # -- files -----------------------------------------------------------------------

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
        from edgebuild.toolchains.onnx_files import external_data, location_problem

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


HDF5_SIGNATURE = b"\x89HDF\r\n\x1a\n"
PROTOBUF_LIMIT = 2 ** 31  # bytes: ONNX files and SavedModel graphs are protocol buffers


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


def _device(name: str, spec: dict) -> Device:
    return Device(name=name, description=spec.get("description", name), family=spec["family"],
                  runtime=spec["runtime"], format=spec["format"],
                  formats=tuple(spec.get("formats", [spec["format"]])),
                  integer_only=spec.get("integer_only", False), steps=spec.get("steps", {}),
                  notes=spec.get("notes", ""),
                  with_training_data=spec.get("with_training_data", {}),
                  budget=spec.get("budget", {}))


def _resolved_quantize(quantize: QuantizeParams | None, fmt: str) -> QuantizeParams | None:
    """ONNX Runtime's defaults written out, so that keys and lock files record them."""
    if quantize is None or fmt != "onnx":
        return quantize
    if quantize.mode == "int8" and quantize.calibration_method is None:
        return replace(quantize, calibration_method="minmax")
    if quantize.mode == "dynamic" and quantize.weight_type is None:
        return replace(quantize, weight_type="int8")
    return quantize


def _with_quantize(steps: dict, quantize: QuantizeParams | None) -> dict:
    """The target's slots with the quantize slot replaced (None: no quantization)."""
    replaced = {slot: params for slot, params in steps.items() if slot != "quantize"}
    if quantize is not None:
        replaced["quantize"] = quantize
    return {slot: replaced[slot] for slot in SLOTS if slot in replaced}


def _rung_problem(name: str, params: QuantizeParams | None, device: Device,
                  fmt: str) -> str | None:
    if device.integer_only and (params is None or params.mode != "int8"
                                or params.keep_float):
        return (f"device '{device.name}' runs integer ops only, so the rung '{name}' cannot "
                "run there; its ladder can only use int8 and int8-per-tensor")
    if params is None:
        return None
    if params.mode not in QUANTIZE_MODES[fmt]:
        return (f"the rung '{name}' needs {params.mode} quantization, which is not available "
                f"for {fmt} (rungs for {fmt}: " + ", ".join(
                    r for r, o in RUNGS.items() if o is None or (
                        o["mode"] in QUANTIZE_MODES[fmt] and (fmt == "tflite"
                                                              or "keep_float" not in o)))
                + ")")
    if fmt != "tflite" and params.keep_float.sensitive:
        return f"the rung '{name}' is TFLite-only (it uses TFLite's QuantizationDebugger)"
    return None


def _merge_slots(base: dict, override: dict) -> dict:
    """Override a profile's slots: `false` switches off, a mapping merges over the
    profile's parameters, `true` keeps them."""
    merged = dict(base)
    for slot, value in override.items():
        if value is True:
            merged[slot] = merged.get(slot) or {}
        elif isinstance(value, dict) and isinstance(merged.get(slot), dict):
            merged[slot] = {**merged[slot], **value}
        else:
            merged[slot] = value
    return merged


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


def _infer_format(path: Path) -> str | None:
    if path.is_dir():
        return "saved_model" if (path / "saved_model.pb").exists() else None
    return {".keras": "keras", ".h5": "keras", ".hdf5": "keras", ".onnx": "onnx"}.get(
        path.suffix.lower())


def _keras_flavour(path: Path) -> str:
    from edgebuild.toolchains.keras_files import keras_flavour

    return keras_flavour(path) if path.is_file() else "none"


def _schema_texts() -> list[str]:
    from edgebuild.schema import SCHEMAS, schema_text

    return [schema_text(name) for name in SCHEMAS]


def _dotted(key_path: tuple) -> str:
    out = ""
    for part in key_path:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


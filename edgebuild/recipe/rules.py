"""Cross-field rules: what a target's steps, its device, its budget and ladder and
the recipe's data must agree on, and defaults that depend on the rest of the recipe."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

from edgebuild.metrics import TASK_METRICS
from edgebuild.plugins import is_module_name, local_module_file
from edgebuild.recipe.model import KERAS_SLOTS, Dataset, Device, Source, Training
from edgebuild.recipe.problems import ProblemLog
from edgebuild.recipe.sources import keras_flavour_of
from edgebuild.steps.params import RUNGS, Budget, QuantizeParams

QUANTIZE_MODES = {"tflite": {"fp16", "dynamic", "int8", "int16x8"},
                  "onnx": {"fp16", "dynamic", "int8"}}
_COMMON = ("score_threshold", "iou_threshold", "max_detections")
DECODERS = {"grid": _COMMON, "boxes-scores": (*_COMMON, "box_format", "activation",
                                              "background")}


class TargetRules(ProblemLog):
    path: Path
    task: str
    train: Training | None
    decode: dict | None
    measures_task: bool

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
            problem = _rung_problem(name, params, device, fmt) or (
                params is not None and params.qat is not None and self._qat_problem(params, fmt))
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
        if quantize.qat is not None:
            problem = self._qat_problem(quantize, fmt)
            if problem:
                self.complain((*at, "qat"), problem)
            elif self.signature is not None:
                self._warn_untrained_layers((*at, "qat"), quantize)
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
            what = self._not_keras2()
            if what:
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

    def _not_keras2(self) -> str | None:
        """What the source is, if not a Keras 2 model that tfmot can rewrite."""
        source = self.source
        # A missing or damaged source is reported already; which Keras it is, unknown.
        unread = any(p.key_path == "source.path" for p in self.problems)
        if source.format in ("onnx", "saved_model") or (
                not unread and keras_flavour_of(source.path) != "tf_keras"):
            return {"onnx": "an ONNX model", "saved_model": "a SavedModel"}.get(
                source.format, "a Keras 3 model")
        return None

    def _qat_problem(self, quantize: QuantizeParams, fmt: str) -> str | None:
        """Why quantization-aware training cannot run here, if it cannot."""
        if fmt != "tflite":
            # tf2onnx turns tfmot's fake quantization into QDQ on activations only (the
            # weights become float constants), and those ranges are asymmetric, which
            # TensorRT does not run: an ONNX model would not be the int8 that trained.
            return ("quantization-aware training makes TFLite int8 models; ONNX targets are "
                    "quantized after training by ONNX Runtime (drop qat, or use format: tflite)")
        if quantize.mode != "int8":
            return f"quantization-aware training trains for int8, not {quantize.mode}"
        if self.train is None:
            return ("quantization-aware training fine-tunes on data.train, which the recipe "
                    "does not give; add data.train (path, loss) or drop qat")
        what = self._not_keras2()
        if what:
            return (f"quantization-aware training rewrites Keras 2 (tf_keras) models with "
                    f"tfmot, and the source is {what}; save it with tf_keras as .keras/.h5")
        if not quantize.per_channel:
            return ("tfmot's quantization-aware training quantizes kernels per channel; "
                    "drop per_channel: false")
        if quantize.keep_float.sensitive:
            return ("keep_float.sensitive chooses layers after post-training quantization; "
                    "with qat, name the layers to keep in float with keep_float.layers")
        return None

    def _warn_untrained_layers(self, at: tuple, quantize: QuantizeParams) -> None:
        from edgebuild.toolchains.tfmot_layers import not_trained_quantized

        left = not_trained_quantized(list(self.signature.layers), quantize.keep_float.layers)
        if left:
            listing = ", ".join(f"'{layer.name}' ({layer.kind})" for layer in left)
            self.warn(at, f"tfmot has no quantization-aware training rule for {listing}: "
                      "they train in float and are quantized after training, calibrated "
                      "on data.calibration; to keep them in float instead, list them in "
                      "quantize.keep_float.layers")

    def resolved_qat(self, quantize: QuantizeParams | None) -> QuantizeParams | None:
        """qat's epochs and learning rate written out: data.train's epochs, and a tenth
        of its rate, since QAT fine-tunes a trained model (at data.train's own rate the
        example detector lost 3 mAP points; at a tenth, 0.4)."""
        if quantize is None or quantize.qat is None or self.train is None:
            return quantize
        qat = quantize.qat
        return replace(quantize, qat=replace(
            qat, epochs=qat.epochs or self.train.epochs,
            learning_rate=qat.learning_rate or self.train.learning_rate / 10))

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


def resolved_quantize(quantize: QuantizeParams | None, fmt: str) -> QuantizeParams | None:
    """ONNX Runtime's defaults written out, so that keys and lock files record them."""
    if quantize is None or fmt != "onnx":
        return quantize
    if quantize.mode == "int8" and quantize.calibration_method is None:
        return replace(quantize, calibration_method="minmax")
    if quantize.mode == "dynamic" and quantize.weight_type is None:
        return replace(quantize, weight_type="int8")
    return quantize


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


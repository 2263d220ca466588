"""Compile a recipe into the step graph, one chain per target.

This is where the device guidance becomes structure: which convert variant a format
needs, what quantize consumes, and what validate compares against. It only builds
data; nothing here imports a toolchain.
"""

from __future__ import annotations

from dataclasses import asdict, replace
from typing import TYPE_CHECKING

from edgebuild.graph import Graph, Node
from edgebuild.recipe.model import KERAS_SLOTS, Recipe, Target

if TYPE_CHECKING:
    from edgebuild.toolchains.gpu_probe import NvidiaHost

# A model a step made, as ((node id, output), its format: "keras" or "saved_model").
Made = tuple[tuple[str, str], str]


def build_graph(recipe: Recipe, rungs: dict[str, int] | None = None,
                   gpu_host: NvidiaHost | None = None) -> Graph:
    """`rungs`: how far down its fallback ladder each target has gone (default: the top).
    `gpu_host`: where TensorRT engines would be built (default: this machine)."""
    graph = Graph()
    for target in recipe.targets.values():
        _add_target(graph, recipe, target, (rungs or {}).get(target.name, 0), gpu_host)
    return graph


def _add(graph: Graph, recipe: Recipe, node: Node, target: str) -> str:
    """Add `node`; where it loads a Keras model the recipe trusts, with that trust in
    its key and the custom-objects module among its inputs."""
    trust = recipe.source.trust
    if trust is not None and node.impl.loads_keras:
        files = dict(node.files)
        if trust.module_file is not None:
            files["custom_objects"] = trust.module_file
        node = replace(node, params={**node.params, "trust_source": trust.to_dict()},
                       files=files)
    return graph.add(node, target)


def _add_target(graph: Graph, recipe: Recipe, target: Target, rung: int,
                gpu_host: NvidiaHost | None) -> None:
    name = target.name
    device = {**target.device.profile(), "format": target.format, "runtime": target.runtime}

    # The plain float conversion: the artifact when nothing else runs, and what
    # validate measures speed-ups against. An ONNX source reaches TFLite through
    # onnx2tf's SavedModel; pruned/clustered Keras models through their own conversion.
    tf_model = _add_onnx2tf(graph, recipe, target)
    float_id = _add(graph, recipe, _convert_node(recipe, target, tf_model), name)
    keras = _add_optimizations(graph, recipe, target)

    # A fallback ladder: every rung down to the current one is built and validated;
    # the earlier rungs' rejected verdicts go into the bundle, as the reason for this one.
    rungs = target.fallback[:rung + 1] or [(None, target.steps.get("quantize"))]
    verdicts = []
    for rung_name, rung_quantize in rungs:
        artifact = _add_artifact(graph, recipe, target, float_id, keras or tf_model,
                                 rung_quantize)
        if "validate" in target.steps:
            verdicts.append((_add_validation(graph, recipe, target, artifact, float_id,
                                             rung_name), "verdict"))
    quantize = rungs[-1][1]  # the current rung's: what the bundle ships
    verdict, rejected = (verdicts[-1], verdicts[:-1]) if verdicts else (None, [])
    if target.fallback:
        graph.rungs[name] = rung
    if verdict:
        graph.gates.add(verdict[0])

    deps = {"model": artifact, **_add_compile(graph, recipe, target, artifact, device,
                                              gpu_host)}
    if verdict:
        deps["verdict"] = verdict
    deps.update({f"rejected_{i}": v for i, v in enumerate(rejected)})
    _add_bundle(graph, recipe, target, quantize, deps, device)


def _add_compile(graph: Graph, recipe: Recipe, target: Target, artifact: tuple[str, str],
                 device: dict, gpu_host: NvidiaHost | None) -> dict[str, tuple[str, str]]:
    """The device compiler's steps, if the target has one; the bundle's inputs from them."""
    compile_ = target.steps.get("compile")
    if compile_ is None:
        return {}
    if compile_.compiler == "tensorrt":
        return _add_tensorrt(graph, recipe, target, artifact, device, gpu_host)
    from edgebuild.toolchains import edgetpu  # the Edge TPU compiler: always deferred

    node = Node(f"compile.{compile_.compiler}", compile_.to_dict(), deps={"model": artifact},
                device=device)
    graph.deferred[target.name] = edgetpu.deferral()
    return {"build": (_add(graph, recipe, node, target.name), "build")}


def _add_bundle(graph: Graph, recipe: Recipe, target: Target, quantize, deps: dict,
                device: dict) -> None:
    name = target.name
    files = {"labels": recipe.labels} if recipe.labels else {}
    params = {"recipe": recipe.name, "task": recipe.task, "target": name,
              "precision": _precision(target, quantize),
              "input_layout": _artifact_layout(recipe, target)}
    if target.fallback:
        params["fallback"] = [r for r, _ in target.fallback]
    bundle = Node("bundle", params, deps=deps, files=files, device=device,
                  chain=tuple(graph.target_chains[name]))
    _add(graph, recipe, bundle, name)


def _add_tensorrt(graph: Graph, recipe: Recipe, target: Target, artifact: tuple[str, str],
                  device: dict, gpu_host: NvidiaHost | None) -> dict[str, tuple[str, str]]:
    """The engine build, or its deferred script, and the engine's own validation where
    it can be built. Returns the bundle's inputs from these steps."""
    from edgebuild.toolchains import gpu_probe

    host = gpu_host or gpu_probe.host()
    compile_ = target.steps["compile"]
    files = {}
    if compile_.timing_cache:
        files["timing_cache"] = (recipe.folder / compile_.timing_cache).resolve()
    # Engines do not port across GPUs or TensorRT versions: the host's GPU, compute
    # capability and TensorRT version are in the key, with the compatibility level.
    node = Node("compile.tensorrt", compile_.to_dict(), deps={"model": artifact}, files=files,
                device={**device, "host": host.key()})
    compile_id = _add(graph, recipe, node, target.name)
    if host.deferral:
        graph.deferred[target.name] = host.deferral
        return {"build": (compile_id, "build")}
    deps = {"engine": (compile_id, "engine"), "timing_cache": (compile_id, "timing_cache")}
    if "validate" in target.steps:
        engine_verdict = _add_validation(graph, recipe, target, deps["engine"], None, None,
                                         variant="tensorrt", device={"host": host.key()})
        graph.gates.add(engine_verdict)
        deps["engine_verdict"] = (engine_verdict, "verdict")
    return deps


def _add_artifact(graph: Graph, recipe: Recipe, target: Target, float_id: str,
                  model: Made | None, quantize) -> tuple[str, str]:
    """The artifact before any compile step: float, or quantized with `quantize`.
    `model`: the TF model a step made (pruned/clustered Keras, onnx2tf's SavedModel),
    None for the source itself."""
    artifact = (float_id, "model")
    if model is not None and (target.format == "onnx" or quantize is None):
        converted = _convert_node(recipe, target, model)
        artifact = (_add(graph, recipe, converted, target.name), "model")
    if quantize is None:
        return artifact
    params = {**quantize.to_dict(), "source_format": recipe.source.format}
    if target.format == "tflite":
        # The TFLite converter quantizes while converting, so it starts again from
        # the TF model (the source, or the one a step made).
        files, deps = {}, {}
        if model is None:
            files["model"] = recipe.source.path
        else:
            deps["model"], params["source_format"] = model
        params["after"] = [slot for slot in KERAS_SLOTS if slot in target.steps]
        params["integer_only"] = target.device.integer_only
        if quantize.mode in ("int8", "int16x8"):
            params["calibration"] = _data_params(recipe, recipe.calibration,
                                                 _artifact_layout(recipe, target))
            files["calibration"] = recipe.calibration.path
        if quantize.qat is not None:
            _add_training_inputs(recipe, params, files)
        node = Node("quantize.tflite", params, files=files, deps=deps)
    else:
        files = {}
        if quantize.mode == "int8":
            params["calibration"] = _data_params(recipe, recipe.calibration)
            files["calibration"] = recipe.calibration.path
            compile_ = target.steps.get("compile")
            # TensorRT executes symmetric int8 only; ONNX Runtime's CPU kernels prefer
            # asymmetric uint8 activations.
            tensorrt = compile_ is not None and compile_.compiler == "tensorrt"
            params["symmetric"] = tensorrt
            if tensorrt:
                # TensorRT's ONNX parser takes DequantizeLinear of int8 (or fp8, int4)
                # only: int32 biases stay float, and TensorRT fuses them itself. Only
                # TensorRT targets have the parameter, so other targets keep their keys.
                params["quantize_bias"] = False
        node = Node("quantize.onnx", params, deps={"model": artifact}, files=files)
    return _add(graph, recipe, node, target.name), "model"


def _add_onnx2tf(graph: Graph, recipe: Recipe, target: Target) -> Made | None:
    """For an ONNX source on a TFLite target: the prepared ONNX model, then onnx2tf's
    NHWC SavedModel of it, where the TFLite converter starts. None otherwise."""
    if recipe.source.format != "onnx" or target.format != "tflite":
        return None
    prepared = _add(graph, recipe, _prepare_node(recipe), target.name)
    node = Node("convert.onnx2tf", {"layout": recipe.preprocess.layout},
                deps={"model": (prepared, "model")})
    return (_add(graph, recipe, node, target.name), "model"), "saved_model"


def _add_optimizations(graph: Graph, recipe: Recipe, target: Target) -> Made | None:
    """prune then cluster, each a Keras model in, a Keras model out. None if neither runs."""
    model = None  # None: the source file itself
    for slot in KERAS_SLOTS:
        step = target.steps.get(slot)
        if step is None:
            continue
        params = step.to_dict()  # epochs, schedule etc. resolved by the recipe loader
        files, deps = {}, {}
        if model is None:
            files["model"] = recipe.source.path
        else:
            deps["model"] = model
        if step.epochs:
            _add_training_inputs(recipe, params, files)
        model = (_add(graph, recipe, Node(f"{slot}.tfmot", params, files=files, deps=deps),
                           target.name), "model")
    return (model, "keras") if model is not None else None


def _add_training_inputs(recipe: Recipe, params: dict, files: dict) -> None:
    """What a fine-tuning step (prune, cluster, quantization-aware training) reads."""
    train = recipe.train
    params["train"] = {**train.to_dict(), "preprocess": asdict(recipe.preprocess)}
    files["train"] = train.path
    if train.loss == "distill":
        files["teacher"] = recipe.source.path  # outputs to match: the float source
    elif recipe.labels:
        files["labels"] = recipe.labels  # class order for class-folder datasets


def _convert_node(recipe: Recipe, target: Target, model: Made | None = None) -> Node:
    params = {**target.steps["convert"].to_dict(), "source_format": recipe.source.format}
    files, deps = {}, {}
    if model is not None:
        deps["model"], params["source_format"] = model
    else:
        files.update(recipe.source.files())
    if target.format == "tflite":  # an ONNX source comes as onnx2tf's SavedModel
        params.pop("opset")
        return Node("convert.tflite", params, files=files, deps=deps)
    if params["source_format"] == "onnx":
        return _prepare_node(recipe)
    return Node("convert.onnx", params, files=files, deps=deps)


def _prepare_node(recipe: Recipe) -> Node:
    """An ONNX source checked, upgraded where needed, shapes fixed (steps/prepare.py)."""
    params = {"input_shapes": recipe.source.input_shapes, **_external_data(recipe)}
    return Node("prepare.onnx", params, files=recipe.source.files())


def _artifact_layout(recipe: Recipe, target: Target) -> str:
    """The layout the target's artifact takes images in: the source's, except that
    onnx2tf makes NHWC TFLite models of NCHW ONNX ones."""
    if recipe.source.format == "onnx" and target.format == "tflite":
        return "NHWC"
    return recipe.preprocess.layout


def _add_validation(graph: Graph, recipe: Recipe, target: Target, artifact: tuple[str, str],
                    float_id: str | None, rung: str | None, variant: str | None = None,
                    device: dict | None = None) -> str:
    data = _data_params(recipe, recipe.validation)
    task = {"task": recipe.task, "decode": recipe.decode}
    if recipe.classifier_output:  # absent otherwise, so that keys from before it stay
        task["classifier_output"] = recipe.classifier_output
    files = {"data": recipe.validation.path}
    for name, path in (("annotations", recipe.validation.annotations),
                       ("labels", recipe.labels), ("decoder", recipe.decoder_file)):
        if path is not None:
            files[name] = path
    # The source model's outputs and metrics on the validation set, computed once for
    # all targets.
    source_runtime = "onnx" if recipe.source.format == "onnx" else "tf"
    baseline = Node(f"baseline.{source_runtime}", {"data": data, **task,
                                            "source_format": recipe.source.format,
                                            **_external_data(recipe)},
                    files={**files, **recipe.source.files()})
    baseline_id = _add(graph, recipe, baseline, target.name)
    params = {**target.steps["validate"].to_dict(), "data": data, **task,
              "budget": target.budget.to_dict(), "rung": rung}
    if variant is None and _artifact_layout(recipe, target) != recipe.preprocess.layout:
        params["input_layout"] = _artifact_layout(recipe, target)  # the data stay the source's
    deps = {"model": artifact, "reference": (baseline_id, "outputs"),
            "baseline": (baseline_id, "metrics")}
    if float_id is not None and artifact[0] != float_id:
        deps["float"] = (float_id, "model")
    return _add(graph, recipe, Node(f"validate.{variant or target.format}", params, deps=deps,
                          files=files, device=device or {}), target.name)


def _external_data(recipe: Recipe) -> dict:
    """Where an ONNX source's weights live beside it, for the steps to stage them;
    nothing for a model that holds its own (so its keys stay as they were)."""
    external = recipe.source.external_data
    return {"external_data": list(external)} if external else {}


def _data_params(recipe: Recipe, dataset, layout: str | None = None) -> dict:
    preprocess = asdict(recipe.preprocess)
    if layout is not None:  # the artifact's, where it differs from the source's
        preprocess["layout"] = layout
    return {"preprocess": preprocess, "count": dataset.count}


def _precision(target: Target, quantize) -> str:
    return quantize.precision if quantize is not None else "float32"

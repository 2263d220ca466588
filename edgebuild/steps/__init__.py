"""Step implementations, declared as data so planning never imports a toolchain.

Each `Impl` names the function that does the work (run in a worker process when it
is heavy), the packages whose versions belong in its key, and a version number to
bump whenever the implementation would produce different output.
"""

from __future__ import annotations

from dataclasses import dataclass

TF = ("tensorflow", "tf_keras", "keras")
# The TFLite converter re-serializes models with the flatbuffers package, which
# TensorFlow lets float between releases and whose releases write different bytes.
TFLITE = (*TF, "flatbuffers")
TFMOT = (*TF, "tensorflow-model-optimization", "numpy", "pillow")
METRICS = ("numpy", "pillow", "pycocotools")


@dataclass(frozen=True)
class Impl:
    name: str       # kind.variant, e.g. "convert.tflite"
    version: int
    runner: str     # "module:function", called as function(ctx) -> meta dict
    toolchain: tuple[str, ...] = ()
    heavy: bool = True  # run in a fresh worker process so its memory is given back
    # Outputs that differ from host to host (timings): kept in the cache for reports,
    # left out of lock files so that those stay identical for identical builds.
    volatile: tuple[str, ...] = ()
    # Why the same inputs may not give the same bytes, where a toolchain cannot
    # promise that; bundle manifests say so.
    nondeterministic: str = ""
    # Runs on the GPU its key names (device.host): on a Dask cluster, on a worker
    # that offers the GPU resource and has that GPU.
    gpu: bool = False
    # Loads a Keras model (the source, or one made from it), so it takes the recipe's
    # trust in the model's own code (source.trust_source) as a parameter.
    loads_keras: bool = False

    @property
    def kind(self) -> str:
        return self.name.split(".", 1)[0]


IMPLS = {impl.name: impl for impl in (
    Impl("convert.tflite", 3, "edgebuild.steps.convert:to_tflite", TFLITE,
         loads_keras=True),
    Impl("convert.onnx", 4, "edgebuild.steps.convert:to_onnx",
         (*TF, "tf2onnx", "onnx", "onnxruntime", "sympy"), loads_keras=True),
    # onnx2tf's NHWC SavedModel of an ONNX source, which the TFLite converter starts from.
    Impl("convert.onnx2tf", 1, "edgebuild.steps.onnx2tf:run",
         (*TF, "onnx", "onnx2tf", "onnx-graphsurgeon", "sng4onnx", "numpy")),
    Impl("prepare.onnx", 1, "edgebuild.steps.prepare:onnx", ("onnx", "onnxruntime", "sympy")),
    # Fine-tuning on one thread (6 and 4): its sums no longer follow the core count.
    Impl("prune.tfmot", 6, "edgebuild.steps.prune_cluster:prune", TFMOT, loads_keras=True),
    Impl("cluster.tfmot", 4, "edgebuild.steps.prune_cluster:cluster", TFMOT, loads_keras=True),
    Impl("quantize.tflite", 3, "edgebuild.steps.quantize_tflite:tflite",
         (*TFLITE, "numpy", "pillow"),
         loads_keras=True),
    Impl("quantize.onnx", 6, "edgebuild.steps.quantize_onnx:run",
         ("onnx", "onnxruntime", "numpy", "pillow")),
    # The host's GPU and TensorRT version are in the key through `device`; heavy, since
    # a build holds GPU memory that only a process exit reliably gives back.
    Impl("compile.tensorrt", 3, "edgebuild.steps.compile:tensorrt", ("tensorrt",),
         nondeterministic="TensorRT times candidate kernels while building, so engines built "
                          "from the same ONNX can differ", gpu=True),
    Impl("compile.edgetpu", 1, "edgebuild.steps.compile:edgetpu", (), heavy=False),
    Impl("baseline.tf", 4, "edgebuild.steps.baseline:run_tf", (*TF, *METRICS),
         loads_keras=True),
    Impl("baseline.onnx", 3, "edgebuild.steps.baseline:run_onnx", ("onnxruntime", *METRICS)),
    # A validation's verdict is cached like any output, passed or not: a missed budget
    # is a measurement, and re-running would measure the same.
    Impl("validate.tflite", 5, "edgebuild.steps.validate:run", ("ai-edge-litert", *METRICS),
         volatile=("report",)),
    Impl("validate.onnx", 5, "edgebuild.steps.validate:run", ("onnxruntime", *METRICS),
         volatile=("report",)),
    # Engines against the source's outputs, on the GPU that built them.
    Impl("validate.tensorrt", 3, "edgebuild.steps.validate:run",
         ("tensorrt", "cuda-python", *METRICS), volatile=("report",), gpu=True),
    Impl("bundle", 6, "edgebuild.steps.bundle:run", (), heavy=False),
)}

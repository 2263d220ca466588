"""TensorRT behind a small adapter: build an engine from ONNX, run one.

Written for TensorRT 10 and 11. TensorRT 11 removed the FP16/INT8 builder flags and
the int8 calibrators: precision comes from the ONNX itself (an fp16 model, or QDQ
int8 from quantize), and the network is strongly typed, which TensorRT 10 supports
with a creation flag and TensorRT 11 always is. Device memory is handled with
cuda-python (the `tensorrt` extra), as NVIDIA's own samples do.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from edgebuild.errors import StepError


@dataclass(frozen=True)
class CompatibilityLevel:
    """A `hardware_compatibility` value as the Python API and trtexec spell it."""

    api_name: str               # a trt.HardwareCompatibilityLevel member
    trtexec_name: str | None    # --hardwareCompatibilityLevel=...; None: the flag is left out
    since: str | None = None    # the first TensorRT that has it, where later than 10.0


COMPATIBILITY_LEVELS = {
    "none": CompatibilityLevel("NONE", None),
    "ampere+": CompatibilityLevel("AMPERE_PLUS", "ampere+"),
    # TensorRT 10.8 has only NONE and AMPERE_PLUS.
    "same-compute-capability": CompatibilityLevel("SAME_COMPUTE_CAPABILITY",
                                                  "sameComputeCapability", since="10.9"),
}


@dataclass(frozen=True)
class TimingSeeds:
    """Which timing caches a build started from, and which TensorRT refused."""

    used: list[str] = field(default_factory=list)
    refused: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class EngineBuild:
    engine: bytes
    timing_cache: bytes
    timing_seeds: TimingSeeds


def _logger():
    import tensorrt as trt

    class Collecting(trt.ILogger):
        """Keeps warnings and errors, so that a failed build can say why."""

        def __init__(self):
            trt.ILogger.__init__(self)
            self.lines: list[str] = []

        def log(self, severity, msg):
            if severity <= trt.ILogger.Severity.WARNING:
                self.lines.append(str(msg))

    return Collecting()


def build_engine(onnx_path: Path, hardware_compatibility: str = "none",
                 workspace_mb: int | None = None,
                 timing_caches: dict[str, bytes] | None = None) -> EngineBuild:
    """Build for the GPU this process runs on, starting from the named timing caches
    (serialized), merged."""
    from edgebuild.toolchains.gpu_probe import number_gpus_as_nvidia_smi

    number_gpus_as_nvidia_smi()
    import tensorrt as trt

    level = compatibility_level(trt, hardware_compatibility)  # before a long parse
    logger = _logger()
    builder = trt.Builder(logger)
    flags = 0
    if int(trt.__version__.split(".")[0]) < 11:  # 11: always strongly typed
        flags = 1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED)
    network = builder.create_network(flags)
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(onnx_path)):
        errors = [str(parser.get_error(i)) for i in range(parser.num_errors)]
        raise StepError("TensorRT's ONNX parser rejected the model:\n  " + "\n  ".join(errors))
    config = builder.create_builder_config()
    if workspace_mb:
        config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, workspace_mb << 20)
    config.hardware_compatibility_level = level
    _batch_one_profile(builder, network, config)
    # Held until the build is serialized: the config does not own the cache.
    cache, seeds = attach_timing_cache(config, timing_caches or {})
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise StepError("TensorRT could not build the engine:\n  "
                        + "\n  ".join(logger.lines[-10:]))
    timing = bytes(config.get_timing_cache().serialize())
    del cache
    return EngineBuild(bytes(serialized), timing, seeds)


def compatibility_level(trt, name: str):
    """The TensorRT member for `hardware_compatibility`; a step error, not an
    AttributeError, where this TensorRT predates it."""
    level = COMPATIBILITY_LEVELS[name]
    member = getattr(trt.HardwareCompatibilityLevel, level.api_name, None)
    if member is None:
        older = " or ".join(n for n, lv in COMPATIBILITY_LEVELS.items() if lv.since is None)
        raise StepError(f"compile.hardware_compatibility: {name} needs TensorRT {level.since} "
                        f"or later, and this host has TensorRT {trt.__version__}; choose "
                        f"{older}, or upgrade TensorRT")
    return member


def attach_timing_cache(config, seeds: dict[str, bytes]) -> tuple[object, TimingSeeds]:
    """Merge the seeds TensorRT accepts into one timing cache and build with it.

    With ignore_mismatch=False, TensorRT refuses a cache recorded on a GPU with other
    device properties (combine and set_timing_cache return False): its timings may
    not hold here, and serializing such a cache after the build can crash. A refused
    seed is left out; if TensorRT refuses the merged cache, the build starts afresh."""
    cache = config.create_timing_cache(b"")
    used, refused = [], []
    for name, blob in seeds.items():
        if not blob:
            continue
        seed = config.create_timing_cache(blob)
        accepted = seed is not None and cache.combine(seed, False)
        (used if accepted else refused).append(name)
    if not config.set_timing_cache(cache, ignore_mismatch=False):
        used, refused = [], [*refused, *used]
        cache = config.create_timing_cache(b"")
        if not config.set_timing_cache(cache, ignore_mismatch=False):
            raise StepError("TensorRT refused even an empty timing cache")
    return cache, TimingSeeds(used, refused)


def trtexec_command(hardware_compatibility: str = "none", workspace_mb: int | None = None) -> str:
    """The same build as `build_engine`, as trtexec runs it on the device.
    --stronglyTyped is required on TensorRT 10 and accepted (always on) by 11; trtexec
    builds a dynamic batch dimension for batch 1 by itself, as `build_engine` does."""
    command = "trtexec --onnx=model.onnx --saveEngine=model.engine --stronglyTyped"
    level = COMPATIBILITY_LEVELS[hardware_compatibility]
    if level.trtexec_name:
        command += f" --hardwareCompatibilityLevel={level.trtexec_name}"
    if workspace_mb:
        command += f" --memPoolSize=workspace:{workspace_mb}M"
    return command + " --timingCacheFile=timing.cache"  # read if present, then updated


def _batch_one_profile(builder, network, config) -> None:
    """Inputs still dynamic (a Keras model's batch dimension) are built for batch 1."""
    profile = None
    for i in range(network.num_inputs):
        tensor = network.get_input(i)
        shape = list(tensor.shape)
        if any(d < 0 for d in shape):
            fixed = [1 if d < 0 else d for d in shape]
            profile = profile or builder.create_optimization_profile()
            profile.set_shape(tensor.name, fixed, fixed, fixed)
    if profile is not None:
        config.add_optimization_profile(profile)


class TensorRTModel:
    """An engine with its buffers, run on one sample at a time (batch 1); float32 in
    and out, whatever the engine's own I/O types."""

    def __init__(self, path: Path, threads: int = 1):
        from edgebuild.toolchains.gpu_probe import number_gpus_as_nvidia_smi

        number_gpus_as_nvidia_smi()
        import tensorrt as trt

        self._cuda = _cudart()
        self.host, self.device, self.stream = {}, {}, None
        self.runtime = trt.Runtime(_logger())
        self.engine = self.runtime.deserialize_cuda_engine(Path(path).read_bytes())
        if self.engine is None:
            raise StepError(f"{path}: TensorRT cannot load this engine here (built for another "
                            "GPU or TensorRT version?)")
        self.context = self.engine.create_execution_context()
        names = [self.engine.get_tensor_name(i) for i in range(self.engine.num_io_tensors)]
        self.input_names = [n for n in names
                            if self.engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT]
        self.output_names = [n for n in names if n not in self.input_names]
        dtypes = {name: _numpy_dtype(trt, self.engine, name, path) for name in names}
        for name in self.input_names:
            shape = [1 if d < 0 else d for d in self.engine.get_tensor_shape(name)]
            if not self.context.set_input_shape(name, shape):
                raise StepError(f"{path}: the engine does not take shape {shape} for its input "
                                f"'{name}'")
        for name in names:
            self.host[name] = np.zeros(tuple(self.context.get_tensor_shape(name)), dtypes[name])
            self.device[name] = self._check(self._cuda.cudaMalloc(self.host[name].nbytes))
            if not self.context.set_tensor_address(name, int(self.device[name])):
                raise StepError(f"{path}: TensorRT refused the device buffer for '{name}'")
        self.stream = self._check(self._cuda.cudaStreamCreate())

    def __call__(self, x: np.ndarray) -> list[np.ndarray]:
        cuda = self._cuda
        name = self.input_names[0]
        self.host[name][...] = x[None, ...]
        self._check(cuda.cudaMemcpyAsync(self.device[name], self.host[name].ctypes.data,
                                         self.host[name].nbytes,
                                         cuda.cudaMemcpyKind.cudaMemcpyHostToDevice, self.stream))
        if not self.context.execute_async_v3(int(self.stream)):
            raise StepError("TensorRT failed to run the engine")
        for out in self.output_names:
            self._check(cuda.cudaMemcpyAsync(self.host[out].ctypes.data, self.device[out],
                                             self.host[out].nbytes,
                                             cuda.cudaMemcpyKind.cudaMemcpyDeviceToHost,
                                             self.stream))
        self._check(cuda.cudaStreamSynchronize(self.stream))
        return [self.host[out][0].astype(np.float32) for out in self.output_names]

    def __del__(self):
        cuda = getattr(self, "_cuda", None)
        if cuda is None:
            return
        for pointer in getattr(self, "device", {}).values():
            cuda.cudaFree(pointer)
        if getattr(self, "stream", None) is not None:
            cuda.cudaStreamDestroy(self.stream)

    def _check(self, result):
        error, *value = result if isinstance(result, tuple) else (result,)
        if int(error) != 0:
            raise StepError(f"CUDA error {error}")
        return value[0] if len(value) == 1 else None


def _numpy_dtype(trt, engine, name: str, path: Path) -> np.dtype:
    """The numpy type of an I/O tensor. BF16, FP8, INT4 and FP4 have none, and
    trt.nptype raises a TypeError for them."""
    dtype = engine.get_tensor_dtype(name)
    try:
        return np.dtype(trt.nptype(dtype))
    except TypeError:
        raise StepError(f"{path}: the engine's input or output '{name}' is {dtype}, which "
                        "numpy cannot hold (BF16, FP8, INT4, FP4); give the model float32 or "
                        "float16 inputs and outputs") from None


def _cudart():
    try:
        from cuda.bindings import runtime  # cuda-python 12.6 and later
    except ImportError:
        from cuda import cudart as runtime  # older cuda-python
    return runtime

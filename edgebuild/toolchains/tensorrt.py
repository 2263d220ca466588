"""TensorRT behind a small adapter: build an engine from ONNX, run one.

Written for TensorRT 10 and 11. TensorRT 11 removed the FP16/INT8 builder flags and
the int8 calibrators: precision comes from the ONNX itself (an fp16 model, or QDQ
int8 from quantize), and the network is strongly typed, which TensorRT 10 supports
with a creation flag and TensorRT 11 always is. Device memory is handled with
cuda-python (the `tensorrt` extra), as NVIDIA's own samples do.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from edgebuild.errors import StepError

HARDWARE_COMPATIBILITY = {"none": "NONE", "ampere+": "AMPERE_PLUS",
                          "same-compute-capability": "SAME_COMPUTE_CAPABILITY"}


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
                 timing_cache: bytes = b"") -> tuple[bytes, bytes]:
    """(serialized engine, timing cache) for the GPU this process runs on."""
    import tensorrt as trt

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
    config.hardware_compatibility_level = getattr(
        trt.HardwareCompatibilityLevel, HARDWARE_COMPATIBILITY[hardware_compatibility])
    _batch_one_profile(builder, network, config)
    cache = config.create_timing_cache(timing_cache)
    config.set_timing_cache(cache, ignore_mismatch=False)
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise StepError("TensorRT could not build the engine:\n  "
                        + "\n  ".join(logger.lines[-10:]))
    return bytes(serialized), bytes(config.get_timing_cache().serialize())


def trtexec_command(hardware_compatibility: str = "none", workspace_mb: int | None = None) -> str:
    """The same build as `build_engine`, as trtexec runs it on the device.
    --stronglyTyped is required on TensorRT 10 and accepted (always on) by 11; trtexec
    builds a dynamic batch dimension for batch 1 by itself, as `build_engine` does."""
    command = "trtexec --onnx=model.onnx --saveEngine=model.engine --stronglyTyped"
    if hardware_compatibility != "none":
        level = {"ampere+": "ampere+", "same-compute-capability": "sameComputeCapability"}
        command += f" --hardwareCompatibilityLevel={level[hardware_compatibility]}"
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
        import tensorrt as trt

        self._cuda = _cudart()
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
        for name in self.input_names:
            shape = [1 if d < 0 else d for d in self.engine.get_tensor_shape(name)]
            self.context.set_input_shape(name, shape)
        self.host, self.device = {}, {}
        for name in names:
            dtype = np.dtype(trt.nptype(self.engine.get_tensor_dtype(name)))
            self.host[name] = np.zeros(tuple(self.context.get_tensor_shape(name)), dtype)
            self.device[name] = self._check(self._cuda.cudaMalloc(self.host[name].nbytes))
            self.context.set_tensor_address(name, int(self.device[name]))
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
        for pointer in getattr(self, "device", {}).values():
            self._cuda.cudaFree(pointer)

    def _check(self, result):
        error, *value = result if isinstance(result, tuple) else (result,)
        if int(error) != 0:
            raise StepError(f"CUDA error {error}")
        return value[0] if len(value) == 1 else None


def _cudart():
    try:
        from cuda.bindings import runtime  # cuda-python 12.6 and later
    except ImportError:
        from cuda import cudart as runtime  # older cuda-python
    return runtime

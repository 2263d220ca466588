"""Stand-ins for the `tensorrt` module and cuda-python's runtime, for hosts without a
GPU. They model only what edgebuild calls, as NVIDIA documents it:

- `HardwareCompatibilityLevel` has the members of the version faked (10.8: NONE and
  AMPERE_PLUS; 10.9 adds SAME_COMPUTE_CAPABILITY);
- a timing cache belongs to the GPU that recorded it; `ITimingCache.combine` and
  `IBuilderConfig.set_timing_cache` with ignore_mismatch=False return False for a
  cache from another GPU (`combine_checks_device=False` fakes a TensorRT whose combine
  lets it through, so that only set_timing_cache refuses);
- `trt.nptype` raises TypeError for BF16, FP8, INT4 and FP4;
- set_input_shape and set_tensor_address return whether they were accepted.
"""

from __future__ import annotations

import enum
import types
from dataclasses import dataclass, field

import numpy as np

TRT_10_8 = ("NONE", "AMPERE_PLUS")
TRT_10_9 = (*TRT_10_8, "SAME_COMPUTE_CAPABILITY")


class DataType(enum.Enum):
    FLOAT = 0
    HALF = 1
    INT8 = 2
    INT32 = 3
    BF16 = 7
    FP8 = 6
    INT4 = 9


NUMPY = {DataType.FLOAT: np.float32, DataType.HALF: np.float16, DataType.INT8: np.int8,
         DataType.INT32: np.int32}


class TensorIOMode(enum.Enum):
    INPUT = 1
    OUTPUT = 2


def nptype(dtype: DataType):
    if dtype not in NUMPY:
        raise TypeError("Could not resolve TensorRT datatype to an equivalent numpy datatype.")
    return NUMPY[dtype]


class ILogger:
    class Severity(enum.IntEnum):
        ERROR = 1
        WARNING = 2
        INFO = 3

    def __init__(self):
        pass


@dataclass
class TimingCache:
    gpus: set[str]  # the GPUs whose timings it holds
    entries: set[str] = field(default_factory=set)
    combine_checks_device: bool = True

    def combine(self, other: TimingCache, ignore_mismatch: bool) -> bool:
        if self.combine_checks_device and other.gpus != self.gpus and not ignore_mismatch:
            return False
        self.gpus |= other.gpus
        self.entries |= other.entries
        return True

    def serialize(self) -> bytes:
        return ("|".join(sorted(self.gpus)) + ";" + ",".join(sorted(self.entries))).encode()


def timing_cache_bytes(gpu: str, *entries: str) -> bytes:
    return TimingCache({gpu}, set(entries)).serialize()


class BuilderConfig:
    def __init__(self, trt):
        self.trt = trt
        self.timing_cache: TimingCache | None = None
        self.hardware_compatibility_level = "NONE"
        self.profiles: list = []

    def create_timing_cache(self, blob: bytes) -> TimingCache:
        gpus, _, entries = bytes(blob).decode().partition(";")
        return TimingCache(set(gpus.split("|")) if blob else {self.trt.gpu},
                           set(filter(None, entries.split(","))),
                           combine_checks_device=self.trt.combine_checks_device)

    def set_timing_cache(self, cache: TimingCache, ignore_mismatch: bool) -> bool:
        if cache.gpus != {self.trt.gpu} and not ignore_mismatch:
            return False
        self.timing_cache = cache
        return True

    def get_timing_cache(self) -> TimingCache:
        return self.timing_cache

    def set_memory_pool_limit(self, pool, size: int) -> None:
        self.workspace = size

    def add_optimization_profile(self, profile) -> None:
        self.profiles.append(profile)


class Builder:
    def __init__(self, trt, logger):
        self.trt = trt

    def create_network(self, flags: int):
        return types.SimpleNamespace(num_inputs=1, get_input=lambda i: types.SimpleNamespace(
            name="input", shape=(1, 3, 16, 16)))

    def create_builder_config(self) -> BuilderConfig:
        self.trt.configs.append(BuilderConfig(self.trt))
        return self.trt.configs[-1]

    def build_serialized_network(self, network, config: BuilderConfig) -> bytes:
        config.timing_cache.entries.add(f"conv timed on {self.trt.gpu}")
        return b"engine for " + self.trt.gpu.encode()


class OnnxParser:
    num_errors = 0

    def __init__(self, network, logger):
        pass

    def parse_from_file(self, path: str) -> bool:
        return True


@dataclass
class Tensor:
    name: str
    mode: str   # a TensorIOMode member's name
    shape: tuple[int, ...]
    dtype: str  # a DataType member's name


class Engine:
    def __init__(self, tensors: list[Tensor], accepts_shapes: bool, accepts_addresses: bool):
        self.tensors = {t.name: t for t in tensors}
        self.num_io_tensors = len(tensors)
        self.accepts_shapes, self.accepts_addresses = accepts_shapes, accepts_addresses

    def get_tensor_name(self, i: int) -> str:
        return list(self.tensors)[i]

    def get_tensor_mode(self, name: str) -> TensorIOMode:
        return TensorIOMode[self.tensors[name].mode]

    def get_tensor_shape(self, name: str) -> tuple[int, ...]:
        return self.tensors[name].shape

    def get_tensor_dtype(self, name: str) -> DataType:
        return DataType[self.tensors[name].dtype]

    def create_execution_context(self):
        engine = self
        return types.SimpleNamespace(
            set_input_shape=lambda name, shape: engine.accepts_shapes,
            get_tensor_shape=lambda name: tuple(1 if d < 0 else d for d in engine.tensors[
                name].shape),
            set_tensor_address=lambda name, address: engine.accepts_addresses)


def make_tensorrt(version: str = "10.9.0", gpu: str = "NVIDIA H100",
                  tensors: list[Tensor] | None = None, combine_checks_device: bool = True,
                  accepts_shapes: bool = True, accepts_addresses: bool = True):
    """A `tensorrt` module of `version`, on `gpu`; `tensors`: the I/O of the engines
    its Runtime loads."""
    trt = types.ModuleType("tensorrt")
    trt.__version__, trt.gpu, trt.configs = version, gpu, []
    trt.combine_checks_device = combine_checks_device
    levels = TRT_10_9 if tuple(map(int, version.split(".")[:2])) >= (10, 9) else TRT_10_8
    trt.HardwareCompatibilityLevel = types.SimpleNamespace(**{n: n for n in levels})
    trt.NetworkDefinitionCreationFlag = types.SimpleNamespace(STRONGLY_TYPED=0)
    trt.MemoryPoolType = types.SimpleNamespace(WORKSPACE="workspace")
    trt.ILogger, trt.DataType, trt.TensorIOMode = ILogger, DataType, TensorIOMode
    trt.nptype, trt.OnnxParser = nptype, OnnxParser
    trt.Builder = lambda logger: Builder(trt, logger)
    engine = Engine(tensors or [], accepts_shapes, accepts_addresses)
    trt.Runtime = lambda logger: types.SimpleNamespace(
        deserialize_cuda_engine=lambda blob: engine)
    return trt


class FakeCudart:
    """cuda-python's runtime: (error, value) tuples, and a record of what was freed."""

    def __init__(self):
        self.allocated, self.freed, self.streams, self.destroyed = [], [], [], []

    def cudaMalloc(self, size: int):
        self.allocated.append(0x1000 * (len(self.allocated) + 1))
        return 0, self.allocated[-1]

    def cudaFree(self, pointer):
        self.freed.append(pointer)
        return (0,)

    def cudaStreamCreate(self):
        self.streams.append(f"stream {len(self.streams)}")
        return 0, self.streams[-1]

    def cudaStreamDestroy(self, stream):
        self.destroyed.append(stream)
        return (0,)

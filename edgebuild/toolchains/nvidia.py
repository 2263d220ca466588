"""What this host offers for TensorRT: the GPU, its compute capability and the
TensorRT version. Engines do not port across GPUs or TensorRT versions, so these go
into compile keys. Probed without importing TensorRT or CUDA (planning stays fast):
nvidia-smi for the GPU, package metadata for TensorRT."""

from __future__ import annotations

import shutil
import subprocess
from dataclasses import asdict, dataclass
from functools import cache

from edgebuild.toolchains.versions import version

# The pip distributions that provide `import tensorrt`, newest naming first.
TENSORRT_DISTRIBUTIONS = ("tensorrt", "tensorrt-cu13", "tensorrt-cu12")


@dataclass(frozen=True)
class NvidiaHost:
    gpu: str | None = None                 # e.g. "NVIDIA H100 80GB HBM3"
    compute_capability: str | None = None  # e.g. "9.0"
    tensorrt: str | None = None            # e.g. "10.13.3.9"

    def key(self) -> dict:
        return asdict(self)

    @property
    def deferral(self) -> str | None:
        """Why engines cannot be built here, or None if they can."""
        if self.gpu is None:
            return "no NVIDIA GPU here"
        if self.tensorrt is None:
            return "TensorRT is not installed here (pip install 'edgebuild[tensorrt]')"
        return None


def tensorrt_version() -> str | None:
    return next((v for v in map(version, TENSORRT_DISTRIBUTIONS) if v), None)


@cache
def host() -> NvidiaHost:
    trt = tensorrt_version()
    if shutil.which("nvidia-smi") is None:
        return NvidiaHost(tensorrt=trt)
    try:
        out = subprocess.run(
            ["nvidia-smi", "--query-gpu=name,compute_cap", "--format=csv,noheader"],
            capture_output=True, text=True, timeout=20, check=True).stdout
    except (OSError, subprocess.SubprocessError):
        return NvidiaHost(tensorrt=trt)  # a driver that does not answer: no usable GPU
    first = next((line for line in out.splitlines() if line.strip()), "")
    name, _, capability = (part.strip() for part in first.partition(","))
    return NvidiaHost(gpu=name or None, compute_capability=capability or None, tensorrt=trt)

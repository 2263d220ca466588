"""What this host offers for TensorRT: the GPU, its compute capability and the
TensorRT version. Engines do not port across GPUs or TensorRT versions, so these go
into compile keys. Probed without importing TensorRT or CUDA (planning stays fast):
nvidia-smi for the GPU, package metadata for TensorRT.

The GPU probed is the one that builds: CUDA's device 0, the first GPU that
CUDA_VISIBLE_DEVICES names. nvidia-smi numbers GPUs in PCI bus order, CUDA by default
fastest first, so the GPU steps number them as nvidia-smi does (CUDA_DEVICE_ORDER).
"""

from __future__ import annotations

import os
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


@dataclass(frozen=True)
class Gpu:
    index: str
    uuid: str
    name: str
    compute_capability: str


def number_gpus_as_nvidia_smi() -> None:
    """Called by GPU steps before CUDA starts: then CUDA_VISIBLE_DEVICES's indices and
    CUDA's device 0 mean what `host()` read from nvidia-smi."""
    os.environ["CUDA_DEVICE_ORDER"] = "PCI_BUS_ID"


@cache
def host() -> NvidiaHost:
    trt = tensorrt_version()
    if shutil.which("nvidia-smi") is None:
        return NvidiaHost(tensorrt=trt)
    try:
        out = _nvidia_smi("--query-gpu=index,uuid,name,compute_cap", "--format=csv,noheader")
        gpu = building_gpu(parse_gpus(out), os.environ.get("CUDA_VISIBLE_DEVICES"))
    except (OSError, subprocess.SubprocessError):
        return NvidiaHost(tensorrt=trt)  # a driver that does not answer: no usable GPU
    if gpu is None:
        return NvidiaHost(tensorrt=trt)
    return NvidiaHost(gpu=gpu.name or None, compute_capability=gpu.compute_capability or None,
                      tensorrt=trt)


def parse_gpus(csv: str) -> list[Gpu]:
    gpus = []
    for line in csv.splitlines():
        parts = [part.strip() for part in line.split(",")]
        if len(parts) >= 4:  # a GPU's name may hold commas; the fields either side do not
            gpus.append(Gpu(parts[0], parts[1], ", ".join(parts[2:-1]), parts[-1]))
    return gpus


def building_gpu(gpus: list[Gpu], visible: str | None) -> Gpu | None:
    """CUDA's device 0: the first GPU CUDA_VISIBLE_DEVICES names (an index, a GPU UUID
    or a unique prefix of one, a MIG instance), or nvidia-smi's first where it is
    unset. None where it names nothing that exists: CUDA then sees no GPU either."""
    if visible is None:
        return gpus[0] if gpus else None
    first = visible.split(",")[0].strip()
    if first.isdigit():
        return next((g for g in gpus if g.index == first), None)
    if first.startswith("MIG-"):
        first = _mig_parent(first)
    if not first.startswith("GPU-"):
        return None
    matches = [g for g in gpus if g.uuid.startswith(first)]
    return matches[0] if len(matches) == 1 else None


def _mig_parent(mig: str) -> str:
    """The UUID of the GPU a MIG instance is part of ("" if not found): older drivers
    name instances MIG-GPU-<uuid>/<gi>/<ci>, newer ones MIG-<uuid>, which only
    `nvidia-smi -L` relates to its GPU."""
    if mig.startswith("MIG-GPU-"):
        return mig[len("MIG-"):].split("/")[0]
    parent = ""
    for line in _nvidia_smi("-L").splitlines():
        uuid = line.rpartition("UUID: ")[2].rstrip(")").strip()
        if uuid.startswith("GPU-"):
            parent = uuid
        elif uuid == mig:
            return parent
    return ""


def _nvidia_smi(*args: str) -> str:
    return subprocess.run(["nvidia-smi", *args], capture_output=True, text=True, timeout=20,
                          check=True).stdout

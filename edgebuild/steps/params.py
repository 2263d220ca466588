"""Typed, resolved parameters for each step slot.

The JSON Schema has already checked types and ranges; these dataclasses fill in the
defaults so that step keys and lock files record every parameter explicitly.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields


class Params:
    @classmethod
    def from_dict(cls, values: dict):
        known = {f.name for f in fields(cls)}
        # Lists become tuples, so that parameters stay hashable and frozen.
        return cls(**{k: tuple(v) if isinstance(v, list) else v
                      for k, v in values.items() if k in known})

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class ConvertParams(Params):
    opset: int = 17


@dataclass(frozen=True)
class PruneParams(Params):
    sparsity: float = 0.5
    schedule: str | None = None  # None: polynomial when fine-tuning, constant otherwise
    initial_sparsity: float = 0.0
    begin_step: int = 0
    end_step: int | None = None  # None: the last fine-tuning step
    frequency: int = 100
    structure: str | None = None  # "m:n", e.g. "2:4"
    include: tuple[str, ...] = ()
    exclude: tuple[str, ...] = ()
    epochs: int | None = None  # None: data.train's; 0: one-shot
    learning_rate: float | None = None

    @property
    def m_by_n(self) -> tuple[int, int] | None:
        if self.structure is None:
            return None
        m, n = self.structure.split(":")
        return int(m), int(n)


@dataclass(frozen=True)
class ClusterParams(Params):
    clusters: int = 16
    init: str = "kmeans++"
    preserve_sparsity: bool | None = None  # None: true when the chain prunes first
    include: tuple[str, ...] = ()
    exclude: tuple[str, ...] = ()
    epochs: int | None = None
    learning_rate: float | None = None


@dataclass(frozen=True)
class KeepFloat(Params):
    layers: tuple[str, ...] = ()
    ops: tuple[str, ...] = ()
    sensitive: int = 0  # also keep the N layers with the largest quantization error

    def __bool__(self) -> bool:
        return bool(self.layers or self.ops or self.sensitive)


@dataclass(frozen=True)
class QatParams(Params):
    """Quantization-aware training: fine-tune with fake-quantized weights and activations
    (tfmot), then convert to full-integer int8."""

    epochs: int | None = None           # None: data.train's
    learning_rate: float | None = None  # None: data.train's


@dataclass(frozen=True)
class QuantizeParams(Params):
    mode: str = "int8"
    io: str = "float32"
    per_channel: bool = True
    keep_float: KeepFloat = KeepFloat()
    qat: QatParams | None = None  # TFLite int8 from a Keras 2 model, given data.train
    # ONNX Runtime only (None elsewhere, and then absent from keys and lock files).
    calibration_method: str | None = None  # static int8: minmax | entropy | percentile
    weight_type: str | None = None         # dynamic: int8 | uint8

    @classmethod
    def from_dict(cls, values: dict):
        values = dict(values)
        values["keep_float"] = KeepFloat.from_dict(values.get("keep_float", {}))
        if values.get("qat") is not None:
            values["qat"] = QatParams.from_dict(values["qat"])
        return super().from_dict(values)

    def to_dict(self) -> dict:
        values = super().to_dict()
        if not self.keep_float.sensitive:  # absent unless used: keys from before it stay
            del values["keep_float"]["sensitive"]
        for optional in ("qat", "calibration_method", "weight_type"):
            if values[optional] is None:
                del values[optional]
        return values

    @property
    def precision(self) -> str:
        precision = self.mode if self.per_channel else f"{self.mode}-per-tensor"
        if self.keep_float.sensitive:
            precision += "-sensitive-float"
        if self.qat is not None:
            precision += "-qat"
        return precision if self.io == "float32" else f"{precision}-io-{self.io}"


@dataclass(frozen=True)
class CompileParams(Params):
    compiler: str = "tensorrt"
    # TensorRT only. Precision is not a compile option: engines are built strongly
    # typed from what quantize made (fp16 ONNX, QDQ int8), as TensorRT 11 requires.
    hardware_compatibility: str = "none"  # none | ampere+ | same-compute-capability
    workspace_mb: int | None = None
    timing_cache: str | None = None  # a file to seed builds with, relative to the recipe

    def to_dict(self) -> dict:
        if self.compiler != "tensorrt":
            return {"compiler": self.compiler}
        # The timing cache is a file input, keyed by its digest rather than its path.
        return {k: v for k, v in super().to_dict().items()
                if v is not None and k != "timing_cache"}


@dataclass(frozen=True)
class ValidateParams(Params):
    samples: int | None = None
    warmup: int = 3
    runs: int = 20


@dataclass(frozen=True)
class Budget(Params):
    """What an artifact must achieve against its float source to be released."""

    metric: str | None = None  # None: the task's primary metric (top1, map50)
    max_drop_points: float | None = None   # absolute, in percentage points
    max_drop_percent: float | None = None  # relative to the source's value
    min_cosine: float | None = None
    min_snr_db: float | None = None
    min_agreement: float | None = None  # top-1 agreement / box agreement with the source
    max_size_mb: float | None = None
    max_latency_ms: float | None = None  # host latency, median
    min_speedup: float | None = None     # against the float artifact, same host

    def to_dict(self) -> dict:
        """Only the limits set: they are what keys, lock files and manifests record."""
        return {k: v for k, v in super().to_dict().items() if v is not None}

    def __bool__(self) -> bool:
        return any(k != "metric" for k in self.to_dict())


# Fallback ladder rungs: each a quantize configuration, most aggressive first.
RUNGS: dict[str, dict | None] = {
    "int8": {"mode": "int8"},
    "int8-per-tensor": {"mode": "int8", "per_channel": False},
    "int8-sensitive-float": {"mode": "int8", "keep_float": {"sensitive": 3}},
    "int8-qat": {"mode": "int8", "qat": {}},  # fine-tunes: minutes, not seconds
    "int16x8": {"mode": "int16x8"},
    "fp16": {"mode": "fp16"},
    "dynamic": {"mode": "dynamic"},
    "float32": None,  # no quantization
}


@dataclass(frozen=True)
class BundleParams(Params):
    pass


SLOT_PARAMS: dict[str, type[Params]] = {
    "convert": ConvertParams,
    "prune": PruneParams,
    "cluster": ClusterParams,
    "quantize": QuantizeParams,
    "compile": CompileParams,
    "validate": ValidateParams,
    "bundle": BundleParams,
}

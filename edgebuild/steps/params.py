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
        return cls(**{k: v for k, v in values.items() if k in known})

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class ConvertParams(Params):
    opset: int = 17


@dataclass(frozen=True)
class PruneParams(Params):
    sparsity: float = 0.5


@dataclass(frozen=True)
class ClusterParams(Params):
    clusters: int = 16


@dataclass(frozen=True)
class QuantizeParams(Params):
    mode: str = "int8"
    io: str = "float32"

    @property
    def precision(self) -> str:
        return self.mode if self.io == "float32" else f"{self.mode}-io-{self.io}"


@dataclass(frozen=True)
class CompileParams(Params):
    compiler: str = "tensorrt"
    precision: str | None = None  # TensorRT only; fp16 when unset


@dataclass(frozen=True)
class ValidateParams(Params):
    samples: int | None = None
    warmup: int = 3
    runs: int = 20


@dataclass(frozen=True)
class Budget(Params):
    max_size_mb: float | None = None
    min_cosine: float | None = None


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

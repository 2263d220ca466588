"""The typed recipe: what the rest of edgebuild works from once a recipe is loaded."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from edgebuild.steps.params import Budget, QuantizeParams
from edgebuild.toolchains.keras_files import Trust

# Step slots, in the order a chain runs them. A profile or target fills a slot with
# parameters, or switches it off with `false`.
SLOTS = ("convert", "prune", "cluster", "quantize", "compile", "validate", "bundle")
KERAS_SLOTS = ("prune", "cluster")  # tfmot rewrites of a Keras 2 (tf_keras) model



@dataclass(frozen=True)
class Preprocess:
    """x = (pixel - mean) * scale / std, after resizing and channel reordering."""

    resize: tuple[int, int] | None = None
    scale: float = 1.0
    mean: tuple[float, float, float] = (0.0, 0.0, 0.0)
    std: tuple[float, float, float] = (1.0, 1.0, 1.0)
    layout: str = "NHWC"
    color: str = "RGB"


@dataclass(frozen=True)
class Dataset:
    path: Path
    annotations: Path | None = None
    count: int | None = None


@dataclass(frozen=True)
class Training:
    """data.train: what prune and cluster fine-tune on."""

    path: Path
    loss: str
    count: int | None = None
    epochs: int = 2
    batch_size: int = 32
    learning_rate: float = 1e-4
    seed: int = 0

    def to_dict(self) -> dict:
        return {"loss": self.loss, "count": self.count, "epochs": self.epochs,
                "batch_size": self.batch_size, "learning_rate": self.learning_rate,
                "seed": self.seed}


@dataclass(frozen=True)
class Source:
    path: Path
    format: str  # keras | saved_model | onnx
    input_shapes: dict[str, list[int]] = field(default_factory=dict)  # ONNX: fixed dims
    trust: Trust | None = None  # None: safe mode, no code from the model runs
    # ONNX: files beside the model holding its weights (save_as_external_data), by the
    # location its tensors name.
    external_data: tuple[str, ...] = ()
    # source.path as the recipe writes it: the lock file records this, which does not
    # change with where the checkout (or ../shared) lies or what links lead there.
    written: str = ""

    def files(self) -> dict[str, Path]:
        """The source as step inputs: the model, and any external data it names."""
        return {"model": self.path, **{f"external_data.{i}": self.path.parent / location
                                       for i, location in enumerate(self.external_data)}}


@dataclass(frozen=True)
class Device:
    name: str
    description: str
    family: str
    runtime: str
    format: str
    formats: tuple[str, ...]
    integer_only: bool = False
    steps: dict = field(default_factory=dict)  # slot -> params | False
    notes: str = ""
    with_training_data: dict = field(default_factory=dict)  # slots added given data.train
    budget: dict = field(default_factory=dict)  # defaults for its targets' budgets

    def profile(self) -> dict:
        """The fields a bundle manifest records and step keys depend on."""
        return {"name": self.name, "family": self.family, "runtime": self.runtime,
                "format": self.format, "integer_only": self.integer_only}


@dataclass(frozen=True)
class Target:
    name: str
    device: Device
    format: str
    runtime: str
    steps: dict[str, dict]  # enabled slots only, in SLOTS order, with merged parameters
    budget: Budget
    # Precision fallback ladder: (rung name, quantize parameters or None for float32),
    # tried in order until the budget holds. Empty: no ladder.
    fallback: tuple[tuple[str, QuantizeParams | None], ...] = ()

    def enabled(self, slot: str) -> bool:
        return slot in self.steps


@dataclass(frozen=True)
class Recipe:
    path: Path
    name: str
    task: str
    source: Source
    preprocess: Preprocess
    targets: dict[str, Target]
    labels: Path | None = None
    calibration: Dataset | None = None
    validation: Dataset | None = None
    train: Training | None = None
    # How detection outputs become boxes: {"name": "grid" | "boxes-scores" |
    # "module:function", **options}; `decoder_file` is a plug-in's source, if local.
    decode: dict | None = None
    decoder_file: Path | None = None
    # Classification: the output holding the class scores, as the baseline step names
    # it (None: the model's only output).
    classifier_output: str | None = None
    text_digest: str = ""
    warnings: tuple[str, ...] = ()  # located, like errors, but the build goes on

    @property
    def folder(self) -> Path:
        return self.path.parent

    @property
    def lock_path(self) -> Path:
        return self.path.with_suffix(".lock")

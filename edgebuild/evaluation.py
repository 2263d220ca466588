"""Task metrics on the validation set, shared by baseline and validate so the source
model and every artifact are measured by the same code on the same tensors.

Runs inside steps (it imports numpy and, for detection, pycocotools).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from edgebuild.errors import StepError


@dataclass
class ValidationSet:
    x: np.ndarray
    labels: np.ndarray | None = None     # classification, when the data has them
    annotations: dict | None = None      # detection: COCO
    image_ids: list[int] | None = None   # detection: the images x holds, in order

    @property
    def measurable(self) -> bool:
        return self.labels is not None or self.annotations is not None


def load_validation_set(inputs: dict[str, Path], params: dict) -> ValidationSet:
    """The validation inputs in sample order, with whatever ground truth they carry."""
    from edgebuild import data

    if "annotations" in inputs:
        from edgebuild.metrics.detection import load_annotations

        annotations = load_annotations(inputs["annotations"])
        x, image_ids = data.load_detection_set(inputs["data"], annotations, params["data"])
        return ValidationSet(x, annotations=annotations, image_ids=image_ids)
    if params["task"] == "classification":
        x, y = data.load_labelled(inputs["data"], params["data"], class_names(inputs))
        return ValidationSet(x, labels=y)
    return ValidationSet(data.load_samples(inputs["data"], params["data"]))


def class_names(inputs: dict[str, Path]) -> list[str] | None:
    if "labels" not in inputs:
        return None
    return [line.strip() for line in inputs["labels"].read_text().splitlines() if line.strip()]


# Beside the baseline's reference outputs: the source's output names, in their order.
OUTPUT_NAMES = "names.json"


def decoder(inputs: dict[str, Path], params: dict,
            names: list[str] | None = None) -> Callable | None:
    """What turns outputs into what the metrics compare: the recipe's detection decoder
    (boxes), or for a classifier with several outputs the one holding the class scores,
    by name among the source's outputs (`names`, else the baseline's record of them).
    None where the outputs are used as they are."""
    if params["task"] == "classification":
        name = params.get("classifier_output")
        if name is None:
            return None
        if names is None:
            names = json.loads((inputs["reference"] / OUTPUT_NAMES).read_text())
        if name not in names:
            raise StepError(f"classifier_output: '{name}' is not an output of the source "
                            f"model (its outputs: {', '.join(names)})")
        index = names.index(name)
        return lambda outputs: [outputs[index]]
    spec = params.get("decode")
    if not spec:
        return None
    from edgebuild.metrics.decoders import load_decoder

    return load_decoder(spec, inputs.get("decoder"))


def task_metrics(task: str, truth: ValidationSet, outputs: list[np.ndarray],
                 decode: Callable | None, names: list[str] | None) -> dict | None:
    """{"top1", "top5"} or {"map50", "map50_95"}; None without ground truth.
    `outputs` are in the source model's order, batched over the validation set."""
    if task == "classification":
        if truth.labels is None:
            return None
        from edgebuild.metrics.classification import topk_accuracy

        return topk_accuracy(_logits(decode(outputs) if decode else outputs), truth.labels)
    if truth.annotations is None or decode is None:
        return None
    from edgebuild.metrics.detection import category_mapping, coco_map

    mapping = category_mapping(truth.annotations, names)
    return coco_map(decode(outputs), truth.annotations, truth.image_ids, mapping)


def agreement(task: str, reference: list[np.ndarray], outputs: list[np.ndarray],
              decode: Callable | None) -> tuple[str, float | None] | None:
    """How often the artifact says what the source says: top-1 agreement for
    classifiers, matched boxes for detectors. Needs no labels."""
    if task == "classification":
        from edgebuild.metrics.classification import top1_agreement

        if decode is not None:
            reference, outputs = decode(reference), decode(outputs)
        return "top-1 agreement", top1_agreement(_logits(reference), _logits(outputs))
    if decode is None:
        return None
    from edgebuild.metrics.detection import box_agreement

    return "box agreement", box_agreement(decode(reference), decode(outputs))


def _logits(outputs: list[np.ndarray]) -> np.ndarray:
    if len(outputs) != 1:
        shapes = [o.shape[1:] for o in outputs]
        raise StepError(f"a classifier should have one output (class scores); this one has "
                        f"{len(outputs)}: {shapes}; name the one holding the class scores "
                        "with `classifier_output:` in the recipe")
    return outputs[0].reshape(len(outputs[0]), -1)

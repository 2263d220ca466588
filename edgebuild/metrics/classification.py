"""Classification metrics: top-k accuracy against labels, top-1 agreement with the
source model (which needs no labels, so every validation set can report it)."""

from __future__ import annotations

import numpy as np

from edgebuild.errors import StepError


def topk_accuracy(logits: np.ndarray, labels: np.ndarray) -> dict:
    """{"top1": fraction, "top5": fraction}; top5 only when there are >= 5 classes.
    Works on logits or probabilities alike: only the ranking matters."""
    scores = _flat(logits)
    labels = np.asarray(labels).reshape(-1).astype(np.int64)
    if len(labels) != len(scores):
        raise StepError(f"{len(labels)} labels for {len(scores)} samples: the validation "
                        "data's y must have one label per image")
    classes = scores.shape[1]
    bad = labels[(labels < 0) | (labels >= classes)]
    if bad.size:
        raise StepError(f"label {int(bad[0])} is out of range: the model has {classes} "
                        "classes; check the validation labels against the labels file")
    # Stable sort: ties go to the lower class index, so results are reproducible.
    ranked = np.argsort(-scores, axis=1, kind="stable")
    result = {"top1": _hit_rate(ranked[:, :1], labels)}
    if classes >= 5:
        result["top5"] = _hit_rate(ranked[:, :5], labels)
    return result


def top1_agreement(reference: np.ndarray, outputs: np.ndarray) -> float:
    """Fraction of samples where the artifact's best class is the source model's."""
    a, b = _flat(reference), _flat(outputs)
    if a.shape != b.shape:
        raise ValueError(f"reference {a.shape} and outputs {b.shape} differ in shape")
    return float(np.mean(a.argmax(axis=1) == b.argmax(axis=1))) if len(a) else 0.0


def _flat(scores: np.ndarray) -> np.ndarray:
    # Models often emit (N, 1, C) or (N, 1, 1, C); the class axis is what is left.
    scores = np.asarray(scores)
    return scores.reshape(len(scores), -1)


def _hit_rate(top: np.ndarray, labels: np.ndarray) -> float:
    return float(np.mean(np.any(top == labels[:, None], axis=1))) if len(labels) else 0.0

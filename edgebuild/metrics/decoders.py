"""Detector decoders: a batch of raw model outputs -> one `Detections` per image.

Validation compares detectors by their boxes, not their raw tensors, so a recipe
names how its outputs decode under `decode:` (options beside `name`):

- `grid`: the example detector's head (examples/shapes): one (N, S, S, 5 + C) map of
  logits per image: objectness, centre offset x/y in the cell, width/height as a
  fraction of the image, C class logits. Per-class NMS.
- `boxes-scores`: the SSD layout: an (N, K, 4) box output and an (N, K, C) score
  output, one row per prior. `box_format`: xyxy (default), yxyx or cxcywh, all
  normalized to [0, 1]; `activation`: none (default: already probabilities), sigmoid
  or softmax; `background`: the column of a background class to drop (default: none);
  the remaining columns are the model's classes 0..C-2, so a labels file lists them
  without the background. Per-class NMS over every remaining column.
- `package.module:function`: a plug-in, imported from the recipe's folder and called
  as `function(outputs, **options)` with the batch's outputs in the source model's
  order; it returns one `Detections` (or dict with boxes, scores, classes) per image.

Every built-in takes `score_threshold` (default 0.05: low, as COCO evaluation wants
the whole precision-recall curve), `iou_threshold` (NMS, default 0.5) and
`max_detections` (per image, default 100, COCO's limit).

UltraFace (Ultra-Light-Fast-Generic-Face-Detector-1MB, version-RFB-320.onnx and
version-slim-320.onnx), checked with ONNX Runtime on its 24 photos: input `input`
(1, 3, 240, 320) RGB, (pixel - 127) / 128; output `scores` (1, 4420, 2) is already
softmax (rows sum to 1), column 0 the background (mean 0.93 over all priors), column
1 face; `boxes` (1, 4420, 4) normalized x1, y1, x2, y2 (priors already decoded; a few
reach -0.27 or 1.29 and are clipped here). Recipe:

    data:
      preprocess: {resize: [240, 320], mean: 127, std: 128, layout: NCHW}
    decode: {name: boxes-scores, background: 0}
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import numpy as np

from edgebuild.errors import StepError
from edgebuild.plugins import import_module

COMMON = {"score_threshold": 0.05, "iou_threshold": 0.5, "max_detections": 100}
BOX_FORMATS = ("xyxy", "yxyx", "cxcywh")
ACTIVATIONS = ("none", "sigmoid", "softmax")

Decoder = Callable[[list[np.ndarray]], list["Detections"]]


@dataclass
class Detections:
    """One image's detections. boxes: (K, 4) float32 x1, y1, x2, y2 normalized to
    [0, 1]; scores: (K,) float32; classes: (K,) int64, the model's 0-based class."""

    boxes: np.ndarray
    scores: np.ndarray
    classes: np.ndarray

    def __len__(self) -> int:
        return len(self.scores)

    @classmethod
    def empty(cls) -> Detections:
        return cls(np.zeros((0, 4), np.float32), np.zeros(0, np.float32), np.zeros(0, np.int64))


def load_decoder(spec: dict, plugin_file: Path | None = None) -> Decoder:
    """The decoder a recipe's `decode:` names, with its options checked now, so a typo
    fails before any model runs. `plugin_file`: a plug-in's source next to the recipe."""
    options = dict(spec)
    name = options.pop("name", None)
    if not isinstance(name, str) or not name:
        raise StepError("decode: needs a `name` (built in: grid, boxes-scores; or your own "
                        "as package.module:function)")
    if ":" in name:
        return _plugin(name, options, plugin_file)
    if name not in BUILT_IN:
        raise StepError(f"decode.name: '{name}' is not a built-in decoder (built in: "
                        f"{', '.join(BUILT_IN)}); for your own, name it "
                        "package.module:function")
    decode, defaults = BUILT_IN[name]
    unknown = sorted(set(options) - set(defaults))
    if unknown:
        raise StepError(f"decode.{unknown[0]}: the {name} decoder has no option "
                        f"'{unknown[0]}' (options: {', '.join(sorted(defaults))})")
    resolved = {**defaults, **options}
    _check_options(name, resolved)
    return partial(decode, **resolved)


# -- shared box arithmetic ---------------------------------------------------------


def sigmoid(x: np.ndarray) -> np.ndarray:
    # Written via tanh so large negative logits do not overflow exp().
    return 0.5 * (np.tanh(0.5 * x) + 1.0)


def softmax(x: np.ndarray, axis: int = -1) -> np.ndarray:
    e = np.exp(x - x.max(axis=axis, keepdims=True))
    return e / e.sum(axis=axis, keepdims=True)


def box_iou(box: np.ndarray, boxes: np.ndarray) -> np.ndarray:
    """IoU of one x1, y1, x2, y2 box against a (K, 4) array."""
    ix = np.clip(np.minimum(box[2], boxes[:, 2]) - np.maximum(box[0], boxes[:, 0]), 0, None)
    iy = np.clip(np.minimum(box[3], boxes[:, 3]) - np.maximum(box[1], boxes[:, 1]), 0, None)
    inter = ix * iy
    area = (box[2] - box[0]) * (box[3] - box[1])
    areas = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
    return inter / np.maximum(area + areas - inter, 1e-12)


def nms(boxes: np.ndarray, scores: np.ndarray, iou_threshold: float) -> np.ndarray:
    """Greedy non-maximum suppression; kept indices, best first."""
    order = np.argsort(-scores, kind="stable")
    keep: list[int] = []
    while order.size:
        best, order = order[0], order[1:]
        keep.append(int(best))
        order = order[box_iou(boxes[best], boxes[order]) <= iou_threshold]
    return np.asarray(keep, dtype=np.int64)


def select(boxes: np.ndarray, scores: np.ndarray, classes: np.ndarray, score_threshold: float,
           iou_threshold: float, max_detections: int) -> Detections:
    """Clip, threshold, per-class NMS, best `max_detections` first."""
    boxes = np.clip(boxes, 0.0, 1.0)
    mask = scores >= score_threshold
    boxes, scores, classes = boxes[mask], scores[mask], classes[mask]
    kept = [np.zeros(0, np.int64)]
    for c in np.unique(classes):
        same = np.flatnonzero(classes == c)
        kept.append(same[nms(boxes[same], scores[same], iou_threshold)])
    index = np.concatenate(kept)
    index = index[np.argsort(-scores[index], kind="stable")][:max_detections]
    return Detections(boxes[index].astype(np.float32), scores[index].astype(np.float32),
                      classes[index].astype(np.int64))


# -- grid ------------------------------------------------------------------------


def decode_grid(outputs: list[np.ndarray], score_threshold: float, iou_threshold: float,
                max_detections: int) -> list[Detections]:
    grid = _only_output(outputs, "grid", lambda o: o.ndim == 4 and o.shape[-1] > 5,
                        "(N, S, S, 5 + classes)")
    return [_grid_one(g.astype(np.float32), score_threshold, iou_threshold, max_detections)
            for g in grid]


def _grid_one(grid: np.ndarray, score_threshold: float, iou_threshold: float,
              max_detections: int) -> Detections:
    rows, cols = grid.shape[:2]
    class_probs = softmax(grid[..., 5:])
    # One object per cell: its best class, scored by objectness times class confidence.
    classes = class_probs.argmax(axis=-1)
    scores = sigmoid(grid[..., 0]) * class_probs.max(axis=-1)
    ys, xs = np.mgrid[0:rows, 0:cols]
    cx = (xs + sigmoid(grid[..., 1])) / cols
    cy = (ys + sigmoid(grid[..., 2])) / rows
    half_w, half_h = sigmoid(grid[..., 3]) / 2, sigmoid(grid[..., 4]) / 2
    boxes = np.stack([cx - half_w, cy - half_h, cx + half_w, cy + half_h], axis=-1)
    return select(boxes.reshape(-1, 4), scores.ravel(), classes.ravel(), score_threshold,
                  iou_threshold, max_detections)


def _only_output(outputs: list[np.ndarray], decoder: str, fits: Callable[[np.ndarray], bool],
                 expected: str) -> np.ndarray:
    matches = [o for o in outputs if fits(o)]
    if len(matches) != 1:
        raise StepError(f"the {decoder} decoder needs exactly one {expected} output; the "
                        f"model's outputs are {[tuple(o.shape) for o in outputs]}")
    return matches[0]


# -- boxes-scores ------------------------------------------------------------------


def decode_boxes_scores(outputs: list[np.ndarray], score_threshold: float,
                        iou_threshold: float, max_detections: int, box_format: str,
                        activation: str, background: int | None) -> list[Detections]:
    boxes, scores = _boxes_and_scores(outputs)
    boxes = _to_corners(boxes.astype(np.float32), box_format)
    scores = _activate(scores.astype(np.float32), activation)
    if background is not None:
        if not 0 <= background < scores.shape[-1]:
            raise StepError(f"decode.background: column {background} does not exist; the "
                            f"score output has {scores.shape[-1]} columns")
        scores = np.delete(scores, background, axis=-1)
    return [_boxes_scores_one(b, s, score_threshold, iou_threshold, max_detections)
            for b, s in zip(boxes, scores, strict=True)]


def _boxes_scores_one(boxes: np.ndarray, scores: np.ndarray, score_threshold: float,
                      iou_threshold: float, max_detections: int) -> Detections:
    # SSD style: a prior may propose several classes, each competing in its own NMS.
    priors, classes = np.nonzero(scores >= score_threshold)
    return select(boxes[priors], scores[priors, classes], classes, score_threshold,
                  iou_threshold, max_detections)


def _boxes_and_scores(outputs: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """The (N, K, 4) box output and the (N, K, C) score output, found by shape: converters
    keep shapes but may rename or reorder outputs. Singleton axes between K and the last
    axis, e.g. (N, K, 1, 4), are dropped."""
    flat = [o.reshape(o.shape[0], -1, o.shape[-1]) if o.ndim >= 3 else o for o in outputs]
    boxes = [i for i, o in enumerate(flat) if o.ndim == 3 and o.shape[-1] == 4]
    shapes = [tuple(o.shape) for o in outputs]
    if len(boxes) != 1:
        raise StepError(f"the boxes-scores decoder needs exactly one (N, K, 4) box output; "
                        f"the model's outputs are {shapes}; for another layout, write a "
                        "decoder plug-in (decode: {name: package.module:function})")
    b = boxes[0]
    scores = [i for i, o in enumerate(flat)
              if i != b and o.ndim == 3 and o.shape[1] == flat[b].shape[1]]
    if len(scores) != 1:
        raise StepError(f"the boxes-scores decoder needs one (N, K, classes) score output "
                        f"beside the (N, K, 4) boxes; the model's outputs are {shapes}")
    return flat[b], flat[scores[0]]


def _to_corners(boxes: np.ndarray, box_format: str) -> np.ndarray:
    if box_format == "yxyx":
        return boxes[..., [1, 0, 3, 2]]
    if box_format == "cxcywh":
        centre, size = boxes[..., :2], boxes[..., 2:] / 2
        return np.concatenate([centre - size, centre + size], axis=-1)
    return boxes


def _activate(scores: np.ndarray, activation: str) -> np.ndarray:
    if activation == "sigmoid":
        return sigmoid(scores)
    if activation == "softmax":
        return softmax(scores)
    return scores


# -- plug-ins ----------------------------------------------------------------------


def _plugin(name: str, options: dict, file: Path | None) -> Decoder:
    function = _import_plugin(name, file)
    try:
        # Check the options against the signature now, not after the model has run.
        inspect.signature(function).bind([], **options)
    except TypeError as error:
        raise StepError(f"decode: the plug-in {name} does not take the options "
                        f"{sorted(options)}: {error}") from None
    except ValueError:
        pass  # no introspectable signature (a builtin): the call will tell

    def decode(outputs: list[np.ndarray]) -> list[Detections]:
        result = function(outputs, **options)
        return _check_result(name, result, len(outputs[0]) if outputs else 0)

    return decode


def _import_plugin(name: str, file: Path | None) -> Callable:
    module_name, _, attr = name.partition(":")
    module = import_module(module_name, file, "decode.name", what="plug-in module")
    function = getattr(module, attr, None)
    if not callable(function):
        raise StepError(f"decode.name: {module.__file__} has no function '{attr}'; name the "
                        "decoder as package.module:function")
    return function


def _check_result(name: str, result, batch: int) -> list[Detections]:
    if not isinstance(result, list | tuple) or len(result) != batch:
        got = f"a list of {len(result)}" if isinstance(result, list | tuple) else \
            type(result).__name__
        raise StepError(f"decode: the plug-in {name} returned {got}; it must return a list "
                        f"with one Detections (or dict) per image, {batch} for this batch")
    return [_check_sample(name, i, item) for i, item in enumerate(result)]


def _check_sample(name: str, index: int, item) -> Detections:
    where = f"decode: the plug-in {name}, sample {index}"
    if isinstance(item, dict):
        missing = sorted({"boxes", "scores", "classes"} - set(item))
        if missing:
            raise StepError(f"{where}: the dict lacks {', '.join(missing)} (it needs boxes, "
                            "scores, classes)")
        item = Detections(item["boxes"], item["scores"], item["classes"])
    if not isinstance(item, Detections):
        raise StepError(f"{where}: got {type(item).__name__}, not Detections or a dict with "
                        "boxes, scores, classes")
    boxes = _array(where, "boxes", item.boxes, np.float32)
    boxes = boxes.reshape(0, 4) if boxes.size == 0 else boxes  # [] for no detections
    scores = _array(where, "scores", item.scores, np.float32).reshape(-1)
    classes = _array(where, "classes", item.classes, np.float64).reshape(-1)
    _check_arrays(where, boxes, scores, classes)
    return Detections(np.clip(boxes, 0.0, 1.0), scores, classes.astype(np.int64))


def _array(where: str, what: str, value, dtype) -> np.ndarray:
    try:
        return np.asarray(value, dtype)
    except (TypeError, ValueError) as error:
        raise StepError(f"{where}: {what} are not a numeric array ({error})") from None


def _check_arrays(where: str, boxes: np.ndarray, scores: np.ndarray,
                  classes: np.ndarray) -> None:
    if boxes.ndim != 2 or boxes.shape[1] != 4:
        raise StepError(f"{where}: boxes have shape {boxes.shape}, not (K, 4)")
    if len(scores) != len(boxes) or classes.size != len(boxes):
        raise StepError(f"{where}: {len(boxes)} boxes, {len(scores)} scores and "
                        f"{classes.size} classes; they must be equally many")
    if classes.size and not np.all((np.mod(classes, 1) == 0) & (classes >= 0)):
        raise StepError(f"{where}: classes must be whole class indices (0-based)")
    if not (np.all(np.isfinite(boxes)) and np.all(np.isfinite(scores))):
        raise StepError(f"{where}: boxes or scores contain NaN or infinity")
    # Pixel coordinates are the usual mistake; they would score mAP 0 silently.
    if boxes.size and (boxes.min() < -0.5 or boxes.max() > 1.5):
        raise StepError(f"{where}: box coordinates reach {boxes.min():g}..{boxes.max():g}; "
                        "they must be normalized to [0, 1] (x1, y1, x2, y2 / image size)")


def _check_options(name: str, options: dict) -> None:
    for key in ("score_threshold", "iou_threshold"):
        if not _is_number(options[key]):
            raise StepError(f"decode.{key}: {options[key]!r} is not a number")
    if not 0 < options["iou_threshold"] <= 1:
        raise StepError(f"decode.iou_threshold: {options['iou_threshold']} is not in (0, 1]")
    max_detections = options["max_detections"]
    if isinstance(max_detections, bool) or not isinstance(max_detections, int) \
            or max_detections < 1:
        raise StepError(f"decode.max_detections: {max_detections!r} is not a positive integer")
    if name == "boxes-scores":
        _check_choice("box_format", options["box_format"], BOX_FORMATS)
        _check_choice("activation", options["activation"], ACTIVATIONS)
        background = options["background"]
        if background is not None and (isinstance(background, bool)
                                       or not isinstance(background, int) or background < 0):
            raise StepError(f"decode.background: {background!r} is not a column index "
                            "(0, 1, ...) or null")


def _check_choice(key: str, value, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise StepError(f"decode.{key}: {value!r} is not one of {', '.join(choices)}")


def _is_number(value) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


BUILT_IN: dict[str, tuple[Callable, dict]] = {
    "grid": (decode_grid, dict(COMMON)),
    "boxes-scores": (decode_boxes_scores,
                     {**COMMON, "box_format": "xyxy", "activation": "none", "background": None}),
}

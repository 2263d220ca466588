"""Detection metrics: COCO mAP against annotations (pycocotools, the reference
implementation, so figures match published ones) and box agreement with the source
model (which needs no annotations)."""

from __future__ import annotations

import contextlib
import io
import json
from pathlib import Path

import numpy as np

from edgebuild.errors import StepError
from edgebuild.metrics.decoders import Detections, box_iou

REQUIRED = {
    "images": ("id", "file_name", "width", "height"),
    "annotations": ("image_id", "category_id", "bbox"),
    "categories": ("id", "name"),
}


def load_annotations(path: Path) -> dict:
    """A COCO detection file, checked for what mAP and the data loader read."""
    try:
        data = json.loads(Path(path).read_text())
    except OSError as error:
        raise StepError(f"{path}: cannot read the annotations ({error.strerror})") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise StepError(f"{path}: the annotations are not valid JSON ({error}); "
                        "write them in COCO format") from None
    if not isinstance(data, dict):
        raise StepError(f"{path}: the annotations must be a COCO object with images, "
                        f"annotations and categories, not a JSON {type(data).__name__}")
    for key, fields in REQUIRED.items():
        _check_entries(path, data, key, fields)
    return data


def _check_entries(path: Path, data: dict, key: str, fields: tuple[str, ...]) -> None:
    if not isinstance(data.get(key), list):
        problem = "lacks" if key not in data else "has a non-list"
        raise StepError(f"{path}: the annotations {problem} '{key}'; COCO detection files "
                        "have lists of images, annotations and categories")
    for i, entry in enumerate(data[key]):
        missing = [f for f in fields if not isinstance(entry, dict) or f not in entry]
        if missing:
            raise StepError(f"{path}: {key}[{i}] lacks '{missing[0]}' (each of {key} needs "
                            f"{', '.join(fields)})")


def category_mapping(annotations: dict, labels: list[str] | None) -> list[int]:
    """Model class index -> COCO category id: by name when the recipe has a labels file,
    else the categories in id order (the usual export convention)."""
    categories = annotations["categories"]
    if labels is None:
        return [c["id"] for c in sorted(categories, key=lambda c: c["id"])]
    by_name = {c["name"]: c["id"] for c in categories}
    missing = [name for name in labels if name not in by_name]
    if missing:
        raise StepError(f"labels {missing} are not categories of the validation annotations "
                        f"(categories: {sorted(by_name)}); name the labels file's lines as "
                        "the categories")
    return [by_name[name] for name in labels]


def coco_map(detections: list[Detections], annotations: dict, image_ids: list[int],
             class_to_category: list[int]) -> dict:
    """{"map50": AP at IoU 0.5, "map50_95": AP averaged over IoU 0.5:0.95}, COCO's
    definitions, over `image_ids` only (the validation set may be a first `count`).

    No detections at all score 0.0. Evaluated images without a single ground-truth box
    leave mAP undefined (pycocotools says -1), which is a StepError: such a set cannot
    measure accuracy."""
    if len(detections) != len(image_ids):
        raise ValueError(f"{len(detections)} detections for {len(image_ids)} images")
    images = {image["id"]: image for image in annotations["images"]}
    unknown = [i for i in image_ids if i not in images]
    if unknown:
        raise ValueError(f"image ids {unknown[:5]} are not in the annotations")
    evaluated = set(image_ids)
    if not any(a["image_id"] in evaluated for a in annotations["annotations"]):
        raise StepError(f"the {len(image_ids)} validation images have no annotated boxes, so "
                        "mAP is undefined; validate on images with objects (raise `count`)")
    results = [r for d, i in zip(detections, image_ids, strict=True)
               for r in _results(d, images[i], class_to_category)]
    if not results:
        return {"map50": 0.0, "map50_95": 0.0}
    stats = _evaluate(annotations, results, image_ids)
    return {"map50": float(stats[1]), "map50_95": float(stats[0])}


def _results(found: Detections, image: dict, class_to_category: list[int]) -> list[dict]:
    """COCO result records: boxes in the image's pixels, x, y, width, height."""
    too_high = found.classes[found.classes >= len(class_to_category)]
    if too_high.size:
        raise StepError(f"the model predicts class {int(too_high[0])}, but the labels map only "
                        f"{len(class_to_category)} classes to annotation categories; list every "
                        "class the model predicts in the labels file and the annotations")
    scale = np.array([image["width"], image["height"]] * 2, np.float64)
    boxes = found.boxes.astype(np.float64) * scale
    xywh = np.concatenate([boxes[:, :2], boxes[:, 2:] - boxes[:, :2]], axis=1)
    return [{"image_id": image["id"], "category_id": class_to_category[int(c)],
             "bbox": [float(v) for v in box], "score": float(s)}
            for box, s, c in zip(xywh, found.scores, found.classes, strict=True)]


def _evaluate(annotations: dict, results: list[dict], image_ids: list[int]) -> np.ndarray:
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    with contextlib.redirect_stdout(io.StringIO()):  # pycocotools prints progress
        truth = COCO()
        truth.dataset = _with_areas(annotations)
        truth.createIndex()
        evaluator = COCOeval(truth, truth.loadRes(results), iouType="bbox")
        evaluator.params.imgIds = list(image_ids)
        evaluator.evaluate()
        evaluator.accumulate()
        evaluator.summarize()
    return evaluator.stats


def _with_areas(annotations: dict) -> dict:
    """A copy whose boxes all have `area` and `id`, which COCOeval reads but minimal
    exports often leave out (area: the box's, as for detection results)."""
    boxes = [{"area": a["bbox"][2] * a["bbox"][3], "iscrowd": 0, **a, "id": a.get("id", n + 1)}
             for n, a in enumerate(annotations["annotations"])]
    return {**annotations, "annotations": boxes}


def box_agreement(reference: list[Detections], outputs: list[Detections],
                  score_threshold: float = 0.5, iou_threshold: float = 0.5) -> float | None:
    """Fraction of the source model's confident detections that the artifact reproduces:
    same class, IoU > iou_threshold, matched one-to-one greedily by reference score.
    None when the source model has no detection at or above score_threshold."""
    if len(reference) != len(outputs):
        raise ValueError(f"{len(reference)} reference images but {len(outputs)} outputs")
    matched = total = 0
    for ref, out in zip(reference, outputs, strict=True):
        ref, out = _confident(ref, score_threshold), _confident(out, score_threshold)
        matched += _match(ref, out, iou_threshold)
        total += len(ref)
    return matched / total if total else None


def _confident(found: Detections, score_threshold: float) -> Detections:
    keep = found.scores >= score_threshold
    return Detections(found.boxes[keep], found.scores[keep], found.classes[keep])


def _match(ref: Detections, out: Detections, iou_threshold: float) -> int:
    free = np.ones(len(out), bool)
    matched = 0
    for k in np.argsort(-ref.scores, kind="stable"):
        candidates = free & (out.classes == ref.classes[k])
        if not candidates.any():
            continue
        iou = np.where(candidates, box_iou(ref.boxes[k], out.boxes), -1.0)
        best = int(np.argmax(iou))
        if iou[best] > iou_threshold:
            free[best] = False
            matched += 1
    return matched

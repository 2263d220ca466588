"""COCO mAP of a grid-detector on a COCO-format split (pycocotools; no TF)."""

from __future__ import annotations

import contextlib
import io
from collections.abc import Callable
from pathlib import Path

import numpy as np
from decode import decode_grid
from PIL import Image
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

PredictFn = Callable[[np.ndarray], np.ndarray]  # (N, H, W, 3) float32 in [0, 1] -> (N, S, S, 5 + C)


def load_image(path: Path, size: tuple[int, int] = (128, 128)) -> np.ndarray:
    """The build tool's preprocessing: RGB, resize to (w, h), scale by 1/255, HWC float32."""
    image = Image.open(path).convert("RGB")
    if image.size != size:
        image = image.resize(size, Image.BILINEAR)
    return np.asarray(image, dtype=np.float32) / 255.0


def coco_map(
    predict_fn: PredictFn,
    coco_json: Path,
    image_dir: Path,
    batch_size: int = 50,
    verbose: bool = False,
) -> dict[str, float]:
    """Run predict_fn over every image of coco_json; return {"map50", "map50_95"}."""
    with contextlib.redirect_stdout(io.StringIO()):  # pycocotools is chatty
        gt = COCO(str(coco_json))
    image_ids = sorted(gt.getImgIds())
    results = []
    for start in range(0, len(image_ids), batch_size):
        batch_ids = image_ids[start : start + batch_size]
        infos = gt.loadImgs(batch_ids)
        images = np.stack([load_image(image_dir / info["file_name"]) for info in infos])
        for info, detections in zip(infos, decode_grid(predict_fn(images)), strict=True):
            # Boxes come back in network pixels; rescale in case the image was resized.
            sx, sy = info["width"] / images.shape[2], info["height"] / images.shape[1]
            for det in detections:
                x1, y1, x2, y2 = det["box"]
                results.append(
                    {
                        "image_id": info["id"],
                        "category_id": det["class_id"] + 1,
                        "bbox": [x1 * sx, y1 * sy, (x2 - x1) * sx, (y2 - y1) * sy],
                        "score": det["score"],
                    }
                )
    if not results:
        return {"map50": 0.0, "map50_95": 0.0}
    output = io.StringIO()
    with contextlib.redirect_stdout(output):
        evaluator = COCOeval(gt, gt.loadRes(results), iouType="bbox")
        evaluator.evaluate()
        evaluator.accumulate()
        evaluator.summarize()
    if verbose:
        print("\n".join(line for line in output.getvalue().splitlines() if "Average" in line))
    return {"map50": float(evaluator.stats[1]), "map50_95": float(evaluator.stats[0])}

"""Decode the shapes detector's `grid` output into boxes (pure numpy).

The detector predicts one object per cell of an S x S grid (stride = image/S).
Per cell, channels are raw logits:
    0      objectness            -> sigmoid
    1, 2   centre offset x, y    -> sigmoid, fraction of the cell
    3, 4   box width, height     -> sigmoid, fraction of the image side
    5..    class scores          -> softmax
"""

from __future__ import annotations

import numpy as np

Detection = dict  # {"box": [x1, y1, x2, y2] (pixels), "score": float, "class_id": int (0-based)}


def sigmoid(x: np.ndarray) -> np.ndarray:
    # Written via tanh so large negative logits do not overflow exp().
    return 0.5 * (np.tanh(0.5 * x) + 1.0)


def softmax(x: np.ndarray, axis: int = -1) -> np.ndarray:
    e = np.exp(x - x.max(axis=axis, keepdims=True))
    return e / e.sum(axis=axis, keepdims=True)


def box_iou(box: np.ndarray, boxes: np.ndarray) -> np.ndarray:
    """IoU of one [x1, y1, x2, y2] box against an (N, 4) array."""
    ix = np.clip(np.minimum(box[2], boxes[:, 2]) - np.maximum(box[0], boxes[:, 0]), 0, None)
    iy = np.clip(np.minimum(box[3], boxes[:, 3]) - np.maximum(box[1], boxes[:, 1]), 0, None)
    inter = ix * iy
    area = (box[2] - box[0]) * (box[3] - box[1])
    areas = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
    return inter / np.maximum(area + areas - inter, 1e-9)


def nms(boxes: np.ndarray, scores: np.ndarray, iou_threshold: float) -> np.ndarray:
    """Greedy non-maximum suppression; returns kept indices, best first."""
    order = np.argsort(-scores, kind="stable")
    keep: list[int] = []
    while order.size:
        best, order = order[0], order[1:]
        keep.append(int(best))
        order = order[box_iou(boxes[best], boxes[order]) <= iou_threshold]
    return np.asarray(keep, dtype=np.int64)


def _decode_one(
    grid: np.ndarray,
    image_size: tuple[int, int],
    score_threshold: float,
    iou_threshold: float,
    max_detections: int,
) -> list[Detection]:
    rows, cols = grid.shape[:2]
    height, width = image_size
    class_probs = softmax(grid[..., 5:])
    class_ids = class_probs.argmax(axis=-1)
    scores = sigmoid(grid[..., 0]) * class_probs.max(axis=-1)

    ys, xs = np.mgrid[0:rows, 0:cols]
    cx = (xs + sigmoid(grid[..., 1])) * (width / cols)
    cy = (ys + sigmoid(grid[..., 2])) * (height / rows)
    bw = sigmoid(grid[..., 3]) * width
    bh = sigmoid(grid[..., 4]) * height
    boxes = np.stack([cx - bw / 2, cy - bh / 2, cx + bw / 2, cy + bh / 2], axis=-1)
    boxes = np.clip(boxes, 0, [width, height, width, height])

    mask = scores >= score_threshold
    boxes, scores, class_ids = boxes[mask], scores[mask], class_ids[mask]
    detections: list[Detection] = []
    for class_id in np.unique(class_ids):  # per-class NMS
        idx = np.flatnonzero(class_ids == class_id)
        for k in idx[nms(boxes[idx], scores[idx], iou_threshold)]:
            detections.append(
                {"box": boxes[k].tolist(), "score": float(scores[k]), "class_id": int(class_id)}
            )
    detections.sort(key=lambda d: -d["score"])
    return detections[:max_detections]


def decode_grid(
    grid: np.ndarray,
    image_size: tuple[int, int] = (128, 128),
    score_threshold: float = 0.05,
    iou_threshold: float = 0.5,
    max_detections: int = 100,
) -> list[list[Detection]]:
    """Turn (N, S, S, 5 + C) logits (or one (S, S, 5 + C) map) into per-image detections.

    image_size is (height, width) of the image the boxes should be expressed in.
    """
    grid = np.asarray(grid, dtype=np.float32)
    if grid.ndim == 3:
        grid = grid[None]
    return [
        _decode_one(g, image_size, score_threshold, iou_threshold, max_detections) for g in grid
    ]

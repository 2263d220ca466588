"""Decode the shapes detector's `grid` output into boxes in image pixels.

The detector predicts one object per cell of an S x S grid (stride = image/S).
Per cell, channels are raw logits:
    0      objectness            -> sigmoid
    1, 2   centre offset x, y    -> sigmoid, fraction of the cell
    3, 4   box width, height     -> sigmoid, fraction of the image side
    5..    class scores          -> softmax

The arithmetic is edgebuild's own `grid` decoder (edgebuild/metrics/decoders.py),
the one `decode: grid` validates with, so these scripts and `edgebuild all` measure
the same boxes. This module only scales them to pixels.
"""

from __future__ import annotations

import numpy as np

from edgebuild.metrics.decoders import load_decoder

Detection = dict  # {"box": [x1, y1, x2, y2] (pixels), "score": float, "class_id": int (0-based)}


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
    decode = load_decoder({"name": "grid", "score_threshold": score_threshold,
                           "iou_threshold": iou_threshold, "max_detections": max_detections})
    height, width = image_size
    scale = np.array([width, height, width, height], np.float64)
    return [[{"box": (box * scale).tolist(), "score": float(score), "class_id": int(class_id)}
             for box, score, class_id in zip(found.boxes, found.scores, found.classes,
                                             strict=True)]
            for found in decode([grid])]

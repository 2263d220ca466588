"""Procedurally generate the `shapes` detection dataset (COCO format).

Each image is 128x128 RGB with 1-4 coloured circles, squares or triangles
(14-60 px) on a textured background. Every image is drawn from its own
generator seeded with (seed, split, index), so a split is reproducible
image by image and independent of how many images the other splits hold.

Usage (from the repo root):
    python examples/shapes/generate.py            # writes data/shapes/
    python examples/shapes/generate.py --with-train   # + data/shapes/train/ (git-ignored)
"""

from __future__ import annotations

import argparse
import io
import json
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

REPO_ROOT = Path(__file__).resolve().parents[2]
IMAGE_SIZE = 128
CLASSES = ("circle", "square", "triangle")  # category id = index + 1
MIN_SIZE, MAX_SIZE = 14, 60
MAX_OBJECTS = 4
GRID_STRIDE = 16  # must match the detector's output stride (see train.py)
JPEG_QUALITY = 90
# Split ids feed the seed so splits never share images.
SPLITS = {"train": 0, "calib": 1, "val": 2}
DEFAULT_COUNTS = {"train": 3000, "calib": 100, "val": 200}


@dataclass(frozen=True)
class Sample:
    image: Image.Image
    boxes: list[tuple[float, float, float, float]]  # x, y, w, h in pixels
    category_ids: list[int]


# --------------------------------------------------------------- backgrounds
def _random_colour(rng: np.random.Generator) -> np.ndarray:
    return rng.integers(0, 256, size=3).astype(np.float32)


def _coords() -> tuple[np.ndarray, np.ndarray]:
    ys, xs = np.mgrid[0:IMAGE_SIZE, 0:IMAGE_SIZE].astype(np.float32)
    return xs / IMAGE_SIZE, ys / IMAGE_SIZE


def _blend(a: np.ndarray, b: np.ndarray, t: np.ndarray) -> np.ndarray:
    return a[None, None, :] * (1.0 - t[..., None]) + b[None, None, :] * t[..., None]


def _gradient(rng: np.random.Generator) -> np.ndarray:
    xs, ys = _coords()
    angle = rng.uniform(0, 2 * math.pi)
    t = xs * math.cos(angle) + ys * math.sin(angle)
    t = (t - t.min()) / (t.max() - t.min())
    return _blend(_random_colour(rng), _random_colour(rng), t)


def _stripes(rng: np.random.Generator) -> np.ndarray:
    xs, ys = _coords()
    angle = rng.uniform(0, math.pi)
    period = rng.uniform(0.04, 0.25)
    phase = (xs * math.cos(angle) + ys * math.sin(angle)) / period
    # Soft (sinusoidal) or hard stripes: hard edges are the harder distractor.
    t = 0.5 + 0.5 * np.sin(2 * math.pi * phase)
    if rng.random() < 0.5:
        t = (t > 0.5).astype(np.float32)
    return _blend(_random_colour(rng), _random_colour(rng), t)


def _checker(rng: np.random.Generator) -> np.ndarray:
    xs, ys = _coords()
    cell = rng.uniform(0.05, 0.2)
    t = ((np.floor(xs / cell) + np.floor(ys / cell)) % 2).astype(np.float32)
    return _blend(_random_colour(rng), _random_colour(rng), t)


def _blobs(rng: np.random.Generator) -> np.ndarray:
    # Low-frequency noise: a coarse random grid upsampled bilinearly.
    coarse = rng.integers(0, 256, size=(int(rng.integers(3, 9)),) * 2 + (3,), dtype=np.uint8)
    img = Image.fromarray(coarse).resize((IMAGE_SIZE, IMAGE_SIZE), Image.BILINEAR)
    return np.asarray(img, dtype=np.float32)


def _flat(rng: np.random.Generator) -> np.ndarray:
    return np.broadcast_to(_random_colour(rng), (IMAGE_SIZE, IMAGE_SIZE, 3)).copy()


BACKGROUNDS = (_gradient, _stripes, _checker, _blobs, _flat)


def make_background(rng: np.random.Generator) -> np.ndarray:
    """Return a float32 HxWx3 texture in [0, 255] with pixel noise on top."""
    texture = BACKGROUNDS[int(rng.integers(len(BACKGROUNDS)))](rng)
    noise = rng.normal(0.0, rng.uniform(2.0, 16.0), size=texture.shape)
    return np.clip(texture + noise, 0, 255).astype(np.float32)


# -------------------------------------------------------------------- shapes
def _polygon(
    centre: tuple[float, float], radius: float, sides: int, angle: float
) -> list[tuple[float, float]]:
    cx, cy = centre
    return [
        (
            cx + radius * math.cos(angle + 2 * math.pi * k / sides),
            cy + radius * math.sin(angle + 2 * math.pi * k / sides),
        )
        for k in range(sides)
    ]


def _shape_outline(
    rng: np.random.Generator, category: str, size: float
) -> list[tuple[float, float]]:
    """Vertices around the origin, scaled so the longer bounding-box side equals size.

    Circles are returned as a 4-point stand-in (their bounding square) and drawn as
    ellipses; polygons get a random rotation, then are rescaled so the annotated box
    size stays within [MIN_SIZE, MAX_SIZE] whatever the rotation.
    """
    if category == "circle":
        points = _polygon((0.0, 0.0), 1.0, 4, math.pi / 4)
    elif category == "square":
        # Small rotations only, so squares do not turn into diamonds.
        points = _polygon((0.0, 0.0), 1.0, 4, math.pi / 4 + rng.uniform(-0.35, 0.35))
    else:
        points = _polygon((0.0, 0.0), 1.0, 3, rng.uniform(0, 2 * math.pi))
    _, _, w, h = _bbox(points)
    scale = size / max(w, h)
    return [(x * scale, y * scale) for x, y in points]


def _bbox(points: list[tuple[float, float]]) -> tuple[float, float, float, float]:
    xs, ys = zip(*points, strict=True)
    return min(xs), min(ys), max(xs) - min(xs), max(ys) - min(ys)


def _overlap(a: tuple[float, ...], b: tuple[float, ...]) -> float:
    """Intersection over the smaller box: catches a small shape hidden under a big one."""
    ix = max(0.0, min(a[0] + a[2], b[0] + b[2]) - max(a[0], b[0]))
    iy = max(0.0, min(a[1] + a[3], b[1] + b[3]) - max(a[1], b[1]))
    return ix * iy / min(a[2] * a[3], b[2] * b[3])


def _contrasting_colour(rng: np.random.Generator, background: np.ndarray) -> tuple[int, int, int]:
    # Reject colours too close to the local background mean so every object is visible.
    reference = background.reshape(-1, 3).mean(axis=0)
    colour = _random_colour(rng)
    for _ in range(20):
        if np.linalg.norm(colour - reference) > 90:
            break
        colour = _random_colour(rng)
    return int(colour[0]), int(colour[1]), int(colour[2])


def make_sample(seed: int, split: str, index: int) -> Sample:
    rng = np.random.default_rng([seed, SPLITS[split], index])
    background = make_background(rng)
    image = Image.fromarray(background.astype(np.uint8))
    draw = ImageDraw.Draw(image)
    boxes: list[tuple[float, float, float, float]] = []
    category_ids: list[int] = []
    used_cells: set[tuple[int, int]] = set()
    for _ in range(int(rng.integers(1, MAX_OBJECTS + 1))):
        for _attempt in range(30):
            category = int(rng.integers(len(CLASSES)))
            outline = _shape_outline(rng, CLASSES[category], float(rng.uniform(MIN_SIZE, MAX_SIZE)))
            x0, y0, w, h = _bbox(outline)
            # Place the box fully inside the image.
            dx = float(rng.uniform(-x0, IMAGE_SIZE - 1 - (x0 + w)))
            dy = float(rng.uniform(-y0, IMAGE_SIZE - 1 - (y0 + h)))
            outline = [(x + dx, y + dy) for x, y in outline]
            box = (x0 + dx, y0 + dy, w, h)
            cell = (int((box[1] + h / 2) // GRID_STRIDE), int((box[0] + w / 2) // GRID_STRIDE))
            # One object per grid cell (the detector's assignment rule) and little occlusion.
            if cell in used_cells or any(_overlap(box, other) > 0.25 for other in boxes):
                continue
            region = background[
                int(box[1]) : int(box[1] + h) + 1, int(box[0]) : int(box[0] + w) + 1
            ]
            colour = _contrasting_colour(rng, region)
            if CLASSES[category] == "circle":
                draw.ellipse((box[0], box[1], box[0] + w, box[1] + h), fill=colour)
            else:
                draw.polygon(outline, fill=colour)
            used_cells.add(cell)
            boxes.append(tuple(round(v, 2) for v in box))  # type: ignore[arg-type]
            category_ids.append(category + 1)
            break
    return Sample(image=image, boxes=boxes, category_ids=category_ids)


# ------------------------------------------------------------------- writing
def jpeg_bytes(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=JPEG_QUALITY)
    return buffer.getvalue()


def jpeg_roundtrip(image: Image.Image) -> np.ndarray:
    """Encode/decode as the committed files are, so training sees the same artefacts."""
    return np.asarray(Image.open(io.BytesIO(jpeg_bytes(image))).convert("RGB"))


def categories() -> list[dict]:
    return [{"id": i + 1, "name": name, "supercategory": "shape"} for i, name in enumerate(CLASSES)]


def to_coco(samples: list[Sample], file_names: list[str]) -> dict:
    images, annotations = [], []
    for image_id, (sample, file_name) in enumerate(zip(samples, file_names, strict=True), start=1):
        images.append(
            {"id": image_id, "file_name": file_name, "width": IMAGE_SIZE, "height": IMAGE_SIZE}
        )
        for box, category_id in zip(sample.boxes, sample.category_ids, strict=True):
            annotations.append(
                {
                    "id": len(annotations) + 1,
                    "image_id": image_id,
                    "category_id": category_id,
                    "bbox": list(box),
                    "area": round(box[2] * box[3], 2),
                    "iscrowd": 0,
                }
            )
    return {"images": images, "annotations": annotations, "categories": categories()}


def write_split(seed: int, split: str, count: int, image_dir: Path, json_path: Path | None) -> None:
    image_dir.mkdir(parents=True, exist_ok=True)
    width = max(3, len(str(count - 1)))
    samples, names = [], []
    for index in range(count):
        sample = make_sample(seed, split, index)
        name = f"{index:0{width}d}.jpg"
        (image_dir / name).write_bytes(jpeg_bytes(sample.image))
        samples.append(sample)
        names.append(name)
    if json_path is not None:
        json_path.write_text(json.dumps(to_coco(samples, names), indent=1) + "\n")
    print(f"{split}: {count} images -> {image_dir}")


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=REPO_ROOT / "data" / "shapes")
    parser.add_argument("--calib", type=int, default=DEFAULT_COUNTS["calib"])
    parser.add_argument("--val", type=int, default=DEFAULT_COUNTS["val"])
    parser.add_argument(
        "--with-train",
        action="store_true",
        help="also write OUT/train/ with OUT/train/train.json (git-ignored; "
        "train.py generates this split in memory anyway)",
    )
    parser.add_argument("--train", type=int, default=DEFAULT_COUNTS["train"])
    args = parser.parse_args()

    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "labels.txt").write_text("\n".join(CLASSES) + "\n")
    write_split(args.seed, "calib", args.calib, args.out / "calib", json_path=None)
    write_split(args.seed, "val", args.val, args.out / "val", json_path=args.out / "val.json")
    if args.with_train:
        # The JSON lives inside the ignored train/ folder so nothing of it gets committed.
        write_split(
            args.seed, "train", args.train, args.out / "train", args.out / "train" / "train.json"
        )


if __name__ == "__main__":
    main()

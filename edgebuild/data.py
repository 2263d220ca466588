"""Calibration and validation inputs: read images, apply the recipe's preprocessing.

One function does the preprocessing, so calibration, baseline and validation see
exactly the same tensors. Samples are taken in sorted file order, first `count`.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from edgebuild.errors import StepError
from edgebuild.sample_files import IMAGE_SUFFIXES, image_files


def load_samples(path: Path, params: dict) -> np.ndarray:
    """Preprocessed model inputs, float32, in the recipe's layout."""
    count, pre = params.get("count"), params["preprocess"]
    if path.suffix == ".npz":
        with np.load(path) as archive:
            if "x" not in archive:
                raise StepError(f"{path}: an .npz dataset needs an array named 'x'")
            pixels = archive["x"][:count]
        return _prepare([_resize(img, pre) for img in pixels], pre)
    return _prepare([_read(f, pre) for f in _images(path, count)], pre)


def load_labelled(path: Path, params: dict, class_names: list[str] | None = None):
    """(x, y) for training: an .npz's x and y, or images in class sub-folders (class
    index: position in `class_names`, the recipe's labels file, else sorted folder
    names). y is None where the data has no labels."""
    count, pre = params.get("count"), params["preprocess"]
    if path.suffix == ".npz":
        with np.load(path) as archive:
            y = archive["y"][:count] if "y" in archive else None
        return load_samples(path, params), y
    files = _images(path, count)
    folders = {f.relative_to(path).parts[0] for f in files if len(f.relative_to(path).parts) > 1}
    if not folders:
        return _prepare([_read(f, pre) for f in files], pre), None
    names = class_names or sorted(folders)
    unknown = sorted(folders - set(names))
    if unknown:
        raise StepError(f"{path}: class folders {unknown} are not in the labels file")
    loose = [f for f in files if len(f.relative_to(path).parts) == 1]
    if loose:
        raise StepError(f"{path}: {loose[0].name} is not in a class folder")
    y = np.array([names.index(f.relative_to(path).parts[0]) for f in files])
    return _prepare([_read(f, pre) for f in files], pre), y


def load_detection_set(folder: Path, annotations: dict,
                       params: dict) -> tuple[np.ndarray, list[int]]:
    """(x, image ids) for detection metrics: the annotations' images (file_name relative
    to `folder`), sorted by file_name like every other dataset, first `count`."""
    images = sorted(annotations["images"], key=lambda image: image["file_name"])
    images = images[:params.get("count")]
    if not images:
        raise StepError(f"{folder}: the validation annotations list no images")
    files = [folder / image["file_name"] for image in images]
    missing = [image["file_name"] for image, f in zip(images, files, strict=True)
               if not f.is_file()]
    if missing:
        raise StepError(f"{folder / missing[0]}: listed in the validation annotations "
                        f"(images[].file_name '{missing[0]}') but not found; file_name is "
                        f"relative to {folder} ({len(missing)} of {len(files)} missing)")
    pre = params["preprocess"]
    return _prepare([_read(f, pre) for f in files], pre), [image["id"] for image in images]


def _images(folder: Path, count: int | None) -> list[Path]:
    files = image_files(folder)[:count]
    if not files:
        kinds = ", ".join(sorted(IMAGE_SUFFIXES))
        raise StepError(f"{folder}: no images found (expected {kinds})")
    return files


def _prepare(images: list[np.ndarray], pre: dict) -> np.ndarray:
    return np.stack([_normalize(img, pre) for img in images])


def _read(path: Path, pre: dict) -> np.ndarray:
    from PIL import Image

    with Image.open(path) as img:
        return _resize(np.asarray(img.convert("RGB")), pre)


def _resize(pixels: np.ndarray, pre: dict) -> np.ndarray:
    if pixels.ndim == 2:
        pixels = np.repeat(pixels[..., None], 3, axis=-1)
    size = pre.get("resize")
    if size and tuple(pixels.shape[:2]) != tuple(size):
        from PIL import Image

        image = Image.fromarray(pixels.astype(np.uint8))
        pixels = np.asarray(image.resize((size[1], size[0]), Image.BILINEAR))
    return pixels


def _normalize(pixels: np.ndarray, pre: dict) -> np.ndarray:
    x = pixels.astype(np.float32)
    if pre.get("color") == "BGR":
        x = x[..., ::-1]
    mean = np.asarray(pre["mean"], np.float32)
    std = np.asarray(pre["std"], np.float32)
    x = (x - mean) * np.float32(pre["scale"]) / std
    if pre.get("layout") == "NCHW":
        x = np.transpose(x, (2, 0, 1))
    return np.ascontiguousarray(x, dtype=np.float32)

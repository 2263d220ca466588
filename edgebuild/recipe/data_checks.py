"""Checks of a recipe's datasets against their files, at plan time: an .npz without x,
a count beyond the samples there are, labels that a loss or a budget needs. Reads
folder listings and .npy headers, never the samples (see sample_files).
"""

from __future__ import annotations

import zipfile
from pathlib import Path

from edgebuild.sample_files import has_class_folders, image_files, npz_shapes

Problems = list[tuple[tuple, str]]
LABELLED = "an .npz with y, or images in class sub-folders"


def sample_problems(role: str, path: Path, count: int | None, annotated: bool) -> Problems:
    """data.<role>: samples to read, and at least `count` of them. `annotated`: a
    detection set, whose samples are the images its annotations list."""
    at = ("data", role)
    if path.suffix == ".npz":
        try:
            shapes = npz_shapes(path)
        except (zipfile.BadZipFile, ValueError, SyntaxError, OSError) as exc:
            return [((*at, "path"), f"'{path.name}' is not a readable .npz file ({exc})")]
        if "x" not in shapes:
            arrays = ", ".join(sorted(shapes)) or "none"
            return [((*at, "path"), f"'{path.name}' has no array x (its arrays: {arrays}); an "
                     ".npz dataset keeps its samples in x, and labels in y")]
        available, what = (shapes["x"] or (0,))[0], "samples (the length of its x)"
        if not available:
            return [((*at, "path"), f"'{path.name}' holds no samples (its x is empty)")]
    elif path.is_dir() and count is not None and not annotated:  # listings cost: only
        available, what = len(image_files(path)), "images"         # to check a count
    else:
        return []
    if count is not None and count > available:
        return [((*at, "count"), f"count is {count}, but '{path.name}' holds {available} "
                 f"{what}; lower count, or drop it to use them all")]
    return []


def is_labelled(path: Path) -> bool:
    """Whether a dataset carries labels (data.load_labelled finds them); True where
    the file cannot be read, which sample_problems reports."""
    try:
        if path.suffix == ".npz":
            return "y" in npz_shapes(path)
        return not path.is_dir() or has_class_folders(path)
    except (zipfile.BadZipFile, ValueError, SyntaxError, OSError):
        return True

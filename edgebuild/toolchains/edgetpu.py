"""The Edge TPU compiler, as far as this host offers it. Probed with a PATH lookup
only, so plans can say what a build will defer without running anything."""

from __future__ import annotations

import shutil

COMMAND = "edgetpu_compiler --show_operations --out_dir . model.tflite"


def deferral() -> str:
    """Why the compile is left to the device. It always is, in this version: the
    bundle carries the int8 model and COMMAND."""
    if shutil.which("edgetpu_compiler") is None:
        return "edgetpu_compiler is not installed here"
    return "edgetpu_compiler runs as a deferred step in this version"

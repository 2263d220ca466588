"""User code a recipe names: decoder plug-ins and the module providing a trusted
model's custom objects. Each is `package.module`, found next to the recipe (an input
of the steps that use it, so editing it re-runs them) or installed.

Resolving a name never imports it: the module runs only inside the step that needs it.
"""

from __future__ import annotations

import importlib
import sys
from pathlib import Path
from types import ModuleType

from edgebuild.errors import StepError


def is_module_name(name: str) -> bool:
    return bool(name) and all(part.isidentifier() for part in name.split("."))


def local_module_file(folder: Path, name: str) -> Path | None:
    """`name`'s source file under `folder` (the recipe's), if it is there."""
    if not is_module_name(name):
        return None  # and never a path outside `folder`
    parts = name.split(".")
    for candidate in (folder.joinpath(*parts).with_suffix(".py"),
                      folder.joinpath(*parts, "__init__.py")):
        if candidate.is_file():
            return candidate
    return None


def import_module(name: str, file: Path | None, key: str, what: str = "module") -> ModuleType:
    """Import the module a recipe names at `key`; `file` is its local source (the
    step's copy of it), whose package root is put on sys.path first."""
    if file is not None:
        depth = name.count(".") + (1 if file.name == "__init__.py" else 0)
        root = str(file.parents[depth])
        if root not in sys.path:
            sys.path.insert(0, root)
        importlib.invalidate_caches()
    try:
        return importlib.import_module(name)
    except ModuleNotFoundError as error:
        if error.name and (name + ".").startswith(error.name + "."):
            raise StepError(f"{key}: the {what} '{name}' is not found; put "
                            f"{name.replace('.', '/')}.py next to the recipe, or install "
                            "it") from None
        raise StepError(f"{key}: the {what} '{name}' cannot import '{error.name}', which "
                        "it needs; install it") from None
    except Exception as error:
        raise StepError(f"{key}: importing the {what} '{name}' failed: "
                        f"{type(error).__name__}: {error}") from None

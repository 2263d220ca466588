"""Errors users can act on. The CLI prints them without a traceback.

Exit codes follow the convention of compilers: 2 for usage and recipe errors (the
user must change their input), 1 for build or validation failures.
"""

from __future__ import annotations

from dataclasses import dataclass


class EdgebuildError(Exception):
    exit_code = 1


class UsageError(EdgebuildError):
    exit_code = 2


def first_line(exc: BaseException) -> str:
    """A toolchain exception's first line: what went wrong, without its dump."""
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


@dataclass(frozen=True)
class Problem:
    """One located complaint about a recipe: `file:line:col: key.path: message`."""

    file: str
    line: int | None
    column: int | None
    key_path: str
    message: str

    def __str__(self) -> str:
        where = self.file
        if self.line is not None:
            where += f":{self.line}:{self.column or 1}"
        key = f" {self.key_path}:" if self.key_path else ""
        return f"{where}:{key} {self.message}"


class RecipeError(UsageError):
    def __init__(self, problems: list[Problem]):
        self.problems = problems
        super().__init__("\n".join(str(p) for p in problems))


class BuildError(EdgebuildError):
    exit_code = 1


class StepError(BuildError):
    """Raised inside a step for a failure the user can understand without a traceback."""

"""Recipe problems, each located at its file, line, column and key."""

from __future__ import annotations

from edgebuild.errors import Problem, RecipeError
from edgebuild.yamlpos import Located


class ProblemLog:
    """What a recipe reader found wrong (and worth a warning), located in the YAML."""

    display: str
    doc: Located
    problems: list[Problem]
    warnings: list[Problem]

    def complain(self, key_path: tuple, message: str, about_key: bool = False) -> None:
        self.problems.append(self._located(key_path, message, about_key))

    def warn(self, key_path: tuple, message: str) -> None:
        self.warnings.append(self._located(key_path, message, False))

    def _located(self, key_path: tuple, message: str, about_key: bool) -> Problem:
        line, column = self.doc.position(key_path, of_value=not about_key)
        return Problem(self.display, line, column, dotted(key_path), message)

    def fail_if_problems(self) -> None:
        if self.problems:
            raise RecipeError(sorted(self.problems, key=lambda p: (p.line or 0, p.column or 0)))


def dotted(key_path: tuple) -> str:
    out = ""
    for part in key_path:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out

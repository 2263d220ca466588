"""The layers, read from the import graph (every import, inside functions too):
cli -> operations (repo) -> domain -> toolchains -> foundation, never upwards and never
in a cycle; toolchain libraries imported only inside toolchains/. See ARCHITECTURE.md."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest
from conftest import REPO

pytestmark = pytest.mark.fast

PACKAGE = REPO / "edgebuild"
LAYERS = ("foundation", "toolchains", "domain", "operations", "cli")
FOUNDATION = {"edgebuild", "edgebuild.errors", "edgebuild.fsutil", "edgebuild.hashing",
              "edgebuild.plugins"}
CLI = {"edgebuild.cli", "edgebuild.cli_output", "edgebuild.__main__"}
TOOLCHAIN_LIBRARIES = {"tensorflow", "tf_keras", "keras", "tensorflow_model_optimization",
                       "tf2onnx", "onnx", "onnxruntime", "onnx2tf", "onnx_graphsurgeon",
                       "tensorrt", "cuda", "ai_edge_litert", "h5py"}
MAX_MODULE_LINES = 400


def layer(module: str) -> int:
    if module in CLI:
        return LAYERS.index("cli")
    if module in ("edgebuild.api", "edgebuild.repo") or module.startswith("edgebuild.repo."):
        return LAYERS.index("operations")
    if module.startswith("edgebuild.toolchains"):
        return LAYERS.index("toolchains")
    return LAYERS.index("foundation" if module in FOUNDATION else "domain")


def modules() -> dict[str, Path]:
    found = {}
    for path in PACKAGE.rglob("*.py"):
        parts = path.relative_to(REPO).with_suffix("").parts
        found[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return found


def imported(path: Path, module: str) -> set[str]:
    """Every module named in an import, TYPE_CHECKING-only imports left out."""
    names: set[str] = set()
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]

    class Imports(ast.NodeVisitor):
        def visit_If(self, node: ast.If) -> None:
            if isinstance(node.test, ast.Name) and node.test.id == "TYPE_CHECKING":
                for child in node.orelse:
                    self.visit(child)
                return
            self.generic_visit(node)

        def visit_Import(self, node: ast.Import) -> None:
            names.update(alias.name for alias in node.names)

        def visit_ImportFrom(self, node: ast.ImportFrom) -> None:
            base = node.module or ""
            if node.level:
                base = ".".join([*package.split(".")[:len(package.split(".")) - node.level + 1],
                                 *([node.module] if node.module else [])])
            names.add(base)
            names.update(f"{base}.{alias.name}" for alias in node.names)

    Imports().visit(ast.parse(path.read_text()))
    return names


@pytest.fixture(scope="module")
def graph() -> dict[str, set[str]]:
    known = modules()
    return {name: {m for m in imported(path, name) if m in known and m != name}
            for name, path in known.items()}


def test_no_module_imports_a_higher_layer(graph):
    upward = [f"{m} ({LAYERS[layer(m)]}) imports {d} ({LAYERS[layer(d)]})"
              for m, deps in sorted(graph.items()) for d in sorted(deps) if layer(d) > layer(m)]
    assert not upward, "\n".join(upward)


def test_no_import_cycles_between_modules_or_packages(graph):
    def package(module: str) -> str:
        return ".".join(module.split(".")[:2])

    packages: dict[str, set[str]] = {}
    for module, deps in graph.items():
        packages.setdefault(package(module), set()).update(
            package(d) for d in deps if package(d) != package(module))
    for level, edges in (("module", graph), ("package", packages)):
        cycles = [c for c in _strongly_connected(edges) if len(c) > 1]
        assert not cycles, f"{level} import cycles: {cycles}"


def test_toolchain_libraries_are_imported_only_in_toolchains():
    outside = []
    for name, path in modules().items():
        if name.startswith("edgebuild.toolchains"):
            continue
        libraries = {m.split(".")[0] for m in imported(path, name)} & TOOLCHAIN_LIBRARIES
        if libraries:
            outside.append(f"{name}: {', '.join(sorted(libraries))}")
    assert not outside, "\n".join(outside)


def test_modules_stay_small():
    long = {name: n for name, path in modules().items()
            if (n := len(path.read_text().splitlines())) > MAX_MODULE_LINES}
    assert not long, long


def test_the_check_sees_a_cycle_and_an_upward_import():
    """The checks above can fail: on a graph with both faults, they do."""
    faulty = {"edgebuild.graph": {"edgebuild.plan"}, "edgebuild.plan": {"edgebuild.graph"},
              "edgebuild.toolchains.tf": {"edgebuild.repo.build"}, "edgebuild.repo.build": set()}
    with pytest.raises(AssertionError):
        test_no_module_imports_a_higher_layer(faulty)
    with pytest.raises(AssertionError):
        test_no_import_cycles_between_modules_or_packages(faulty)


def _strongly_connected(edges: dict[str, set[str]]) -> list[list[str]]:
    """Tarjan's algorithm, iteratively."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []
    for root in sorted(edges):
        if root in index:
            continue
        work = [(root, iter(sorted(edges.get(root, ()))))]
        index[root] = low[root] = len(index)
        stack.append(root)
        on_stack.add(root)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = len(index)
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(edges.get(child, ())))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                component = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == node:
                        break
                found.append(sorted(component))
    return found

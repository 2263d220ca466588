"""Safe YAML loading that remembers where every key and value came from.

PyYAML's constructors drop positions, so we compose the node tree ourselves (C
parser when available) and build plain Python objects alongside a map from key
path to (line, column). Limits keep hostile input (alias bombs, deep nesting,
huge files) from hanging or exhausting memory.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import yaml

try:
    _Loader = yaml.CSafeLoader
except AttributeError:  # pragma: no cover - PyYAML built without libyaml
    _Loader = yaml.SafeLoader

MAX_BYTES = 1 << 20
MAX_DEPTH = 32
MAX_NODES = 100_000

KeyPath = tuple[str | int, ...]

_TIMESTAMP = "tag:yaml.org,2002:timestamp"
# What JSON can hold. Any other tag (!!python/..., !!binary, !custom) is refused: a
# recipe never makes objects.
PLAIN_TAGS = {f"tag:yaml.org,2002:{name}" for name in
              ("str", "int", "float", "bool", "null", "map", "seq", "merge", "timestamp")}


class YamlError(Exception):
    def __init__(self, message: str, line: int | None = None, column: int | None = None,
                 path: KeyPath = ()):
        super().__init__(message)
        self.message, self.line, self.column, self.path = message, line, column, path


@dataclass
class Located:
    """A loaded document plus the position of every key path in it."""

    data: object
    positions: dict[KeyPath, tuple[int, int]] = field(default_factory=dict)  # of keys
    value_positions: dict[KeyPath, tuple[int, int]] = field(default_factory=dict)

    def position(self, path: KeyPath, of_value: bool = True) -> tuple[int | None, int | None]:
        """Where the value (or the key) at `path` starts; for a path that is not in
        the document (a missing key), where its nearest parent starts."""
        if of_value and path in self.value_positions:
            return self.value_positions[path]
        while path not in self.positions and path:
            path = path[:-1]
        return self.positions.get(path, (None, None))


def load(text: str) -> Located:
    if len(text.encode("utf-8", "surrogatepass")) > MAX_BYTES:
        raise YamlError(f"file is larger than {MAX_BYTES // 1024} KiB; "
                        "recipes are small text files")
    try:
        root = yaml.compose(text, Loader=_Loader)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark
        raise YamlError(f"invalid YAML: {exc.problem}", mark.line + 1 if mark else None,
                        mark.column + 1 if mark else None) from None
    except yaml.YAMLError as exc:
        raise YamlError(f"invalid YAML: {exc}") from None
    located = Located(None)
    if root is not None:
        located.data = _Builder(located).build(root, (), 0)
    return located


class _Builder:
    def __init__(self, located: Located):
        self.positions, self.value_positions = located.positions, located.value_positions
        self.nodes = 0

    def build(self, node: yaml.Node, path: KeyPath, depth: int) -> object:
        self.nodes += 1
        if self.nodes > MAX_NODES:
            raise YamlError(f"document expands to more than {MAX_NODES} values "
                            "(an alias bomb?)", *_mark(node), path)
        if depth > MAX_DEPTH:
            raise YamlError(f"nested deeper than {MAX_DEPTH} levels", *_mark(node), path)
        self.positions.setdefault(path, _mark(node))
        self.value_positions.setdefault(path, _mark(node))
        if node.tag not in PLAIN_TAGS:
            raise YamlError(f"the tag {node.tag} is not allowed: recipes are plain YAML "
                            "(strings, numbers, booleans, lists, mappings)", *_mark(node), path)
        if isinstance(node, yaml.MappingNode):
            return self._mapping(node, path, depth)
        if isinstance(node, yaml.SequenceNode):
            return [self.build(item, (*path, i), depth + 1) for i, item in enumerate(node.value)]
        return _scalar(node)

    def _mapping(self, node: yaml.MappingNode, path: KeyPath, depth: int) -> dict:
        result: dict = {}
        for key_node, value_node in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":
                merged = self.build(value_node, path, depth + 1)
                for part in merged if isinstance(merged, list) else [merged]:
                    if not isinstance(part, dict):
                        raise YamlError("'<<' merges only mappings", *_mark(value_node), path)
                    for k, v in part.items():
                        result.setdefault(k, v)
                continue
            key = _scalar(key_node)
            if not isinstance(key, str):
                raise YamlError(f"keys must be strings, got {key!r}", *_mark(key_node), path)
            if key in result:
                raise YamlError(f"duplicate key '{key}'", *_mark(key_node), path)
            self.positions[(*path, key)] = _mark(key_node)
            result[key] = self.build(value_node, (*path, key), depth + 1)
        return result


def _mark(node: yaml.Node) -> tuple[int, int]:
    return node.start_mark.line + 1, node.start_mark.column + 1


def _scalar(node: yaml.Node) -> object:
    if not isinstance(node, yaml.ScalarNode):
        raise YamlError("expected a plain value here", *_mark(node))
    if node.tag not in PLAIN_TAGS:
        raise YamlError(f"the tag {node.tag} is not allowed: recipes are plain YAML",
                        *_mark(node))
    if node.tag == _TIMESTAMP:  # an unquoted date: the text, as JSON would have it
        return node.value
    # SafeConstructor turns resolved tags (int, float, bool, null, str) into values.
    try:
        return _SCALARS.construct_object(node, deep=False)
    except Exception as exc:  # noqa: BLE001 - !!int/!!bool forced on text that is neither
        raise YamlError(f"{node.value!r} is not a valid {node.tag.rsplit(':', 1)[-1]}: "
                        f"{getattr(exc, 'problem', None) or exc}", *_mark(node)) from None


_SCALARS = yaml.SafeLoader("")

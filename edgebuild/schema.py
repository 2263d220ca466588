"""JSON Schema validation with errors a person can act on.

jsonschema's own messages describe the schema ("is not valid under any of the given
schemas"); users need the key, what was expected and the valid choices.
"""

from __future__ import annotations

import difflib
import json
from functools import cache
from importlib import resources

from edgebuild.yamlpos import KeyPath

SCHEMAS = ("recipe", "device-catalog", "steps", "manifest")


@cache
def schema_text(name: str) -> str:
    return resources.files("edgebuild.schemas").joinpath(f"{name}.schema.json").read_text()


@cache
def _validator(name: str):
    import jsonschema
    from referencing import Registry, Resource

    docs = {n: json.loads(schema_text(n)) for n in SCHEMAS}
    registry = Registry().with_resources(
        (doc["$id"], Resource.from_contents(doc)) for doc in docs.values())
    return jsonschema.Draft202012Validator(docs[name], registry=registry)


def validate(name: str, document: object) -> list[tuple[KeyPath, str, bool]]:
    """(key path, message, about_the_key) for every problem. `about_the_key` is True
    where the key itself is wrong (unknown key), False where its value is."""
    errors = sorted(_validator(name).iter_errors(document), key=lambda e: list(map(str, e.path)))
    found: list[tuple[KeyPath, str, bool]] = []
    for error in errors:
        for path, message in _explain(error):
            problem = (path, message, message.startswith("unknown key"))
            if problem not in found:
                found.append(problem)
    return found


def _explain(error) -> list[tuple[KeyPath, str]]:
    path = tuple(error.absolute_path)
    kind, instance, schema = error.validator, error.instance, error.schema
    if kind in ("additionalProperties", "unevaluatedProperties"):
        known = _known_keys(schema)
        return [((*path, key), _unknown_key(key, known)) for key in _unexpected(error, known)]
    if kind == "oneOf":
        return _explain_one_of(error, path)
    if kind == "enum":
        choices = ", ".join(map(str, error.validator_value))
        return [(path, f"{instance!r} is not allowed (choose one of: {choices})")]
    if kind == "type":
        return [(path, f"expected {_article(error.validator_value)}, got {_describe(instance)}")]
    if kind == "required":
        missing = error.message.split("'")[1] if "'" in error.message else "?"
        return [(path, f"missing required key '{missing}'")]
    if kind == "pattern" and "description" in schema:
        return [(path, f"{instance!r} is not a valid name ({schema['description']})")]
    if kind == "propertyNames":
        return [(path, f"{error.instance!r} is not a valid name")]
    return [(path, error.message)]


def _explain_one_of(error, path: KeyPath) -> list[tuple[KeyPath, str]]:
    # A step slot takes `false`/`true` or an object; report against the branch whose
    # type matched, which is what the user was trying to write.
    relevant = [e for e in error.context if e.validator != "type" or e.path]
    if relevant:  # their paths are absolute already
        return [found for sub in relevant for found in _explain(sub)]
    return [(path, f"expected true, false or a mapping, got {_describe(error.instance)}")]


def _unexpected(error, known: list[str]) -> list[str]:
    if not isinstance(error.instance, dict):
        return []
    return [key for key in error.instance if key not in known]


def _known_keys(schema: dict) -> list[str]:
    # Targets and profiles combine their own keys with the shared step slots (via
    # allOf/$ref), which jsonschema's error does not list.
    names = set(schema.get("properties", {}))
    refs = [schema.get("$ref", "")] + [part.get("$ref", "") for part in schema.get("allOf", [])]
    if any(ref.endswith("#/$defs/slots") for ref in refs):
        names |= set(json.loads(schema_text("steps"))["$defs"]["slots"]["properties"])
    return sorted(names)


def _unknown_key(key: str, known: list[str]) -> str:
    close = difflib.get_close_matches(key, known, n=1)
    hint = f"; did you mean '{close[0]}'?" if close else ""
    return f"unknown key '{key}' (expected one of: {', '.join(known)}){hint}"


def _article(expected) -> str:
    names = {"object": "a mapping", "array": "a list", "string": "a string", "number": "a number",
             "integer": "an integer", "boolean": "true or false", "null": "nothing"}
    if isinstance(expected, list):
        return " or ".join(names.get(t, t) for t in expected)
    return names.get(expected, expected)


def _describe(value: object) -> str:
    kinds = {dict: "a mapping", list: "a list", bool: "a boolean", type(None): "nothing"}
    return kinds.get(type(value), repr(value))

"""A strict validator for the JSON Schema subset the API's OpenAPI document uses.

The schemas in :mod:`tundra.panel.api.schemas` are both the published contract and what requests
are checked against, so the two cannot drift. Only the keywords listed in :data:`KEYWORDS` are
allowed in a schema (a test checks every schema of the document), and a value passes only if it
is exactly of the declared type: ``true`` is not an integer, ``1.0`` is not an integer, a string
that cannot be encoded as UTF-8 (a lone surrogate) is not a string.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from functools import lru_cache
from typing import Any

Schema = Mapping[str, Any]

#: The JSON Schema keywords the validator implements; anything else in a schema is an error.
KEYWORDS = frozenset(
    {
        "$ref",
        "type",
        "properties",
        "required",
        "additionalProperties",
        "minProperties",
        "items",
        "minItems",
        "maxItems",
        "uniqueItems",
        "minLength",
        "maxLength",
        "pattern",
        "enum",
        "minimum",
        "maximum",
        "format",
        "description",
        "default",
        "examples",
        "readOnly",
    }
)
_REF_PREFIX = "#/components/schemas/"


class SchemaViolation(Exception):
    """A value does not match its schema; ``where`` names the place (``body.tags[2]``)."""

    def __init__(self, where: str, problem: str) -> None:
        super().__init__(f"{where}: {problem}")
        self.where = where
        self.problem = problem


@lru_cache(maxsize=256)
def _pattern(text: str) -> re.Pattern[str]:
    return re.compile(text)


def _type_ok(value: Any, name: str) -> bool:
    if name == "null":
        return value is None
    if name == "boolean":
        return isinstance(value, bool)
    if name == "integer":
        return isinstance(value, int) and not isinstance(value, bool)
    if name == "number":
        return isinstance(value, int | float) and not isinstance(value, bool)
    if name == "string":
        return isinstance(value, str)
    if name == "array":
        return isinstance(value, list)
    if name == "object":
        return isinstance(value, dict)
    raise ValueError(f"unsupported schema type {name!r}")


def _describe(value: Any) -> str:
    for name in ("null", "boolean", "integer", "number", "string", "array", "object"):
        if _type_ok(value, name):
            return name
    return type(value).__name__


def resolve(schema: Schema, components: Mapping[str, Schema]) -> Schema:
    ref = schema.get("$ref")
    if ref is None:
        return schema
    if not ref.startswith(_REF_PREFIX) or ref[len(_REF_PREFIX) :] not in components:
        raise ValueError(f"unresolvable $ref {ref!r}")
    return resolve(components[ref[len(_REF_PREFIX) :]], components)


def validate(value: Any, schema: Schema, components: Mapping[str, Schema], where: str) -> None:
    """Raise :class:`SchemaViolation` unless ``value`` matches ``schema``."""
    schema = resolve(schema, components)
    types = schema.get("type")
    if types is not None:
        names = [types] if isinstance(types, str) else list(types)
        if not any(_type_ok(value, n) for n in names):
            raise SchemaViolation(where, f"expected {' or '.join(names)}, got {_describe(value)}")
    if "enum" in schema and not any(value == e and type(value) is type(e) for e in schema["enum"]):
        allowed = ", ".join(str(e) for e in schema["enum"])
        raise SchemaViolation(where, f"must be one of: {allowed}")
    if isinstance(value, str):
        _check_string(value, schema, where)
    elif isinstance(value, int | float) and not isinstance(value, bool):
        if "minimum" in schema and value < schema["minimum"]:
            raise SchemaViolation(where, f"must be at least {schema['minimum']}")
        if "maximum" in schema and value > schema["maximum"]:
            raise SchemaViolation(where, f"must be at most {schema['maximum']}")
    elif isinstance(value, list):
        _check_array(value, schema, components, where)
    elif isinstance(value, dict):
        _check_object(value, schema, components, where)


def _check_string(value: str, schema: Schema, where: str) -> None:
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise SchemaViolation(where, "is not valid Unicode text") from None
    if "minLength" in schema and len(value) < schema["minLength"]:
        raise SchemaViolation(where, f"must have at least {schema['minLength']} characters")
    if "maxLength" in schema and len(value) > schema["maxLength"]:
        raise SchemaViolation(where, f"must have at most {schema['maxLength']} characters")
    if "pattern" in schema:
        match = _pattern(schema["pattern"]).search(value)
        # Python's ``$`` also matches before a final newline; ECMA's (the schema's) does not.
        if match is None or (schema["pattern"].endswith("$") and match.end() != len(value)):
            raise SchemaViolation(where, "has an invalid format")


def _check_array(
    value: list[Any], schema: Schema, components: Mapping[str, Schema], where: str
) -> None:
    if "minItems" in schema and len(value) < schema["minItems"]:
        raise SchemaViolation(where, f"needs at least {schema['minItems']} item(s)")
    if "maxItems" in schema and len(value) > schema["maxItems"]:
        raise SchemaViolation(where, f"takes at most {schema['maxItems']} items")
    if "items" in schema:
        for index, item in enumerate(value):
            validate(item, schema["items"], components, f"{where}[{index}]")
    if schema.get("uniqueItems"):
        seen: list[Any] = []
        for item in value:
            if any(item == s and type(item) is type(s) for s in seen):
                raise SchemaViolation(where, "has duplicate items")
            seen.append(item)


def _check_object(
    value: dict[str, Any], schema: Schema, components: Mapping[str, Schema], where: str
) -> None:
    properties: Mapping[str, Schema] = schema.get("properties", {})
    if schema.get("additionalProperties", True) is False:
        unknown = sorted(k for k in value if k not in properties)
        if unknown:
            shown = ", ".join(repr(k[:40]) for k in unknown[:5])
            raise SchemaViolation(where, f"unknown field(s) {shown}")
    for name in schema.get("required", ()):
        if name not in value:
            raise SchemaViolation(where, f"the field {name!r} is required")
    if "minProperties" in schema and len(value) < schema["minProperties"]:
        raise SchemaViolation(where, f"needs at least {schema['minProperties']} field(s)")
    for name, sub in properties.items():
        if name in value:
            validate(value[name], sub, components, f"{where}.{name}")


def check_schema(schema: Any, components: Mapping[str, Schema], where: str = "schema") -> None:
    """Raise ValueError when ``schema`` uses a keyword or reference the validator lacks."""
    if not isinstance(schema, Mapping):
        raise ValueError(f"{where} is not a schema object")
    unknown = set(schema) - KEYWORDS
    if unknown:
        raise ValueError(f"{where} uses unsupported keyword(s) {sorted(unknown)}")
    if "$ref" in schema:
        resolve(schema, components)
    if "pattern" in schema:
        _pattern(schema["pattern"])
    for name, sub in schema.get("properties", {}).items():
        check_schema(sub, components, f"{where}.{name}")
    if "items" in schema:
        check_schema(schema["items"], components, f"{where}[]")
    additional = schema.get("additionalProperties", True)
    if not isinstance(additional, bool):
        raise ValueError(f"{where}: additionalProperties must be true or false")

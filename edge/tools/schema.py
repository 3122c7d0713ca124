"""Tool arguments checked against the tool's JSON schema before anything runs.

Models (small ones especially) produce arguments that are not JSON, miss required
fields or break ranges; the loop must turn that into a clear error, not a device
command with garbage in it. Validation uses the ``jsonschema`` package.
"""

from __future__ import annotations

import json
from typing import Any

from jsonschema import Draft202012Validator
from jsonschema.exceptions import SchemaError

EMPTY_OBJECT_SCHEMA: dict[str, Any] = {"type": "object", "properties": {}}


class ArgumentError(ValueError):
    """Arguments that are not a JSON object or do not satisfy the tool's schema."""


class BadSchema(ValueError):
    """A tool whose own input schema is not a valid JSON schema (a broken device or config)."""


def check_schema(schema: Any) -> dict[str, Any]:
    """The schema itself, verified to be a JSON-schema object; raises BadSchema otherwise."""
    if schema is None:
        return dict(EMPTY_OBJECT_SCHEMA)
    if not isinstance(schema, dict):
        raise BadSchema(f"input schema must be an object, got {type(schema).__name__}")
    try:
        Draft202012Validator.check_schema(schema)
    except SchemaError as exc:
        raise BadSchema(f"invalid input schema: {exc.message}") from None
    return schema


def parse_arguments(raw: Any) -> dict[str, Any]:
    """Tool-call arguments as a dict: OpenAI-style JSON text, an already-decoded dict, or empty."""
    if raw is None or raw == "":
        return {}
    if isinstance(raw, dict):
        return raw
    if isinstance(raw, (str, bytes)):
        try:
            value = json.loads(raw)
        except ValueError:
            raise ArgumentError(f"arguments are not JSON: {str(raw)[:80]!r}") from None
        if value is None:
            return {}
        if not isinstance(value, dict):
            raise ArgumentError(f"arguments must be a JSON object, got {type(value).__name__}")
        return value
    raise ArgumentError(f"arguments must be a JSON object, got {type(raw).__name__}")


def validate_arguments(schema: dict[str, Any], arguments: Any) -> dict[str, Any]:
    """``arguments`` parsed and validated; raises ArgumentError naming the first problem."""
    args = parse_arguments(arguments)
    errors = sorted(Draft202012Validator(schema).iter_errors(args), key=lambda e: list(e.absolute_path))
    if errors:
        err = errors[0]
        where = ".".join(str(p) for p in err.absolute_path)
        raise ArgumentError(f"{where + ': ' if where else ''}{err.message}")
    return args

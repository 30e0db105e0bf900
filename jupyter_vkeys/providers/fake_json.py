"""A JSON value that satisfies a JSON Schema: the fake model's structured output.

The offline fake answers ``response_format: {"type": "json_schema", ...}`` (and the
Responses API's ``text.format``) and forced tool calls with arguments built here,
so that the OpenAI SDK's ``.parse()`` helpers, pydantic models and Anthropic tool
loops work offline. Called by :mod:`.fake` with the request's schema; covers the
subset of JSON Schema that OpenAI's strict structured outputs allow (objects,
arrays, scalars, enums, consts, ``anyOf``, ``$ref`` into ``$defs``), and returns
something sensible for anything else. Deterministic: the same schema and seed
give the same value.
"""

from __future__ import annotations

from typing import Any

_MAX_DEPTH = 12


def _resolve(schema: Any, root: dict[str, Any]) -> Any:
    """Follow local ``$ref`` pointers (``#/$defs/X``, ``#/definitions/X``)."""
    for _ in range(32):
        if not isinstance(schema, dict) or not isinstance(schema.get("$ref"), str):
            return schema
        ref = schema["$ref"]
        if not ref.startswith("#/"):
            return {}
        node: Any = root
        for part in ref[2:].split("/"):
            node = node.get(part) if isinstance(node, dict) else None
        schema = node if isinstance(node, dict) else {}
    return {}


def instance(schema: Any, words: list[str], root: dict[str, Any] | None = None,
             depth: int = 0) -> Any:
    """A value valid against ``schema``, with strings drawn from ``words``."""
    root = root if root is not None else (schema if isinstance(schema, dict) else {})
    schema = _resolve(schema, root)
    if not isinstance(schema, dict) or depth > _MAX_DEPTH:
        return None
    if "const" in schema:
        return schema["const"]
    if isinstance(schema.get("enum"), list) and schema["enum"]:
        return schema["enum"][0]
    for combiner in ("anyOf", "oneOf", "allOf"):
        options = schema.get(combiner)
        if isinstance(options, list) and options:
            usable = [o for o in options if _resolve(o, root).get("type") != "null"] or options
            return instance(usable[0], words, root, depth + 1)
    kind = schema.get("type")
    if isinstance(kind, list):
        kind = next((k for k in kind if k != "null"), kind[0] if kind else None)
    if kind is None:
        kind = ("object" if "properties" in schema else "array" if "items" in schema
                else "string")
    word = words[depth % len(words)] if words else "fake"
    if kind == "object":
        properties = schema.get("properties") if isinstance(schema.get("properties"), dict) else {}
        return {name: instance(sub, words, root, depth + 1) for name, sub in properties.items()}
    if kind == "array":
        count = max(int(schema.get("minItems") or 1), 1) if isinstance(
            schema.get("minItems", 1), int) else 1
        return [instance(schema.get("items", {}), words, root, depth + 1)
                for _ in range(min(count, 8))]
    if kind == "integer":
        low = schema.get("minimum")
        return int(low) if isinstance(low, (int, float)) else 1
    if kind == "number":
        low = schema.get("minimum")
        return float(low) if isinstance(low, (int, float)) else 1.0
    if kind == "boolean":
        return True
    if kind == "null":
        return None
    fmt = schema.get("format")
    if fmt == "date-time":
        return "2026-01-01T00:00:00Z"
    if fmt == "date":
        return "2026-01-01"
    if fmt == "email":
        return "fake@example.com"
    if fmt == "uri":
        return "https://example.com/fake"
    return word

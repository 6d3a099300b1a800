"""The smallest valid value of a JSON schema, as the offline model answers a forced tool.

:func:`minimal_instance` builds a small deterministic value valid against a schema:
objects get their required properties, enums their first value, ``const`` its value,
strings ``[offline]`` (padded or cut to the length limits, or a short value matching the
pattern), numbers a value within their bounds, arrays ``minItems`` items. ``$ref``,
``allOf``, ``anyOf`` and ``oneOf`` are followed.
"""

from __future__ import annotations

import copy
import math
import re
from collections.abc import Mapping
from typing import Any

import jsonschema

from activities.llm.offline.reading import OFFLINE, as_dict, as_list

_FORMATS = {
    "date-time": "1970-01-01T00:00:00Z",
    "date": "1970-01-01",
    "time": "00:00:00Z",
    "email": "offline@example.invalid",
    "uri": "https://example.invalid/offline",
    "url": "https://example.invalid/offline",
    "uuid": "00000000-0000-0000-0000-000000000000",
    "hostname": "example.invalid",
    "ipv4": "127.0.0.1",
}


def minimal_instance(schema: Any) -> Any:
    """A small deterministic value valid against ``schema`` (objects: the required
    properties; enums: the first value; strings: ``[offline]``; numbers: within bounds)."""
    root = schema if isinstance(schema, dict) else {}
    value = _instance(schema, root, 0)
    if isinstance(schema, dict) and schema.get("type") == "object" and not isinstance(value, dict):
        return {}
    return value


def _resolve(ref: str, root: Mapping[str, Any]) -> Any:
    if not ref.startswith("#"):
        return {}
    node: Any = root
    for part in ref.lstrip("#").strip("/").split("/"):
        if not part:
            continue
        part = part.replace("~1", "/").replace("~0", "~")
        if isinstance(node, Mapping):
            node = node.get(part, {})
        elif isinstance(node, list) and part.isdigit() and int(part) < len(node):
            node = node[int(part)]
        else:
            return {}
    return node


def _merge(a: Mapping[str, Any], b: Mapping[str, Any]) -> dict[str, Any]:
    out = dict(a)
    for k, v in b.items():
        if k == "properties" and isinstance(out.get(k), dict) and isinstance(v, dict):
            out[k] = {**out[k], **v}
        elif k == "required" and isinstance(out.get(k), list) and isinstance(v, list):
            out[k] = list(dict.fromkeys([*out[k], *v]))
        else:
            out[k] = v
    return out


def _is_valid(value: Any, schema: Any, root: Mapping[str, Any]) -> bool:
    try:
        validator = jsonschema.Draft202012Validator(root)
        return bool(validator.evolve(schema=schema).is_valid(value))
    except Exception:
        return False


def _instance(schema: Any, root: Mapping[str, Any], depth: int) -> Any:
    if schema is True or schema == {} or not isinstance(schema, Mapping):
        return OFFLINE
    if depth > 32:
        return None
    if "$ref" in schema:
        rest = {k: v for k, v in schema.items() if k != "$ref"}
        return _instance(_merge(_resolve(str(schema["$ref"]), root), rest), root, depth + 1)
    if "const" in schema:
        return copy.deepcopy(schema["const"])
    if isinstance(schema.get("enum"), list) and schema["enum"]:
        return copy.deepcopy(schema["enum"][0])
    if isinstance(schema.get("allOf"), list):
        merged: dict[str, Any] = {k: v for k, v in schema.items() if k != "allOf"}
        for part in schema["allOf"]:
            if isinstance(part, Mapping):
                merged = _merge(merged, part)
        return _instance(merged, root, depth + 1)
    for key in ("anyOf", "oneOf"):
        branches = schema.get(key)
        if isinstance(branches, list) and branches:
            rest = {k: v for k, v in schema.items() if k != key}
            for branch in branches:
                if not isinstance(branch, Mapping):
                    continue
                candidate = _instance(_merge(rest, branch), root, depth + 1)
                if _is_valid(candidate, schema, root):
                    return candidate
            first = branches[0] if isinstance(branches[0], Mapping) else {}
            return _instance(_merge(rest, first), root, depth + 1)
    kind = schema.get("type")
    if isinstance(kind, list):
        kind = next((k for k in kind if k != "null"), "null")
    if kind is None:
        if "properties" in schema or "required" in schema:
            kind = "object"
        elif "items" in schema or "prefixItems" in schema:
            kind = "array"
        elif any(k in schema for k in ("minimum", "maximum", "exclusiveMinimum", "multipleOf")):
            kind = "number"
        elif any(k in schema for k in ("minLength", "maxLength", "pattern", "format")):
            kind = "string"
        else:
            return OFFLINE
    if kind == "object":
        return _object(schema, root, depth)
    if kind == "array":
        return _array(schema, root, depth)
    if kind == "string":
        return _string(schema)
    if kind in ("integer", "number"):
        return _number(schema, integer=kind == "integer")
    if kind == "boolean":
        return False
    return None


def _object(schema: Mapping[str, Any], root: Mapping[str, Any], depth: int) -> dict[str, Any]:
    props = as_dict(schema.get("properties"))
    extra = schema.get("additionalProperties")
    out: dict[str, Any] = {}
    required = [r for r in schema.get("required") or [] if isinstance(r, str)]
    for name in required:
        sub = props.get(name, extra if isinstance(extra, Mapping) else {})
        out[name] = _instance(sub, root, depth + 1)
    minimum = schema.get("minProperties")
    if isinstance(minimum, int):
        for name, sub in props.items():
            if len(out) >= minimum:
                break
            out.setdefault(name, _instance(sub, root, depth + 1))
    return out


def _array(schema: Mapping[str, Any], root: Mapping[str, Any], depth: int) -> list[Any]:
    prefix = as_list(schema.get("prefixItems"))
    items = schema.get("items")
    n = _int(schema.get("minItems")) or 0
    out: list[Any] = []
    for i in range(max(n, 0)):
        sub = prefix[i] if i < len(prefix) else items if items is not None else {}
        value = _instance(sub, root, depth + 1)
        if schema.get("uniqueItems") and value in out:
            value = _vary(value, i)
        out.append(value)
    contains = schema.get("contains")
    if isinstance(contains, Mapping) and not any(_is_valid(v, contains, root) for v in out):
        out.append(_instance(contains, root, depth + 1))
    return out


def _vary(value: Any, i: int) -> Any:
    if isinstance(value, str):
        return f"{value} {i + 1}"
    if isinstance(value, bool):
        return not value
    if isinstance(value, int | float):
        return value + i
    return value


def _string(schema: Mapping[str, Any]) -> str:
    fmt = schema.get("format")
    value = _FORMATS.get(fmt, OFFLINE) if isinstance(fmt, str) else OFFLINE
    lo = _int(schema.get("minLength")) or 0
    hi = _int(schema.get("maxLength"))
    if len(value) < lo:
        value = value + "." * (lo - len(value))
    if hi is not None and len(value) > hi:
        value = value[:hi]
    pattern = schema.get("pattern")
    if isinstance(pattern, str):
        try:
            compiled = re.compile(pattern)
        except re.error:
            return value
        if not compiled.search(value):
            for candidate in ("offline", "a", "A", "0", "x", "offline-1", "", "a" * max(lo, 1)):
                ok_len = len(candidate) >= lo and (hi is None or len(candidate) <= hi)
                if ok_len and compiled.search(candidate):
                    return candidate
    return value


def _number(schema: Mapping[str, Any], *, integer: bool) -> int | float:
    def num(key: str) -> float | None:
        v = schema.get(key)
        return float(v) if isinstance(v, int | float) and not isinstance(v, bool) else None

    lo, hi = num("minimum"), num("maximum")
    xlo, xhi = num("exclusiveMinimum"), num("exclusiveMaximum")
    step = num("multipleOf")

    def fits(v: float) -> bool:
        return (
            (not integer or float(v).is_integer())
            and (lo is None or v >= lo)
            and (hi is None or v <= hi)
            and (xlo is None or v > xlo)
            and (xhi is None or v < xhi)
            and (not step or math.isclose(v / step, round(v / step), abs_tol=1e-9))
        )

    candidates = [0.0]
    candidates += [b for b in (lo, hi) if b is not None]
    if xlo is not None:
        candidates += [xlo + 1, math.floor(xlo) + 1]
    if xhi is not None:
        candidates += [xhi - 1, math.ceil(xhi) - 1]
    lower = max((b for b in (lo, xlo) if b is not None), default=None)
    upper = min((b for b in (hi, xhi) if b is not None), default=None)
    if lower is not None and upper is not None:
        candidates.append((lower + upper) / 2)
    if step:
        candidates += [math.ceil(c / step) * step for c in list(candidates)]
    value = next((c for c in candidates if fits(c)), candidates[0])
    if integer or float(value).is_integer():
        return int(value)
    return value


def _int(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None

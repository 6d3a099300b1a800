"""What a step's params must be: the JSON Schemas of the kinds that are not tools
(``KIND_PARAMS``, with plainer words for their commonest errors in ``KIND_MESSAGES``), and
:func:`params_errors`, which checks params against a schema (a tool's or a kind's) both
when a plan is validated and, rendered, right before a step runs.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import jsonschema

from plans.models import StepKind

_MODEL_PARAMS: dict[str, Any] = {
    "model": {"type": "string", "minLength": 1},
    "capabilities": {"type": "array", "items": {"type": "string"}, "minItems": 1},
    "temperature": {"type": "number", "minimum": 0, "maximum": 1},
    "max_tokens": {"type": "integer", "minimum": 1, "maximum": 64000},
}

# The params of the kinds that are not tools, as JSON Schema.
KIND_PARAMS: dict[StepKind, dict[str, Any]] = {
    StepKind.LLM: {
        "type": "object",
        "additionalProperties": False,
        "properties": {
            "prompt": {"type": "string"},
            "system": {"type": "string"},
            "input": {},
            "output_schema": {"type": "object"},
            "tools": {"type": "array", "items": {"type": "string"}, "uniqueItems": True},
            "max_tool_calls": {"type": "integer", "minimum": 1, "maximum": 50},
            "max_invalid_calls": {"type": "integer", "minimum": 0, "maximum": 10},
            **_MODEL_PARAMS,
        },
        "required": ["prompt"],
    },
    StepKind.DECISION: {
        "type": "object",
        "additionalProperties": False,
        "properties": {
            "question": {"type": "string"},
            "options": {
                "type": "array",
                "items": {"type": "string", "minLength": 1},
                "minItems": 2,
                "uniqueItems": True,
            },
            "context": {},
            "branches": {
                "type": "object",
                "additionalProperties": {"type": "array", "items": {"type": "string"}},
            },
            **_MODEL_PARAMS,
        },
        "required": ["question", "options"],
    },
    StepKind.VALIDATION: {
        "type": "object",
        "additionalProperties": False,
        "properties": {
            "checks": {
                "type": "array",
                "items": {
                    "type": "object",
                    "properties": {
                        "name": {"type": "string"},
                        "expr": {"type": "string"},
                        "message": {"type": "string"},
                    },
                    "required": ["expr"],
                    "additionalProperties": False,
                },
            },
            "judge": {
                "type": "object",
                "additionalProperties": False,
                "properties": {
                    "criteria": {
                        "type": "array",
                        "items": {"type": "string", "minLength": 1},
                        "minItems": 1,
                    },
                    "subject": {},
                    **_MODEL_PARAMS,
                },
                "required": ["criteria", "subject"],
            },
            "on_unassessed": {"enum": ["fail", "ask"]},
        },
    },
}
# A code step: the code model writes Python for the step's description (and ``prompt``),
# its ``input`` and ``output_schema``; the code runs in the sandbox with the python tool's
# limits (``timeout_s``, ``memory_mb``...), and a failure goes back to the model at most
# ``max_code_repairs`` times (docs/plan-document.md).
CODE_LIMIT_PARAMS: dict[str, Any] = {  # the python tool's (contracts.tools.LIMIT_PARAMS)
    "timeout_s": {"type": "number", "exclusiveMinimum": 0},
    "cpu_s": {"type": "integer", "minimum": 1},
    "memory_mb": {"type": "integer", "minimum": 32},
    "file_size_mb": {"type": "integer", "minimum": 1},
    "disk_mb": {"type": "integer", "minimum": 1},
    "processes": {"type": "integer", "minimum": 1},
    "open_files": {"type": "integer", "minimum": 16},
}
DEFAULT_MAX_CODE_REPAIRS = 2
KIND_PARAMS[StepKind.CODE] = {
    "type": "object",
    "additionalProperties": False,
    "properties": {
        "prompt": {"type": "string"},
        "input": {},
        "output_schema": {"type": "object"},
        "max_code_repairs": {"type": "integer", "minimum": 0, "maximum": 5},
        **CODE_LIMIT_PARAMS,
        **_MODEL_PARAMS,
    },
    "required": ["output_schema"],
}
KIND_MESSAGES: dict[tuple[StepKind, str], str] = {
    (StepKind.DECISION, ""): "a decision step needs a 'question' string and 'options': "
    "a list of at least two labels",
    (StepKind.DECISION, ".options"): "a decision step needs 'options': a list of at least "
    "two different labels",
    (StepKind.DECISION, ".question"): "a decision step needs a 'question' string",
    (StepKind.CODE, ""): "a code step needs an 'output_schema' (a JSON Schema object) its "
    "code's output must match",
    (StepKind.CODE, ".output_schema"): "a code step needs an 'output_schema' (a JSON Schema "
    "object) its code's output must match",
    (StepKind.LLM, ""): "an llm step needs a 'prompt' string",
    (StepKind.LLM, ".prompt"): "an llm step needs a 'prompt' string",
    (StepKind.VALIDATION, ".on_unassessed"): "on_unassessed is 'fail' (the default: a judge "
    "criterion no model assessed fails the step) or 'ask' (a person passes or rejects it)",
}


_VALIDATORS: dict[int, tuple[Mapping[str, Any], jsonschema.Draft202012Validator]] = {}


def _validator(schema: Mapping[str, Any]) -> jsonschema.Draft202012Validator:
    """One validator per schema object (the catalog's and the kinds' schemas live as long
    as the process): a plan of thousands of steps does not build thousands of them."""
    hit = _VALIDATORS.get(id(schema))
    if hit is not None and hit[0] is schema:
        return hit[1]
    validator = jsonschema.Draft202012Validator(schema)
    if len(_VALIDATORS) > 256:
        _VALIDATORS.clear()
    _VALIDATORS[id(schema)] = (schema, validator)
    return validator


def params_errors(
    schema: Mapping[str, Any], params: Mapping[str, Any], rendered: bool = False
) -> list[tuple[str, str]]:
    """JSON-schema errors of ``params`` as ``(".path", message)``.

    Before rendering, a value that is a ``{{ template }}`` is only known at run time, so a
    type error on it is not reported; the activity checks the ``rendered`` params again,
    and then a ``{{`` left in a value is just a wrong value.
    """
    validator = _validator(schema)
    out: list[tuple[str, str]] = []
    for err in sorted(validator.iter_errors(params), key=lambda e: list(map(str, e.absolute_path))):
        if not rendered and isinstance(err.instance, str) and "{{" in err.instance:
            continue
        path = "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in err.absolute_path)
        message = err.message
        if err.validator == "additionalProperties":
            message = f"{message}; allowed: {', '.join(sorted(schema.get('properties', {})))}"
        out.append((path, message))
    return out


def output_problems(schema: Mapping[str, Any], value: Any) -> list[str]:
    """How a code step's output (the JSON its code printed) fails its ``output_schema``,
    as ``output.path: message`` (empty: it matches)."""
    validator = jsonschema.Draft202012Validator(schema)
    out = []
    for err in sorted(validator.iter_errors(value), key=lambda e: list(map(str, e.absolute_path))):
        path = "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in err.absolute_path)
        out.append(f"output{path}: {err.message}")
    return out

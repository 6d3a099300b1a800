"""The tool catalog: every tool's name, description, params schema and risk.

Validation, risk assessment and the workflow need the catalog; none of them needs a
tool's code. So the specs live here, and the implementations in :mod:`activities.tools`
(and the sandbox) attach to them by name. A tool added elsewhere registers its spec with
:func:`define_tool` (``activities.tools.tool`` does this for you).
"""

from __future__ import annotations

from typing import Any, Literal

from plans.models import ToolSpec

RUN_CODE = "run_code"  # the sandbox's activity
SANDBOX_QUEUE = "sandbox"  # the task queue of the sandbox's worker pool
PYTHON_TOOL = "python"
HTTP_METHODS = ["GET", "POST", "PUT", "PATCH", "DELETE", "HEAD"]

_SPECS: dict[str, ToolSpec] = {}


def define_tool(
    *,
    name: str,
    description: str,
    params_schema: dict[str, Any],
    risk: Literal["low", "medium", "high", "critical"] = "low",
    idempotent: bool = True,
    activity: str | None = None,
    task_queue: str | None = None,
    fast: bool = False,
) -> ToolSpec:
    """Add a tool to the catalog. ``activity``/``task_queue`` send its steps to a dedicated
    activity on a dedicated worker pool (the code sandbox); by default a step runs in
    ``execute_step`` on the plan's own task queue. ``fast`` declares a pure tool (no I/O,
    done in milliseconds): its steps may run as local activities (the fast path); a tool
    with a dedicated activity or pool runs elsewhere, so it cannot be fast."""
    if fast and (activity is not None or task_queue is not None):
        raise ValueError(
            f"tool {name!r}: a fast tool runs in execute_step on the workflow's own worker; "
            "it cannot have a dedicated activity or task queue"
        )
    schema = {"type": "object", "additionalProperties": False, **params_schema}
    spec = ToolSpec(
        name=name,
        description=description,
        params_schema=schema,
        risk=risk,
        idempotent=idempotent,
        activity=activity,
        task_queue=task_queue,
        fast=fast,
    )
    if name in _SPECS and _SPECS[name] != spec:
        raise ValueError(f"tool {name!r} is defined twice, differently")
    _SPECS[name] = spec
    return spec


def catalog() -> dict[str, ToolSpec]:
    """Every tool's spec, in a stable (sorted) order."""
    return {name: _SPECS[name] for name in sorted(_SPECS)}


def shared(tools: dict[str, ToolSpec]) -> dict[str, ToolSpec]:
    """``tools`` (a plan's snapshot of the catalog, as its run received it) with every spec
    equal to this process's own replaced by that one: the same catalog, held once in
    memory for every run of the worker instead of once per run (a waiting plan's copy of
    the built-in catalog is tens of KiB). A spec that differs, or that this process lacks,
    stays as the plan has it."""
    out = {}
    for name, spec in tools.items():
        mine = _SPECS.get(name)
        out[name] = mine if mine is not None and mine == spec else spec
    return out


# --- the built-in tools ------------------------------------------------------------

HTTP_REQUEST = define_tool(
    name="http_request",
    description=(
        "Send an HTTP request and return {status, headers, body}. Fails on a non-2xx status "
        "unless it is listed in expect_status; connection errors, 429 and 5xx are retried, "
        "other 4xx are not. Sends the step's Idempotency-Key header. Reaches only hosts the "
        "operator's URL policy allows (never link-local or cloud metadata addresses); a "
        "redirect to another origin drops the step's headers and body; the body read and "
        "timeout_s are capped by the operator."
    ),
    params_schema={
        "properties": {
            "url": {"type": "string", "minLength": 1},
            "method": {"type": "string", "enum": HTTP_METHODS, "default": "GET"},
            "headers": {"type": "object", "additionalProperties": {"type": "string"}},
            "query": {"type": "object"},
            "json": {},
            "body": {"type": "string"},
            "timeout_s": {"type": "number", "exclusiveMinimum": 0, "maximum": 3600},
            "expect_status": {"type": "array", "items": {"type": "integer"}},
        },
        "required": ["url"],
    },
    risk="medium",
)

WAIT = define_tool(
    name="wait",
    description="Wait for `seconds` (heartbeating; a cancel stops it at once) and return how long it waited.",
    params_schema={
        "properties": {
            "seconds": {"type": "number", "minimum": 0, "maximum": 86400},
            "result": {"description": "returned as `result` when the wait ends"},
        },
        "required": ["seconds"],
    },
)

TRANSFORM = define_tool(
    name="transform",
    description=(
        "Reshape JSON with JMESPath: `data` is the input (often a {{ steps.x.output }} template); "
        "`expression` is one JMESPath expression, or `fields` maps output keys to expressions."
    ),
    params_schema={
        "properties": {
            "data": {},
            "expression": {"type": "string", "minLength": 1},
            "fields": {"type": "object", "additionalProperties": {"type": "string"}},
        },
        "required": ["data"],
        "oneOf": [{"required": ["expression"]}, {"required": ["fields"]}],
    },
    fast=True,  # JMESPath under a budget: pure, bounded computation
)

LIMIT_PARAMS = {
    "timeout_s": {"type": "number", "exclusiveMinimum": 0},
    "cpu_s": {"type": "integer", "minimum": 1},
    "memory_mb": {"type": "integer", "minimum": 32},
    "file_size_mb": {"type": "integer", "minimum": 1},
    "disk_mb": {"type": "integer", "minimum": 1},
    "processes": {"type": "integer", "minimum": 1},
    "open_files": {"type": "integer", "minimum": 16},
}

PYTHON_PARAMS_SCHEMA: dict[str, Any] = {
    "properties": {
        "code": {"type": "string", "minLength": 1, "description": "Python 3 source to run"},
        "input": {"description": "any JSON value, written to the program's stdin as JSON"},
        "stdin": {"type": "string", "description": "raw text for stdin (instead of input)"},
        "files": {
            "type": "object",
            "description": "files put in the work dir first: path -> text, or {base64: ...}",
            "additionalProperties": {
                "oneOf": [
                    {"type": "string"},
                    {
                        "type": "object",
                        "properties": {"base64": {"type": "string"}},
                        "required": ["base64"],
                        "additionalProperties": False,
                    },
                ]
            },
        },
        "outputs": {
            "type": "array",
            "description": "files (paths relative to the work dir) returned after the run",
            "items": {"type": "string", "minLength": 1},
            "uniqueItems": True,
            "maxItems": 64,
        },
        "fail_on_error": {
            "type": "boolean",
            "description": "false: a failed run (exit code, timeout, limit) returns its "
            "output instead of failing the step",
        },
        **LIMIT_PARAMS,
    },
    "required": ["code"],
    "not": {"required": ["input", "stdin"]},
}


PYTHON = define_tool(
    name=PYTHON_TOOL,
    description=(
        "Run Python 3 code in the sandbox (no network, no secrets, read-only system, "
        "resource limits) and return {ok, exit_code, stdout, stderr, json, files, sandbox}. "
        "`input` goes to stdin as JSON; `files` are written to the work dir first; "
        "`outputs` lists the files to bring back. A failed run fails the step unless "
        "fail_on_error is false."
    ),
    params_schema=PYTHON_PARAMS_SCHEMA,
    risk="medium",
    idempotent=True,
    activity=RUN_CODE,
    task_queue=SANDBOX_QUEUE,
)

"""The tool registry and the built-in tools.

Adding a tool is one decorated async function here (or in any module imported by the
worker)::

    @tool(name="echo", description="...", params_schema={...}, risk="low")
    async def echo(params: dict, ctx: ToolContext) -> Any: ...

The decorator records a :class:`plans.models.ToolSpec` (what validation needs) next to
the code. Tool errors are raised as :class:`ToolError`; ``retryable=False`` means the
step fails at once, whatever its retry policy.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, Literal

import httpx
import jmespath
import jmespath.exceptions

from plans.models import ToolSpec

ToolFn = Callable[[dict[str, Any], "ToolContext"], Awaitable[Any]]


class ToolError(Exception):
    """A tool failed. ``retryable`` says whether trying again could help."""

    def __init__(self, message: str, *, retryable: bool = True, kind: str = "ToolError"):
        super().__init__(message)
        self.retryable = retryable
        self.kind = kind


@dataclass
class ToolContext:
    """What a tool may know about the step it runs for."""

    plan_id: str
    step_id: str
    idempotency_key: str
    attempt: int = 1
    heartbeat: Callable[..., None] = lambda *a: None
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class RegisteredTool:
    spec: ToolSpec
    fn: ToolFn


_REGISTRY: dict[str, RegisteredTool] = {}


def tool(
    *,
    name: str,
    description: str,
    params_schema: dict[str, Any],
    risk: Literal["low", "medium", "high", "critical"] = "low",
    idempotent: bool = True,
    activity: str | None = None,
    task_queue: str | None = None,
) -> Callable[[ToolFn], ToolFn]:
    """Register a tool. ``activity``/``task_queue`` send its steps to a dedicated activity
    on a dedicated worker pool (the code sandbox); by default a step runs in
    ``execute_step`` on the plan's own task queue."""

    def register(fn: ToolFn) -> ToolFn:
        if name in _REGISTRY and _REGISTRY[name].fn is not fn:
            raise ValueError(f"tool {name!r} is registered twice")
        schema = {"type": "object", "additionalProperties": False, **params_schema}
        spec = ToolSpec(
            name=name,
            description=description,
            params_schema=schema,
            risk=risk,
            idempotent=idempotent,
            activity=activity,
            task_queue=task_queue,
        )
        _REGISTRY[name] = RegisteredTool(spec=spec, fn=fn)
        return fn

    return register


def get_tool(name: str) -> RegisteredTool:
    try:
        return _REGISTRY[name]
    except KeyError:
        raise ToolError(f"unknown tool {name!r}", retryable=False, kind="UnknownTool") from None


def catalog() -> dict[str, ToolSpec]:
    """Every registered tool's spec, in a stable (sorted) order."""
    return {name: _REGISTRY[name].spec for name in sorted(_REGISTRY)}


# --- built-ins -----------------------------------------------------------------------

HTTP_METHODS = ["GET", "POST", "PUT", "PATCH", "DELETE", "HEAD"]


@tool(
    name="http_request",
    description=(
        "Send an HTTP request and return {status, headers, body}. Fails on a non-2xx status "
        "unless it is listed in expect_status; connection errors, 429 and 5xx are retried, "
        "other 4xx are not. Sends the step's Idempotency-Key header."
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
async def http_request(params: dict[str, Any], ctx: ToolContext) -> Any:
    method = params.get("method", "GET")
    expect = set(params.get("expect_status") or [])
    headers = {"Idempotency-Key": ctx.idempotency_key, **(params.get("headers") or {})}
    kwargs: dict[str, Any] = {"headers": headers, "params": params.get("query")}
    if "json" in params:
        kwargs["json"] = params["json"]
    elif "body" in params:
        kwargs["content"] = params["body"]
    timeout = params.get("timeout_s", 30)
    try:
        port = httpx.URL(params["url"]).port
        if port is not None and port > 65535:  # else an OverflowError escapes and is retried
            raise httpx.InvalidURL(f"Invalid port: {port}")
        async with httpx.AsyncClient(timeout=timeout, follow_redirects=True) as client:
            resp = await client.request(method, params["url"], **kwargs)
    except httpx.InvalidURL as e:
        raise ToolError(
            f"invalid url {params['url']!r}: {e}", retryable=False, kind="BadRequest"
        ) from None
    except httpx.UnsupportedProtocol as e:
        raise ToolError(
            f"unsupported url {params['url']!r}: {e}", retryable=False, kind="BadRequest"
        ) from None
    except httpx.HTTPError as e:
        raise ToolError(
            f"{method} {params['url']}: {type(e).__name__}: {e}",
            retryable=True,
            kind="ConnectionError",
        ) from None
    body: Any
    try:
        body = resp.json()
    except ValueError:
        body = resp.text
    result = {"status": resp.status_code, "headers": dict(resp.headers), "body": body}
    if 200 <= resp.status_code < 300 or resp.status_code in expect:
        return result
    snippet = resp.text[:300]
    retryable = resp.status_code == 429 or resp.status_code >= 500
    raise ToolError(
        f"{method} {params['url']} answered {resp.status_code}: {snippet}",
        retryable=retryable,
        kind="HttpServerError" if retryable else "HttpClientError",
    )


@tool(
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
async def wait(params: dict[str, Any], ctx: ToolContext) -> Any:
    seconds = float(params["seconds"])
    start = time.monotonic()
    remaining = seconds
    while remaining > 0:
        await asyncio.sleep(min(remaining, 1.0))
        ctx.heartbeat({"waited_s": round(time.monotonic() - start, 3)})
        remaining = seconds - (time.monotonic() - start)
    return {"waited_s": round(time.monotonic() - start, 3), "result": params.get("result")}


@tool(
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
)
async def transform(params: dict[str, Any], ctx: ToolContext) -> Any:
    data = params["data"]
    try:
        if "expression" in params:
            return jmespath.search(params["expression"], data)
        return {key: jmespath.search(expr, data) for key, expr in params["fields"].items()}
    except jmespath.exceptions.JMESPathError as e:
        raise ToolError(f"JMESPath error: {e}", retryable=False, kind="BadExpression") from None

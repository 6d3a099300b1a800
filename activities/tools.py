"""The tool registry and the built-in tools.

Adding a tool is one decorated async function here (or in any module imported by the
worker)::

    @tool(name="echo", description="...", params_schema={...}, risk="low")
    async def echo(params: dict, ctx: ToolContext) -> Any: ...

The decorator adds the tool's :class:`plans.models.ToolSpec` (what validation needs) to
the catalog (:mod:`contracts.tools`); the built-in tools' specs are defined there and
their code attaches to them here (``@tool(HTTP_REQUEST)``). Tool errors are raised as :class:`ToolError`; ``retryable=False`` means the
step fails at once, whatever its retry policy.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import httpx
import jmespath
import jmespath.exceptions

from activities import jmes_budget
from activities.deps import ActivityDeps
from activities.http_guard import GuardedTransport, TooManyRedirects, exchange
from config.http import HostDenied
from config.settings import HttpSettings
from contracts.tools import HTTP_REQUEST, TRANSFORM, WAIT, define_tool
from plans.expression_limits import weight
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
    """What a tool may know about the step it runs for, and what the worker gives it
    (``deps``: the settings, the model, the store; None outside a worker)."""

    plan_id: str
    step_id: str
    idempotency_key: str
    attempt: int = 1
    heartbeat: Callable[..., None] = lambda *a: None
    extra: dict[str, Any] = field(default_factory=dict)
    deps: ActivityDeps | None = None


@dataclass(frozen=True)
class RegisteredTool:
    spec: ToolSpec
    fn: ToolFn


_REGISTRY: dict[str, RegisteredTool] = {}


def tool(spec: ToolSpec | None = None, **definition: Any) -> Callable[[ToolFn], ToolFn]:
    """Attach an implementation to a tool of the catalog (``spec``), or define a new tool
    (the keyword arguments of :func:`contracts.tools.define_tool`) and attach it."""

    def register(fn: ToolFn) -> ToolFn:
        name = spec.name if spec is not None else definition["name"]
        if name in _REGISTRY and _REGISTRY[name].fn is not fn:
            raise ValueError(f"tool {name!r} is registered twice")
        s = spec if spec is not None else define_tool(**definition)
        _REGISTRY[s.name] = RegisteredTool(spec=s, fn=fn)
        return fn

    return register


def get_tool(name: str) -> RegisteredTool:
    try:
        return _REGISTRY[name]
    except KeyError:
        raise ToolError(f"unknown tool {name!r}", retryable=False, kind="UnknownTool") from None


# --- built-ins -----------------------------------------------------------------------


@tool(HTTP_REQUEST)
async def http_request(params: dict[str, Any], ctx: ToolContext) -> Any:
    # The guard rails (activities/http_guard.py): where it may connect, redirects, size, time.
    limits = ctx.deps.settings.http if ctx.deps is not None else HttpSettings()
    method = params.get("method", "GET")
    url = params["url"]
    expect = set(params.get("expect_status") or [])
    headers = {"Idempotency-Key": ctx.idempotency_key, **(params.get("headers") or {})}
    body: dict[str, Any] = {}
    if "json" in params:
        body["json"] = params["json"]
    elif "body" in params:
        body["content"] = params["body"]
    timeout = params.get("timeout_s", limits.timeout_s)
    if timeout > limits.max_timeout_s:
        raise ToolError(
            f"params.timeout_s: {timeout:g} is above the maximum of {limits.max_timeout_s:g} "
            "seconds (PLANSMITH_HTTP_MAX_TIMEOUT_S)",
            retryable=False,
            kind="BadRequest",
        )
    try:
        port = httpx.URL(url).port
        if port is not None and port > 65535:  # else an OverflowError escapes and is retried
            raise httpx.InvalidURL(f"Invalid port: {port}")
        got = await exchange(
            method,
            url,
            headers=headers,
            query=params.get("query"),
            body=body,
            timeout_s=timeout,
            max_redirects=limits.max_redirects,
            max_response_bytes=limits.max_response_bytes,
            transport=GuardedTransport(limits.policy()),
        )
    except HostDenied as e:
        raise ToolError(
            f"{method} {url}: refused: {e}", retryable=False, kind="HostDenied"
        ) from None
    except TooManyRedirects as e:
        raise ToolError(f"{method} {url}: {e}", retryable=False, kind="TooManyRedirects") from None
    except httpx.InvalidURL as e:
        raise ToolError(f"invalid url {url!r}: {e}", retryable=False, kind="BadRequest") from None
    except httpx.UnsupportedProtocol as e:
        raise ToolError(
            f"unsupported url {url!r}: {e}", retryable=False, kind="BadRequest"
        ) from None
    except httpx.HTTPError as e:
        raise ToolError(
            f"{method} {url}: {type(e).__name__}: {e}", retryable=True, kind="ConnectionError"
        ) from None
    except TimeoutError:
        raise ToolError(
            f"{method} {url}: no complete answer within timeout_s={timeout:g} seconds",
            retryable=True,
            kind="ConnectionError",
        ) from None
    accepted = 200 <= got.status < 300 or got.status in expect
    if accepted and got.too_large is not None:
        raise ToolError(
            f"{method} {url} answered {got.status}, but {got.too_large}",
            retryable=False,
            kind="ResponseTooLarge",
        )
    if accepted:
        return {"status": got.status, "headers": got.headers, "body": got.body()}
    snippet = got.text()[:300]
    retryable = got.status == 429 or got.status >= 500
    raise ToolError(
        f"{method} {url} answered {got.status}: {snippet}",
        retryable=retryable,
        kind="HttpServerError" if retryable else "HttpClientError",
    )


@tool(WAIT)
async def wait(params: dict[str, Any], ctx: ToolContext) -> Any:
    seconds = float(params["seconds"])
    start = time.monotonic()
    remaining = seconds
    while remaining > 0:
        await asyncio.sleep(min(remaining, 1.0))
        ctx.heartbeat({"waited_s": round(time.monotonic() - start, 3)})
        remaining = seconds - (time.monotonic() - start)
    return {"waited_s": round(time.monotonic() - start, 3), "result": params.get("result")}


@tool(TRANSFORM)
async def transform(params: dict[str, Any], ctx: ToolContext) -> Any:
    """JMESPath over ``data``, under a budget (:mod:`activities.jmes_budget`), in a thread
    so a long search does not hold the worker's event loop."""
    return await asyncio.to_thread(_transform, params, ctx.step_id)


def _transform(params: dict[str, Any], step_id: str) -> Any:
    data = params["data"]
    try:
        if "expression" in params:
            return jmes_budget.search(params["expression"], data)
        result = {}
        for key, expr in params["fields"].items():
            result[key] = jmes_budget.search(expr, data)
        if weight(result, jmes_budget.MAX_TRANSFORM_SIZE) > jmes_budget.MAX_TRANSFORM_SIZE:
            raise jmes_budget.TransformTooLarge(
                f"the fields together would hold more than {jmes_budget.MAX_TRANSFORM_SIZE} "
                "characters or items (the limit of a transform's result)"
            )
        return result
    except jmespath.exceptions.JMESPathError as e:
        raise ToolError(f"JMESPath error: {e}", retryable=False, kind="BadExpression") from None
    except jmes_budget.TransformTooLarge as e:
        raise ToolError(f"step {step_id!r}: {e}", retryable=False, kind="BudgetExceeded") from None

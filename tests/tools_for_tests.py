"""Tools that only the tests register: counted, flaky and failing steps."""

from __future__ import annotations

import asyncio
from collections import Counter
from typing import Any

from activities.tools import ToolContext, ToolError, tool

CALLS: Counter[str] = Counter()


@tool(
    name="count",
    description="Count a call under `key` and return {key, calls}; optionally sleep first.",
    params_schema={
        "properties": {"key": {"type": "string"}, "sleep_s": {"type": "number"}, "value": {}},
        "required": ["key"],
    },
)
async def count(params: dict[str, Any], ctx: ToolContext) -> Any:
    if params.get("sleep_s"):
        await asyncio.sleep(params["sleep_s"])
    CALLS[params["key"]] += 1
    return {"key": params["key"], "calls": CALLS[params["key"]], "value": params.get("value")}


@tool(
    name="flaky",
    description="Fail the first `failures` calls under `key`, then succeed.",
    params_schema={
        "properties": {"key": {"type": "string"}, "failures": {"type": "integer"}},
        "required": ["key", "failures"],
    },
)
async def flaky(params: dict[str, Any], ctx: ToolContext) -> Any:
    CALLS[params["key"]] += 1
    if CALLS[params["key"]] <= params["failures"]:
        raise ToolError(
            f"flaky failure {CALLS[params['key']]} of {params['failures']}", retryable=True
        )
    return {"calls": CALLS[params["key"]], "attempt": ctx.attempt}


@tool(
    name="boom",
    description="Always fail (retryable unless permanent is true).",
    params_schema={"properties": {"key": {"type": "string"}, "permanent": {"type": "boolean"}}},
)
async def boom(params: dict[str, Any], ctx: ToolContext) -> Any:
    CALLS[params.get("key", "boom")] += 1
    raise ToolError("boom", retryable=not params.get("permanent", False))


@tool(
    name="tick",
    description=(
        "A fast tool for the tests: fail the first `failures` calls under `key` (retryable "
        "unless permanent), optionally sleep first, append `key` to the file `log` (so a "
        "process that dies can still be counted), and return {key, calls, value}. The log "
        "and the sleep are the tests' only way to see a fast step run and be interrupted; "
        "a real fast tool does no I/O."
    ),
    params_schema={
        "properties": {
            "key": {"type": "string"},
            "failures": {"type": "integer"},
            "permanent": {"type": "boolean"},
            "sleep_s": {"type": "number"},
            "log": {"type": "string"},
            "value": {},
        },
        "required": ["key"],
    },
    fast=True,
)
async def tick(params: dict[str, Any], ctx: ToolContext) -> Any:
    if params.get("sleep_s"):
        await asyncio.sleep(params["sleep_s"])
    CALLS[params["key"]] += 1
    if params.get("log"):
        with open(params["log"], "a") as f:
            f.write(params["key"] + "\n")
    if CALLS[params["key"]] <= params.get("failures", 0):
        raise ToolError(
            f"tick failure {CALLS[params['key']]}",
            retryable=not params.get("permanent", False),
            kind="TickFailed",
        )
    return {"key": params["key"], "calls": CALLS[params["key"]], "value": params.get("value")}

"""The ``transform`` tool's JMESPath under a budget (activities/jmes_budget.py), and a
step that runs out of memory is not retried (activities/steps.py).

``[@,@] | [@,@] | ...`` returns shared references at once; serialising the result costs
2^n times the input. Each hostile search runs in a child process limited to 1 GB of
address space, so a regression fails the test instead of taking the machine down.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from temporalio.exceptions import ApplicationError
from temporalio.testing import ActivityEnvironment

from activities.jmes_budget import MAX_TRANSFORM_SIZE
from activities.steps import StepActivities
from activities.tools import ToolContext, ToolError, get_tool, tool
from contracts.steps import StepTask
from plans.models import StepKind
from tests.helpers import activity_deps

ROOT = Path(__file__).resolve().parents[2]
FORTY = " | ".join(["[@,@]"] * 40)


async def transform(params: dict[str, Any]) -> Any:
    ctx = ToolContext(plan_id="plan-1", step_id="shape", idempotency_key="k")
    return await get_tool("transform").fn(params, ctx)


HOSTILE = [
    FORTY,
    FORTY + " | [][][][][][][]",  # flattening builds real lists, not references
    " | ".join(["[@,@]"] * 30) + " | to_string(@)",
    " | ".join(["{a: @, b: @}"] * 40),
    " | ".join(["[@,@]"] * 25) + " | [*].length(@)",  # a projection over 2^24
]
FIELDS = "fields"  # three fields of half the limit each, together over it


@functools.cache
def bounded_results() -> dict[str, tuple[str, float]]:
    """Every hostile case, run by the tool in one child process limited to 1 GB of
    address space: expression -> (outcome, seconds)."""
    code = (
        "import asyncio, json, resource, sys, time\n"
        "resource.setrlimit(resource.RLIMIT_AS, (1_000_000_000, 1_000_000_000))\n"
        "from activities.tools import ToolContext, ToolError, get_tool\n"
        "from activities.jmes_budget import MAX_TRANSFORM_SIZE\n"
        "ctx = ToolContext(plan_id='p', step_id='shape', idempotency_key='k')\n"
        "for expr in json.loads(sys.argv[1]):\n"
        "    params = {'data': {'a': 'x' * 100}, 'expression': expr}\n"
        "    if expr == 'fields':\n"
        "        params = {'data': {'s': 'x' * (MAX_TRANSFORM_SIZE // 2 + 10)},\n"
        "                  'fields': {'a': 's', 'b': 's', 'c': 's'}}\n"
        "    t = time.monotonic()\n"
        "    try:\n"
        "        v = asyncio.run(get_tool('transform').fn(params, ctx))\n"
        "        out = 'VALUE ' + str(len(json.dumps(v)))\n"
        "    except ToolError as e:\n"
        "        out = f'TOOLERROR retryable={e.retryable} kind={e.kind} {e}'\n"
        "    print(json.dumps([expr, round(time.monotonic() - t, 3), out]), flush=True)\n"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code, json.dumps([*HOSTILE, FIELDS])],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=str(ROOT),
    )
    results = {}
    for line in proc.stdout.splitlines():
        expr, seconds, out = json.loads(line)
        results[expr] = (out, seconds)
    assert len(results) == len(HOSTILE) + 1, proc.stdout + proc.stderr[-800:]
    return results


@pytest.mark.parametrize("expression", HOSTILE)
def test_a_blowing_up_search_fails_the_step_without_retry_naming_the_limit(
    expression: str,
) -> None:
    out, seconds = bounded_results()[expression]
    assert out.startswith("TOOLERROR retryable=False kind=BudgetExceeded"), out
    assert "step 'shape'" in out and "limit" in out, out
    assert seconds < 5, seconds


def test_fields_are_bounded_together() -> None:
    out, _ = bounded_results()[FIELDS]
    assert out.startswith("TOOLERROR retryable=False kind=BudgetExceeded"), out


async def test_ordinary_transforms_are_unchanged() -> None:
    data = {"items": [{"name": "a", "n": 1}, {"name": "b", "n": 2}]}
    assert await transform({"data": data, "expression": "items[?n > `1`].name"}) == ["b"]
    assert await transform({"data": data, "expression": "[@,@] | [@,@] | length(@)"}) == 2
    big = {"rows": [{"i": i, "s": "y" * 20} for i in range(20_000)]}
    began = time.monotonic()
    assert len(await transform({"data": big, "expression": "rows[?i > `10`].s"})) == 19_989
    assert time.monotonic() - began < 5


async def test_a_budget_error_is_a_tool_error() -> None:
    with pytest.raises(ToolError) as info:
        await transform({"data": {"a": 1}, "expression": FORTY})
    assert info.value.retryable is False
    assert f"more than {MAX_TRANSFORM_SIZE}" in str(info.value)


# --- a MemoryError is not retried ------------------------------------------------------


@tool(name="test_out_of_memory", description="raises MemoryError", params_schema={})
async def out_of_memory(params: dict[str, Any], ctx: ToolContext) -> Any:
    raise MemoryError()


async def test_a_step_out_of_memory_is_not_retried() -> None:
    """It would run out again on any worker: retrying forever is a poison task."""
    task = StepTask(
        plan_id="plan-1",
        step_id="greedy",
        kind=StepKind.TOOL,
        tool="test_out_of_memory",
        params={},
        idempotency_key="plan-1:greedy:v1",
    )
    env = ActivityEnvironment()
    env.info = dataclasses.replace(env.info, attempt=1)
    with pytest.raises(ApplicationError) as info:
        await env.run(StepActivities(activity_deps()).execute_step, task)
    assert info.value.non_retryable is True
    assert info.value.type == "ResourceExhausted"
    assert "greedy" in str(info.value)

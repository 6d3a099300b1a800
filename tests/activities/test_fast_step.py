"""``execute_step`` run as a local activity (the fast path): the worker's own registry
decides what runs there; everything else is refused before it runs."""

from __future__ import annotations

import dataclasses
import uuid
from datetime import timedelta
from typing import Any

import pytest
from temporalio.exceptions import ApplicationError
from temporalio.testing import ActivityEnvironment

import tests.tools_for_tests  # noqa: F401  registers count and tick
from activities.steps import StepActivities
from config import get_settings
from contracts.steps import FAST_PATH_REFUSED, StepOutcome, StepTask
from plans.models import StepKind
from tests.helpers import activity_deps
from tests.tools_for_tests import CALLS


def task(kind: StepKind = StepKind.TOOL, tool: str | None = "transform", **kw: Any) -> StepTask:
    params = kw.pop("params", {"data": {"i": 7}, "expression": "i"})
    return StepTask(
        plan_id="p",
        step_id="s",
        kind=kind,
        tool=tool,
        params=params,
        idempotency_key="p:s:k",
        **kw,
    )


async def run_local(t: StepTask, large_output_bytes: int | None = None) -> StepOutcome:
    settings = get_settings()
    if large_output_bytes is not None:
        settings = settings.replace(store={"large_output_bytes": large_output_bytes})
    env = ActivityEnvironment()
    env.info = dataclasses.replace(
        env.info, is_local=True, start_to_close_timeout=timedelta(seconds=30)
    )
    return await env.run(StepActivities(activity_deps(None, settings)).execute_step, t)


async def test_a_fast_tool_and_a_check_only_validation_run_locally():
    assert (await run_local(task())).output == 7
    checks = {"checks": [{"name": "seven", "expr": "inputs.n == 7"}]}
    out = await run_local(
        task(StepKind.VALIDATION, None, params=checks, context={"inputs": {"n": 7}})
    )
    assert out.output["passed"] is True


@pytest.mark.parametrize(
    ("t", "why"),
    [
        (task(tool="count", params={"key": "never"}), "not declared fast on this worker"),
        (task(tool="http_request", params={"url": "http://127.0.0.1:9/"}), "not declared fast"),
        (task(tool="no_such_tool"), "not registered on this worker"),
        (
            task(StepKind.VALIDATION, None, params={"checks": [], "judge": {"criteria": ["x"]}}),
            "a validation step is not fast",
        ),
        (task(StepKind.LLM, None, params={"prompt": "hi"}), "a llm step is not fast"),
        (task(secret_params=[["data", "t"]]), "its params hold secrets"),
        (
            task(params={"data": {"output_ref": "blob"}, "expression": "@"}),
            "read an output kept in the store",
        ),
    ],
)
async def test_the_worker_refuses_what_is_not_fast_before_running_it(t: StepTask, why: str):
    key = uuid.uuid4().hex
    if t.tool == "count":
        t = t.model_copy(update={"params": {"key": key}})
    with pytest.raises(ApplicationError) as caught:
        await run_local(t)
    assert caught.value.type == FAST_PATH_REFUSED and caught.value.non_retryable
    assert why in caught.value.message
    assert CALLS[key] == 0


async def test_an_output_too_large_to_return_inline_is_refused():
    big = task(params={"data": {"xs": list(range(100))}, "expression": "xs"})
    with pytest.raises(ApplicationError) as caught:
        await run_local(big, large_output_bytes=50)
    assert caught.value.type == FAST_PATH_REFUSED
    assert (await run_local(big, large_output_bytes=10_000)).output == list(range(100))

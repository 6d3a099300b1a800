"""The fast path: cheap pure steps (fast tools, validation checks without a judge) run
as local activities on the workflow's worker; ``fast: false`` and every I/O tool take the
ordinary activity; outputs, failures and retries read the same either way."""

from __future__ import annotations

import asyncio
import json
import uuid
from typing import Any

import pytest
from temporalio.api.enums.v1 import EventType
from temporalio.client import Client

from config import get_settings
from contracts.snapshots import as_output_ref
from contracts.steps import EXECUTE_STEP
from contracts.tools import catalog
from plans.models import Plan
from plans.run_state import LogEntry
from tests.helpers import make_plan, start, status
from tests.tools_for_tests import CALLS

LOCAL_ACTIVITY_MARKER = "core_local_activity"


def key() -> str:
    return uuid.uuid4().hex


def chain(fast: bool | None = None) -> list[dict[str, Any]]:
    """transform -> transform (templated) -> check-only validation -> transform."""
    extra: dict[str, Any] = {} if fast is None else {"fast": fast}
    return [
        {
            "id": "src",
            "tool": "transform",
            "params": {"data": {"items": [3, 4, 5]}, "expression": "items"},
            **extra,
        },
        {
            "id": "sum",
            "tool": "transform",
            "params": {
                "data": {"xs": "{{ steps.src.output }}"},
                "fields": {"total": "sum(xs)", "n": "length(xs)"},
            },
            "depends_on": ["src"],
            **extra,
        },
        {
            "id": "check",
            "kind": "validation",
            "params": {
                "checks": [{"name": "twelve", "expr": "steps.sum.output.total == 12"}],
            },
            "depends_on": ["sum"],
            **extra,
        },
        {
            "id": "last",
            "tool": "transform",
            "params": {"data": "{{ steps.sum.output }}", "expression": "n"},
            "depends_on": ["check"],
            **extra,
        },
    ]


async def history_counts(client: Client, plan: Plan) -> tuple[int, int]:
    """(execute_step activities scheduled, local activities recorded) in the plan's history."""
    history = await client.get_workflow_handle(plan.workflow_id).fetch_history()
    scheduled = markers = 0
    for e in history.events:
        if e.event_type == EventType.EVENT_TYPE_ACTIVITY_TASK_SCHEDULED:
            a = e.activity_task_scheduled_event_attributes
            scheduled += a.activity_type.name == EXECUTE_STEP
        elif e.event_type == EventType.EVENT_TYPE_MARKER_RECORDED:
            markers += e.marker_recorded_event_attributes.marker_name == LOCAL_ACTIVITY_MARKER
    return scheduled, markers


async def run_plan(client: Client, task_queue: str, plan: Plan, **kw: Any) -> dict[str, Any]:
    handle = await start(client, plan, task_queue, **kw)
    res = await handle.result()
    st = await status(handle)
    return {
        "status": res.status,
        "steps": {s.id: (s.status, s.output, s.error, s.attempts) for s in st.steps},
    }


async def test_fast_steps_run_as_local_activities_with_the_same_outputs(client, worker, task_queue):
    fast_plan = make_plan(chain())
    ordinary_plan = make_plan(chain(fast=False))
    fast = await run_plan(client, task_queue, fast_plan)
    ordinary = await run_plan(client, task_queue, ordinary_plan)
    assert fast["status"] == ordinary["status"] == "completed"
    assert fast["steps"] == ordinary["steps"]
    assert fast["steps"]["last"][1] == 3
    assert await history_counts(client, fast_plan) == (0, 4)
    assert await history_counts(client, ordinary_plan) == (4, 0)
    # the history names each fast step: its local activity's id is the step id
    history = await client.get_workflow_handle(fast_plan.workflow_id).fetch_history()
    ids = [
        json.loads(e.marker_recorded_event_attributes.details["data"].payloads[0].data)[
            "activity_id"
        ]
        for e in history.events
        if e.event_type == EventType.EVENT_TYPE_MARKER_RECORDED
        and e.marker_recorded_event_attributes.marker_name == LOCAL_ACTIVITY_MARKER
    ]
    assert ids == ["src", "sum", "check", "last"]


async def test_fast_false_on_one_step_sends_only_that_step_to_the_ordinary_path(
    client, worker, task_queue
):
    steps = chain()
    steps[1]["fast"] = False
    plan = make_plan(steps)
    got = await run_plan(client, task_queue, plan)
    assert got["status"] == "completed"
    assert await history_counts(client, plan) == (1, 3)


async def test_io_tools_never_take_the_fast_path_even_when_the_plan_says_fast(
    client, worker, task_queue
):
    k = key()
    plan = make_plan(
        [
            {"id": "w", "tool": "wait", "params": {"seconds": 0}, "fast": True},
            {"id": "c", "tool": "count", "params": {"key": k}, "fast": True, "depends_on": ["w"]},
        ]
    )
    got = await run_plan(client, task_queue, plan)
    assert got["status"] == "completed"
    assert await history_counts(client, plan) == (2, 0)
    assert CALLS[k] == 1


async def test_a_forged_catalog_cannot_make_an_io_tool_fast(client, worker, task_queue):
    """A run started with a catalog that claims ``count`` is fast: the worker's own registry
    refuses to run it as a local activity, and the step runs once, as an ordinary activity."""
    k = key()
    tools = dict(catalog())
    tools["count"] = tools["count"].model_copy(update={"fast": True})
    plan = make_plan([{"id": "c", "tool": "count", "params": {"key": k}}])
    handle = await start(client, plan, task_queue, tools=tools)
    res = await handle.result()
    assert res.status == "completed", (await status(handle)).steps
    assert CALLS[k] == 1
    scheduled, markers = await history_counts(client, plan)
    assert (scheduled, markers) == (1, 1)  # the refused local activity, then the real one
    st = await status(handle)
    step = st.steps[0]
    assert step.status == "completed" and step.attempts == 1
    logs = await handle.query("logs", result_type=list[LogEntry])
    assert any(
        "not declared fast on this worker; running it as an ordinary activity" in e.message
        for e in logs
    )


async def test_a_large_output_goes_to_the_store_through_the_ordinary_path(
    client, start_worker, task_queue
):
    await start_worker(None, get_settings().replace(store={"large_output_bytes": 200}))
    plan = make_plan(
        [
            {
                "id": "big",
                "tool": "transform",
                "params": {"data": {"xs": list(range(200))}, "expression": "xs"},
            }
        ]
    )
    handle = await start(client, plan, task_queue)
    res = await handle.result()
    assert res.status == "completed"
    assert await history_counts(client, plan) == (1, 1)  # refused after its pure work
    (st,) = (await status(handle)).steps
    assert as_output_ref(st.output) is not None


FAILURES: dict[str, tuple[dict[str, Any], dict[str, Any]]] = {
    "retried then passes": ({"failures": 2}, {"max_retries": 2, "retry_delay_s": 0.01}),
    "retries run out": ({"failures": 5}, {"max_retries": 1, "retry_delay_s": 0.01}),
    "not retryable": ({"failures": 1, "permanent": True}, {"max_retries": 3}),
    "times out": ({"sleep_s": 5}, {"max_retries": 1, "retry_delay_s": 0.01, "timeout_s": 0.3}),
}


@pytest.mark.parametrize("case", sorted(FAILURES))
async def test_failures_and_retries_read_the_same_on_both_paths(client, worker, task_queue, case):
    params, step_fields = FAILURES[case]
    got = {}
    for fast in (True, False):
        plan = make_plan(
            [
                {
                    "id": "t",
                    "tool": "tick",
                    "params": {"key": key(), **params},
                    "fast": fast,
                    **step_fields,
                }
            ]
        )
        ran = await run_plan(client, task_queue, plan)
        status_, output, error, attempts = ran["steps"]["t"]
        got[fast] = (ran["status"], status_, error, attempts, output and output["calls"])
        scheduled, markers = await history_counts(client, plan)
        assert markers == (1 if fast else 0)
        if not fast or case != "times out":
            assert scheduled == (0 if fast else 1)
    assert got[True] == got[False]
    _, status_, error, attempts, _ = got[True]
    expected = {
        "retried then passes": ("completed", None, 3),
        "retries run out": ("failed", "TickFailed: tick failure 2", 2),
        "not retryable": ("failed", "TickFailed: tick failure 1", 1),
        "times out": ("failed", "TimeoutError: activity StartToClose timeout", 2),
    }[case]
    assert (status_, attempts) == (expected[0], expected[2])
    if expected[1] is not None:
        assert error == expected[1]


async def test_a_bad_expression_fails_the_same_on_both_paths(client, worker, task_queue):
    got = []
    for fast in (True, False):
        plan = make_plan(
            [
                {
                    "id": "t",
                    "tool": "transform",
                    "params": {"data": {}, "expression": "a[?"},
                    "fast": fast,
                    "max_retries": 2,
                }
            ]
        )
        got.append(await run_plan(client, task_queue, plan))
    assert got[0] == got[1]
    assert got[0]["steps"]["t"][0] == "failed"
    assert got[0]["steps"]["t"][2].startswith("BadExpression: JMESPath error")
    assert got[0]["steps"]["t"][3] == 1


async def test_a_cancel_reaches_a_running_fast_step(client, worker, task_queue):
    k = key()
    plan = make_plan(
        [
            {"id": "long", "tool": "tick", "params": {"key": k, "sleep_s": 30}},
            {
                "id": "after",
                "tool": "transform",
                "params": {"data": 1, "expression": "@"},
                "depends_on": ["long"],
            },
        ]
    )
    handle = await start(client, plan, task_queue)
    await handle.execute_update("cancel", {"by": "ops", "reason": "wrong day"})
    res = await asyncio.wait_for(handle.result(), timeout=25)
    assert res.status == "cancelled"
    assert res.steps == {"long": "cancelled", "after": "cancelled"}
    assert CALLS[k] == 0, "the fast step was stopped, not left to finish"


async def test_a_total_timeout_cancels_a_running_fast_step(client, worker, task_queue):
    k = key()
    plan = make_plan(
        [{"id": "slow", "tool": "tick", "params": {"key": k, "sleep_s": 30}}],
        total_timeout_s=1,
    )
    handle = await start(client, plan, task_queue)
    res = await asyncio.wait_for(handle.result(), timeout=25)
    assert res.status == "failed"
    assert res.steps == {"slow": "cancelled"}
    assert CALLS[k] == 0


async def test_a_long_fast_chain_lets_queries_and_controls_in_every_few_steps(
    client, worker, task_queue
):
    """Back-to-back local activities keep the worker's workflow task open, and nothing
    reaches the run meanwhile (a status query, a pause). A long fast chain ends its
    workflow task after FAST_BREAK_EVERY steps (the next runs as an ordinary activity):
    never more fast steps than that between two completed workflow tasks."""
    from workflows.step_runner import FAST_BREAK_EVERY

    n = 3 * FAST_BREAK_EVERY + 5
    steps = [
        {
            "id": f"s{i}",
            "tool": "transform",
            "params": {"data": {"i": i}, "expression": "i"},
            "depends_on": [f"s{i - 1}"] if i else [],
        }
        for i in range(n)
    ]
    plan = make_plan(steps)
    done = await run_plan(client, task_queue, plan)
    assert done["status"] == "completed" and done["steps"][f"s{n - 1}"][1] == n - 1
    history = await client.get_workflow_handle(plan.workflow_id).fetch_history()
    runs, in_a_row = [], 0
    for e in history.events:
        if e.event_type == EventType.EVENT_TYPE_MARKER_RECORDED:
            in_a_row += e.marker_recorded_event_attributes.marker_name == LOCAL_ACTIVITY_MARKER
        elif e.event_type == EventType.EVENT_TYPE_WORKFLOW_TASK_COMPLETED:
            runs.append(in_a_row)
            in_a_row = 0
    breaks = n // (FAST_BREAK_EVERY + 1)  # the step after each run of fast ones
    assert await history_counts(client, plan) == (breaks, n - breaks)
    assert max(runs) <= FAST_BREAK_EVERY, runs

"""A plan run by the workflow is recorded in the store: status, logs and audit stay
readable from the store after the run, and match what the workflow said."""

from __future__ import annotations

import itertools
import json
import uuid
from typing import Any

from temporalio.api.enums.v1 import EventType

from activities.tools import ToolContext, tool
from store.db import get_engine, session_scope
from store.reads import get_audit, get_logs, get_status, get_steps
from tests.helpers import make_plan, start, status, wait_for


async def test_completed_plan_is_in_the_store(client, worker, task_queue):
    plan = make_plan(
        [
            {"id": "a", "tool": "count", "params": {"key": uuid.uuid4().hex, "value": 7}},
            {
                "id": "b",
                "tool": "transform",
                "params": {"data": "{{ steps.a.output }}", "expression": "value"},
                "depends_on": ["a"],
            },
        ],
        require_approval=True,
    )
    handle = await start(client, plan, task_queue)
    await wait_for(handle, lambda s: s.status == "pending_approval")
    await handle.execute_update("approve", {"by": "ann", "comment": "ok"})
    res = await handle.result()
    assert res.status == "completed"
    live = await status(handle)
    with session_scope(get_engine()) as session:
        stored = get_status(session, plan.id)
        logs = get_logs(session, plan.id)
        audit = get_audit(session, plan.id)
        steps = get_steps(session, plan.id)
    assert stored is not None
    assert stored.status == "completed" and stored.progress == 1.0
    assert [(s.id, s.status) for s in stored.steps] == [(s.id, s.status) for s in live.steps]
    assert steps["b"].output == 7
    assert [e.message for e in logs][-1].startswith("plan ended completed")
    assert [(a.by, a.action, a.accepted) for a in audit] == [("ann", "approve", True)]

    # every store write carried news: none repeated the one before (the run's end sent one)
    history = await handle.fetch_history()
    snaps = [
        json.loads(e.activity_task_scheduled_event_attributes.input.payloads[0].data)
        for e in history.events
        if e.event_type == EventType.EVENT_TYPE_ACTIVITY_TASK_SCHEDULED
        and e.activity_task_scheduled_event_attributes.activity_type.name == "record_snapshot"
    ]
    cursor = ("seq", "at", "logs_start", "logs_lost", "audit_start", "audit_lost")
    for before, after in itertools.pairwise(snaps):
        same = {k: v for k, v in after.items() if k not in cursor} == {
            **{k: v for k, v in before.items() if k not in cursor},
            "steps": [],
            "logs": [],
            "audit": [],
            "plan": None,
        }
        assert not same, f"snapshot {after['seq']} repeats {before['seq']}"


@tool(
    name="big_output",
    description="Return a string of `size` characters (test tool).",
    params_schema={"properties": {"size": {"type": "integer"}}, "required": ["size"]},
)
async def big_output(params: dict[str, Any], ctx: ToolContext) -> Any:
    return {"blob": "x" * params["size"]}


@tool(
    name="measure",
    description="Return the length of `data.blob` (test tool).",
    params_schema={"properties": {"data": {}}, "required": ["data"]},
)
async def measure(params: dict[str, Any], ctx: ToolContext) -> Any:
    return len(params["data"]["blob"])


async def test_large_outputs_go_to_the_store_and_travel_by_reference(client, worker, task_queue):
    # four ~600 KB outputs would be ~2.4 MB in the workflow's result: over Temporal's limit
    steps = [{"id": f"big{i}", "tool": "big_output", "params": {"size": 600_000}} for i in range(4)]
    steps.append(
        {
            "id": "use",
            "tool": "measure",
            "params": {"data": "{{ steps.big0.output }}"},
            "depends_on": ["big0"],
        }
    )
    plan = make_plan(steps)
    handle = await start(client, plan, task_queue)
    res = await handle.result()
    assert res.status == "completed"
    st = await status(handle)
    outputs = {s.id: s.output for s in st.steps}
    ref = outputs["big0"]
    assert isinstance(ref, dict) and ref["output_ref"] and ref["size"] > 600_000
    assert ref["preview"].startswith('{"blob":"xxx')
    assert outputs["use"] == 600_000, "the next step received the whole output, not the reference"

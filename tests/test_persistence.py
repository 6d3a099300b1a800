"""A plan run by the workflow is recorded in the store: status, logs and audit stay
readable from the store after the run, and match what the workflow said."""

from __future__ import annotations

import uuid

from store.db import get_engine, session_scope
from store.repository import get_audit, get_logs, get_status, get_steps
from tests.helpers import make_plan, start, status, wait_for


async def test_completed_plan_is_in_the_store(client, worker, task_queue):
    plan = make_plan(
        [
            {"id": "a", "tool": "count", "params": {"key": uuid.uuid4().hex, "value": 7}},
            {"id": "b", "tool": "transform", "params": {"data": "{{ steps.a.output }}", "expression": "value"},
             "depends_on": ["a"]},
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

"""Durable timers on the time-skipping server: approval timeout and retry backoff.

The time-skipping server supports neither updates nor search attributes, and it does not
skip time while an activity runs; the total timeout (which cancels a running step) is
tested on the dev server in test_plan_workflow.py with a short real timeout."""

from __future__ import annotations

import uuid
from datetime import timedelta

from plans.run_state import AuditEntry
from tests.helpers import make_plan, start, status
from tests.tools_for_tests import CALLS


async def test_approval_timeout_rejects_with_a_distinct_outcome(ts):
    env, tq = ts
    k = uuid.uuid4().hex
    plan = make_plan(
        [{"id": "a", "tool": "count", "params": {"key": k}}],
        require_approval=True,
        approval_timeout_s=3600,
        on_approval_timeout="reject",
    )
    handle = await start(env.client, plan, tq, search_attributes=False, persist=False)
    res = await handle.result()  # time skips the hour
    assert res.status == "rejected"
    assert "approval timed out after 3600s" in res.outcome
    assert CALLS[k] == 0
    audit = await handle.query("audit", result_type=list[AuditEntry])
    assert [a.action for a in audit] == ["approval_timeout"]
    assert audit[0].by == "system:timeout"


async def test_approval_timeout_can_approve(ts):
    env, tq = ts
    k = uuid.uuid4().hex
    plan = make_plan(
        [{"id": "a", "tool": "count", "params": {"key": k}}],
        require_approval=True,
        approval_timeout_s=600,
        on_approval_timeout="approve",
    )
    handle = await start(env.client, plan, tq, search_attributes=False, persist=False)
    res = await handle.result()
    assert res.status == "completed"
    st = await status(handle)
    assert st.approved_by == "system:timeout"
    assert CALLS[k] == 1


async def test_retry_delay_is_a_durable_backoff(ts):
    env, tq = ts
    k = uuid.uuid4().hex
    plan = make_plan(
        [
            {
                "id": "f",
                "tool": "flaky",
                "params": {"key": k, "failures": 3},
                "max_retries": 3,
                "retry_delay_s": 600,
                "backoff": 2.0,
            }
        ]
    )
    handle = await start(env.client, plan, tq, search_attributes=False, persist=False)
    before = await env.get_current_time()
    res = await handle.result()
    after = await env.get_current_time()
    assert res.status == "completed"
    st = await status(handle)
    assert st.steps[0].attempts == 4
    # 600 + 1200 + 2400 seconds of (skipped) backoff between the four attempts
    assert after - before >= timedelta(seconds=4200)

"""A flood of refused controls against a real plan workflow: the person's approval stays
in the audit trail (the workflow's and the store's), the flood is counted and
summarised, and the status says that entries were not recorded."""

from __future__ import annotations

import asyncio
from typing import Any

from temporalio.client import Client

from plans.models import PlanStatus
from plans.run_state import REFUSED_PER_ACTOR_PER_MINUTE, AuditEntry
from store import reads
from store.db import session_scope
from tests.helpers import make_plan, start, status, store_engine, wait_for

FLOOD = 5000


async def test_a_flood_of_refused_controls_keeps_the_approval(
    client: Client, worker: Any, task_queue: str
) -> None:
    plan = make_plan(
        [{"id": "hold", "tool": "wait", "params": {"seconds": 600}}], require_approval=True
    )
    handle = await start(client, plan, task_queue)
    await wait_for(handle, lambda s: s.status == PlanStatus.PENDING_APPROVAL)
    await handle.execute_update("approve", {"by": "alice"})
    await wait_for(handle, lambda s: s.status == PlanStatus.EXECUTING)

    # 5,000 refused controls: approve signals to a plan that is already approved (a few
    # at a time: thousands of signals in one workflow activation trip the SDK's 2 s
    # deadlock detector, a separate matter)
    sem = asyncio.Semaphore(4)

    async def refused(i: int) -> None:
        async with sem:
            await handle.signal("approve", {"by": "mallory", "comment": f"#{i}"})

    await asyncio.gather(*(refused(i) for i in range(FLOOD)))
    deadline = asyncio.get_running_loop().time() + 60
    while True:  # every signal handled: recorded or counted
        st = await status(handle)
        trail = await handle.query("audit", result_type=list[AuditEntry])
        recorded = [e for e in trail if e.by == "mallory" and e.action == "approve"]
        if len(recorded) + st.audit_unrecorded == FLOOD:
            break
        assert asyncio.get_running_loop().time() < deadline, (len(recorded), st.audit_unrecorded)
        await asyncio.sleep(0.2)
    assert ("alice", "approve", True) in [(e.by, e.action, e.accepted) for e in trail]
    # at most the limit per minute of workflow time (the flood may span two minutes)
    assert len(recorded) <= 3 * REFUSED_PER_ACTOR_PER_MINUTE
    assert st.audit_unrecorded >= FLOOD - 3 * REFUSED_PER_ACTOR_PER_MINUTE
    assert st.audit_note is not None and "were counted, not recorded" in st.audit_note

    await handle.execute_update("cancel", {"by": "alice", "reason": "test over"})
    result = await handle.result()
    assert result.status == PlanStatus.CANCELLED
    trail = await handle.query("audit", result_type=list[AuditEntry])
    summaries = [e for e in trail if e.action == "refused_controls_not_recorded"]
    assert sum(int(e.detail.split()[0]) for e in summaries) == st.audit_unrecorded
    assert all(e.by == "mallory" for e in summaries)

    # the store has the same trail, the approval and the summaries included
    assert plan.id is not None
    with session_scope(store_engine()) as s:
        stored = [(r.by, r.action, r.accepted) for r in reads.get_audit(s, plan.id)]
    assert stored == [(e.by, e.action, e.accepted) for e in trail]
    assert ("alice", "approve", True) in stored

"""A plan terminated through Temporal (no workflow code runs) is closed in the store by
the API's reconciler, so the store, the dashboard and the metrics stop showing it as
waiting for a person; a plan that really waits is left alone."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from typing import Any

from temporalio.client import Client

from api import reconcile
from api.reconcile import reconcile_once
from api.store_reads import PlanStore
from plans.models import PlanStatus
from store import reads
from store.db import session_scope
from store.metrics.waiting import waiting_plans
from tests.helpers import make_plan, start, store_engine


def stored_status(plan_id: str) -> PlanStatus | None:
    with session_scope(store_engine()) as session:
        st = reads.get_status(session, plan_id)
    return st.status if st else None


async def until_stored(plan_id: str, status: PlanStatus) -> None:
    for _ in range(100):
        if stored_status(plan_id) == status:
            return
        await asyncio.sleep(0.1)
    raise AssertionError(f"store shows {stored_status(plan_id)} for {plan_id}, not {status}")


async def test_a_terminated_plan_is_closed_in_the_store(
    client: Client, worker: Any, task_queue: str
) -> None:
    gone = make_plan([{"id": "a", "tool": "count", "params": {"key": "rc"}}], require_approval=True)
    waits = make_plan(
        [{"id": "a", "tool": "count", "params": {"key": "rc"}}], require_approval=True
    )
    h_gone = await start(client, gone, task_queue)
    h_waits = await start(client, waits, task_queue)
    for plan in (gone, waits):
        await until_stored(plan.id or "", PlanStatus.PENDING_APPROVAL)

    await h_gone.terminate(reason="operator pulled the plug")
    store = PlanStore(store_engine())
    later = datetime.now(UTC) + timedelta(minutes=1)  # both runs have been quiet long enough
    closed, _ = await reconcile_once(store, client, now=later)
    assert gone.id in closed and waits.id not in closed

    with session_scope(store_engine()) as session:
        st = reads.get_status(session, gone.id or "")
        assert st is not None and st.status == PlanStatus.CANCELLED and st.waiting == []
        assert st.outcome and st.outcome.startswith("terminated through Temporal")
        waiting = {w.plan_id for w in waiting_plans(session)}
    assert gone.id not in waiting and waits.id in waiting
    assert stored_status(waits.id or "") == PlanStatus.PENDING_APPROVAL
    assert gone.id not in (await reconcile_once(store, client, now=later))[0]  # once is enough

    await h_waits.execute_update("reject", {"by": "test", "reason": "done"})


async def test_passes_page_through_long_waits(
    client: Client, worker: Any, task_queue: str, monkeypatch: Any
) -> None:
    """Plans that wait a long time do not hide a terminated one behind them."""
    monkeypatch.setattr(reconcile, "BATCH", 1)
    plans = [
        make_plan([{"id": "a", "tool": "count", "params": {"key": "rc"}}], require_approval=True)
        for _ in range(2)
    ]
    handles = [await start(client, p, task_queue) for p in plans]
    for p in plans:
        await until_stored(p.id or "", PlanStatus.PENDING_APPROVAL)
    await handles[1].terminate(reason="gone")
    store = PlanStore(store_engine())
    later = datetime.now(UTC) + timedelta(minutes=1)
    cursor = None
    closed: list[str] = []
    for _ in range(50):  # every unfinished run of the test store, one a pass
        found, cursor = await reconcile_once(store, client, now=later, after=cursor)
        closed += found
        if cursor is None:
            break
    assert closed.count(plans[1].id or "") == 1 and plans[0].id not in closed
    await handles[0].execute_update("reject", {"by": "test", "reason": "done"})

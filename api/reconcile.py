"""Close, in the store, the runs whose workflow ended without running its own code.

A workflow closes its run in the store itself (its last snapshot), except when Temporal
ends it from outside: ``temporal workflow terminate`` or a workflow execution timeout run
no workflow code, so the store would go on showing the plan as running or waiting for a
person (and the dashboard would list it forever). The API checks, every
:data:`EVERY_S` seconds, the unfinished runs that have not changed for :data:`QUIET_S`
seconds, asks Temporal about their workflow, and closes those Temporal has ended that way:
``cancelled`` ("terminated through Temporal") or ``failed`` (timed out). A run whose
workflow Temporal does not know (retention, another Temporal) is left alone.
"""

from __future__ import annotations

import asyncio
import functools
import logging
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta

from temporalio.client import Client, WorkflowExecutionStatus
from temporalio.service import RPCError, RPCStatusCode

from api.store_reads import PlanStore
from plans.models import PlanStatus
from store import run_closing
from store.models import RunRecord

EVERY_S = 30.0
QUIET_S = 10.0
BATCH = 100
DESCRIBE_TIMEOUT_S = 10.0

log = logging.getLogger("plansmith.api")

ENDED_OUTSIDE = {
    WorkflowExecutionStatus.TERMINATED: (
        PlanStatus.CANCELLED,
        "terminated through Temporal (no workflow code ran, so this was recorded by the API)",
    ),
    WorkflowExecutionStatus.TIMED_OUT: (
        PlanStatus.FAILED,
        "the workflow timed out in Temporal (its execution timeout; recorded by the API)",
    ),
}


Cursor = tuple[datetime, str, str]  # (updated_at, plan_id, run_id) of the last run checked


async def reconcile_once(
    store: PlanStore,
    client: Client,
    now: datetime | None = None,
    quiet_s: float = QUIET_S,
    after: Cursor | None = None,
) -> tuple[list[str], Cursor | None]:
    """One pass over at most :data:`BATCH` runs after ``after``: the ids of the plans whose
    run was closed, and where the next pass goes on (None: start again from the oldest)."""
    now = now or datetime.now(UTC)
    runs = await store.run(
        lambda s: run_closing.unfinished_runs(s, now - timedelta(seconds=quiet_s), BATCH, after)
    )
    closed = []
    for run in runs:
        try:
            ended = await _ended_outside(client, run)
        except Exception as e:  # one workflow that cannot be described stops nothing
            log.warning(
                "cannot check plan %s in Temporal: %s: %s", run.plan_id, type(e).__name__, e
            )
            continue
        if ended is None:
            continue
        status, outcome, at = ended
        done = await store.run(
            functools.partial(
                run_closing.mark_run_ended,
                plan_id=run.plan_id,
                run_id=run.run_id,
                status=status,
                outcome=outcome,
                at=at,
            ),
            write=True,
        )
        if done:
            log.info("plan %s: %s", run.plan_id, outcome)
            closed.append(run.plan_id)
    if len(runs) < BATCH:
        return closed, None
    last = runs[-1]
    return closed, (last.updated_at, last.plan_id, last.run_id)


async def _ended_outside(client: Client, run: RunRecord) -> tuple[PlanStatus, str, datetime] | None:
    try:
        desc = await asyncio.wait_for(
            client.get_workflow_handle(run.workflow_id).describe(), DESCRIBE_TIMEOUT_S
        )
    except RPCError as e:
        if e.status != RPCStatusCode.NOT_FOUND:
            raise
        return None
    if desc.status not in ENDED_OUTSIDE:
        return None
    if desc.run_id not in (run.run_id, run.execution_run_id):
        return None  # Temporal's newest run of this workflow id is another run
    status, outcome = ENDED_OUTSIDE[desc.status]
    return status, outcome, desc.close_time or datetime.now(UTC)


async def reconcile_forever(
    store: PlanStore, client: Callable[[], Awaitable[Client]], every_s: float = EVERY_S
) -> None:
    """:func:`reconcile_once` every ``every_s`` seconds until cancelled; a pass that fails
    (Temporal or the store unreachable) is logged and tried again next time."""
    cursor: Cursor | None = None  # long waits do not hide the runs after them
    while True:
        await asyncio.sleep(every_s)
        try:
            _, cursor = await reconcile_once(store, await client(), after=cursor)
        except asyncio.CancelledError:
            raise
        except Exception as e:
            log.warning("reconciling the store with Temporal failed: %s: %s", type(e).__name__, e)

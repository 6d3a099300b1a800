"""Closing runs the workflow could not close itself (``temporal workflow terminate``, a
workflow execution timeout): finding the runs the store still shows as unfinished, and
marking one as ended. The API's reconciler (:mod:`api.reconcile`) drives both."""

from __future__ import annotations

from datetime import datetime

import sqlalchemy as sa
from sqlmodel import Session, col, select

from plans.models import PlanStatus
from store.models import PlanRecord, RunRecord, UTCDateTime
from store.upsert import utc


def unfinished_runs(
    session: Session,
    updated_before: datetime,
    limit: int = 100,
    after: tuple[datetime, str, str] | None = None,
) -> list[RunRecord]:
    """Runs the store shows as not finished that have not changed since ``updated_before``,
    in ``(updated_at, plan_id, run_id)`` order, after ``after`` (to page through them):
    candidates for :func:`mark_run_ended`."""
    open_states = [s.value for s in PlanStatus if not s.terminal]
    runs = RunRecord.__table__.c  # type: ignore[attr-defined]
    stmt = select(RunRecord).where(
        col(RunRecord.status).in_(open_states), col(RunRecord.updated_at) < utc(updated_before)
    )
    if after is not None:
        stmt = stmt.where(
            sa.tuple_(runs.updated_at, runs.plan_id, runs.run_id)
            > sa.tuple_(sa.literal(utc(after[0]), UTCDateTime()), after[1], after[2])
        )
    order = (col(RunRecord.updated_at), col(RunRecord.plan_id), col(RunRecord.run_id))
    return list(session.exec(stmt.order_by(*order).limit(limit)).all())


def mark_run_ended(
    session: Session,
    plan_id: str,
    run_id: str,
    status: PlanStatus,
    outcome: str,
    at: datetime,
) -> bool:
    """Close a run the workflow could not close itself (e.g. ``temporal workflow
    terminate``): only a run the store still shows as unfinished changes. True if it did."""
    if not status.terminal:
        raise ValueError(f"{status.value} is not a final status")
    at = utc(at)
    open_states = [s.value for s in PlanStatus if not s.terminal]
    runs = RunRecord.__table__.c  # type: ignore[attr-defined]
    changed = session.execute(
        sa.update(RunRecord)
        .where(runs.plan_id == plan_id, runs.run_id == run_id, runs.status.in_(open_states))
        .values(
            status=status.value,
            outcome=outcome,
            finished_at=at,
            updated_at=at,
            waiting=[],
            snapshot_seq=runs.snapshot_seq + 1,
        )
        .returning(runs.snapshot_seq)
    ).all()
    if not changed:
        return False
    plans = PlanRecord.__table__.c  # type: ignore[attr-defined]
    session.execute(
        sa.update(PlanRecord)
        .where(plans.id == plan_id, plans.last_run_id == run_id)
        .values(
            status=status.value,
            outcome=outcome,
            updated_at=at,
            last_snapshot_seq=changed[0][0],
        )
    )
    return True

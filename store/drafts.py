"""Plan documents kept before they run: a draft is a plan row of status ``draft`` with its
document as version 1. The run's first snapshot (:mod:`store.recording`) takes it over."""

from __future__ import annotations

from datetime import datetime

from sqlmodel import Session

from plans.models import Plan, PlanStatus
from store.models import PlanRecord, PlanRecordPublic, PlanVersionRecord
from store.upsert import count_rows, insert, utc


def save_plan(
    session: Session, plan: Plan, *, at: datetime, by: str | None = None
) -> tuple[PlanRecordPublic, bool]:
    """Keep a plan document before it runs (status ``draft``, version 1).

    Returns the plan's row and whether it was created; an existing plan is left as it is.
    """
    if plan.id is None:
        raise ValueError("the plan has no id")
    at = utc(at)
    ins = insert(session, PlanRecord)
    created = (
        count_rows(
            session,
            ins.values(
                id=plan.id,
                title=plan.title,
                agent_id=plan.agent_id,
                current_version=1,
                status=PlanStatus.DRAFT.value,
                created_at=at,
                updated_at=at,
                last_snapshot_seq=0,
            )
            .on_conflict_do_nothing(index_elements=["id"])
            .returning(PlanRecord.__table__.c.id),  # type: ignore[attr-defined]
        )
        > 0
    )
    if created:
        session.execute(
            insert(session, PlanVersionRecord)
            .values(
                plan_id=plan.id,
                version=1,
                by=by or plan.agent_id or "author",
                at=at,
                change="created",
                diff={},
                document=plan.model_dump(mode="json"),
            )
            .on_conflict_do_nothing(index_elements=["plan_id", "version"])
        )
    record = session.get(PlanRecord, plan.id)
    assert record is not None
    return PlanRecordPublic.model_validate(record), created

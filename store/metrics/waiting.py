"""Plans waiting for a person: for what, and since when."""

from __future__ import annotations

from datetime import UTC, datetime

import sqlalchemy as sa
from sqlmodel import Session

from store.metrics.models import WaitingPlan, WaitItem
from store.metrics.sql import MAX_WAITING, PLANS, RUNS, WAITING, as_utc

_plans, _runs = PLANS.c, RUNS.c


def waiting_plans(
    session: Session, now: datetime | None = None, limit: int = 200
) -> list[WaitingPlan]:
    """Plans whose newest run waits for a person (approval, an answer, a correction, a
    resume), the longest-waiting first."""
    now = as_utc(now)
    rows = session.execute(
        sa.select(
            _plans.id,
            _plans.title,
            _plans.agent_id,
            _runs.run_id,
            _runs.status,
            _runs.version,
            _runs.waiting,
            _runs.updated_at,
        )
        .join(RUNS, sa.and_(_runs.plan_id == _plans.id, _runs.run_id == _plans.last_run_id))
        .where(_runs.status.in_(WAITING))
        .order_by(_runs.updated_at)
        .limit(MAX_WAITING)
    ).all()
    out = []
    for r in rows:
        items = [WaitItem.model_validate(w) for w in (r.waiting or []) if isinstance(w, dict)]
        times = [w.since for w in items if w.since is not None]
        since = min(times) if times else None
        out.append(
            WaitingPlan(
                plan_id=r.id,
                title=r.title or "",
                agent_id=r.agent_id,
                status=r.status,
                run_id=r.run_id,
                version=r.version,
                kind=items[0].kind if items else r.status,
                since=since,
                waiting_s=round((now - since).total_seconds(), 3) if since else None,
                waiting=items,
            )
        )
    far = datetime.max.replace(tzinfo=UTC)
    out.sort(key=lambda w: (w.since or far, w.plan_id))
    return out[:limit]

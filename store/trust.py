"""An agent's history, read from the store, for :func:`plans.policy.compute_trust`.

The runs of the plans whose ``agent_id`` is the agent (``plans`` joined with ``runs``),
the newest finished ones first, with who approved each (``runs.approved_by``) and, from
the audit trail, whether a person rejected the plan, how many steps a person rejected and
how many corrections were applied. Plain SQL over the store's tables, the same on SQLite
and PostgreSQL.
"""

from __future__ import annotations

from collections import Counter
from datetime import UTC, datetime

import sqlalchemy as sa
from sqlmodel import Session

from plans.policy import FINISHED, TrustHistory, TrustRun, is_person
from store.models import AuditRecord, PlanRecord, RunRecord

TRUST_ACTIONS = ("reject", "reject_step", "apply_correction")


def _utc(at: datetime) -> datetime:
    return at.replace(tzinfo=UTC) if at.tzinfo is None else at.astimezone(UTC)


def trust_history(session: Session, agent_id: str, limit: int = 200) -> TrustHistory:
    """The agent's newest ``limit`` finished runs, newest first."""
    run_table = RunRecord.__table__  # type: ignore[attr-defined]
    plan_table = PlanRecord.__table__  # type: ignore[attr-defined]
    runs, plans = run_table.c, plan_table.c
    audit = AuditRecord.__table__.c  # type: ignore[attr-defined]
    ended = sa.func.coalesce(runs.finished_at, runs.updated_at)
    rows = session.execute(
        sa.select(
            runs.plan_id,
            runs.run_id,
            runs.status,
            runs.approved_by,
            runs.finished_at,
            runs.updated_at,
        )
        .select_from(run_table.join(plan_table, plans.id == runs.plan_id))
        .where(plans.agent_id == agent_id, runs.status.in_(sorted(FINISHED)))
        .order_by(ended.desc(), runs.plan_id, runs.run_id)
        .limit(limit)
    ).all()
    if not rows:
        return TrustHistory(agent_id=agent_id)
    keys = {(r.plan_id, r.run_id) for r in rows}
    plan_ids = sorted({r.plan_id for r in rows})
    found = session.execute(
        sa.select(audit.plan_id, audit.run_id, audit.action, audit.by, sa.func.count())
        .where(
            audit.plan_id.in_(plan_ids),
            audit.accepted.is_(True),
            audit.action.in_(TRUST_ACTIONS),
        )
        .group_by(audit.plan_id, audit.run_id, audit.action, audit.by)
    ).all()
    counts: Counter[tuple[str, str, str]] = Counter()
    rejected_by: dict[tuple[str, str], str] = {}
    for plan_id, run_id, action, by, n in found:
        if (plan_id, run_id) not in keys or not is_person(by):
            continue
        counts[(plan_id, run_id, action)] += int(n)
        if action == "reject":
            rejected_by[(plan_id, run_id)] = by
    out = []
    for r in rows:
        key = (r.plan_id, r.run_id)
        out.append(
            TrustRun(
                plan_id=r.plan_id,
                run_id=r.run_id,
                status=r.status,
                ended_at=_utc(r.finished_at or r.updated_at),
                approved_by=r.approved_by,
                rejected_by=rejected_by.get(key),
                step_rejections=counts[(*key, "reject_step")],
                corrections=counts[(*key, "apply_correction")],
            )
        )
    return TrustHistory(agent_id=agent_id, runs=out)

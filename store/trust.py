"""An agent's history, read from the store, for :func:`plans.policy.compute_trust`.

The runs of the plans whose ``agent_id`` is the agent (``plans`` joined with ``runs``),
the newest finished ones first, with who approved each (``runs.approved_by``) and, from
the audit trail, whether a person rejected the plan, how many steps a person rejected and
how many corrections were applied, and who submitted each plan (``plans.submitted_by``:
an approval by a plan's own agent or submitter does not count as a person's). An agent
with too few runs of its own starts from its submitter's record. Plain SQL over the
store's tables, the same on SQLite and PostgreSQL.
"""

from __future__ import annotations

from collections import Counter
from datetime import UTC, datetime
from typing import Any

import sqlalchemy as sa
from sqlmodel import Session

from plans.policy import FINISHED, TrustHistory, TrustRun, is_person
from store.models import AuditRecord, PlanRecord, RunRecord

TRUST_ACTIONS = ("reject", "reject_step", "apply_correction")


def _utc(at: datetime) -> datetime:
    return at.replace(tzinfo=UTC) if at.tzinfo is None else at.astimezone(UTC)


def trust_history(
    session: Session,
    agent_id: str | None,
    limit: int = 200,
    *,
    submitted_by: str | None = None,
    min_own_runs: int = 1,
) -> TrustHistory:
    """The agent's newest ``limit`` finished runs, newest first.

    With ``submitted_by`` (the API key owner submitting the plan being decided), an agent
    with fewer than ``min_own_runs`` runs that count (not cancelled, not rejected for want
    of an answer) of its own starts from its submitter's record: the runs of every plan
    ``submitted_by`` submitted, the agent's own included (``from_submitter``). A new
    ``agent_id`` does not wipe a key's record.
    """
    plans = PlanRecord.__table__.c  # type: ignore[attr-defined]
    own = _runs(session, plans.agent_id == agent_id, limit) if agent_id is not None else []
    counted = sum(1 for r in own if _counts(r))
    history = TrustHistory(agent_id=agent_id, runs=own, submitted_by=submitted_by, own_runs=counted)
    if submitted_by is None or counted >= max(min_own_runs, 1):
        return history
    where = plans.submitted_by == submitted_by
    if agent_id is not None:
        where = sa.or_(where, plans.agent_id == agent_id)
    return history.model_copy(update={"runs": _runs(session, where, limit), "from_submitter": True})


def plan_submitter(session: Session, plan_id: str | None) -> str | None:
    """Who submitted ``plan_id`` (its plans row), None when unknown."""
    if plan_id is None:
        return None
    plans = PlanRecord.__table__.c  # type: ignore[attr-defined]
    return session.execute(
        sa.select(plans.submitted_by).where(plans.id == plan_id)
    ).scalar_one_or_none()


def _counts(r: TrustRun) -> bool:
    """Whether a run says something about the agent (as compute_trust weighs them)."""
    if r.status == "cancelled":
        return False
    return not (r.status == "rejected" and not is_person(r.rejected_by))


def _runs(session: Session, where: Any, limit: int) -> list[TrustRun]:
    """The newest ``limit`` finished runs of the plans ``where`` selects, newest first."""
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
            plans.agent_id,
            plans.submitted_by,
        )
        .select_from(run_table.join(plan_table, plans.id == runs.plan_id))
        .where(where, runs.status.in_(sorted(FINISHED)))
        .order_by(ended.desc(), runs.plan_id, runs.run_id)
        .limit(limit)
    ).all()
    if not rows:
        return []
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
                agent_id=r.agent_id,
                submitted_by=r.submitted_by,
            )
        )
    return out

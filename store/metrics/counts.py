"""Everything the Prometheus collector (``GET /metrics``) exposes, read in one go."""

from __future__ import annotations

from collections import defaultdict
from datetime import datetime

import sqlalchemy as sa
from sqlmodel import Session

from plans.models import StepStatus
from store.metrics.models import StoreCounts
from store.metrics.planner import planner_stats
from store.metrics.sql import MAX_WAITING, PLANS, RUNS, STEPS, as_utc, json_number
from store.metrics.steps import step_groups
from store.metrics.waiting import waiting_plans

_plans, _runs, _steps = PLANS.c, RUNS.c, STEPS.c


def store_counts(session: Session, now: datetime | None = None) -> StoreCounts:
    """Counts for ``GET /metrics``, aggregated in SQL."""
    now = as_utc(now)
    by_status = {
        s: int(n)
        for s, n in session.execute(
            sa.select(_plans.status, sa.func.count()).group_by(_plans.status)
        )
    }
    waits: dict[str, int] = defaultdict(int)
    oldest: dict[str, float] = {}
    waiting = waiting_plans(session, now, limit=MAX_WAITING)
    for w in waiting:
        for item in w.waiting:
            waits[item.kind] += 1
            if item.since is not None:
                age = (now - item.since).total_seconds()
                oldest[item.kind] = max(oldest.get(item.kind, 0.0), round(age, 3))
    runs = [
        (agent, status, int(n))
        for agent, status, n in session.execute(
            sa.select(_plans.agent_id, _runs.status, sa.func.count())
            .join(PLANS, _plans.id == _runs.plan_id)
            .group_by(_plans.agent_id, _runs.status)
        )
    ]
    steps = []
    for (kind, tool), g in sorted(step_groups(session).items(), key=lambda kv: str(kv[0])):
        for status, n in g.counts.items():
            if n:
                steps.append((kind, tool, status, n))
    tin, tout = session.execute(
        sa.select(
            sa.func.sum(json_number(session, _steps.output, "input_tokens")),
            sa.func.sum(json_number(session, _steps.output, "output_tokens")),
        ).where(_steps.status == StepStatus.COMPLETED.value, _steps.carried.is_(False))
    ).one()
    return StoreCounts(
        plans_by_status=by_status,
        waits_by_kind=dict(waits),
        oldest_wait_s_by_kind=oldest,
        plans_waiting=len(waiting),
        runs_by_agent_status=runs,
        steps_by_kind_tool_status=steps,
        planner=planner_stats(session),
        llm_step_input_tokens=int(tin or 0),
        llm_step_output_tokens=int(tout or 0),
    )

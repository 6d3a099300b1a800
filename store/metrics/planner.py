"""What the planner's runs (``plan_generations``) took: rounds, validation problems,
offline share, lessons applied, tokens and latency."""

from __future__ import annotations

from datetime import datetime

import sqlalchemy as sa
from sqlmodel import Session

from store.metrics.models import PlannerStats
from store.metrics.sql import GENERATIONS, as_utc, json_length, rate

_gens = GENERATIONS.c


def planner_stats(session: Session, since: datetime | None = None) -> PlannerStats:
    """What the planner's runs created since ``since`` (default: all) took."""
    q = sa.select(
        sa.func.count(),
        sa.func.sum(sa.case((_gens.ok.is_(True), 1), else_=0)),
        sa.func.sum(sa.case((_gens.offline.is_(True), 1), else_=0)),
        sa.func.sum(_gens.rounds),
        sa.func.sum(sa.case((_gens.rounds > 1, 1), else_=0)),
        sa.func.sum(_gens.problems),
        sa.func.sum(json_length(session, _gens.lessons_applied)),
        sa.func.count(_gens.plan_id),
        sa.func.sum(_gens.input_tokens),
        sa.func.sum(_gens.output_tokens),
        sa.func.sum(_gens.latency_ms),
    )
    if since is not None:
        q = q.where(_gens.created_at >= as_utc(since))
    n, ok, offline, rounds, repaired, problems, lessons, plans, tin, tout, latency = (
        session.execute(q).one()
    )
    n = int(n or 0)
    return PlannerStats(
        runs=n,
        ok=int(ok or 0),
        failed=n - int(ok or 0),
        offline=int(offline or 0),
        offline_share=rate(int(offline or 0), n),
        rounds=int(rounds or 0),
        mean_rounds=rate(int(rounds or 0), n),
        repaired=int(repaired or 0),
        problems=int(problems or 0),
        mean_problems=rate(int(problems or 0), n),
        lessons_applied=int(lessons or 0),
        plans=int(plans or 0),
        input_tokens=int(tin or 0),
        output_tokens=int(tout or 0),
        mean_latency_ms=round(float(latency) / n, 1) if n and latency is not None else None,
    )

"""Trends per hour, day or week: runs finished and their success rate, the mean quality
of plans whose newest run finished then, and the planner's mean rounds."""

from __future__ import annotations

import math
from datetime import datetime, timedelta

import sqlalchemy as sa
from sqlmodel import Session

from plans.models import PlanStatus
from store.metrics.models import BUCKET_SIZE, Bucket, TrendPoint, Trends
from store.metrics.scores import qualities
from store.metrics.sql import (
    FINISHED,
    GENERATIONS,
    MAX_PLANS,
    MAX_RUNS,
    PLANS,
    RUNS,
    as_utc,
    mean,
    rate,
)

_plans, _runs, _gens = PLANS.c, RUNS.c, GENERATIONS.c


def bucket_start(at: datetime, bucket: Bucket) -> datetime:
    at = as_utc(at)
    if bucket == "hour":
        return at.replace(minute=0, second=0, microsecond=0)
    day = at.replace(hour=0, minute=0, second=0, microsecond=0)
    if bucket == "week":
        return day - timedelta(days=day.weekday())
    return day


def buckets(days: int, bucket: Bucket, now: datetime | None = None) -> list[datetime]:
    """The starts of the buckets covering the last ``days`` days, oldest first (the
    current bucket last)."""
    if bucket not in BUCKET_SIZE:
        raise ValueError(f"unknown bucket {bucket!r}: hour, day or week")
    size = BUCKET_SIZE[bucket]
    count = max(1, math.ceil(timedelta(days=days) / size))
    end = bucket_start(as_utc(now), bucket)
    return [end - (count - 1 - i) * size for i in range(count)]


def trends(
    session: Session, bucket: Bucket = "day", days: int = 30, now: datetime | None = None
) -> Trends:
    """Per bucket: runs finished, their success rate (completed / finished), the mean
    quality of plans whose newest run finished then, and the planner's mean rounds."""
    now = as_utc(now)
    starts = buckets(days, bucket, now)
    lo = starts[0]
    index = {s: i for i, s in enumerate(starts)}
    size = len(starts)
    finished = [0] * size
    completed = [0] * size
    planner_runs = [0] * size
    rounds: list[list[float]] = [[] for _ in range(size)]
    scored: list[list[float]] = [[] for _ in range(size)]

    rows = session.execute(
        sa.select(_runs.plan_id, _runs.run_id, _runs.status, _runs.finished_at)
        .where(
            _runs.status.in_(FINISHED),
            _runs.finished_at.is_not(None),
            _runs.finished_at >= lo,
        )
        .order_by(_runs.finished_at.desc())
        .limit(MAX_RUNS)
    ).all()
    for r in rows:
        i = index.get(bucket_start(r.finished_at, bucket))
        if i is None:
            continue
        finished[i] += 1
        completed[i] += r.status == PlanStatus.COMPLETED.value
    # quality of plans whose newest run is one of these
    newest = session.execute(
        sa.select(_plans.id, _runs.finished_at)
        .join(RUNS, sa.and_(_runs.plan_id == _plans.id, _runs.run_id == _plans.last_run_id))
        .where(
            _runs.status.in_(FINISHED),
            _runs.finished_at.is_not(None),
            _runs.finished_at >= lo,
        )
        .order_by(_runs.finished_at.desc())
        .limit(MAX_PLANS)
    ).all()
    found = qualities(session, [p.id for p in newest])
    for p in newest:
        q = found.get(p.id)
        i = index.get(bucket_start(p.finished_at, bucket))
        if q is not None and q.score is not None and i is not None:
            scored[i].append(q.score)
    for created, r in session.execute(
        sa.select(_gens.created_at, _gens.rounds)
        .where(_gens.created_at >= lo)
        .order_by(_gens.created_at.desc())
        .limit(MAX_RUNS)
    ):
        i = index.get(bucket_start(created, bucket))
        if i is not None:
            planner_runs[i] += 1
            rounds[i].append(float(r))
    points = [
        TrendPoint(
            start=s,
            finished=finished[i],
            completed=completed[i],
            success_rate=rate(completed[i], finished[i]),
            plans_scored=len(scored[i]),
            mean_quality=mean(scored[i]),
            planner_runs=planner_runs[i],
            mean_planner_rounds=mean(rounds[i]),
        )
        for i, s in enumerate(starts)
    ]
    return Trends(
        bucket=bucket, days=days, start=lo, end=starts[-1] + BUCKET_SIZE[bucket], points=points
    )

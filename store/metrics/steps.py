"""Steps as the metrics see them: each step's kind and tool from its plan document
(cached), the durations of completed steps, and finished steps by kind and tool."""

from __future__ import annotations

import threading
from collections import OrderedDict, defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime

import sqlalchemy as sa
from sqlmodel import Session

from plans.models import StepStatus
from plans.quality import DurationHistory, StepMap, parse_step_map
from store.metrics.sql import (
    HISTORY_STEPS,
    RUNS,
    STEP_DONE,
    STEPS,
    VERSIONS,
    as_utc,
    chunks,
    db_key,
    seconds_between,
)

_runs, _steps, _versions = RUNS.c, STEPS.c, VERSIONS.c

# --- plan documents: step maps --------------------------------------------------------

_STEP_MAPS: OrderedDict[tuple[str, str, int], StepMap] = OrderedDict()
_STEP_MAPS_MAX = 20_000
_step_maps_lock = threading.Lock()


def step_maps(session: Session, pairs: Iterable[tuple[str, int]]) -> dict[tuple[str, int], StepMap]:
    """The steps (kind, tool, dependencies, timeout) of each ``(plan_id, version)``.

    A version without a stored document borrows the plan's nearest version that has one
    (a correction rarely changes a step's kind or tool). Exact documents are cached.
    """
    db = db_key(session)
    wanted = sorted(set(pairs))
    out: dict[tuple[str, int], StepMap] = {}
    missing: list[tuple[str, int]] = []
    with _step_maps_lock:
        for p in wanted:
            hit = _STEP_MAPS.get((db, *p))
            if hit is None:
                missing.append(p)
            else:
                _STEP_MAPS.move_to_end((db, *p))
                out[p] = hit
    found: dict[tuple[str, int], StepMap] = {}
    for chunk in chunks(missing):
        rows = session.execute(
            sa.select(_versions.plan_id, _versions.version, _versions.document).where(
                sa.tuple_(_versions.plan_id, _versions.version).in_(list(chunk)),
                _versions.document.is_not(None),
            )
        ).all()
        for plan_id, version, doc in rows:
            if isinstance(doc, dict):
                found[(plan_id, version)] = parse_step_map(doc)
    with _step_maps_lock:
        for key, value in found.items():
            _STEP_MAPS[(db, *key)] = value
        while len(_STEP_MAPS) > _STEP_MAPS_MAX:
            _STEP_MAPS.popitem(last=False)
    out.update(found)
    orphans = [p for p in missing if p not in found]
    if orphans:
        plans = sorted({p for p, _ in orphans})
        nearest: dict[str, list[tuple[int, StepMap]]] = defaultdict(list)
        for chunk in chunks(plans):
            rows = session.execute(
                sa.select(_versions.plan_id, _versions.version, _versions.document).where(
                    _versions.plan_id.in_(list(chunk)), _versions.document.is_not(None)
                )
            ).all()
            for plan_id, version, doc in rows:
                if isinstance(doc, dict):
                    nearest[plan_id].append((version, parse_step_map(doc)))
        for plan_id, version in orphans:
            candidates = nearest.get(plan_id)
            if candidates:
                out[(plan_id, version)] = min(
                    candidates, key=lambda c: (abs(c[0] - version), -c[0])
                )[1]
            else:
                out[(plan_id, version)] = {}
    return out


def kind_tool(
    maps: dict[tuple[str, int], StepMap], plan_id: str, version: int, sid: str
) -> tuple[str, str | None]:
    """The step's kind and tool in ``maps`` (``("unknown", None)`` when it is not there)."""
    info = maps.get((plan_id, version), {}).get(sid)
    return (info.kind, info.tool) if info else ("unknown", None)


# --- durations ------------------------------------------------------------------------


def duration_history(session: Session, limit: int = HISTORY_STEPS) -> DurationHistory:
    """The newest ``limit`` completed, non-carried steps, by (kind, tool)."""
    rows = session.execute(
        sa.select(
            _steps.plan_id,
            _runs.version,
            _steps.step_id,
            _steps.started_at,
            _steps.completed_at,
        )
        .join(RUNS, sa.and_(_runs.plan_id == _steps.plan_id, _runs.run_id == _steps.run_id))
        .where(
            _steps.status == StepStatus.COMPLETED.value,
            _steps.carried.is_(False),
            _steps.started_at.is_not(None),
            _steps.completed_at.is_not(None),
        )
        .order_by(_steps.completed_at.desc())
        .limit(limit)
    ).all()
    maps = step_maps(session, {(r.plan_id, r.version) for r in rows})
    hist = DurationHistory()
    by_key: dict[tuple[str, str | None], list[float]] = defaultdict(list)
    own: dict[tuple[tuple[str, str | None], str], list[float]] = defaultdict(list)
    for r in rows:
        key = kind_tool(maps, r.plan_id, r.version, r.step_id)
        d = max(0.0, (r.completed_at - r.started_at).total_seconds())
        by_key[key].append(d)
        own[(key, r.plan_id)].append(d)
    hist.by_key = {k: sorted(v) for k, v in by_key.items()}
    hist.own = dict(own)
    return hist


# --- finished steps by kind and tool --------------------------------------------------


@dataclass
class StepGroup:
    counts: dict[str, int] = field(default_factory=lambda: dict.fromkeys(STEP_DONE, 0))
    attempts: int = 0
    duration_s: float = 0.0
    durations: int = 0


def step_groups(
    session: Session, since: datetime | None = None
) -> dict[tuple[str, str | None], StepGroup]:
    """Finished steps by (kind, tool): counts by status, attempts, completed durations.

    Aggregated in SQL by (plan, version, step, status), then mapped to kinds and tools.
    """
    seconds = seconds_between(session, _steps.started_at, _steps.completed_at)
    completed = _steps.status == StepStatus.COMPLETED.value
    timed = sa.and_(completed, _steps.started_at.is_not(None), _steps.completed_at.is_not(None))
    q = (
        sa.select(
            _steps.plan_id,
            _runs.version,
            _steps.step_id,
            _steps.status,
            sa.func.count(),
            sa.func.sum(_steps.attempts),
            sa.func.sum(sa.case((timed, seconds), else_=None)),
            sa.func.sum(sa.case((timed, 1), else_=0)),
        )
        .join(RUNS, sa.and_(_runs.plan_id == _steps.plan_id, _runs.run_id == _steps.run_id))
        .where(_steps.status.in_(STEP_DONE), _steps.carried.is_(False))
        .group_by(_steps.plan_id, _runs.version, _steps.step_id, _steps.status)
    )
    if since is not None:
        q = q.where(_runs.created_at >= as_utc(since))
    rows = session.execute(q).all()
    maps = step_maps(session, {(r[0], r[1]) for r in rows})
    out: dict[tuple[str, str | None], StepGroup] = defaultdict(StepGroup)
    for plan_id, version, sid, status, n, attempts, secs, timed_n in rows:
        g = out[kind_tool(maps, plan_id, version, sid)]
        g.counts[status] += int(n)
        g.attempts += int(attempts or 0)
        g.duration_s += float(secs or 0.0)
        g.durations += int(timed_n or 0)
    return dict(out)

"""Plan quality read from the store (the formula is :mod:`plans.quality`), and the diffs
of a plan's corrections."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from typing import Any

import sqlalchemy as sa
from sqlmodel import Session

from plans.quality import DurationHistory, PlanQuality, score_plan
from store.metrics.models import VersionDiff
from store.metrics.sql import GENERATIONS, MAX_PLANS, PLANS, RUNS, STEPS, VERSIONS, chunks
from store.metrics.steps import duration_history, step_maps
from store.models import PlanRecord

_plans, _runs, _steps = PLANS.c, RUNS.c, STEPS.c
_versions, _gens = VERSIONS.c, GENERATIONS.c


def qualities(
    session: Session,
    plan_ids: Sequence[str],
    history: DurationHistory | None = None,
) -> dict[str, PlanQuality]:
    """The quality of each known plan of ``plan_ids`` (at most
    :data:`store.metrics.sql.MAX_PLANS`); expected step durations come from ``history``
    (default: :func:`store.metrics.steps.duration_history`)."""
    ids = list(dict.fromkeys(plan_ids))[:MAX_PLANS]
    if not ids:
        return {}
    plans: dict[str, Any] = {}
    for chunk in chunks(ids):
        for p in session.execute(sa.select(PLANS).where(_plans.id.in_(chunk))):
            plans[p.id] = p
    if not plans:
        return {}
    ids = [i for i in ids if i in plans]

    problems: dict[str, tuple[int, int]] = {}
    corrections: dict[str, int] = {}
    runs: dict[str, Any] = {}
    steps: dict[str, list[Any]] = defaultdict(list)
    for chunk in chunks(ids):
        for plan_id, n, p in session.execute(
            sa.select(_gens.plan_id, sa.func.count(), sa.func.sum(_gens.problems))
            .where(_gens.plan_id.in_(chunk))
            .group_by(_gens.plan_id)
        ):
            problems[plan_id] = (int(n), int(p or 0))
        for plan_id, n in session.execute(
            sa.select(_versions.plan_id, sa.func.count())
            .where(_versions.plan_id.in_(chunk), _versions.version > 1)
            .group_by(_versions.plan_id)
        ):
            corrections[plan_id] = int(n)
        keys = [(i, plans[i].last_run_id) for i in chunk if plans[i].last_run_id]
        if keys:
            for r in session.execute(
                sa.select(RUNS).where(sa.tuple_(_runs.plan_id, _runs.run_id).in_(keys))
            ):
                runs[r.plan_id] = r
            for s in session.execute(
                sa.select(
                    _steps.plan_id,
                    _steps.step_id,
                    _steps.status,
                    _steps.started_at,
                    _steps.completed_at,
                    _steps.carried,
                    _steps.skip_reason,
                ).where(sa.tuple_(_steps.plan_id, _steps.run_id).in_(keys))
            ):
                steps[s.plan_id].append(s)

    maps = step_maps(
        session,
        [(i, runs[i].version if i in runs else plans[i].current_version) for i in ids],
    )
    if history is None:
        history = duration_history(session)
    out = {}
    for i in ids:
        run = runs.get(i)
        n_gen, n_prob = problems.get(i, (0, 0))
        out[i] = score_plan(
            plans[i],
            run,
            steps.get(i, []),
            maps.get((i, run.version if run is not None else plans[i].current_version), {}),
            n_prob if n_gen else None,
            n_gen,
            corrections.get(i, 0),
            history,
        )
    return out


def plan_quality(session: Session, plan_id: str) -> PlanQuality | None:
    """The plan's quality score with its components and how it was reached (None:
    unknown plan)."""
    return qualities(session, [plan_id]).get(plan_id)


def recent_qualities(session: Session, limit: int = 50) -> list[PlanQuality]:
    """The most recently updated plans that have run, with their quality."""
    ids = session.execute(
        sa.select(_plans.id)
        .where(_plans.last_run_id.is_not(None))
        .order_by(_plans.updated_at.desc(), _plans.id)
        .limit(min(limit, MAX_PLANS))
    ).scalars()
    ids_list = list(ids)
    found = qualities(session, ids_list)
    return [found[i] for i in ids_list if i in found]


def version_diffs(session: Session, plan_id: str) -> list[VersionDiff] | None:
    """Every correction of the plan (versions after v1), oldest first; None: unknown plan."""
    if session.get(PlanRecord, plan_id) is None:
        return None
    rows = session.execute(
        sa.select(
            _versions.version,
            _versions.by,
            _versions.at,
            _versions.step_id,
            _versions.change,
            _versions.diff,
            _versions.run_id,
        )
        .where(_versions.plan_id == plan_id, _versions.version > 1)
        .order_by(_versions.version)
    ).all()
    out = []
    for r in rows:
        diff = r.diff if isinstance(r.diff, dict) else {}
        fields = sorted(
            {f"{sid}.{name}" for sid, ch in diff.items() if isinstance(ch, dict) for name in ch}
        )
        out.append(
            VersionDiff(
                version=r.version,
                by=r.by,
                at=r.at,
                step_id=r.step_id,
                change=r.change or "",
                fields=fields,
                diff=diff,
                run_id=r.run_id,
            )
        )
    return out

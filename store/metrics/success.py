"""Success by agent, tool or step kind, and the per-agent summary: runs, success rates,
mean plan quality and trust."""

from __future__ import annotations

import logging
from collections import defaultdict
from datetime import datetime

import sqlalchemy as sa
from sqlmodel import Session

from plans.policy import PolicyThresholds, TrustScore, compute_trust
from store.metrics.models import AgentRow, Dimension, RunOutcomes, StepOutcomes, SuccessRow
from store.metrics.scores import qualities
from store.metrics.sql import (
    FINISHED,
    MAX_PLANS,
    PLANS,
    RUNS,
    STEP_DONE,
    STEPS,
    as_utc,
    mean,
    rate,
)
from store.metrics.steps import StepGroup, step_groups
from store.trust import trust_history

log = logging.getLogger("plansmith.store")

_plans, _runs, _steps = PLANS.c, RUNS.c, STEPS.c


# --- success by agent, tool, step kind ------------------------------------------------


def _run_outcomes(counts: dict[str, int]) -> RunOutcomes:
    return RunOutcomes(finished=sum(counts.values()), **counts)


def _agent_rows(session: Session, since: datetime | None) -> list[SuccessRow]:
    runs_q = (
        sa.select(_plans.agent_id, _runs.status, sa.func.count())
        .join(PLANS, _plans.id == _runs.plan_id)
        .where(_runs.status.in_(FINISHED))
        .group_by(_plans.agent_id, _runs.status)
    )
    steps_q = (
        sa.select(
            _plans.agent_id,
            _steps.status,
            sa.func.count(),
            sa.func.sum(_steps.attempts),
        )
        .join(RUNS, sa.and_(_runs.plan_id == _steps.plan_id, _runs.run_id == _steps.run_id))
        .join(PLANS, _plans.id == _steps.plan_id)
        .where(_steps.status.in_(STEP_DONE), _steps.carried.is_(False))
        .group_by(_plans.agent_id, _steps.status)
    )
    if since is not None:
        runs_q = runs_q.where(_runs.created_at >= as_utc(since))
        steps_q = steps_q.where(_runs.created_at >= as_utc(since))
    run_counts: dict[str | None, dict[str, int]] = defaultdict(dict)
    for agent, status, n in session.execute(runs_q):
        run_counts[agent][status] = int(n)
    step_counts: dict[str | None, dict[str, int]] = defaultdict(lambda: dict.fromkeys(STEP_DONE, 0))
    attempts: dict[str | None, int] = defaultdict(int)
    for agent, status, n, a in session.execute(steps_q):
        step_counts[agent][status] = int(n)
        attempts[agent] += int(a or 0)
    rows = []
    for agent in sorted(set(run_counts) | set(step_counts), key=lambda a: (a is None, a or "")):
        runs = _run_outcomes(run_counts.get(agent, {}))
        steps = StepOutcomes(**step_counts.get(agent, dict.fromkeys(STEP_DONE, 0)))
        rows.append(
            SuccessRow(
                key=agent,
                runs=runs,
                steps=steps,
                success_rate=rate(runs.completed, runs.finished),
                step_success_rate=rate(steps.completed, steps.completed + steps.failed),
                attempts=attempts.get(agent, 0),
            )
        )
    return rows


def success_by(
    session: Session, dimension: Dimension, since: datetime | None = None
) -> list[SuccessRow]:
    """Outcomes by agent (runs and steps), tool or step kind (steps), of runs created
    since ``since`` (default: all). Steps carried over from an earlier run by a resume
    are counted once, in the run that ran them. ``tool`` counts tool steps only."""
    if dimension == "agent":
        return _agent_rows(session, since)
    if dimension not in ("tool", "step_kind"):
        raise ValueError(f"unknown dimension {dimension!r}: agent, tool or step_kind")
    merged: dict[str, StepGroup] = defaultdict(StepGroup)
    for (kind, tool), g in step_groups(session, since).items():
        if dimension == "tool":
            if kind != "tool" or tool is None:
                continue
            key = tool
        else:
            key = kind
        m = merged[key]
        for status, n in g.counts.items():
            m.counts[status] += n
        m.attempts += g.attempts
        m.duration_s += g.duration_s
        m.durations += g.durations
    rows = []
    for key in sorted(merged):
        g = merged[key]
        steps = StepOutcomes(**g.counts)
        step_rate = rate(steps.completed, steps.completed + steps.failed)
        rows.append(
            SuccessRow(
                key=key,
                steps=steps,
                success_rate=step_rate,
                step_success_rate=step_rate,
                attempts=g.attempts,
                mean_duration_s=round(g.duration_s / g.durations, 3) if g.durations else None,
            )
        )
    return rows


# --- agents and trust -----------------------------------------------------------------


def agent_trust(
    session: Session,
    agent_id: str,
    now: datetime | None = None,
    thresholds: PolicyThresholds | None = None,
) -> TrustScore | None:
    """The agent's trust score (:func:`store.trust.trust_history` +
    :func:`plans.policy.compute_trust`, as the approval policy computes it); None when it
    cannot be computed (logged: the rest of the metrics still answer)."""
    th = thresholds or PolicyThresholds()
    try:
        history = trust_history(session, agent_id, limit=th.trust.max_runs)
        return compute_trust(history, as_utc(now), th)
    except Exception as e:
        log.warning("trust of %s could not be computed: %s: %s", agent_id, type(e).__name__, e)
        return None


def agents(
    session: Session, now: datetime | None = None, thresholds: PolicyThresholds | None = None
) -> list[AgentRow]:
    """Per agent: finished runs, success rates, mean plan quality, trust (with the
    policy's ``thresholds``, default :class:`PolicyThresholds`)."""
    rows = _agent_rows(session, None)
    newest = session.execute(
        sa.select(_plans.id, _plans.agent_id)
        .join(RUNS, sa.and_(_runs.plan_id == _plans.id, _runs.run_id == _plans.last_run_id))
        .where(_runs.status.in_(FINISHED))
        .order_by(_runs.finished_at.desc())
        .limit(MAX_PLANS)
    ).all()
    found = qualities(session, [p.id for p in newest])
    by_agent: dict[str | None, list[float]] = defaultdict(list)
    for p in newest:
        q = found.get(p.id)
        if q is not None and q.score is not None:
            by_agent[p.agent_id].append(q.score)
    out = []
    for r in rows:
        scores = by_agent.get(r.key, [])
        out.append(
            AgentRow(
                agent_id=r.key,
                runs=r.runs or RunOutcomes(),
                success_rate=r.success_rate,
                step_success_rate=r.step_success_rate,
                plans_scored=len(scores),
                mean_quality=mean(scores),
                trust=agent_trust(session, r.key, now, thresholds) if r.key is not None else None,
            )
        )
    return out

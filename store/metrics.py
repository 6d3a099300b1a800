"""Planning metrics, read from the store (SQLite and PostgreSQL alike).

Every function takes a session (``store.db.session_scope(engine)``) and only reads.
Counts are aggregated in SQL; what needs the plan document (a step's kind and tool live
in ``plan_versions.document``, not in ``step_results``) is grouped in SQL by
``(plan, version, step, status)`` first and mapped to kinds and tools in Python, with the
parsed step maps cached per database (a version's document never changes once written).
Scans that cannot be aggregated in SQL are bounded (:data:`HISTORY_STEPS`,
:data:`MAX_RUNS`, :data:`MAX_PLANS`).

**Plan quality** (:func:`plan_quality`, :func:`qualities`) is a weighted mean of four
components, each 0..1 (1 is best), over the components that apply to the plan:

=========================  ======  ======================================================
component                  weight  value
=========================  ======  ======================================================
``success``                0.40    the plan's newest run: completed 1; partial: the share
                                   of its steps that completed (steps skipped because a
                                   branch was not taken do not count); failed, cancelled,
                                   rejected 0
``corrections``            0.25    ``1 / (1 + n/2)`` for ``n`` corrections (plan versions
                                   after v1: each accepted ``apply_correction`` makes one)
``validation_problems``    0.15    ``1 / (1 + p/2)`` for ``p`` validation problems the
                                   planner was fed back before its plan was valid
                                   (``plan_generations.problems`` for the plan); not
                                   applicable to a plan written by hand
``duration_vs_estimate``   0.20    ``min(1, estimate / actual)``: ``actual`` is the
                                   critical path of the run's step durations (started to
                                   completed, retries included, time spent waiting for
                                   people excluded), ``estimate`` the critical path of the
                                   same steps with each step's *expected* duration: the
                                   median duration of completed steps of the same kind and
                                   tool in other plans (the newest :data:`HISTORY_STEPS`),
                                   or the step's timeout when there is no such history
=========================  ======  ======================================================

The score is known once the plan's newest run has finished (``success`` known); the
weights of components that do not apply are left out and the rest renormalised.
"""

from __future__ import annotations

import logging
import math
import threading
from bisect import bisect_left
from collections import OrderedDict, defaultdict
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, Literal

import sqlalchemy as sa
from pydantic import BaseModel, Field
from sqlmodel import Session

from plans.models import TERMINAL_PLAN_STATUSES, PlanStatus, StepStatus
from plans.policy import PolicyThresholds, TrustScore, compute_trust
from store.models import (
    PlanGenerationRecord,
    PlanRecord,
    PlanVersionRecord,
    RunRecord,
    StepResultRecord,
)
from store.trust import trust_history

log = logging.getLogger("plansmith.store")

WEIGHTS: dict[str, float] = {
    "success": 0.40,
    "corrections": 0.25,
    "validation_problems": 0.15,
    "duration_vs_estimate": 0.20,
}
HISTORY_STEPS = 5000  # newest completed steps that teach the expected durations
MAX_RUNS = 20_000  # finished runs a trend reads at most
MAX_PLANS = 2000  # plans whose quality one call computes at most
MAX_WAITING = 5000  # waiting runs read at most
DEFAULT_STEP_TIMEOUT_S = 300.0
IN_CHUNK = 500  # values per IN (...) list

FINISHED = sorted(s.value for s in TERMINAL_PLAN_STATUSES)
WAITING = [
    PlanStatus.PENDING_APPROVAL.value,
    PlanStatus.WAITING_APPROVAL.value,
    PlanStatus.WAITING_CLARIFICATION.value,
    PlanStatus.WAITING_CORRECTION.value,
    PlanStatus.PAUSED.value,
]
STEP_DONE = [
    StepStatus.COMPLETED.value,
    StepStatus.FAILED.value,
    StepStatus.SKIPPED.value,
    StepStatus.CANCELLED.value,
]
Dimension = Literal["agent", "tool", "step_kind"]
Bucket = Literal["hour", "day", "week"]
BUCKET_SIZE = {"hour": timedelta(hours=1), "day": timedelta(days=1), "week": timedelta(weeks=1)}

PLANS: sa.Table = PlanRecord.__table__  # type: ignore[attr-defined]
RUNS: sa.Table = RunRecord.__table__  # type: ignore[attr-defined]
STEPS: sa.Table = StepResultRecord.__table__  # type: ignore[attr-defined]
VERSIONS: sa.Table = PlanVersionRecord.__table__  # type: ignore[attr-defined]
GENERATIONS: sa.Table = PlanGenerationRecord.__table__  # type: ignore[attr-defined]
_plans, _runs, _steps = PLANS.c, RUNS.c, STEPS.c
_versions, _gens = VERSIONS.c, GENERATIONS.c


# --- answers --------------------------------------------------------------------------


class QualityComponent(BaseModel):
    value: float | None = Field(description="0..1, 1 is best; null: does not apply (yet)")
    weight: float = Field(description="its weight in the score (before renormalising)")
    detail: dict[str, Any] = Field(default_factory=dict, description="the raw figures")


class PlanQuality(BaseModel):
    plan_id: str
    title: str = ""
    agent_id: str | None = None
    status: str
    version: int
    run_id: str | None = None
    finished_at: datetime | None = None
    score: float | None = Field(description="0..1; null until the newest run has finished")
    components: dict[str, QualityComponent]
    explanation: str


class VersionDiff(BaseModel):
    version: int
    by: str
    at: datetime
    step_id: str | None = None
    change: str = ""
    fields: list[str] = Field(default_factory=list, description="the fields that changed")
    diff: dict[str, Any] = Field(default_factory=dict, description="step -> field -> {old, new}")
    run_id: str | None = None


class RunOutcomes(BaseModel):
    finished: int = 0
    completed: int = 0
    partial: int = 0
    failed: int = 0
    cancelled: int = 0
    rejected: int = 0


class StepOutcomes(BaseModel):
    completed: int = 0
    failed: int = 0
    skipped: int = 0
    cancelled: int = 0


class SuccessRow(BaseModel):
    key: str | None = Field(description="the agent, tool or step kind (null: no agent)")
    runs: RunOutcomes | None = Field(default=None, description="by agent only")
    steps: StepOutcomes
    success_rate: float | None = Field(
        description="agent: completed runs / finished runs; tool, step kind: completed "
        "steps / (completed + failed) steps"
    )
    step_success_rate: float | None = None
    attempts: int = 0
    mean_duration_s: float | None = Field(default=None, description="of completed steps")


class TrendPoint(BaseModel):
    start: datetime
    finished: int = Field(description="runs that finished in the bucket")
    completed: int
    success_rate: float | None
    plans_scored: int = Field(description="plans whose newest run finished in the bucket")
    mean_quality: float | None
    planner_runs: int
    mean_planner_rounds: float | None


class Trends(BaseModel):
    bucket: Bucket
    days: int
    start: datetime
    end: datetime
    points: list[TrendPoint]


class WaitItem(BaseModel):
    kind: str
    step_id: str | None = None
    question: str | None = None
    since: datetime | None = None
    who: str = ""


class WaitingPlan(BaseModel):
    plan_id: str
    title: str = ""
    agent_id: str | None = None
    status: str
    run_id: str
    version: int
    kind: str = Field(description="what the plan waits for first")
    since: datetime | None = Field(description="the oldest wait")
    waiting_s: float | None
    waiting: list[WaitItem]


class PlannerStats(BaseModel):
    runs: int
    ok: int
    failed: int
    offline: int
    offline_share: float | None
    rounds: int = Field(description="rounds over every run")
    mean_rounds: float | None
    repaired: int = Field(description="runs that needed more than one round")
    problems: int = Field(description="validation problems fed back, over every run")
    mean_problems: float | None
    lessons_applied: int
    plans: int = Field(description="runs that produced a plan id")
    input_tokens: int
    output_tokens: int
    mean_latency_ms: float | None


class AgentRow(BaseModel):
    agent_id: str | None
    runs: RunOutcomes
    success_rate: float | None
    step_success_rate: float | None
    plans_scored: int
    mean_quality: float | None
    trust: TrustScore | None = Field(
        description="the agent's trust score, as GET /api/agents/{agent_id}/trust answers it "
        "(null: no agent, or it could not be computed)"
    )


class StoreCounts(BaseModel):
    """What the Prometheus collector exposes, read in one go."""

    plans_by_status: dict[str, int]
    waits_by_kind: dict[str, int]
    oldest_wait_s_by_kind: dict[str, float]
    plans_waiting: int
    runs_by_agent_status: list[tuple[str | None, str, int]]
    steps_by_kind_tool_status: list[tuple[str, str | None, str, int]]
    planner: PlannerStats
    llm_step_input_tokens: int
    llm_step_output_tokens: int


# --- small helpers --------------------------------------------------------------------


def _now(now: datetime | None) -> datetime:
    if now is None:
        return datetime.now(UTC)
    return now.replace(tzinfo=UTC) if now.tzinfo is None else now.astimezone(UTC)


def _dialect(session: Session) -> str:
    return session.get_bind().dialect.name


def _db_key(session: Session) -> str:
    return session.get_bind().engine.url.render_as_string(hide_password=True)


def _chunks(values: Sequence[Any], size: int = IN_CHUNK) -> Iterator[Sequence[Any]]:
    for i in range(0, len(values), size):
        yield values[i : i + size]


def _rate(num: int, den: int) -> float | None:
    return round(num / den, 4) if den else None


def _mean(values: Sequence[float]) -> float | None:
    return round(sum(values) / len(values), 4) if values else None


def _decay(n: float) -> float:
    """1 for nothing to regret, 2/3 for one, 1/2 for two, 1/3 for four…"""
    return 1.0 / (1.0 + n / 2.0)


def _seconds(session: Session, start: Any, end: Any) -> Any:
    """``end - start`` in seconds, in SQL."""
    if _dialect(session) == "postgresql":
        return sa.func.extract("epoch", end - start)
    return (sa.func.julianday(end) - sa.func.julianday(start)) * 86400.0


def _json_number(session: Session, column: Any, key: str) -> Any:
    """``column[key]`` as a number when it is one (else NULL), in SQL."""
    if _dialect(session) == "postgresql":
        value = column.op("->")(key)
        return sa.case(
            (
                sa.func.jsonb_typeof(value) == "number",
                sa.cast(column.op("->>")(key), sa.Float),
            ),
            else_=None,
        )
    path = f"$.{key}"
    return sa.case(
        (
            sa.func.json_type(column, path).in_(["integer", "real"]),
            sa.func.json_extract(column, path),
        ),
        else_=None,
    )


def _json_length(session: Session, column: Any) -> Any:
    if _dialect(session) == "postgresql":
        return sa.func.coalesce(sa.func.jsonb_array_length(column), 0)
    return sa.func.coalesce(sa.func.json_array_length(column), 0)


# --- plan documents: step maps --------------------------------------------------------


@dataclass(frozen=True)
class StepInfo:
    kind: str
    tool: str | None
    depends_on: tuple[str, ...]
    timeout_s: float


StepMap = dict[str, StepInfo]


def _parse_document(doc: dict[str, Any]) -> StepMap:
    opts = doc.get("options") or {}
    default_timeout = float(opts.get("step_timeout_s") or DEFAULT_STEP_TIMEOUT_S)
    out: StepMap = {}
    for s in doc.get("steps") or []:
        if not isinstance(s, dict) or not isinstance(s.get("id"), str):
            continue
        kind = str(s.get("kind") or "tool")
        out[s["id"]] = StepInfo(
            kind=kind,
            tool=s.get("tool") if kind == "tool" else None,
            depends_on=tuple(d for d in s.get("depends_on") or [] if isinstance(d, str)),
            timeout_s=float(s.get("timeout_s") or default_timeout),
        )
    return out


_STEP_MAPS: OrderedDict[tuple[str, str, int], StepMap] = OrderedDict()
_STEP_MAPS_MAX = 20_000
_step_maps_lock = threading.Lock()


def step_maps(session: Session, pairs: Iterable[tuple[str, int]]) -> dict[tuple[str, int], StepMap]:
    """The steps (kind, tool, dependencies, timeout) of each ``(plan_id, version)``.

    A version without a stored document borrows the plan's nearest version that has one
    (a correction rarely changes a step's kind or tool). Exact documents are cached.
    """
    db = _db_key(session)
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
    for chunk in _chunks(missing):
        rows = session.execute(
            sa.select(_versions.plan_id, _versions.version, _versions.document).where(
                sa.tuple_(_versions.plan_id, _versions.version).in_(list(chunk)),
                _versions.document.is_not(None),
            )
        ).all()
        for plan_id, version, doc in rows:
            if isinstance(doc, dict):
                found[(plan_id, version)] = _parse_document(doc)
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
        for chunk in _chunks(plans):
            rows = session.execute(
                sa.select(_versions.plan_id, _versions.version, _versions.document).where(
                    _versions.plan_id.in_(list(chunk)), _versions.document.is_not(None)
                )
            ).all()
            for plan_id, version, doc in rows:
                if isinstance(doc, dict):
                    nearest[plan_id].append((version, _parse_document(doc)))
        for plan_id, version in orphans:
            candidates = nearest.get(plan_id)
            if candidates:
                out[(plan_id, version)] = min(
                    candidates, key=lambda c: (abs(c[0] - version), -c[0])
                )[1]
            else:
                out[(plan_id, version)] = {}
    return out


def _kind_tool(
    maps: dict[tuple[str, int], StepMap], plan_id: str, version: int, sid: str
) -> tuple[str, str | None]:
    info = maps.get((plan_id, version), {}).get(sid)
    return (info.kind, info.tool) if info else ("unknown", None)


# --- durations ------------------------------------------------------------------------


def critical_path(steps: StepMap, weight: dict[str, float]) -> float:
    """The longest chain of ``weight`` through the dependencies (steps without a weight
    count 0)."""
    indegree = {sid: 0 for sid in steps}
    children: dict[str, list[str]] = defaultdict(list)
    for sid, info in steps.items():
        for dep in info.depends_on:
            if dep in steps:
                indegree[sid] += 1
                children[dep].append(sid)
    ready = [sid for sid, n in indegree.items() if n == 0]
    finish: dict[str, float] = {}
    start: dict[str, float] = defaultdict(float)
    while ready:
        sid = ready.pop()
        finish[sid] = start[sid] + weight.get(sid, 0.0)
        for child in children[sid]:
            start[child] = max(start[child], finish[sid])
            indegree[child] -= 1
            if indegree[child] == 0:
                ready.append(child)
    # steps on a cycle (never in a valid plan) count on their own
    extra = [weight.get(sid, 0.0) for sid in steps if sid not in finish]
    return max([*finish.values(), *extra], default=0.0)


@dataclass
class DurationHistory:
    """Durations of completed steps by (kind, tool), to estimate a step's duration
    without counting the plan's own steps."""

    by_key: dict[tuple[str, str | None], list[float]] = field(default_factory=dict)
    own: dict[tuple[tuple[str, str | None], str], list[float]] = field(default_factory=dict)

    def estimate(self, key: tuple[str, str | None], plan_id: str) -> float | None:
        """The median duration of ``key`` steps in plans other than ``plan_id``."""
        pool = self.by_key.get(key)
        if not pool:
            return None
        own = self.own.get((key, plan_id))
        if not own:
            return _median(pool)
        if len(own) == len(pool):
            return None
        rest = list(pool)
        for d in own:
            i = bisect_left(rest, d)
            if i < len(rest) and rest[i] == d:
                del rest[i]
        return _median(rest)


def _median(ordered: Sequence[float]) -> float:
    n = len(ordered)
    mid = n // 2
    return float(ordered[mid]) if n % 2 else (ordered[mid - 1] + ordered[mid]) / 2.0


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
        key = _kind_tool(maps, r.plan_id, r.version, r.step_id)
        d = max(0.0, (r.completed_at - r.started_at).total_seconds())
        by_key[key].append(d)
        own[(key, r.plan_id)].append(d)
    hist.by_key = {k: sorted(v) for k, v in by_key.items()}
    hist.own = dict(own)
    return hist


# --- plan quality ---------------------------------------------------------------------


def _fmt(x: float | None) -> str:
    return "n/a" if x is None else f"{x:.2f}"


def _quality(
    plan: Any,
    run: Any | None,
    steps: list[Any],
    doc: StepMap,
    problems: int | None,
    generations: int,
    corrections: int,
    history: DurationHistory,
) -> PlanQuality:
    comps: dict[str, QualityComponent] = {}

    # success: the newest run's outcome
    status = run.status if run is not None else plan.status
    finished = status in FINISHED
    succ: float | None = None
    sdetail: dict[str, Any] = {"status": status}
    if finished:
        if status == PlanStatus.COMPLETED.value:
            succ = 1.0
        elif status == PlanStatus.PARTIAL.value:
            counted = [
                s for s in steps if not (s.status == "skipped" and s.skip_reason == "condition")
            ]
            done = sum(1 for s in counted if s.status == StepStatus.COMPLETED.value)
            succ = done / len(counted) if counted else 0.0
            sdetail.update(steps_completed=done, steps_counted=len(counted))
        else:
            succ = 0.0
    comps["success"] = QualityComponent(
        value=None if succ is None else round(succ, 4), weight=WEIGHTS["success"], detail=sdetail
    )

    comps["corrections"] = QualityComponent(
        value=round(_decay(corrections), 4),
        weight=WEIGHTS["corrections"],
        detail={"corrections": corrections},
    )

    comps["validation_problems"] = QualityComponent(
        value=None if problems is None else round(_decay(problems), 4),
        weight=WEIGHTS["validation_problems"],
        detail={"problems": problems, "planner_runs": generations},
    )

    # duration against the estimate, on the critical path of the steps that ran
    dur: float | None = None
    ddetail: dict[str, Any] = {}
    if finished and run is not None:
        actual: dict[str, float] = {}
        estimate: dict[str, float] = {}
        sources = {"history": 0, "timeout": 0}
        for s in steps:
            if s.status not in ("completed", "failed") or s.carried:
                continue
            if s.started_at is None or s.completed_at is None:
                continue
            info = doc.get(s.step_id)
            if info is None or info.kind == "approval":
                continue
            actual[s.step_id] = max(0.0, (s.completed_at - s.started_at).total_seconds())
            guess = history.estimate((info.kind, info.tool), plan.id)
            if guess is None:
                guess = info.timeout_s
                sources["timeout"] += 1
            else:
                sources["history"] += 1
            estimate[s.step_id] = guess
        if actual:
            a, e = critical_path(doc, actual), critical_path(doc, estimate)
            dur = 1.0 if a <= e or a == 0 else e / a
            ddetail = {
                "actual_s": round(a, 3),
                "estimate_s": round(e, 3),
                "ratio": round(a / e, 4) if e else None,
                "estimated_from": sources,
            }
        else:
            ddetail = {"reason": "no step ran"}
    comps["duration_vs_estimate"] = QualityComponent(
        value=None if dur is None else round(dur, 4),
        weight=WEIGHTS["duration_vs_estimate"],
        detail=ddetail,
    )

    raw = {
        "success": succ,
        "corrections": _decay(corrections),
        "validation_problems": None if problems is None else _decay(problems),
        "duration_vs_estimate": dur,
    }
    score: float | None = None
    if finished:
        known = {k: v for k, v in raw.items() if v is not None}
        total = sum(WEIGHTS[k] for k in known)
        score = round(sum(WEIGHTS[k] * v for k, v in known.items()) / total, 4)
    return PlanQuality(
        plan_id=plan.id,
        title=plan.title or "",
        agent_id=plan.agent_id,
        status=status,
        version=run.version if run is not None else plan.current_version,
        run_id=run.run_id if run is not None else None,
        finished_at=run.finished_at if run is not None else None,
        score=score,
        components=comps,
        explanation=_explain(score, comps, status),
    )


def _explain(score: float | None, comps: dict[str, QualityComponent], status: str) -> str:
    if score is None:
        return f"no score yet: the plan is {status}, the score is known once its run finishes"
    known = {k: c for k, c in comps.items() if c.value is not None}
    total = sum(c.weight for c in known.values())
    parts = []
    for k, c in known.items():
        d = c.detail
        why = {
            "success": f"run {d.get('status')}",
            "corrections": f"{d.get('corrections')} correction(s)",
            "validation_problems": f"{d.get('problems')} validation problem(s)",
            "duration_vs_estimate": f"{d.get('actual_s')}s against {d.get('estimate_s')}s "
            "estimated",
        }[k]
        parts.append(f"{c.weight / total:.2f} x {k} {_fmt(c.value)} ({why})")
    left_out = [k for k, c in comps.items() if c.value is None]
    tail = f"; not applicable: {', '.join(left_out)}" if left_out else ""
    return f"{score:.2f} = " + " + ".join(parts) + tail


def qualities(
    session: Session,
    plan_ids: Sequence[str],
    history: DurationHistory | None = None,
) -> dict[str, PlanQuality]:
    """The quality of each known plan of ``plan_ids`` (at most :data:`MAX_PLANS`)."""
    ids = list(dict.fromkeys(plan_ids))[:MAX_PLANS]
    if not ids:
        return {}
    plans: dict[str, Any] = {}
    for chunk in _chunks(ids):
        for p in session.execute(sa.select(PLANS).where(_plans.id.in_(chunk))):
            plans[p.id] = p
    if not plans:
        return {}
    ids = [i for i in ids if i in plans]

    problems: dict[str, tuple[int, int]] = {}
    corrections: dict[str, int] = {}
    runs: dict[str, Any] = {}
    steps: dict[str, list[Any]] = defaultdict(list)
    for chunk in _chunks(ids):
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
        out[i] = _quality(
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


# --- success by agent, tool, step kind ------------------------------------------------


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
    seconds = _seconds(session, _steps.started_at, _steps.completed_at)
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
        q = q.where(_runs.created_at >= _now(since))
    rows = session.execute(q).all()
    maps = step_maps(session, {(r[0], r[1]) for r in rows})
    out: dict[tuple[str, str | None], StepGroup] = defaultdict(StepGroup)
    for plan_id, version, sid, status, n, attempts, secs, timed_n in rows:
        g = out[_kind_tool(maps, plan_id, version, sid)]
        g.counts[status] += int(n)
        g.attempts += int(attempts or 0)
        g.duration_s += float(secs or 0.0)
        g.durations += int(timed_n or 0)
    return dict(out)


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
        runs_q = runs_q.where(_runs.created_at >= _now(since))
        steps_q = steps_q.where(_runs.created_at >= _now(since))
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
                success_rate=_rate(runs.completed, runs.finished),
                step_success_rate=_rate(steps.completed, steps.completed + steps.failed),
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
        rate = _rate(steps.completed, steps.completed + steps.failed)
        rows.append(
            SuccessRow(
                key=key,
                steps=steps,
                success_rate=rate,
                step_success_rate=rate,
                attempts=g.attempts,
                mean_duration_s=round(g.duration_s / g.durations, 3) if g.durations else None,
            )
        )
    return rows


# --- trends ---------------------------------------------------------------------------


def bucket_start(at: datetime, bucket: Bucket) -> datetime:
    at = _now(at)
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
    end = bucket_start(_now(now), bucket)
    return [end - (count - 1 - i) * size for i in range(count)]


def trends(
    session: Session, bucket: Bucket = "day", days: int = 30, now: datetime | None = None
) -> Trends:
    """Per bucket: runs finished, their success rate (completed / finished), the mean
    quality of plans whose newest run finished then, and the planner's mean rounds."""
    now = _now(now)
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
            success_rate=_rate(completed[i], finished[i]),
            plans_scored=len(scored[i]),
            mean_quality=_mean(scored[i]),
            planner_runs=planner_runs[i],
            mean_planner_rounds=_mean(rounds[i]),
        )
        for i, s in enumerate(starts)
    ]
    return Trends(
        bucket=bucket, days=days, start=lo, end=starts[-1] + BUCKET_SIZE[bucket], points=points
    )


# --- people -----------------------------------------------------------------------------


def waiting_plans(
    session: Session, now: datetime | None = None, limit: int = 200
) -> list[WaitingPlan]:
    """Plans whose newest run waits for a person (approval, an answer, a correction, a
    resume), the longest-waiting first."""
    now = _now(now)
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


# --- the planner ----------------------------------------------------------------------


def planner_stats(session: Session, since: datetime | None = None) -> PlannerStats:
    """What the planner's runs (``plan_generations``) took."""
    q = sa.select(
        sa.func.count(),
        sa.func.sum(sa.case((_gens.ok.is_(True), 1), else_=0)),
        sa.func.sum(sa.case((_gens.offline.is_(True), 1), else_=0)),
        sa.func.sum(_gens.rounds),
        sa.func.sum(sa.case((_gens.rounds > 1, 1), else_=0)),
        sa.func.sum(_gens.problems),
        sa.func.sum(_json_length(session, _gens.lessons_applied)),
        sa.func.count(_gens.plan_id),
        sa.func.sum(_gens.input_tokens),
        sa.func.sum(_gens.output_tokens),
        sa.func.sum(_gens.latency_ms),
    )
    if since is not None:
        q = q.where(_gens.created_at >= _now(since))
    n, ok, offline, rounds, repaired, problems, lessons, plans, tin, tout, latency = (
        session.execute(q).one()
    )
    n = int(n or 0)
    return PlannerStats(
        runs=n,
        ok=int(ok or 0),
        failed=n - int(ok or 0),
        offline=int(offline or 0),
        offline_share=_rate(int(offline or 0), n),
        rounds=int(rounds or 0),
        mean_rounds=_rate(int(rounds or 0), n),
        repaired=int(repaired or 0),
        problems=int(problems or 0),
        mean_problems=_rate(int(problems or 0), n),
        lessons_applied=int(lessons or 0),
        plans=int(plans or 0),
        input_tokens=int(tin or 0),
        output_tokens=int(tout or 0),
        mean_latency_ms=round(float(latency) / n, 1) if n and latency is not None else None,
    )


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
        return compute_trust(history, _now(now), th)
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
                mean_quality=_mean(scores),
                trust=agent_trust(session, r.key, now, thresholds) if r.key is not None else None,
            )
        )
    return out


# --- everything the Prometheus collector needs ----------------------------------------


def store_counts(session: Session, now: datetime | None = None) -> StoreCounts:
    """Counts for ``GET /metrics``, aggregated in SQL."""
    now = _now(now)
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
            sa.func.sum(_json_number(session, _steps.output, "input_tokens")),
            sa.func.sum(_json_number(session, _steps.output, "output_tokens")),
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

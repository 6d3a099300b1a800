"""How good a plan turned out: the plan quality score, computed from figures already read.

Nothing here reads the store; :mod:`store.metrics.scores` gathers the figures (the plan,
its newest run and that run's steps, the plan document's steps, the planner's validation
problems, the corrections, the durations of similar steps elsewhere) and calls
:func:`score_plan`.

The score is a weighted mean of four components, each 0..1 (1 is best), over the
components that apply to the plan:

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
                                   tool in other plans (:class:`DurationHistory`), or the
                                   step's timeout when there is no such history
=========================  ======  ======================================================

The score is known once the plan's newest run has finished (``success`` known); the
weights of components that do not apply are left out and the rest renormalised.
"""

from __future__ import annotations

from bisect import bisect_left
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Protocol

from pydantic import BaseModel, Field

from plans.models import TERMINAL_PLAN_STATUSES, PlanStatus, StepStatus

WEIGHTS: dict[str, float] = {
    "success": 0.40,
    "corrections": 0.25,
    "validation_problems": 0.15,
    "duration_vs_estimate": 0.20,
}
DEFAULT_STEP_TIMEOUT_S = 300.0
FINISHED_STATUSES = frozenset(s.value for s in TERMINAL_PLAN_STATUSES)


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


# --- what the score reads (rows of plans, runs and step_results) ----------------------


class PlanFacts(Protocol):
    id: str
    title: str | None
    agent_id: str | None
    status: str
    current_version: int


class RunFacts(Protocol):
    run_id: str
    status: str
    version: int
    finished_at: datetime | None


class StepFacts(Protocol):
    step_id: str
    status: str
    skip_reason: str | None
    carried: bool
    started_at: datetime | None
    completed_at: datetime | None


# --- the plan document's steps ---------------------------------------------------------


@dataclass(frozen=True)
class StepInfo:
    kind: str
    tool: str | None
    depends_on: tuple[str, ...]
    timeout_s: float


StepMap = dict[str, StepInfo]


def parse_step_map(doc: dict[str, Any]) -> StepMap:
    """Each step's kind, tool (tool steps only), dependencies and timeout, from a plan
    document; steps without a string id are left out."""
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


# --- the score ------------------------------------------------------------------------


def _decay(n: float) -> float:
    """1 for nothing to regret, 2/3 for one, 1/2 for two, 1/3 for four…"""
    return 1.0 / (1.0 + n / 2.0)


def _fmt(x: float | None) -> str:
    return "n/a" if x is None else f"{x:.2f}"


def score_plan(
    plan: PlanFacts,
    run: RunFacts | None,
    steps: Sequence[StepFacts],
    doc: StepMap,
    problems: int | None,
    generations: int,
    corrections: int,
    history: DurationHistory,
) -> PlanQuality:
    """The plan's quality: ``run`` is its newest run (None: it never ran) and ``steps``
    that run's step results, ``doc`` the steps of the version the run ran, ``problems``
    the validation problems fed back to the planner over its ``generations`` runs for
    this plan (None: written by hand), ``corrections`` the versions after v1."""
    comps: dict[str, QualityComponent] = {}

    # success: the newest run's outcome
    status = run.status if run is not None else plan.status
    finished = status in FINISHED_STATUSES
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

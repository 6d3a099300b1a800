"""Trust in an agent and the adaptive approval policy (``require_approval: "auto"``).

Pure code: the history comes in as a :class:`TrustHistory` (``store/trust.py`` reads it
from the store), the clock as ``now``.

**Trust** (:func:`compute_trust`) is a recency-weighted Bayesian average of how the
agent's finished runs went. Each run gives a value in [0, 1]: completed 1, partial 0.5,
failed 0, rejected by a person 0, minus ``correction_penalty`` for each correction a person
applied and ``step_rejection_penalty`` for each step a person rejected. A run counts with
weight ``w = 0.5 ** (age_days / half_life_days)``; what went well counts only
``unattended_success_weight`` (``u`` = 0.5) when no person approved the run (the policy
did, or a timeout), what went wrong always counts fully: unattended low-risk successes
earn trust half as fast as plans a person looked at. An approval by the plan's own agent
(``approved_by`` equal to its ``agent_id``) or by whoever submitted it (its API key owner,
``submitted_by``) approves the run but is no person's approval: such a run's success earns
nothing (``self_approved_success_weight`` 0), its failure still counts. An agent with
fewer than ``min_runs`` runs of its own starts from its submitter's record
(:func:`store.trust.trust_history`), so a new ``agent_id`` does not wipe a bad record. Cancelled runs and plans rejected
because nobody answered in time say nothing about the agent and are left out. With
``prior`` (0.3) worth ``prior_weight`` (2.5) runs::

    score = (prior * prior_weight + sum(w * u * value)) /
            (prior_weight + sum(w * (u * value + (1 - value))))

A fresh agent scores the prior (0.30, "low"). With the default levels (low 0.2, moderate
0.5, high 0.75, and at most "low" before ``min_runs`` = 3 runs), fresh person-approved
completed runs give 0.30, 0.50, 0.61, 0.68 (moderate), 0.73, 0.77 (high after 5); nine
unattended ones reach high; a failure among five good runs leaves 0.68.

**Policy** (:func:`should_require_approval`): the trust score maps to a level (untrusted,
low, moderate, high); each level may run plans up to a risk level without a person
(``max_unattended_risk``; low trust at most medium). It fails closed: when the trust could
not be read a person must approve, and an agent with no record never runs a high-risk
plan (writes to production, deletions, money) without a person. A step at ``gate_level`` (critical) or above always waits for a
person before it runs, whatever the trust (a step gate), and for the plan decision it
counts one level lower, since a person will see it anyway.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, Field

from config.policy import LEGACY_RISK_RULES, TRUST_LEVELS, PolicyThresholds, TrustLevel
from plans.models import Plan, StepKind, ToolSpec
from plans.risk import (
    LEVELS,
    PlanRisk,
    RiskLevel,
    assess_risk,
    at_least,
    highest,
    rank,
)

SYSTEM_ACTORS = frozenset({"policy", "temporal", "sandbox", "system", "author"})
FINISHED = frozenset({"completed", "partial", "failed", "rejected", "cancelled"})


def is_person(by: str | None) -> bool:
    """Whether an actor is a person (not the policy, a timeout or Temporal itself)."""
    if not by:
        return False
    return by not in SYSTEM_ACTORS and not by.startswith("system")


# --- trust ---------------------------------------------------------------------------


class TrustRun(BaseModel):
    """One finished run of a plan of the agent, as trust sees it."""

    plan_id: str
    run_id: str
    status: str
    ended_at: datetime
    approved_by: str | None = None
    rejected_by: str | None = Field(default=None, description="the person who rejected the plan")
    agent_id: str | None = Field(default=None, description="the agent_id of the run's plan")
    submitted_by: str | None = Field(
        default=None, description="the API key owner that submitted the run's plan"
    )
    step_rejections: int = Field(default=0, ge=0, description="steps a person rejected")
    corrections: int = Field(default=0, ge=0, description="corrections a person applied")


class TrustHistory(BaseModel):
    agent_id: str | None = None
    runs: list[TrustRun] = Field(default_factory=list)
    error: str | None = Field(
        default=None, description="why the history could not be read (then it is empty)"
    )
    submitted_by: str | None = Field(
        default=None, description="who submitted the plan being decided (its API key owner)"
    )
    from_submitter: bool = Field(
        default=False,
        description="the agent had too few runs of its own: `runs` are those of every plan "
        "`submitted_by` submitted (the agent's own included)",
    )
    own_runs: int = Field(default=0, ge=0, description="finished runs of the agent's own plans")

    def self_approved(self, run: TrustRun) -> bool:
        """Whether the run was approved by its own agent or by whoever submitted it: that
        approves the run, but it is not a person vouching for the agent."""
        by = run.approved_by
        return bool(by) and by in {self.agent_id, run.agent_id, run.submitted_by} - {None}


class TrustScore(BaseModel):
    agent_id: str | None = None
    score: float
    level: TrustLevel
    inputs: dict[str, Any] = Field(default_factory=dict)
    explanation: str = ""


def compute_trust(
    history: TrustHistory, now: datetime, thresholds: PolicyThresholds | None = None
) -> TrustScore:
    """The agent's trust score from its history (see the module docstring)."""
    th = thresholds or PolicyThresholds()
    p = th.trust
    counts = {k: 0 for k in ("completed", "partial", "failed", "rejected", "cancelled")}
    left_out = {"cancelled": 0, "rejected_unanswered": 0}
    by_person = by_policy = by_self = corrections = step_rejections = considered = 0
    good = bad = 0.0
    newest: datetime | None = None
    oldest: datetime | None = None
    for r in history.runs:
        if r.status not in FINISHED:
            continue
        counts[r.status] += 1
        corrections += r.corrections
        step_rejections += r.step_rejections
        if r.status == "cancelled":
            left_out["cancelled"] += 1
            continue
        if r.status == "rejected" and not is_person(r.rejected_by):
            left_out["rejected_unanswered"] += 1
            continue
        considered += 1
        newest = r.ended_at if newest is None or r.ended_at > newest else newest
        oldest = r.ended_at if oldest is None or r.ended_at < oldest else oldest
        own = history.self_approved(r)
        approved_by_person = is_person(r.approved_by) and not own
        vouched = approved_by_person or is_person(r.rejected_by)
        if approved_by_person:
            by_person += 1
        elif own:
            by_self += 1
        elif r.approved_by:
            by_policy += 1
        value = {"completed": 1.0, "partial": p.partial_value}.get(r.status, 0.0)
        value -= p.correction_penalty * r.corrections + p.step_rejection_penalty * r.step_rejections
        value = min(1.0, max(0.0, value))
        age_days = max(0.0, (now - r.ended_at).total_seconds() / 86400)
        w = 0.5 ** (age_days / p.half_life_days)
        weight = 1.0 if vouched else p.unattended_success_weight
        if own:
            weight = p.self_approved_success_weight
        good += w * value * weight
        bad += w * (1.0 - value)
    raw = (p.prior * p.prior_weight + good) / (p.prior_weight + good + bad)
    score = round(raw, 4)
    level = th.level_of(raw)
    capped = considered < th.min_runs and rank_trust(level) > rank_trust("low")
    if capped:
        level = "low"
    inputs: dict[str, Any] = {
        "runs_considered": considered,
        **counts,
        "left_out": left_out,
        "approved_by_person": by_person,
        "approved_by_policy_or_timeout": by_policy,
        "approved_by_self": by_self,
        "corrections": corrections,
        "step_rejections": step_rejections,
        "evidence_for": round(good, 4),
        "evidence_against": round(bad, 4),
        "prior": p.prior,
        "prior_weight": p.prior_weight,
        "half_life_days": p.half_life_days,
        "unattended_success_weight": p.unattended_success_weight,
        "self_approved_success_weight": p.self_approved_success_weight,
        "newest_run_at": newest.isoformat() if newest else None,
        "oldest_run_at": oldest.isoformat() if oldest else None,
        "capped_by_min_runs": capped,
    }
    if history.error:
        inputs["history_error"] = history.error
    if history.from_submitter:
        inputs["from_submitter"] = history.submitted_by
        inputs["own_runs"] = history.own_runs
    return TrustScore(
        agent_id=history.agent_id,
        score=score,
        level=level,
        inputs=inputs,
        explanation=_explain(history, score, level, inputs, th, capped),
    )


def rank_trust(level: TrustLevel) -> int:
    return TRUST_LEVELS.index(level)


def _explain(
    history: TrustHistory,
    score: float,
    level: TrustLevel,
    inputs: dict[str, Any],
    th: PolicyThresholds,
    capped: bool,
) -> str:
    head = f"trust {score:.2f} ({level})"
    if history.error:
        return (
            f"{head}: the trust of {history.agent_id or 'the plan (no agent_id)'} could not be "
            f"read ({history.error})"
        )
    n = inputs["runs_considered"]
    if history.from_submitter:
        whose = f"{history.agent_id}" if history.agent_id else "the plan (no agent_id)"
        head += (
            f": {whose} has {history.own_runs} finished run(s) of its own, so its trust "
            f"starts from the record of its submitter {history.submitted_by}"
        )
        if n == 0:
            return (
                f"{head}, who has no finished run on record yet either (prior {th.trust.prior:.2f})"
            )
        subject = f"plans submitted by {history.submitted_by}"
    elif history.agent_id is None:
        return f"{head}: the plan names no agent_id, so there is no history to trust"
    elif n == 0:
        return f"{head}: {history.agent_id} has no finished run on record yet (a new agent starts at {th.trust.prior:.2f})"
    else:
        subject = history.agent_id
    parts = [
        f"{k} {inputs[k]}" for k in ("completed", "partial", "failed", "rejected") if inputs[k]
    ]
    sep = "; " if history.from_submitter else ": "
    text = (
        f"{head}{sep}{n} finished run(s) of {subject} ({', '.join(parts)}), "
        f"{inputs['approved_by_person']} approved by a person"
    )
    if inputs["approved_by_self"]:
        text += (
            f" ({inputs['approved_by_self']} approved by their own agent or submitter, "
            "which does not count as a person's approval)"
        )
    if inputs["corrections"] or inputs["step_rejections"]:
        text += (
            f"; {inputs['corrections']} correction(s) and {inputs['step_rejections']} "
            "rejected step(s) pulled it down"
        )
    text += (
        f"; evidence {inputs['evidence_for']:.2f} for and {inputs['evidence_against']:.2f} "
        f"against (recency half-life {th.trust.half_life_days:g} days), with a prior of "
        f"{th.trust.prior:.2f} worth {th.trust.prior_weight:g} run(s)"
    )
    if capped:
        text += f"; at most 'low' until {th.min_runs} runs are on record"
    return text


def fresh_trust(
    agent_id: str | None,
    now: datetime,
    thresholds: PolicyThresholds | None = None,
    error: str | None = None,
) -> TrustScore:
    """The trust of an agent with no history (or whose history cannot be read)."""
    return compute_trust(TrustHistory(agent_id=agent_id, error=error), now, thresholds)


# --- the decision --------------------------------------------------------------------


class ApprovalDecision(BaseModel):
    """What the adaptive policy decided for one run, and why (kept in the run's state,
    shown by ``status`` as ``approval_policy`` and written to the audit trail)."""

    required: bool = Field(description="the plan waits for a person's approval")
    reasons: list[str] = Field(default_factory=list)
    risk_level: RiskLevel = "low"
    decision_risk: RiskLevel = Field(
        default="low", description="the risk the decision weighed (gated steps count lower)"
    )
    trust_score: float = 0.0
    trust_level: TrustLevel = "low"
    max_unattended_risk: RiskLevel | None = None
    step_gates: dict[str, str] = Field(
        default_factory=dict, description="step id -> why a person approves it before it runs"
    )
    gate_level: RiskLevel = "critical"
    risk: PlanRisk = Field(default_factory=PlanRisk)
    trust: TrustScore | None = None
    source: Literal["policy", "fallback"] = Field(
        default="policy",
        description="fallback: the assessment itself failed and the workflow decided alone "
        "(a person is asked; before that rule, runs were decided as for a new agent)",
    )
    trust_unread: str | None = Field(
        default=None,
        description="why the agent's trust could not be read (the store was unreachable, the "
        "assessment failed): then a person must approve",
    )

    def summary(self) -> str:
        return "; ".join(self.reasons)


def should_require_approval(
    plan: Plan,
    trust: TrustScore,
    risk: PlanRisk,
    thresholds: PolicyThresholds | None = None,
) -> ApprovalDecision:
    """Whether ``plan`` needs a person before it runs, and which steps need one each."""
    th = thresholds or PolicyThresholds()
    gates: dict[str, str] = {}
    counted: list[RiskLevel] = []
    below_gate: RiskLevel = LEVELS[max(rank(th.gate_level) - 1, 0)]
    for step in plan.steps:
        r = risk.steps.get(step.id)
        if r is None:
            continue
        if at_least(r.level, th.gate_level):
            gated = step.requires_approval or step.kind == StepKind.APPROVAL
            if not gated:
                evidence = "; ".join(r.top or r.reasons)
                gates[step.id] = (
                    f"step {step.id} is {r.level}-risk ({evidence}): a person approves it "
                    "before it runs, whatever the trust"
                )
            counted.append(below_gate)
        else:
            counted.append(r.level)
    n = len(plan.steps)
    if n > th.risk.very_many_steps:
        counted.append("high")
    elif n > th.risk.many_steps:
        counted.append("medium")
    decision_risk = highest(counted)
    allowed = th.max_unattended_risk.get(trust.level)
    required = allowed is None or rank(decision_risk) > rank(allowed)
    unread = trust.inputs.get("history_error")
    no_record = not unread and not trust.inputs.get("runs_considered")
    high_without_record = no_record and at_least(decision_risk, "high")
    required = required or bool(unread) or high_without_record

    reasons = [f"risk {risk.level}: " + "; ".join(risk.reasons[:5])]
    if len(risk.reasons) > 5:
        reasons[0] += f"; ... ({len(risk.reasons) - 5} more)"
    reasons.append(trust.explanation or f"trust {trust.score:.2f} ({trust.level})")
    weighed = f"the plan counts as {decision_risk}-risk"
    if gates or decision_risk != risk.level:
        weighed += (
            f" (its {th.gate_level}-risk steps wait at their own gate and count as {below_gate})"
        )
    if unread:
        reasons.append(
            f"a person must approve: the trust could not be read ({unread}), and the policy "
            "runs nothing without a person when it cannot tell"
        )
    elif high_without_record and not (allowed is None or rank(decision_risk) > rank(allowed)):
        reasons.append(
            f"a person must approve: {weighed}, and an agent with no record runs nothing "
            "high-risk without a person"
        )
    elif allowed is None:
        reasons.append(
            f"a person must approve: an agent of {trust.level} trust runs nothing without a person"
        )
    elif required:
        reasons.append(
            f"a person must approve: {weighed}, above the {allowed} risk that "
            f"{trust.level} trust may run without a person"
        )
    else:
        reasons.append(
            f"no person needed: {weighed}, within the {allowed} risk that "
            f"{trust.level} trust may run without a person"
        )
    reasons.extend(gates.values())
    return ApprovalDecision(
        required=required,
        reasons=reasons,
        risk_level=risk.level,
        decision_risk=decision_risk,
        trust_score=trust.score,
        trust_level=trust.level,
        max_unattended_risk=allowed,
        step_gates=gates,
        gate_level=th.gate_level,
        risk=risk.above_low(),
        trust=trust,
        trust_unread=str(unread) if unread else None,
    )


def decide_without_trust(
    plan: Plan,
    catalog: Mapping[str, ToolSpec],
    now: datetime,
    why: str,
    thresholds: PolicyThresholds | None = None,
) -> ApprovalDecision:
    """The decision when no assessment could be made (``why``): the trust could not be
    read, so a person must approve (the risk is still assessed and shown, and its step
    gates kept). Pure, so a workflow may call it."""
    th = thresholds or PolicyThresholds()
    trust = fresh_trust(plan.agent_id, now, th, error=why)
    decision = should_require_approval(plan, trust, assess_risk(plan, catalog, th.risk), th)
    assert decision.required
    return decision.model_copy(update={"source": "fallback"})


def decide_as_new_agent(
    plan: Plan,
    catalog: Mapping[str, ToolSpec],
    now: datetime,
    why: str,
    thresholds: PolicyThresholds | None = None,
) -> ApprovalDecision:
    """The earlier fallback, kept for replay of runs recorded before
    :func:`decide_without_trust`: the agent was treated as new (a low-risk or medium-risk
    plan ran without a person). Never used for new runs."""
    th = thresholds or PolicyThresholds()
    th = th.model_copy(update={"risk": LEGACY_RISK_RULES})
    trust = fresh_trust(plan.agent_id, now, th)
    decision = should_require_approval(plan, trust, assess_risk(plan, catalog, th.risk), th)
    trust = trust.model_copy(
        update={
            "inputs": {**trust.inputs, "history_error": why},
            "explanation": f"{trust.explanation.split(':')[0]}: the history of "
            f"{plan.agent_id} could not be read ({why}); treated as a new agent",
        }
    )
    reasons = [decision.reasons[0], trust.explanation, *decision.reasons[2:]]
    return decision.model_copy(update={"source": "fallback", "trust": trust, "reasons": reasons})

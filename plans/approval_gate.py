"""Approval policy glue: whether a plan waits for a person, and which steps are gated.

``require_approval`` true or false decides alone; ``"auto"`` follows the adaptive
policy's decision (:mod:`plans.policy`), which :func:`apply_policy_decision` keeps in the
run with its step gates. A corrected step is assessed again
(:func:`policy_gate_after_correction`).
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime

from plans.models import StepKind, ToolSpec
from plans.policy import ApprovalDecision
from plans.risk import assess_step, at_least
from plans.run_state import PlanRun, audit, log


def needs_approval(run: PlanRun, catalog: Mapping[str, ToolSpec]) -> tuple[bool, str]:
    """Whether the plan must wait for a person before it runs, and why.

    With ``require_approval: "auto"`` the adaptive policy's decision
    (:func:`apply_policy_decision`) answers. Without one, the rule that "auto" followed
    before the adaptive policy: runs recorded then must decide the same on replay.
    """
    opts = run.plan.options
    if opts.auto_approve:
        return False, "auto_approve is set"
    if opts.require_approval is True:
        return True, "require_approval is true"
    if opts.require_approval is False:
        return False, "require_approval is false"
    if run.policy_decision is not None:
        return run.policy_decision.required, "auto: " + run.policy_decision.summary()
    return legacy_auto_approval(run, catalog)


def legacy_auto_approval(run: PlanRun, catalog: Mapping[str, ToolSpec]) -> tuple[bool, str]:
    """The "auto" rule before the adaptive policy: a person for high-risk tools and
    steps that are not idempotent."""
    risky = []
    for s in run.plan.steps:
        spec = catalog.get(s.tool or "")
        if spec and spec.risk in ("high", "critical"):
            risky.append(f"{s.id} uses {spec.risk}-risk tool {spec.name}")
        if not s.idempotent or (spec is not None and not spec.idempotent):
            risky.append(f"{s.id} is not idempotent")
    if risky:
        return True, "auto: " + "; ".join(risky)
    return False, "auto: every step is low or medium risk and idempotent"


def apply_policy_decision(run: PlanRun, decision: ApprovalDecision, now: datetime) -> None:
    """Keep the adaptive policy's decision in the run: its step gates, an audit entry
    (by ``policy``, action ``approval_policy``) with the reasons, trust and risk, and one
    ``policy_gate`` entry per gated step."""
    run.policy_decision = decision
    trust = decision.trust
    who = f" of {trust.agent_id}" if trust and trust.agent_id else ""
    head = (
        f"{'a person must approve' if decision.required else 'no person needed'}: "
        f"risk {decision.risk_level}, trust{who} {decision.trust_score:.2f} "
        f"({decision.trust_level})"
    )
    if decision.trust_unread:
        head += f" [the trust could not be read ({decision.trust_unread}): a person is asked]"
    elif decision.source == "fallback":  # runs recorded before the policy failed closed
        head += " [no assessment could be made: decided as for a new agent]"
    audit(run, now, "policy", "approval_policy", True, f"{head}. {decision.summary()}")
    for sid, why in decision.step_gates.items():
        s = run.steps.get(sid)
        if s is None or s.status.terminal:
            continue
        s.policy_gate = why
        audit(run, now, "policy", "policy_gate", True, why, step_id=sid)
    level = "info" if not decision.step_gates else "warning"
    log(run, now, f"approval policy: {head}", level)


def unattended_critical_steps(run: PlanRun, catalog: Mapping[str, ToolSpec]) -> list[str]:
    """Critical steps that will run without any person (require_approval false or
    auto_approve, and no gate of their own): the explicit choice stands, with a warning."""
    opts = run.plan.options
    if not (opts.auto_approve or opts.require_approval is False):
        return []
    out = []
    for step in run.plan.steps:
        if step.requires_approval or step.kind == StepKind.APPROVAL:
            continue
        risk = assess_step(run.plan, step, catalog)
        if risk.level == "critical":
            out.append(f"{step.id} ({'; '.join(risk.top)})")
    return out


def policy_gate_after_correction(
    run: PlanRun, sid: str, catalog: Mapping[str, ToolSpec], now: datetime
) -> str:
    """Under the adaptive policy a corrected step is assessed again: one that became
    critical gets a step gate (a gate it had stays)."""
    decision = run.policy_decision
    s = run.steps[sid]
    if decision is None or s.policy_gate is not None:
        return ""
    step = run.plan.step(sid)
    if step.requires_approval or step.kind == StepKind.APPROVAL:
        return ""
    risk = assess_step(run.plan, step, catalog)
    if not at_least(risk.level, decision.gate_level):
        return ""
    evidence = "; ".join(risk.top or risk.reasons)
    s.policy_gate = (
        f"step {sid} is {risk.level}-risk after a correction ({evidence}): a person approves "
        "it before it runs, whatever the trust"
    )
    audit(run, now, "policy", "policy_gate", True, s.policy_gate, step_id=sid)
    return f"; the approval policy now gates it ({risk.level}-risk)"

"""The plan run state machine: every decision about a plan, as pure code.

``PlanRun`` is the whole state of one run. The workflow keeps one instance, calls
:func:`advance` to learn which steps to start, reports activity outcomes with
:func:`record_success` / :func:`record_failure`, and routes every control through
:func:`check_control` and :func:`apply_control`. Nothing here does I/O or reads a clock:
``now`` is always passed in, so the same calls give the same state on replay.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from datetime import UTC, datetime, timedelta
from enum import StrEnum
from typing import Any, ClassVar, Literal

from pydantic import BaseModel, Field, SerializerFunctionWrapHandler, model_serializer

from plans.controls import (
    CONTROL_MODELS,
    AnswerClarificationInput,
    ApplyCorrectionInput,
    ApproveInput,
    ApproveStepInput,
    CancelInput,
    Control,
    PauseInput,
    RejectInput,
    RejectStepInput,
    ResumeInput,
    RetryStepInput,
    SkipStepInput,
)
from plans.expressions import evaluate_condition
from plans.models import OnError, Plan, PlanStatus, Step, StepKind, StepStatus, ToolSpec
from plans.policy import ApprovalDecision
from plans.risk import assess_step, at_least
from plans.validation import PlanInvalid, parse_plan, validate_plan

MAX_LOG_ENTRIES = 500  # kept in the workflow's state (the newest ones)
MAX_AUDIT_ENTRIES = 2000
PREVIEW_CHARS = 2000


class Refused(ValueError):
    """A control that is not allowed in the current state; the message says why."""


class SkipReason(StrEnum):
    CONDITION = "condition"  # its `when` was false, or its whole branch was not taken
    UPSTREAM = "upstream"  # a dependency failed or was rejected
    REJECTED = "rejected"  # a person rejected its gate
    STOPPED = "stopped"  # on_error=stop or a total timeout stopped the plan
    OPERATOR = "operator"  # skip_step: dependents go on


class _Compact(BaseModel):
    """Serialised without fields that hold their default: the state of a 2,000-step plan
    travels through continue-as-new and must stay well under Temporal's payload limit."""

    _always: ClassVar[frozenset[str]] = frozenset()

    @model_serializer(mode="wrap")
    def _compact(self, handler: SerializerFunctionWrapHandler) -> dict[str, Any]:
        data = handler(self)
        fields = type(self).model_fields
        return {
            k: v
            for k, v in data.items()
            if k in self._always
            or k not in fields
            or fields[k].is_required()
            or v != fields[k].get_default(call_default_factory=True)
        }


class StepRun(_Compact):
    _always: ClassVar[frozenset[str]] = frozenset({"status"})

    id: str
    status: StepStatus = StepStatus.PENDING
    attempts: int = 0
    version: int = 1
    started_at: datetime | None = None
    completed_at: datetime | None = None
    waiting_since: datetime | None = None
    error: str | None = None
    output: Any = None
    skip_reason: SkipReason | None = None
    skip_detail: str | None = None
    failed_before_skip: bool = False
    gate_approved_by: str | None = None
    answer: Any = None
    answered: bool = False
    awaiting_decision: bool = False  # on_error=ask: failed, a person decides what next
    carried: bool = False  # completed in an earlier run; resume-from-failure never re-runs it
    timed_out: str | None = None  # which wait for a person ran out, and what was done then
    runs: int = 0  # how many times an activity was started for this step in this run
    # the adaptive approval policy gates this step (it is critical): why; a person approves
    # it before it runs, through the same approve_step / reject_step as requires_approval
    policy_gate: str | None = None
    # an llm step's tool calls, each a child activity: {n, tool, params, status, ...}
    calls: list[dict[str, Any]] = Field(default_factory=list)


class AuditEntry(BaseModel):
    at: datetime
    by: str
    action: str
    accepted: bool
    version: int
    step_id: str | None = None
    detail: str = ""
    via: Literal["signal", "update", "system"] = "system"


class LogEntry(_Compact):
    _always: ClassVar[frozenset[str]] = frozenset({"level"})

    at: datetime
    level: Literal["debug", "info", "warning", "error"] = "info"
    message: str
    step_id: str | None = None


class Approval(BaseModel):
    by: str
    at: datetime
    comment: str | None = None
    version: int
    timed_out: bool = False


class Pause(BaseModel):
    by: str
    since: datetime
    reason: str | None = None
    step_id: str | None = None
    question: str | None = None
    answer: Any = None
    answered: bool = False
    answered_by: str | None = None


class WaitingFor(BaseModel):
    kind: Literal["plan_approval", "step_approval", "clarification", "correction", "resume"]
    step_id: str | None = None
    question: str | None = None
    since: datetime | None = None
    who: str = "an operator"


class PlanVersion(BaseModel):
    """One version of the plan: what changed (field by field) and who changed it.

    Only the current document is kept whole; earlier versions follow from the diffs.
    """

    version: int
    by: str
    at: datetime
    step_id: str | None = None
    change: str = ""
    diff: dict[str, dict[str, Any]] = Field(default_factory=dict)  # step -> field -> {old, new}


def diff_step(old: Step, new: Step) -> dict[str, Any]:
    """Field by field, what a correction changed in one step: ``{field: {old, new}}``."""
    a, b = old.model_dump(mode="json"), new.model_dump(mode="json")
    keys = sorted(set(a) | set(b))
    return {k: {"old": a.get(k), "new": b.get(k)} for k in keys if a.get(k) != b.get(k)}


class PlanRun(BaseModel):
    plan: Plan
    version: int = 1
    versions: list[PlanVersion] = Field(default_factory=list)
    steps: dict[str, StepRun] = Field(default_factory=dict)
    approval: Approval | None = None
    final_status: PlanStatus | None = None
    outcome: str | None = None
    stopping: str | None = None  # why no new step may start
    stopped_by_failure: bool = False  # the stop came from on_error=stop (a retry may lift it)
    cancel_requested: str | None = None
    pause: Pause | None = None
    feedback: list[str] = Field(default_factory=list)
    audit: list[AuditEntry] = Field(default_factory=list)
    logs: list[LogEntry] = Field(default_factory=list)
    created_at: datetime | None = None
    started_at: datetime | None = None
    finished_at: datetime | None = None
    logs_total: int = 0  # entries ever appended to `logs` (the list keeps the newest)
    audit_total: int = 0  # likewise for `audit`: absolute numbers for the store
    approval_required: bool = False
    approval_policy: str = ""  # why the plan did or did not wait for a person
    # require_approval "auto": what the adaptive policy decided, with risk and trust
    policy_decision: ApprovalDecision | None = None

    @property
    def status(self) -> PlanStatus:
        return derive_status(self)


# --- construction --------------------------------------------------------------------


def new_run(plan: Plan, now: datetime, carried: Mapping[str, StepRun] | None = None) -> PlanRun:
    """A fresh run; ``carried`` holds the steps of an earlier run (resume from failure).

    Completed steps are kept as they are and never run again. Every other step starts
    over as a new version of itself, so its idempotency key differs from the failed
    run's: a server that cached the failed request does not answer the retry with it.
    """
    run = PlanRun(plan=plan, created_at=now)
    run.versions.append(
        PlanVersion(version=1, by=plan.agent_id or "author", at=now, change="created")
    )
    for step in plan.steps:
        prev = (carried or {}).get(step.id)
        if prev is not None and prev.status == StepStatus.COMPLETED:
            run.steps[step.id] = prev.model_copy(update={"carried": True})
        elif prev is not None:
            # A person's answer is kept (the question is not asked again); approvals of a
            # step are bound to the run that asked for them and lapse.
            run.steps[step.id] = StepRun(
                id=step.id, version=prev.version + 1, answer=prev.answer, answered=prev.answered
            )
        else:
            run.steps[step.id] = StepRun(id=step.id)
    return run


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
    if decision.source == "fallback":
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


def _gated(step: Step, s: StepRun) -> bool:
    """The step waits for a person before it runs (and nobody approved it yet)."""
    return (
        step.requires_approval or step.kind == StepKind.APPROVAL or s.policy_gate is not None
    ) and s.gate_approved_by is None


# --- logs and audit ------------------------------------------------------------------


def log(
    run: PlanRun, now: datetime, message: str, level: str = "info", step_id: str | None = None
) -> None:
    run.logs.append(LogEntry(at=now, level=level, message=message, step_id=step_id))  # type: ignore[arg-type]
    run.logs_total = max(run.logs_total, len(run.logs) - 1) + 1
    if len(run.logs) > MAX_LOG_ENTRIES:
        del run.logs[: len(run.logs) - MAX_LOG_ENTRIES]


def audit(
    run: PlanRun,
    now: datetime,
    by: str,
    action: str,
    accepted: bool,
    detail: str = "",
    step_id: str | None = None,
    via: Literal["signal", "update", "system"] = "system",
) -> None:
    run.audit_total = max(run.audit_total, len(run.audit)) + 1
    run.audit.append(
        AuditEntry(
            at=now,
            by=by,
            action=action,
            accepted=accepted,
            version=run.version,
            step_id=step_id,
            detail=detail,
            via=via,
        )
    )
    if len(run.audit) > MAX_AUDIT_ENTRIES:
        del run.audit[: len(run.audit) - MAX_AUDIT_ENTRIES]


# --- status --------------------------------------------------------------------------


def derive_status(run: PlanRun) -> PlanStatus:
    if run.final_status is not None:
        return run.final_status
    if run.approval is None:
        return PlanStatus.PENDING_APPROVAL if run.approval_required else PlanStatus.DRAFT
    if run.started_at is None:
        return PlanStatus.APPROVED
    if run.pause is not None:
        if run.pause.question and not run.pause.answered:
            return PlanStatus.WAITING_CLARIFICATION
        return PlanStatus.PAUSED
    states = [s for s in run.steps.values()]
    if any(s.awaiting_decision for s in states):
        return PlanStatus.WAITING_CORRECTION
    if any(s.status == StepStatus.WAITING_CLARIFICATION for s in states):
        return PlanStatus.WAITING_CLARIFICATION
    if any(s.status == StepStatus.WAITING_APPROVAL for s in states):
        return PlanStatus.WAITING_APPROVAL
    return PlanStatus.EXECUTING


def waits(run: PlanRun) -> list[WaitingFor]:
    """Everything the run is waiting on a person for.

    In the order the plan status reads them (plan approval, a pause, corrections,
    clarifications, step approvals), oldest first within each kind: the first one is what
    the status says the plan waits for.
    """
    if run.final_status is not None:
        return []
    ranked: list[tuple[int, WaitingFor]] = []
    if run.approval is None and run.approval_required:
        ranked.append(
            (0, WaitingFor(kind="plan_approval", since=run.created_at, who="an approver"))
        )
    pause = run.pause
    if pause is not None:
        asking = bool(pause.question and not pause.answered)
        ranked.append(
            (
                1,
                WaitingFor(
                    kind="clarification" if asking else "resume",
                    step_id=pause.step_id,
                    question=pause.question if asking else pause.reason,
                    since=pause.since,
                    who=f"an answer to {pause.by}"
                    if asking
                    else f"a resume (paused by {pause.by})",
                ),
            )
        )
    for sid, s in run.steps.items():
        step = run.plan.step(sid)
        if s.awaiting_decision:
            who = "an operator: apply_correction + retry_step, skip_step or cancel"
            ranked.append(
                (
                    2,
                    WaitingFor(
                        kind="correction",
                        step_id=sid,
                        question=s.error,
                        since=s.completed_at,
                        who=who,
                    ),
                )
            )
        elif s.status == StepStatus.WAITING_CLARIFICATION:
            question = step.clarification_question
            ranked.append(
                (
                    3,
                    WaitingFor(
                        kind="clarification",
                        step_id=sid,
                        question=question,
                        since=s.waiting_since,
                        who="an answer",
                    ),
                )
            )
        elif s.status == StepStatus.WAITING_APPROVAL:
            question = step.description or None
            if s.policy_gate:
                question = f"{question}: {s.policy_gate}" if question else s.policy_gate
            ranked.append(
                (
                    4,
                    WaitingFor(
                        kind="step_approval",
                        step_id=sid,
                        question=question,
                        since=s.waiting_since,
                        who="an approver",
                    ),
                )
            )
    far = datetime.max.replace(tzinfo=UTC)
    return [w for _, w in sorted(ranked, key=lambda rw: (rw[0], rw[1].since or far))]


def progress(run: PlanRun) -> float:
    if not run.steps:
        return 1.0
    done = sum(1 for s in run.steps.values() if s.status.terminal)
    return round(done / len(run.steps), 4)


def preview(value: Any, limit: int = PREVIEW_CHARS) -> Any:
    """A bounded preview of an output: small values as they are, large ones as text."""
    if value is None:
        return None
    text = json.dumps(value, default=str, sort_keys=True)
    if len(text) <= limit:
        return value
    return text[:limit] + f"... [truncated, {len(text)} chars]"


# --- scheduling ----------------------------------------------------------------------


def context(run: PlanRun, step_id: str | None = None) -> dict[str, Any]:
    """The names that conditions and templates see.

    ``inputs``, ``steps.<id>.output|status|error``, ``feedback`` (what people said when
    resuming, oldest first) and, for a step, ``answer``: the answer to its clarification
    question (null when it has none).
    """
    step = run.steps.get(step_id or "")
    return {
        "inputs": run.plan.inputs,
        "steps": {
            sid: {"output": s.output, "status": s.status.value, "error": s.error}
            for sid, s in run.steps.items()
        },
        "feedback": list(run.feedback),
        "answer": step.answer if step is not None and step.answered else None,
    }


def _dependency_state(run: PlanRun, step: Step) -> tuple[str, str | None]:
    """'wait' | 'blocked' | 'inactive' | 'ok', and which dependency decided it."""
    inactive = 0
    for dep in step.depends_on:
        d = run.steps[dep]
        if d.status == StepStatus.COMPLETED:
            continue
        if d.status == StepStatus.SKIPPED and d.skip_reason == SkipReason.OPERATOR:
            continue
        if d.status == StepStatus.SKIPPED and d.skip_reason == SkipReason.CONDITION:
            inactive += 1
            continue
        if d.status in (StepStatus.FAILED, StepStatus.SKIPPED, StepStatus.CANCELLED):
            if d.awaiting_decision:
                return "wait", dep
            return "blocked", dep
        return "wait", dep
    if step.depends_on and inactive == len(step.depends_on):
        return "inactive", step.depends_on[0]
    return "ok", None


def _skip(run: PlanRun, sid: str, reason: SkipReason, detail: str, now: datetime) -> None:
    s = run.steps[sid]
    s.status = StepStatus.SKIPPED
    s.skip_reason = reason
    s.skip_detail = detail
    s.completed_at = now
    s.waiting_since = None
    log(run, now, f"step {sid} skipped: {detail}", "info", sid)


def _stop_step(run: PlanRun, sid: str, now: datetime) -> None:
    why = run.stopping or "stopped"
    if run.cancel_requested:
        s = run.steps[sid]
        s.status, s.completed_at, s.skip_detail, s.waiting_since = (
            StepStatus.CANCELLED,
            now,
            why,
            None,
        )
        log(run, now, f"step {sid} cancelled: {why}", "info", sid)
    else:
        _skip(run, sid, SkipReason.STOPPED, why, now)


def running_steps(run: PlanRun) -> list[str]:
    return [sid for sid, s in run.steps.items() if s.status == StepStatus.RUNNING]


def advance(run: PlanRun, now: datetime, may_start: bool = True) -> list[str]:
    """Settle skips and gates, then pick the steps to start now (marked running).

    A step starts the moment its own dependencies are done: there is no batch barrier.
    """
    if run.final_status is not None or run.approval is None:
        return []
    if run.started_at is None:
        run.started_at = now
        log(run, now, "plan execution started")
    changed = True
    while changed:
        changed = False
        for step in run.plan.steps:
            s = run.steps[step.id]
            if run.stopping and s.awaiting_decision:
                s.awaiting_decision = False  # a stopped plan asks nobody for a correction
                changed = True
            waiting = s.status in (StepStatus.WAITING_APPROVAL, StepStatus.WAITING_CLARIFICATION)
            if run.stopping and (
                waiting or (s.status == StepStatus.PENDING and not running_steps(run))
            ):
                # Nobody is asked anything once the plan stops; pending steps end once
                # the running ones have finished.
                _stop_step(run, step.id, now)
                changed = True
                continue
            if s.status != StepStatus.PENDING:
                continue
            state, dep = _dependency_state(run, step)
            if state == "wait":
                continue
            if state == "blocked":
                d = run.steps[dep or ""]
                _skip(
                    run,
                    step.id,
                    SkipReason.UPSTREAM,
                    f"dependency {dep} ended {d.status.value}",
                    now,
                )
                changed = True
                continue
            if state == "inactive":
                _skip(
                    run,
                    step.id,
                    SkipReason.CONDITION,
                    f"branch not taken (dependency {dep} was skipped)",
                    now,
                )
                changed = True
                continue
            not_taken = _branch_not_taken(run, step.id)
            if not_taken:
                _skip(run, step.id, SkipReason.CONDITION, not_taken, now)
                changed = True
                continue
            if step.when is not None:
                try:
                    ok = evaluate_condition(step.when, context(run, step.id))
                except Exception as e:  # any evaluation failure fails the step, never the workflow
                    s.status = StepStatus.FAILED
                    s.error = f"condition could not be evaluated: {e}"
                    s.completed_at = now
                    _after_failure(run, step.id, now)
                    changed = True
                    continue
                if not ok:
                    _skip(
                        run, step.id, SkipReason.CONDITION, f"condition is false: {step.when}", now
                    )
                    changed = True
                    continue
            if run.stopping:
                continue  # running steps are finishing; the rest is skipped after them
            if step.requires_clarification and not s.answered:
                s.status = StepStatus.WAITING_CLARIFICATION
                s.waiting_since = now
                log(
                    run,
                    now,
                    f"step {step.id} waits for an answer: {step.clarification_question}",
                    "info",
                    step.id,
                )
                changed = True
                continue
            if _gated(step, s):
                s.status = StepStatus.WAITING_APPROVAL
                s.waiting_since = now
                why = f" ({s.policy_gate})" if s.policy_gate else ""
                log(run, now, f"step {step.id} waits for approval{why}", "info", step.id)
                changed = True
                continue
            if step.kind == StepKind.APPROVAL:
                s.status = StepStatus.COMPLETED
                s.output = {"approved_by": s.gate_approved_by}
                s.completed_at = now
                changed = True
                continue

    if run.stopping or run.pause is not None or not may_start:
        return []
    capacity = run.plan.options.parallel_limit - len(running_steps(run))
    started: list[str] = []
    for step in run.plan.steps:
        if capacity <= 0:
            break
        s = run.steps[step.id]
        if s.status != StepStatus.PENDING or _dependency_state(run, step)[0] != "ok":
            continue
        if step.requires_clarification and not s.answered:
            continue
        if _gated(step, s):
            continue
        s.status = StepStatus.RUNNING
        s.started_at = now
        s.completed_at = None
        s.error = None
        s.calls = []
        s.runs += 1
        started.append(step.id)
        capacity -= 1
        log(run, now, f"step {step.id} started", "info", step.id)
    return started


def record_success(run: PlanRun, sid: str, output: Any, attempts: int, now: datetime) -> None:
    s = run.steps[sid]
    s.status = StepStatus.COMPLETED
    s.output = output
    s.attempts = attempts
    s.completed_at = now
    s.error = None
    log(run, now, f"step {sid} completed after {attempts} attempt(s)", "info", sid)
    step = run.plan.step(sid)
    if step.kind == StepKind.DECISION and isinstance(output, dict) and "choice" in output:
        log(
            run,
            now,
            f"step {sid} chose {output['choice']!r}: {output.get('reason', '')}",
            "info",
            sid,
        )


def _branch_not_taken(run: PlanRun, sid: str) -> str | None:
    """Why ``sid`` is on a branch a decision did not choose (None: it is not)."""
    for step in run.plan.steps:
        branches = step.params.get("branches") if step.kind == StepKind.DECISION else None
        if not isinstance(branches, dict):
            continue
        labels = [label for label, members in branches.items() if sid in (members or [])]
        if not labels:
            continue
        d = run.steps[step.id]
        choice = d.output.get("choice") if isinstance(d.output, dict) else None
        if d.status == StepStatus.COMPLETED and choice not in labels:
            named = " or ".join(repr(label) for label in labels)
            return f"branch {named} not taken: {step.id} chose {choice!r}"
    return None


def record_call(run: PlanRun, sid: str, call: dict[str, Any], now: datetime) -> dict[str, Any]:
    """An llm step's tool call starts (or is refused, when ``call`` has an error)."""
    s = run.steps[sid]
    entry = {"n": len(s.calls) + 1, "at": now.isoformat(), **call}
    s.calls.append(entry)
    if entry.get("status") == "invalid":
        log(
            run,
            now,
            f"step {sid}: tool call {entry['n']} refused: {entry.get('error')}",
            "warning",
            sid,
        )
    else:
        log(
            run, now, f"step {sid}: tool call {entry['n']} {entry.get('tool')} started", "info", sid
        )
    return entry


def finish_call(
    run: PlanRun,
    sid: str,
    n: int,
    now: datetime,
    *,
    output: Any = None,
    error: str | None = None,
    attempts: int = 1,
) -> None:
    s = run.steps[sid]
    entry = next(c for c in s.calls if c["n"] == n)
    entry.update(
        status="failed" if error else "completed",
        completed_at=now.isoformat(),
        attempts=attempts,
        **({"error": error} if error else {"output": preview(output, 500)}),
    )
    outcome = f"failed: {error}" if error else "completed"
    log(
        run,
        now,
        f"step {sid}: tool call {n} {entry.get('tool')} {outcome}",
        "info" if not error else "warning",
        sid,
    )


def record_failure(run: PlanRun, sid: str, error: str, attempts: int, now: datetime) -> None:
    s = run.steps[sid]
    s.status = StepStatus.FAILED
    s.error = error
    s.attempts = attempts
    s.completed_at = now
    log(run, now, f"step {sid} failed after {attempts} attempt(s): {error}", "error", sid)
    _after_failure(run, sid, now)


def record_cancelled(run: PlanRun, sid: str, now: datetime, why: str) -> None:
    s = run.steps[sid]
    s.status = StepStatus.CANCELLED
    s.error = why
    s.completed_at = now
    for call in s.calls:  # an llm step's tool call that was running ends with it
        if call.get("status") == "running":
            call.update(status="cancelled", completed_at=now.isoformat(), error=why)
    log(run, now, f"step {sid} cancelled: {why}", "warning", sid)


def _after_failure(run: PlanRun, sid: str, now: datetime) -> None:
    mode = run.plan.options.on_error
    if mode == OnError.STOP and not run.stopping:
        run.stopping = f"step {sid} failed and on_error is stop"
        run.stopped_by_failure = True
        log(run, now, f"no new steps will start: {run.stopping}", "warning", sid)
    elif mode == OnError.ASK:
        run.steps[sid].awaiting_decision = True
        log(
            run,
            now,
            f"step {sid} waits for a correction, a retry, a skip or a cancel",
            "warning",
            sid,
        )


def stop(run: PlanRun, why: str, now: datetime) -> None:
    """Stop scheduling for a reason no retry lifts (a timeout, an unanswered question)."""
    if not run.stopping or run.stopped_by_failure:
        run.stopping = why
        log(run, now, f"no new steps will start: {why}", "warning")
    run.stopped_by_failure = False


def is_finished(run: PlanRun) -> bool:
    if run.final_status is not None:
        return True
    if run.approval is None:
        return False
    return all(s.status.terminal and not s.awaiting_decision for s in run.steps.values())


def finish(run: PlanRun, now: datetime) -> PlanStatus:
    """Set and return the final status once :func:`is_finished` holds."""
    if run.final_status is not None:
        return run.final_status
    steps = list(run.steps.values())
    failed = [s for s in steps if s.status == StepStatus.FAILED]
    incomplete = [
        s
        for s in steps
        if s.status == StepStatus.FAILED
        or (s.status == StepStatus.SKIPPED and s.skip_reason not in (SkipReason.CONDITION, None))
        or s.status == StepStatus.CANCELLED
    ]
    completed = [s for s in steps if s.status == StepStatus.COMPLETED]
    if run.cancel_requested:
        status, outcome = PlanStatus.CANCELLED, run.cancel_requested
    elif not incomplete:
        status, outcome = PlanStatus.COMPLETED, f"all {len(completed)} step(s) done"
    elif run.stopping:
        status, outcome = PlanStatus.FAILED, run.stopping
    elif failed and run.plan.options.on_error == OnError.STOP:
        status, outcome = PlanStatus.FAILED, f"step {failed[0].id} failed"
    elif completed:
        names = ", ".join(s.id for s in incomplete)
        status, outcome = PlanStatus.PARTIAL, f"{len(completed)} step(s) done; not done: {names}"
    else:
        status, outcome = PlanStatus.FAILED, "no step completed"
    run.final_status = status
    run.outcome = run.outcome or outcome
    run.finished_at = now
    run.pause = None
    log(
        run,
        now,
        f"plan ended {status.value}: {run.outcome}",
        "info" if status == PlanStatus.COMPLETED else "warning",
    )
    return status


def end(run: PlanRun, status: PlanStatus, outcome: str, now: datetime) -> None:
    """End the run now with ``status`` (reject, cancel before start, timeouts)."""
    for s in run.steps.values():
        if not s.status.terminal:
            s.status = (
                StepStatus.CANCELLED if status == PlanStatus.CANCELLED else StepStatus.SKIPPED
            )
            if s.status == StepStatus.SKIPPED:
                s.skip_reason = SkipReason.STOPPED
            s.skip_detail = outcome
            s.completed_at = now
    run.final_status = status
    run.outcome = outcome
    run.finished_at = now
    log(run, now, f"plan ended {status.value}: {outcome}", "warning")


# --- controls ------------------------------------------------------------------------


def parse_control(name: str, payload: Any) -> Control:
    """Validate a control's argument; :class:`Refused` names the field that is wrong."""
    model = CONTROL_MODELS.get(name)
    if model is None:
        raise Refused(f"unknown control {name!r}; known: {', '.join(CONTROL_MODELS)}")
    if isinstance(payload, model):
        return payload
    if isinstance(payload, BaseModel):
        payload = payload.model_dump(exclude_none=True)
    try:
        return model.model_validate(payload if payload is not None else {})
    except Exception as e:  # pydantic.ValidationError, TypeError
        errors = getattr(e, "errors", None)
        if callable(errors):
            parts = [
                f"{'.'.join(map(str, err['loc'])) or 'argument'}: {err['msg']}"
                for err in errors(include_url=False)
            ]
            raise Refused(f"invalid {name} argument: " + "; ".join(parts)) from None
        raise Refused(f"invalid {name} argument: {e}") from None


def _require_live(run: PlanRun, name: str) -> None:
    if run.final_status is not None:
        hint = (
            " (use resume-from-failure to run it again)"
            if run.final_status in (PlanStatus.FAILED, PlanStatus.PARTIAL, PlanStatus.CANCELLED)
            else ""
        )
        raise Refused(f"{name} refused: the plan already ended {run.final_status.value}{hint}")


def _require_started(run: PlanRun, name: str) -> None:
    _require_live(run, name)
    if run.approval is None:
        raise Refused(
            f"{name} refused: the plan has not been approved yet (status {derive_status(run).value})"
        )


def _step(run: PlanRun, name: str, step_id: str) -> StepRun:
    if step_id not in run.steps:
        raise Refused(f"{name} refused: no step {step_id!r} in this plan")
    return run.steps[step_id]


def check_control(run: PlanRun, name: str, msg: Control, catalog: Mapping[str, ToolSpec]) -> None:
    """Raise :class:`Refused` with the reason when ``msg`` is not allowed now."""
    status = derive_status(run)
    if isinstance(msg, ApproveInput):
        _require_live(run, name)
        if run.approval is not None:
            raise Refused(
                f"approve refused: the plan was already approved by {run.approval.by} (status {status.value})"
            )
        if msg.version is not None and msg.version != run.version:
            raise Refused(
                f"approve refused: stale approval for version {msg.version}; the plan is at version {run.version}"
            )
        if msg.digest is not None and msg.digest != run.plan.digest():
            raise Refused(
                f"approve refused: digest {msg.digest} does not match the current plan ({run.plan.digest()})"
            )
    elif isinstance(msg, RejectInput):
        _require_live(run, name)
        if run.approval is not None:
            raise Refused(
                f"reject refused: the plan is already approved ({status.value}); cancel it instead"
            )
    elif isinstance(msg, CancelInput):
        _require_live(run, name)
        if run.cancel_requested:
            raise Refused(f"cancel refused: already being cancelled ({run.cancel_requested})")
    elif isinstance(msg, PauseInput):
        _require_started(run, name)
        if run.pause is not None:
            raise Refused(f"pause refused: already paused by {run.pause.by}")
        if msg.step_id is not None:
            _step(run, name, msg.step_id)
    elif isinstance(msg, ResumeInput):
        _require_started(run, name)
        if run.pause is None:
            raise Refused(f"resume refused: the plan is not paused (status {status.value})")
    elif isinstance(msg, AnswerClarificationInput):
        _require_live(run, name)
        if (
            run.pause
            and run.pause.question
            and not run.pause.answered
            and msg.step_id in (None, run.pause.step_id)
        ):
            return
        asking = [
            sid for sid, s in run.steps.items() if s.status == StepStatus.WAITING_CLARIFICATION
        ]
        if msg.step_id is None:
            if len(asking) != 1:
                raise Refused(
                    "answer_clarification refused: "
                    + (
                        "no question is waiting for an answer"
                        if not asking
                        else f"several steps ask ({', '.join(asking)}); name step_id"
                    )
                )
        elif msg.step_id not in asking:
            s = _step(run, name, msg.step_id)
            raise Refused(
                f"answer_clarification refused: step {msg.step_id} is not waiting for an answer (it is {s.status.value})"
            )
    elif isinstance(msg, ApproveStepInput | RejectStepInput):
        _require_started(run, name)
        s = _step(run, name, msg.step_id)
        if s.status != StepStatus.WAITING_APPROVAL:
            raise Refused(
                f"{name} refused: step {msg.step_id} is not waiting for approval (it is {s.status.value})"
            )
        if msg.version is not None and msg.version != s.version:
            raise Refused(
                f"{name} refused: stale decision for step version {msg.version}; step {msg.step_id} is at version {s.version}"
            )
    elif isinstance(msg, RetryStepInput):
        _require_started(run, name)
        s = _step(run, name, msg.step_id)
        if s.status not in (StepStatus.FAILED, StepStatus.SKIPPED, StepStatus.CANCELLED):
            raise Refused(
                f"retry_step refused: step {msg.step_id} is {s.status.value}; only failed, skipped or cancelled steps are retried"
            )
        if s.status == StepStatus.SKIPPED and s.skip_reason == SkipReason.CONDITION:
            raise Refused(
                f"retry_step refused: step {msg.step_id} was skipped by its condition, not by a failure"
            )
        if run.cancel_requested:
            raise Refused("retry_step refused: the plan is being cancelled")
        if run.stopping and not run.stopped_by_failure:
            raise Refused(f"retry_step refused: the plan is stopping ({run.stopping})")
    elif isinstance(msg, SkipStepInput):
        _require_started(run, name)
        s = _step(run, name, msg.step_id)
        allowed = (
            StepStatus.FAILED,
            StepStatus.WAITING_APPROVAL,
            StepStatus.WAITING_CLARIFICATION,
            StepStatus.PENDING,
        )
        if s.status not in allowed:
            raise Refused(
                f"skip_step refused: step {msg.step_id} is {s.status.value}; only failed, waiting or pending steps are skipped"
            )
    elif isinstance(msg, ApplyCorrectionInput):
        _require_live(run, name)
        s = _step(run, name, msg.step_id)
        if s.status in (StepStatus.COMPLETED, StepStatus.RUNNING):
            raise Refused(
                f"apply_correction refused: step {msg.step_id} is {s.status.value}; only steps not completed or running can change"
            )
        _corrected_plan(run, msg, catalog)


def merge_patch(target: Any, patch: Any) -> Any:
    """RFC 7386 JSON merge patch: objects merge key by key, ``null`` removes a key."""
    if not isinstance(patch, dict):
        return patch
    out = dict(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if value is None:
            out.pop(key, None)
        else:
            out[key] = merge_patch(out.get(key), value)
    return out


def _corrected_plan(
    run: PlanRun, msg: ApplyCorrectionInput, catalog: Mapping[str, ToolSpec]
) -> Plan:
    updated = dict(msg.correction.updated_step)
    if "parameters" in updated and "params" not in updated:
        updated["params"] = updated.pop("parameters")  # seed 001's name for params
    if updated.get("id", msg.step_id) != msg.step_id:
        raise Refused("apply_correction refused: updated_step.id cannot change a step's id")
    doc = run.plan.model_dump(mode="json")
    for i, step in enumerate(doc["steps"]):
        if step["id"] == msg.step_id:
            new_step = {**step, **updated, "id": msg.step_id}
            same_tool = new_step.get("tool") == step.get("tool")
            if same_tool and isinstance(updated.get("params"), dict):
                # Same tool: params merge (RFC 7386, null removes); a new tool gets new params.
                new_step["params"] = merge_patch(step.get("params") or {}, updated["params"])
            doc["steps"][i] = new_step
    try:
        plan = parse_plan(doc)
    except PlanInvalid as e:
        raise Refused("apply_correction refused: " + "; ".join(map(str, e.problems))) from None
    problems = validate_plan(plan, catalog)
    if problems:
        raise Refused("apply_correction refused: " + "; ".join(map(str, problems)))
    return plan


def apply_control(
    run: PlanRun,
    name: str,
    msg: Control,
    now: datetime,
    catalog: Mapping[str, ToolSpec],
    via: Literal["signal", "update", "system"] = "update",
) -> str:
    """Check and apply ``msg``; record it in the audit trail either way. Returns what changed."""
    try:
        check_control(run, name, msg, catalog)
    except Refused as e:
        audit(run, now, msg.by, name, False, str(e), getattr(msg, "step_id", None), via)
        log(run, now, f"{e} (sent by {msg.by})", "warning", getattr(msg, "step_id", None))
        raise
    detail = _apply(run, msg, now, catalog)
    audit(run, now, msg.by, name, True, detail, getattr(msg, "step_id", None), via)
    log(run, now, f"{name} from {msg.by}: {detail}", "info", getattr(msg, "step_id", None))
    return detail


def _apply(run: PlanRun, msg: Control, now: datetime, catalog: Mapping[str, ToolSpec]) -> str:
    if isinstance(msg, ApproveInput):
        run.approval = Approval(by=msg.by, at=now, comment=msg.comment, version=run.version)
        return f"plan approved at version {run.version}"
    if isinstance(msg, RejectInput):
        end(run, PlanStatus.REJECTED, f"rejected by {msg.by}: {msg.reason}", now)
        return "plan rejected; nothing runs"
    if isinstance(msg, CancelInput):
        why = f"cancelled by {msg.by}: {msg.reason}"
        run.cancel_requested = why
        run.stopping = why
        run.pause = None
        if run.approval is None or not running_steps(run):
            end(run, PlanStatus.CANCELLED, why, now)
            return "plan cancelled"
        for s in run.steps.values():
            s.awaiting_decision = False
        return "running steps are being cancelled"
    if isinstance(msg, PauseInput):
        run.pause = Pause(
            by=msg.by, since=now, reason=msg.reason, step_id=msg.step_id, question=msg.question
        )
        why = f" ({msg.reason})" if msg.reason else ""
        if msg.question:
            return f"paused with a question{why}: {msg.question}"
        return f"paused: no new steps start{why}"
    if isinstance(msg, ResumeInput):
        if msg.feedback:
            run.feedback.append(msg.feedback)
            pause = run.pause
            if pause and pause.question and not pause.answered and pause.step_id:
                # Seed 001: resuming with feedback answers the question that paused it.
                target = run.steps[pause.step_id]
                if not target.answered:
                    target.answer, target.answered = msg.feedback, True
                    if target.status == StepStatus.WAITING_CLARIFICATION:
                        target.status, target.waiting_since = StepStatus.PENDING, None
        run.pause = None
        return "resumed" + (" with feedback" if msg.feedback else "")
    if isinstance(msg, AnswerClarificationInput):
        if (
            run.pause
            and run.pause.question
            and not run.pause.answered
            and msg.step_id in (None, run.pause.step_id)
        ):
            run.pause.answer, run.pause.answered, run.pause.answered_by = msg.answer, True, msg.by
            # Later steps see the exchange as feedback; a named step also gets it as its answer.
            run.feedback.append(f"{run.pause.question} -> {msg.answer}")
            if run.pause.step_id:
                target = run.steps[run.pause.step_id]
                target.answer, target.answered = msg.answer, True
                if target.status == StepStatus.WAITING_CLARIFICATION:
                    target.status, target.waiting_since = StepStatus.PENDING, None
            return "question answered; resume to continue"
        sid = msg.step_id or next(
            k for k, s in run.steps.items() if s.status == StepStatus.WAITING_CLARIFICATION
        )
        s = run.steps[sid]
        s.answer, s.answered = msg.answer, True
        s.status, s.waiting_since = StepStatus.PENDING, None
        return f"step {sid} answered"
    if isinstance(msg, ApproveStepInput):
        s = run.steps[msg.step_id]
        s.gate_approved_by = msg.by
        s.status, s.waiting_since = StepStatus.PENDING, None
        return f"step {msg.step_id} approved"
    if isinstance(msg, RejectStepInput):
        _skip(run, msg.step_id, SkipReason.REJECTED, f"rejected by {msg.by}: {msg.reason}", now)
        return f"step {msg.step_id} rejected and skipped with its dependents"
    if isinstance(msg, RetryStepInput):
        return _retry(run, msg.step_id, now)
    if isinstance(msg, SkipStepInput):
        s = run.steps[msg.step_id]
        s.failed_before_skip = s.status == StepStatus.FAILED
        s.awaiting_decision = False
        _skip(run, msg.step_id, SkipReason.OPERATOR, f"skipped by {msg.by}: {msg.reason}", now)
        _reset_dependents(run, msg.step_id)
        _lift_failure_stop(run, now)
        return f"step {msg.step_id} skipped; its dependents go on"
    if isinstance(msg, ApplyCorrectionInput):
        plan = _corrected_plan(run, msg, catalog)
        changes = diff_step(run.plan.step(msg.step_id), plan.step(msg.step_id))
        run.plan = plan
        run.version += 1
        run.versions.append(
            PlanVersion(
                version=run.version,
                by=msg.by,
                at=now,
                step_id=msg.step_id,
                change=f"step {msg.step_id}: {', '.join(changes) or 'nothing changed'}",
                diff={msg.step_id: changes},
            )
        )
        s = run.steps[msg.step_id]
        s.version += 1
        s.gate_approved_by = None  # earlier approvals of this step lapse
        if s.status == StepStatus.WAITING_APPROVAL:
            s.waiting_since = now
        gate = _policy_gate_after_correction(run, msg.step_id, catalog, now)
        return (
            f"step {msg.step_id} corrected ({', '.join(changes)}); plan version {run.version}"
            + gate
        )
    raise Refused(f"unknown control {type(msg).__name__}")


def _policy_gate_after_correction(
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


def _reset_dependents(run: PlanRun, sid: str) -> list[str]:
    """Put back to pending the dependents that were skipped because ``sid`` failed."""
    reset: list[str] = []
    frontier = [sid]
    while frontier:
        cur = frontier.pop()
        for step in run.plan.steps:
            o = run.steps[step.id]
            if (
                cur in step.depends_on
                and o.status == StepStatus.SKIPPED
                and o.skip_reason in (SkipReason.UPSTREAM, SkipReason.STOPPED)
            ):
                _make_pending(o)
                reset.append(step.id)
                frontier.append(step.id)
    return reset


def _make_pending(s: StepRun) -> None:
    s.status = StepStatus.PENDING
    s.skip_reason = s.skip_detail = s.error = None
    s.awaiting_decision = False
    s.completed_at = None


def _lift_failure_stop(run: PlanRun, now: datetime) -> None:
    """After a retry or skip, an on_error=stop stop ends once no step is failed any more;
    the steps it had skipped become pending again. Other stops (cancel, timeouts) stay."""
    if not (run.stopping and run.stopped_by_failure) or run.cancel_requested:
        return
    if any(s.status == StepStatus.FAILED for s in run.steps.values()):
        return
    run.stopping, run.stopped_by_failure = None, False
    for s in run.steps.values():
        if s.status == StepStatus.SKIPPED and s.skip_reason == SkipReason.STOPPED:
            _make_pending(s)
    log(run, now, "no step is failed any more: scheduling goes on")


def _retry(run: PlanRun, sid: str, now: datetime) -> str:
    _make_pending(run.steps[sid])
    reset = _reset_dependents(run, sid)
    _lift_failure_stop(run, now)
    return f"step {sid} will run again" + (f" with {len(reset)} dependent(s)" if reset else "")


# --- timeouts on waits for a person --------------------------------------------------


class Deadline(BaseModel):
    at: datetime
    kind: Literal["step_approval", "clarification", "pause_question", "correction"]
    step_id: str | None = None


def _after(since: datetime | None, seconds: float | None) -> datetime | None:
    if since is None or seconds is None:
        return None
    return since + timedelta(seconds=seconds)


def deadlines(run: PlanRun) -> list[Deadline]:
    """When each current wait for a person runs out (only waits with a timeout set)."""
    if run.final_status is not None or run.approval is None:
        return []
    opts = run.plan.options
    out: list[Deadline] = []
    if run.pause is not None and run.pause.question and not run.pause.answered:
        at = _after(run.pause.since, opts.clarification_timeout_s)
        if at:
            out.append(Deadline(at=at, kind="pause_question", step_id=run.pause.step_id))
    for sid, s in run.steps.items():
        if s.status == StepStatus.WAITING_APPROVAL:
            at = _after(s.waiting_since, opts.step_approval_timeout_s)
            kind = "step_approval"
        elif s.status == StepStatus.WAITING_CLARIFICATION:
            at, kind = _after(s.waiting_since, opts.clarification_timeout_s), "clarification"
        elif s.awaiting_decision:
            at, kind = _after(s.completed_at, opts.correction_timeout_s), "correction"
        else:
            continue
        if at:
            out.append(Deadline(at=at, kind=kind, step_id=sid))  # type: ignore[arg-type]
    return sorted(out, key=lambda d: d.at)


def _expire_step_approval(run: PlanRun, sid: str, now: datetime) -> str:
    opts = run.plan.options
    action = opts.on_step_approval_timeout
    what = f"step approval timed out after {opts.step_approval_timeout_s:g}s; on_step_approval_timeout={action}"
    s = run.steps[sid]
    if action == "approve" and s.policy_gate:
        # A critical step always needs a person: a timeout never approves it.
        action = "reject"
        what += " (not applied: the approval policy gates this step, so it is rejected)"
    s.timed_out = what
    if action == "approve":
        s.gate_approved_by = "system:timeout"
        s.status, s.waiting_since = StepStatus.PENDING, None
    else:
        _skip(run, sid, SkipReason.REJECTED, what, now)
    return what


def _expire_clarification(run: PlanRun, sid: str | None, now: datetime) -> str:
    """A question nobody answered: a step's own (``sid``) or the one a pause asked."""
    opts = run.plan.options
    action = opts.on_clarification_timeout
    what = f"no answer within {opts.clarification_timeout_s:g}s; on_clarification_timeout={action}"
    if sid is None:
        if action == "fail":
            stop(run, f"plan paused with a question: {what}", now)
            run.outcome = f"clarification timed out: {what}"
        run.pause = None
        return what
    s = run.steps[sid]
    s.timed_out = what
    if action == "proceed":
        s.answered, s.answer = True, None
        s.status, s.waiting_since = StepStatus.PENDING, None
    elif action == "skip":
        _skip(run, sid, SkipReason.REJECTED, what, now)
    else:
        s.status, s.waiting_since = StepStatus.FAILED, None
        s.error, s.completed_at = f"clarification timed out: {what}", now
        _after_failure(run, sid, now)
    return what


def next_deadline(run: PlanRun) -> datetime | None:
    found = deadlines(run)
    return found[0].at if found else None


def expire_waits(run: PlanRun, now: datetime) -> list[str]:
    """Apply the configured default action to every wait whose time ran out.

    Each outcome says it timed out and is audited as ``system:timeout``: a timeout is
    never mistaken for a person's decision.
    """
    done: list[str] = []
    for d in deadlines(run):
        if d.at > now:
            break
        sid = d.step_id
        if d.kind == "step_approval" and sid:
            what = _expire_step_approval(run, sid, now)
        elif d.kind in ("clarification", "pause_question"):
            what = _expire_clarification(run, sid if d.kind == "clarification" else None, now)
        elif d.kind == "correction" and sid:
            what = f"no correction, retry or skip within {run.plan.options.correction_timeout_s:g}s"
            s = run.steps[sid]
            s.awaiting_decision = False
            s.timed_out = what
            stop(run, f"step {sid} failed and {what}", now)
        else:  # pragma: no cover - kinds are exhaustive
            continue
        audit(run, now, "system:timeout", f"{d.kind}_timeout", True, what, sid)
        log(run, now, f"{d.kind} wait timed out: {what}", "warning", sid)
        done.append(what)
    return done

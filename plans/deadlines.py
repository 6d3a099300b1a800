"""Timeouts on waits for a person: when each wait runs out, and what happens then.

A step approval, a clarification question, a pause with a question and a failed step
waiting for a correction can each have a timeout in the plan's options;
:func:`expire_waits` applies the configured default action and audits it as
``system:timeout``.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Literal

from pydantic import BaseModel

from plans import run_index as _run_index
from plans.models import StepStatus
from plans.run_state import PlanRun, SkipReason, audit, log
from plans.scheduler import after_failure, mark_skipped, stop


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
    for sid in _run_index.of(run).waiting():
        s = run.steps[sid]
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
    if action == "approve" and (s.policy_gate or s.change_gate):
        # A critical step, or a change made after approval, always needs a person: a
        # timeout never approves it.
        action = "reject"
        gate = "the approval policy gates" if s.policy_gate else "a change after approval gates"
        what += f" (not applied: {gate} this step, so it is rejected)"
    elif action == "approve" and s.judge_gate:
        # An unjudged validation never passes without a person.
        action = "reject"
        what += " (not applied: no model assessed this step's judge criteria, so it is rejected)"
    elif action == "approve" and s.code_gate:
        # Generated code runs only once a person saw it.
        action = "reject"
        what += " (not applied: nobody approved this step's generated code, so it is rejected)"
    s.timed_out = what
    if action == "approve":
        s.gate_approved_by = "system:timeout"
        s.status, s.waiting_since = StepStatus.PENDING, None
    else:
        mark_skipped(run, sid, SkipReason.REJECTED, what, now)
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
        mark_skipped(run, sid, SkipReason.REJECTED, what, now)
    else:
        s.status, s.waiting_since = StepStatus.FAILED, None
        s.error, s.completed_at = f"clarification timed out: {what}", now
        after_failure(run, sid, now)
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

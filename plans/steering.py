"""Steering a run: the controls people send (approve, pause, answer, correct, retry, ...).

Every control goes through :func:`parse_control` (its argument),
:func:`check_control` (is it allowed now; :class:`~plans.run_state.Refused` says why not)
and :func:`apply_control`, which records it in the audit trail either way. The control
arguments themselves are in :mod:`plans.controls`.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel

from plans import replan
from plans.approval_gate import policy_gate_after_correction
from plans.controls import (
    CONTROL_MODELS,
    AcceptReplanInput,
    AnswerClarificationInput,
    ApplyCorrectionInput,
    ApproveInput,
    ApproveStepInput,
    CancelInput,
    Control,
    PauseInput,
    RejectInput,
    RejectReplanInput,
    RejectStepInput,
    ResumeInput,
    RetryStepInput,
    SkipStepInput,
)
from plans.models import Plan, PlanStatus, StepStatus, ToolSpec
from plans.run_state import (
    Approval,
    Pause,
    PlanRun,
    PlanVersion,
    Refused,
    SkipReason,
    StepRun,
    audit,
    derive_status,
    log,
)
from plans.scheduler import end, mark_skipped, running_steps
from plans.step_changes import diff_step, merge_patch, reset_dependents, retry
from plans.step_changes import lift_failure_stop as _lift_failure_stop
from plans.validation import PlanInvalid, Problem, parse_plan, validate_plan


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
    elif isinstance(msg, AcceptReplanInput | RejectReplanInput):
        _require_started(run, name)
        if msg.step_id is not None:
            _step(run, name, msg.step_id)
        replan.check_decision(run, name, msg.step_id)
    elif isinstance(msg, ApplyCorrectionInput):
        _require_live(run, name)
        s = _step(run, name, msg.step_id)
        if s.status in (StepStatus.COMPLETED, StepStatus.RUNNING):
            raise Refused(
                f"apply_correction refused: step {msg.step_id} is {s.status.value}; only steps not completed or running can change"
            )
        _corrected_plan(run, msg, catalog)


# A correction that renames its step (the id is how every reference finds it).
ID_CHANGE = Problem(location="updated_step.id", message="cannot change a step's id")


def corrected_plan(
    plan: Plan, step_id: str, updated_step: Mapping[str, Any], catalog: Mapping[str, ToolSpec]
) -> tuple[Plan | None, list[Problem]]:
    """``plan`` with step ``step_id`` corrected by ``updated_step`` (the step's fields that
    change; same tool: ``params`` merge as an RFC 7386 patch), and every located problem
    of the result: ``(plan, [])`` when it is valid, ``(None, problems)`` otherwise.
    Pure: the workflow's ``apply_correction`` and the console's check share it."""
    updated = dict(updated_step)
    if "parameters" in updated and "params" not in updated:
        updated["params"] = updated.pop("parameters")  # an older name for params, still accepted
    if updated.get("id", step_id) != step_id:
        return None, [ID_CHANGE]
    doc = plan.model_dump(mode="json")
    for i, step in enumerate(doc["steps"]):
        if step["id"] == step_id:
            new_step = {**step, **updated, "id": step_id}
            same_tool = new_step.get("tool") == step.get("tool")
            if same_tool and isinstance(updated.get("params"), dict):
                # Same tool: params merge (RFC 7386, null removes); a new tool gets new params.
                new_step["params"] = merge_patch(step.get("params") or {}, updated["params"])
            doc["steps"][i] = new_step
    try:
        corrected = parse_plan(doc)
    except PlanInvalid as e:
        return None, list(e.problems)
    problems = validate_plan(corrected, catalog)
    if problems:
        return None, problems
    return corrected, []


def _corrected_plan(
    run: PlanRun, msg: ApplyCorrectionInput, catalog: Mapping[str, ToolSpec]
) -> Plan:
    plan, problems = corrected_plan(run.plan, msg.step_id, msg.correction.updated_step, catalog)
    if plan is None:
        if problems == [ID_CHANGE]:  # the words the audit trails of earlier runs hold
            raise Refused("apply_correction refused: updated_step.id cannot change a step's id")
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
        if audit(run, now, msg.by, name, False, str(e), getattr(msg, "step_id", None), via):
            log(run, now, f"{e} (sent by {msg.by})", "warning", getattr(msg, "step_id", None))
        raise
    detail = _apply(run, msg, now, catalog)
    audit(run, now, msg.by, name, True, detail, getattr(msg, "step_id", None), via)
    log(run, now, f"{name} from {msg.by}: {detail}", "info", getattr(msg, "step_id", None))
    return detail


def _apply(run: PlanRun, msg: Control, now: datetime, catalog: Mapping[str, ToolSpec]) -> str:
    if isinstance(msg, ApproveInput):
        digest = run.plan.digest()
        run.approval = Approval(
            by=msg.by, at=now, comment=msg.comment, version=run.version, digest=digest
        )
        # A change made after an earlier run's approval and carried unapproved into this
        # run (resume-from-failure) is part of the document this person approves.
        covered = [
            sid
            for sid, s in run.steps.items()
            if s.change_gate is not None and s.gate_approved_by is None
        ]
        for sid in covered:
            run.steps[sid].change_gate = run.steps[sid].change_diff = None
        also = f"; it covers the change(s) to step(s) {', '.join(covered)}" if covered else ""
        return f"plan approved at version {run.version} (digest {digest}){also}"
    if isinstance(msg, RejectInput):
        end(run, PlanStatus.REJECTED, f"rejected by {msg.by}: {msg.reason}", now)
        return "plan rejected; nothing runs"
    if isinstance(msg, CancelInput):
        why = f"cancelled by {msg.by}: {msg.reason}"
        run.cancel_requested = why
        run.stopping = why
        run.pause = None
        replan.supersede(run, None, why, now)
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
                # Resuming with feedback also answers the question that paused the plan.
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
        s.gate_approved_by, s.gate_approved_version = msg.by, s.version
        s.status, s.waiting_since = StepStatus.PENDING, None
        what = " and its change" if s.change_gate else ""
        return f"step {msg.step_id} approved{what} at step version {s.version}"
    if isinstance(msg, RejectStepInput):
        mark_skipped(
            run, msg.step_id, SkipReason.REJECTED, f"rejected by {msg.by}: {msg.reason}", now
        )
        return f"step {msg.step_id} rejected and skipped with its dependents"
    if isinstance(msg, AcceptReplanInput):
        return replan.accept(run, msg.step_id, msg.by, catalog, now)
    if isinstance(msg, RejectReplanInput):
        return replan.reject(run, msg.step_id, msg.by, msg.reason, now)
    if isinstance(msg, RetryStepInput):
        replan.supersede(run, msg.step_id, f"step {msg.step_id} retried by {msg.by}", now)
        return retry(run, msg.step_id, now)
    if isinstance(msg, SkipStepInput):
        replan.supersede(run, msg.step_id, f"step {msg.step_id} skipped by {msg.by}", now)
        s = run.steps[msg.step_id]
        s.failed_before_skip = s.status == StepStatus.FAILED
        s.awaiting_decision = False
        mark_skipped(
            run, msg.step_id, SkipReason.OPERATOR, f"skipped by {msg.by}: {msg.reason}", now
        )
        reset_dependents(run, msg.step_id)
        _lift_failure_stop(run, now)
        return f"step {msg.step_id} skipped; its dependents go on"
    if isinstance(msg, ApplyCorrectionInput):
        plan = _corrected_plan(run, msg, catalog)
        replan.supersede(run, msg.step_id, f"step {msg.step_id} corrected by {msg.by}", now)
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
        s.gate_approved_by = s.gate_approved_version = None  # earlier approvals lapse
        if s.status == StepStatus.WAITING_APPROVAL:
            s.waiting_since = now
        gate = _change_gate(run, msg, changes)
        gate += policy_gate_after_correction(run, msg.step_id, catalog, now)
        return (
            f"step {msg.step_id} corrected ({', '.join(changes)}); plan version {run.version}"
            + gate
        )
    raise Refused(f"unknown control {type(msg).__name__}")


# What a step does not run: a change to these alone needs no new approval. Every other
# field (tool, params, when, depends_on, requires_approval, retries, timeouts, kind...) is
# executable content, and so is any field added later.
DESCRIPTIVE_FIELDS = frozenset({"description", "clarification_question"})


def executable_changes(changes: Mapping[str, Any]) -> list[str]:
    """The fields of a step diff (:func:`diff_step`) that change what the step runs."""
    return sorted(k for k in changes if k not in DESCRIPTIVE_FIELDS)


def _change_gate(run: PlanRun, msg: ApplyCorrectionInput, changes: dict[str, Any]) -> str:
    """After the plan was approved, a change to what a step runs needs a person's approval
    of that change before the step runs: the approval covered the content it saw. The step
    waits at ``waiting_approval`` with the diff, whatever its own ``requires_approval``
    says (a correction never removes a gate by itself). ``approve: true`` (correct and
    approve) is the sender approving their own change."""
    if not run.bind_approvals or run.approval is None:
        return ""  # before approval, the plan's approval covers the corrected version
    fields = executable_changes(changes)
    if not fields:
        return ""
    s = run.steps[msg.step_id]
    if msg.approve:
        # The change is approved; a gate the step has of its own (requires_approval, the
        # policy) still waits for its approve_step.
        s.change_gate = s.change_diff = None
        return f"; the change was approved by {msg.by} as it was sent"
    s.change_gate = (
        f"step {msg.step_id} changed after the plan was approved ({', '.join(fields)} by "
        f"{msg.by}, plan version {run.version}): a person approves the change before it runs"
    )
    s.change_diff = {k: changes[k] for k in fields}
    return "; it waits for a person to approve the change before it runs"

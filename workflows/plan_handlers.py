"""What people send a running plan and what they ask it: ``PlanWorkflow``'s handlers.

Every control (``plans.controls``) is both an update (the caller learns at once whether it
was accepted) and a signal (fire and forget) of the same name: ``approve`` and
``approve_signal`` both answer to Temporal's ``approve``. A refused control never breaks
the workflow: an update gets the reason back, a signal's refusal lands in the audit trail.
Queries read the run through :mod:`plans.views` and change nothing.
"""

from __future__ import annotations

from typing import Any

from temporalio import workflow
from temporalio.exceptions import ApplicationError

from workflows.plan_publisher import PlanPublisher
from workflows.step_runner import StepRunner

with workflow.unsafe.imports_passed_through():
    from plans import run_state, steering
    from plans.controls import (
        AcceptReplanInput,
        AnswerClarificationInput,
        ApplyCorrectionInput,
        ApproveInput,
        ApproveStepInput,
        CancelInput,
        ControlResult,
        PauseInput,
        RejectInput,
        RejectReplanInput,
        RejectStepInput,
        ResumeInput,
        RetryStepInput,
        SkipStepInput,
    )
    from plans.models import ToolSpec
    from plans.run_state import AuditEntry, LogEntry, PlanRun, Refused
    from plans.views import (
        ChangesQuery,
        ChangesView,
        ExecutionState,
        LogsQuery,
        PlanView,
        StatusView,
        StepsPage,
        StepsQuery,
        changes_view,
        execution_state,
        logs_view,
        plan_view,
        status_view,
        steps_page,
    )


# Approvals bound to content (a step changed after approval waits for a person again):
# histories recorded before it replay the old rule, where the change ran unasked.
APPROVAL_BOUND_PATCH = "approval-bound-to-content"


class PlanHandlers:
    """The signals, updates and queries of ``PlanWorkflow`` (its base class)."""

    _run: PlanRun
    _catalog: dict[str, ToolSpec]
    _steps: StepRunner
    _publisher: PlanPublisher
    _dirty: bool

    # --- controls --------------------------------------------------------------------

    def _on_signal(self, name: str, arg: Any) -> None:
        try:
            msg = steering.parse_control(name, arg)
        except Refused as e:
            by = (
                str(arg["by"])
                if isinstance(arg, dict) and isinstance(arg.get("by"), str)
                else "unknown"
            )
            now = workflow.now()
            if run_state.audit(self._run, now, by, name, False, str(e), via="signal"):
                run_state.log(self._run, now, f"{name} signal refused: {e}", "warning")
            return
        self._bind_approvals(msg)
        try:
            steering.apply_control(
                self._run, name, msg, workflow.now(), self._catalog, via="signal"
            )
        except Refused:
            return  # audited by apply_control; a refused signal never breaks the workflow
        self._after_control(name)

    def _validate(self, name: str, arg: Any) -> None:
        """Refuse a malformed argument before it reaches history.

        Whether the transition is allowed is decided by the handler, against the state at
        that moment (an earlier update of the same burst may have changed it), and a
        refusal there is recorded in the audit trail with the actor before the caller
        gets it back, just as synchronously.
        """
        try:
            steering.parse_control(name, arg)
        except Refused as e:
            raise ApplicationError(str(e), type="InvalidControl", non_retryable=True) from None

    def _on_update(self, name: str, arg: Any) -> ControlResult:
        try:
            msg = steering.parse_control(name, arg)
            self._bind_approvals(msg)
            detail = steering.apply_control(
                self._run, name, msg, workflow.now(), self._catalog, via="update"
            )
        except Refused as e:
            raise ApplicationError(str(e), type="TransitionRefused", non_retryable=True) from None
        self._after_control(name)
        return ControlResult(
            control=name, status=self._run.status.value, version=self._run.version, detail=detail
        )

    def _bind_approvals(self, msg: Any) -> None:
        """Decide once, the first time a correction arrives, whether this run binds
        approvals to content (:data:`APPROVAL_BOUND_PATCH`)."""
        if isinstance(msg, ApplyCorrectionInput) and not self._run.bind_approvals:
            self._run.bind_approvals = workflow.patched(APPROVAL_BOUND_PATCH)

    def _after_control(self, name: str) -> None:
        if name == "cancel" and self._run.cancel_requested:
            self._steps.cancel_running(self._run.cancel_requested)
        self._dirty = True
        self._publisher.publish()

    # `| Any = None` keeps decoding permissive: a malformed or missing payload is refused (and
    # audited), never dropped, and never fails the workflow task.
    # Update handlers are plain methods (nothing in them waits): callers then see ControlResult.

    @workflow.update(name="approve")
    def approve(self, arg: ApproveInput | Any = None) -> ControlResult:
        """Approve the plan (at the version and digest the approver saw)."""
        return self._on_update("approve", arg)

    @approve.validator
    def validate_approve(self, arg: ApproveInput | Any = None) -> None:
        self._validate("approve", arg)

    @workflow.signal(name="approve")
    def approve_signal(self, arg: ApproveInput | Any = None) -> None:
        self._on_signal("approve", arg)

    @workflow.update(name="reject")
    def reject(self, arg: RejectInput | Any = None) -> ControlResult:
        """Reject the plan before it runs."""
        return self._on_update("reject", arg)

    @reject.validator
    def validate_reject(self, arg: RejectInput | Any = None) -> None:
        self._validate("reject", arg)

    @workflow.signal(name="reject")
    def reject_signal(self, arg: RejectInput | Any = None) -> None:
        self._on_signal("reject", arg)

    @workflow.update(name="cancel")
    def cancel(self, arg: CancelInput | Any = None) -> ControlResult:
        """Cancel the plan; running steps are cancelled."""
        return self._on_update("cancel", arg)

    @cancel.validator
    def validate_cancel(self, arg: CancelInput | Any = None) -> None:
        self._validate("cancel", arg)

    @workflow.signal(name="cancel")
    def cancel_signal(self, arg: CancelInput | Any = None) -> None:
        self._on_signal("cancel", arg)

    @workflow.update(name="pause")
    def pause(self, arg: PauseInput | Any = None) -> ControlResult:
        """Pause the plan (no new steps start), or ask a question about a step."""
        return self._on_update("pause", arg)

    @pause.validator
    def validate_pause(self, arg: PauseInput | Any = None) -> None:
        self._validate("pause", arg)

    @workflow.signal(name="pause")
    def pause_signal(self, arg: PauseInput | Any = None) -> None:
        self._on_signal("pause", arg)

    @workflow.update(name="resume")
    def resume(self, arg: ResumeInput | Any = None) -> ControlResult:
        """Resume a paused plan, optionally with feedback."""
        return self._on_update("resume", arg)

    @resume.validator
    def validate_resume(self, arg: ResumeInput | Any = None) -> None:
        self._validate("resume", arg)

    @workflow.signal(name="resume")
    def resume_signal(self, arg: ResumeInput | Any = None) -> None:
        self._on_signal("resume", arg)

    @workflow.update(name="apply_correction")
    def apply_correction(self, arg: ApplyCorrectionInput | Any = None) -> ControlResult:
        """Replace a step's definition: the plan gets a new version."""
        return self._on_update("apply_correction", arg)

    @apply_correction.validator
    def validate_apply_correction(self, arg: ApplyCorrectionInput | Any = None) -> None:
        self._validate("apply_correction", arg)

    @workflow.signal(name="apply_correction")
    def apply_correction_signal(self, arg: ApplyCorrectionInput | Any = None) -> None:
        self._on_signal("apply_correction", arg)

    @workflow.update(name="answer_clarification")
    def answer_clarification(self, arg: AnswerClarificationInput | Any = None) -> ControlResult:
        """Answer the question a step or a pause waits on."""
        return self._on_update("answer_clarification", arg)

    @answer_clarification.validator
    def validate_answer_clarification(self, arg: AnswerClarificationInput | Any = None) -> None:
        self._validate("answer_clarification", arg)

    @workflow.signal(name="answer_clarification")
    def answer_clarification_signal(self, arg: AnswerClarificationInput | Any = None) -> None:
        self._on_signal("answer_clarification", arg)

    @workflow.update(name="approve_step")
    def approve_step(self, arg: ApproveStepInput | Any = None) -> ControlResult:
        """Approve a step that waits for a person."""
        return self._on_update("approve_step", arg)

    @approve_step.validator
    def validate_approve_step(self, arg: ApproveStepInput | Any = None) -> None:
        self._validate("approve_step", arg)

    @workflow.signal(name="approve_step")
    def approve_step_signal(self, arg: ApproveStepInput | Any = None) -> None:
        self._on_signal("approve_step", arg)

    @workflow.update(name="reject_step")
    def reject_step(self, arg: RejectStepInput | Any = None) -> ControlResult:
        """Reject a waiting step: it and its dependents are skipped."""
        return self._on_update("reject_step", arg)

    @reject_step.validator
    def validate_reject_step(self, arg: RejectStepInput | Any = None) -> None:
        self._validate("reject_step", arg)

    @workflow.signal(name="reject_step")
    def reject_step_signal(self, arg: RejectStepInput | Any = None) -> None:
        self._on_signal("reject_step", arg)

    @workflow.update(name="retry_step")
    def retry_step(self, arg: RetryStepInput | Any = None) -> ControlResult:
        """Run a failed step again."""
        return self._on_update("retry_step", arg)

    @retry_step.validator
    def validate_retry_step(self, arg: RetryStepInput | Any = None) -> None:
        self._validate("retry_step", arg)

    @workflow.signal(name="retry_step")
    def retry_step_signal(self, arg: RetryStepInput | Any = None) -> None:
        self._on_signal("retry_step", arg)

    @workflow.update(name="skip_step")
    def skip_step(self, arg: SkipStepInput | Any = None) -> ControlResult:
        """Skip a step; its dependents go on."""
        return self._on_update("skip_step", arg)

    @skip_step.validator
    def validate_skip_step(self, arg: SkipStepInput | Any = None) -> None:
        self._validate("skip_step", arg)

    @workflow.signal(name="skip_step")
    def skip_step_signal(self, arg: SkipStepInput | Any = None) -> None:
        self._on_signal("skip_step", arg)

    @workflow.update(name="accept_replan")
    def accept_replan(self, arg: AcceptReplanInput | Any = None) -> ControlResult:
        """Accept the planner's proposal (on_error: replan): the plan gets a new version."""
        return self._on_update("accept_replan", arg)

    @accept_replan.validator
    def validate_accept_replan(self, arg: AcceptReplanInput | Any = None) -> None:
        self._validate("accept_replan", arg)

    @workflow.signal(name="accept_replan")
    def accept_replan_signal(self, arg: AcceptReplanInput | Any = None) -> None:
        self._on_signal("accept_replan", arg)

    @workflow.update(name="reject_replan")
    def reject_replan(self, arg: RejectReplanInput | Any = None) -> ControlResult:
        """Reject the planner's proposal: the step stays failed and waits for a person."""
        return self._on_update("reject_replan", arg)

    @reject_replan.validator
    def validate_reject_replan(self, arg: RejectReplanInput | Any = None) -> None:
        self._validate("reject_replan", arg)

    @workflow.signal(name="reject_replan")
    def reject_replan_signal(self, arg: RejectReplanInput | Any = None) -> None:
        self._on_signal("reject_replan", arg)

    # --- queries ---------------------------------------------------------------------

    @workflow.query(name="status")
    def status(self) -> StatusView:
        return status_view(self._run)

    @workflow.query(name="steps")
    def steps(self, query: StepsQuery | None = None) -> StepsPage:
        """One page of the steps in plan order, those in one status if asked (O(page))."""
        return steps_page(self._run, query or StepsQuery())

    @workflow.query(name="changes")
    def changes(self, query: ChangesQuery | None = None) -> ChangesView:
        """The step changes numbered after ``since``: what a watcher missed since it last
        looked (``complete`` false: they are gone from the journal; read status again)."""
        return changes_view(self._run, query or ChangesQuery())

    @workflow.query(name="execution_state")
    def execution_state(self) -> ExecutionState:
        return execution_state(self._run)

    @workflow.query(name="logs")
    def logs(self, query: LogsQuery | None = None) -> list[LogEntry]:
        return logs_view(self._run, query or LogsQuery())

    @workflow.query(name="plan")
    def plan(self) -> PlanView:
        return plan_view(self._run)

    @workflow.query(name="audit")
    def audit(self) -> list[AuditEntry]:
        return list(self._run.audit)

    @workflow.query(name="run_state")
    def run_state(self) -> PlanRun:
        """The whole state (resume-from-failure reads it when a run ended without a result)."""
        return self._run

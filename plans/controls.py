"""Control messages: one pydantic model per control.

Every control is accepted both as a signal and as an update of the same name with one
JSON object argument. ``CONTROL_MODELS`` is the one table of names that the workflow, the
API and the CLI share.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field


class Control(BaseModel):
    model_config = ConfigDict(extra="forbid")

    by: str = Field(min_length=1, max_length=200, description="who sends the control")


class ApproveInput(Control):
    comment: str | None = None
    version: int | None = Field(default=None, ge=1, description="plan version the approver saw")
    digest: str | None = Field(default=None, description="plan digest the approver saw")


class RejectInput(Control):
    reason: str = Field(min_length=1)


class PauseInput(Control):
    reason: str | None = None
    step_id: str | None = None
    question: str | None = None


class ResumeInput(Control):
    feedback: str | None = None


class Correction(BaseModel):
    model_config = ConfigDict(extra="forbid")

    updated_step: dict[str, Any]


class ApplyCorrectionInput(Control):
    step_id: str
    correction: Correction
    approve: bool = Field(
        default=False,
        description="correct and approve: the sender also approves the change they make "
        "(after the plan was approved, a change to what a step runs needs a person's "
        "approval before the step runs; agent keys may not approve)",
    )


class AnswerClarificationInput(Control):
    step_id: str | None = None
    answer: Any


class ApproveStepInput(Control):
    step_id: str
    version: int | None = Field(default=None, ge=1)
    comment: str | None = None


class RejectStepInput(Control):
    step_id: str
    version: int | None = Field(default=None, ge=1)
    reason: str = Field(min_length=1)


class RetryStepInput(Control):
    step_id: str


class SkipStepInput(Control):
    step_id: str
    reason: str = Field(min_length=1)


class CancelInput(Control):
    reason: str = Field(min_length=1)


class AcceptReplanInput(Control):
    """Accept the planner's proposal (``on_error: replan``) that waits for a person."""

    step_id: str | None = Field(default=None, description="the failed step (default: the one)")
    comment: str | None = None


class RejectReplanInput(Control):
    """Reject it: the failure stands and the step waits as with ``on_error: ask``."""

    step_id: str | None = None
    reason: str = Field(min_length=1)


CONTROL_MODELS: dict[str, type[Control]] = {
    "approve": ApproveInput,
    "reject": RejectInput,
    "pause": PauseInput,
    "resume": ResumeInput,
    "apply_correction": ApplyCorrectionInput,
    "answer_clarification": AnswerClarificationInput,
    "approve_step": ApproveStepInput,
    "reject_step": RejectStepInput,
    "retry_step": RetryStepInput,
    "skip_step": SkipStepInput,
    "cancel": CancelInput,
    "accept_replan": AcceptReplanInput,
    "reject_replan": RejectReplanInput,
}


class ControlResult(BaseModel):
    """What an accepted update returns."""

    accepted: bool = True
    control: str
    status: str
    version: int
    detail: str = ""

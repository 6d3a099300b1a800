"""The replanner's contract (``on_error: replan``): a :class:`ReplanRequest` goes in (the
``propose_replan`` activity), a :class:`ReplanAnswer` comes out.

The answer is the model's word and is not trusted: the workflow checks it with
:func:`plans.replan.review` (it cannot touch completed steps, must validate like any
plan, stays within the step limits) before anything changes.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, Field

from plans.models import Plan, ToolSpec

PROPOSE_REPLAN = "propose_replan"
PROPOSE_REPLAN_TOOL = "propose_replan"  # the forced tool the model answers with


class ReplanRequest(BaseModel):
    plan: Plan
    step_id: str = Field(description="the step that failed for good")
    error: str
    attempts: int = 0
    round: int = Field(ge=1, description="this proposal's round (max_replans bounds them)")
    # every other step: {status, output (a bounded preview), error}
    steps: dict[str, dict[str, Any]] = Field(default_factory=dict)
    replaceable: list[str] = Field(
        default_factory=list,
        description="the failed step and its not-yet-run dependents: what a replacement "
        "may take the place of",
    )
    max_new_steps: int = 10
    tools: dict[str, ToolSpec] = Field(default_factory=dict)


class ReplanAnswer(BaseModel):
    """What the model proposed, as it said it (checked by the workflow), and how."""

    proposal: dict[str, Any] = Field(default_factory=dict)
    model: str = ""
    offline: bool = False
    lessons_applied: list[str] = Field(default_factory=list)

"""The adaptive approval activity's contract: the plan and the catalog entries it uses
go in, an :class:`plans.policy.ApprovalDecision` comes out."""

from __future__ import annotations

from datetime import datetime

from pydantic import BaseModel, Field

from plans.models import Plan, ToolSpec

ASSESS_APPROVAL = "assess_approval"


class AssessApprovalInput(BaseModel):
    plan: Plan
    tools: dict[str, ToolSpec] = Field(
        default_factory=dict, description="the catalog entries the plan's steps use"
    )
    now: datetime = Field(description="workflow time: recency weights count from it")
    submitted_by: str | None = Field(
        default=None,
        description="the API key owner that submitted the plan (PlanInput.submitted_by; None "
        "with API keys off): approvals by it do not count as a person's, and an agent with "
        "too few runs of its own starts from its record",
    )

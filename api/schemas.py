"""Request and response models of the REST routes (the query results themselves are the
models of ``plans.views`` and ``plans.engine``)."""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from plans.models import Plan, PlanStatus


class PlanCreated(BaseModel):
    plan_id: str
    workflow_id: str = Field(description="the workflow that will run it: plan-<plan_id>")
    status: PlanStatus = Field(description="`draft` until it is executed")
    version: int
    digest: str = Field(description="digest of the document; `approve` may quote it")
    created: bool = Field(description="false: the very same document was already stored")
    plan: Plan = Field(description="the validated document, with its id")


class PlanSummary(BaseModel):
    plan_id: str
    workflow_id: str
    executed: bool = Field(description="false for a draft that was not executed yet")
    status: PlanStatus | None = Field(
        description="the PlanStatus search attribute (null until the worker set it)"
    )
    waiting_for: str | None = Field(
        default=None, description="what a person must do (the WaitingFor search attribute)"
    )
    temporal_status: str | None = Field(
        default=None, description="Temporal's status of the workflow: running, completed, ..."
    )
    run_id: str | None = None
    created_at: datetime | None = None
    closed_at: datetime | None = None


class PlanList(BaseModel):
    plans: list[PlanSummary]
    count: int
    source: Literal["store"] = Field(
        default="store",
        description="plans and drafts come from the store (the database), which every "
        "change of a running plan is written to",
    )


class PlanDetail(BaseModel):
    plan_id: str
    workflow_id: str
    executed: bool
    status: PlanStatus
    version: int = Field(description="plan version: 1, plus one per accepted correction")
    digest: str
    plan: Plan = Field(description="the current document, corrections applied")


class ExecuteResponse(BaseModel):
    plan_id: str
    workflow_id: str
    run_id: str | None = None
    started: bool = Field(description="false: the plan was already running (nothing new started)")
    detail: str
    status_url: str
    events_url: str


class ResumeResponse(BaseModel):
    plan_id: str
    workflow_id: str
    run_id: str | None = None
    carried_steps: int = Field(description="completed steps carried over; they do not run again")
    detail: str


class LogLine(BaseModel):
    at: datetime
    level: Literal["debug", "info", "warning", "error"]
    message: str
    step_id: str | None = None


class GenerateRequest(BaseModel):
    """The LLM planner's input (not implemented yet: the route answers 501)."""

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [
                {
                    "task": "Release version 2.4 to production after staging checks",
                    "context": {"service": "shop-api"},
                    "constraints": ["production needs a person's approval"],
                }
            ]
        },
    )

    task: str = Field(min_length=1, max_length=20_000)
    context: dict[str, Any] | str | None = None
    constraints: list[str] | None = None


class Health(BaseModel):
    status: Literal["ok", "unavailable"]
    temporal: str | None = Field(default=None, description="reachable, or why not")
    database: str | None = Field(default=None, description="reachable, or why not")

"""Request and response models of the REST routes (the query results themselves are the
models of ``plans.views`` and ``plans.run_state``)."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal

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
    """The LLM planner's input: a task, its context and constraints."""

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [
                {
                    "task": "Fetch the release notes and summarise them",
                    "context": "the notes are at https://example.com/release-notes.md",
                    "constraints": ["production needs a person's approval"],
                    "save": True,
                }
            ]
        },
    )

    task: str = Field(
        min_length=1, max_length=20_000, pattern=r"\S", description="what the plan must do"
    )
    context: dict[str, Any] | str | None = Field(
        default=None, description="what the planner should know (text or an object)"
    )
    constraints: list[Annotated[str, Field(min_length=1, max_length=2000, pattern=r"\S")]] = Field(
        default_factory=list,
        max_length=50,
        description="what the plan must respect; the answer says how each is met",
    )
    agent_id: str | None = Field(
        default=None, max_length=200, description="who proposes the plan (trust keys on it)"
    )
    inputs: dict[str, Any] = Field(
        default_factory=dict, description="the plan's inputs; steps read {{ inputs.<key> }}"
    )
    max_repair_rounds: int = Field(
        default=3, ge=0, le=5, description="how many times problems go back to the model"
    )
    model: str | None = Field(
        default=None,
        min_length=1,
        max_length=200,
        description="a configured model (default: the planning model)",
    )
    save: bool = Field(
        default=False,
        description="also create the plan as a draft, as POST /api/plans does; "
        "then POST /api/plans/{plan_id}/execute runs it",
    )


class ConstraintAnswer(BaseModel):
    constraint: str
    how: str = Field(description="how the plan meets it (or why it cannot)")


class LessonUsed(BaseModel):
    id: int | str
    summary: str


class GenerateResponse(BaseModel):
    plan: dict[str, Any] = Field(
        description="the plan document, fully validated (docs/plan-document.md); with its "
        "id when saved"
    )
    plan_id: str | None = Field(
        default=None, description="the draft's id when `save` was true, else null"
    )
    constraints: list[ConstraintAnswer] = Field(
        description="every given constraint and how the plan meets it"
    )
    rounds: int = Field(description="model calls: 1 + repair rounds")
    repairs: list[list[str]] = Field(
        description="the problems sent back to the model, one list per repair round"
    )
    model: str = Field(description="the model that answered (`offline:<name>` offline)")
    offline: bool = Field(
        description="true: made by the offline stand-in (no ANTHROPIC_API_KEY nor "
        "PLANSMITH_OLLAMA_URL), not a model"
    )
    lessons_applied: list[LessonUsed] = Field(
        description="lessons from earlier rejections and corrections that were in the prompt"
    )
    input_tokens: int = 0
    output_tokens: int = 0


class Health(BaseModel):
    status: Literal["ok", "unavailable"]
    temporal: str | None = Field(
        default=None,
        description="reachable or unreachable; why not only for a valid API key (the "
        "reason may name internal addresses; it is always in the API's log)",
    )
    database: str | None = Field(
        default=None, description="reachable or unreachable; why not only for a valid API key"
    )


def examples_of(model: type[BaseModel]) -> dict[str, Any]:
    """The model's examples as OpenAPI ``examples`` of a request body."""
    extra = model.model_config.get("json_schema_extra")
    found = extra.get("examples") if isinstance(extra, dict) else None
    values = found if isinstance(found, list) and found else [{}]
    return {f"example{i + 1}": {"value": v} for i, v in enumerate(values)}

"""The planner's contract: a :class:`PlanRequest` goes in (the ``generate_plan``
activity, the ``GeneratePlan`` workflow, ``POST /api/plans/generate``), a
:class:`GeneratedPlan` comes out, or :class:`PlanningFailed` with the problems left."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator

from plans.validation import Problem

GENERATE_PLAN = "generate_plan"
MAX_REPAIR_ROUNDS = 5


class Usage(BaseModel):
    input_tokens: int = 0
    output_tokens: int = 0
    cache_read_input_tokens: int = 0
    cache_creation_input_tokens: int = 0

    def __add__(self, other: Usage) -> Usage:
        return Usage(**{k: getattr(self, k) + getattr(other, k) for k in Usage.model_fields})


class PlanRequest(BaseModel):
    """What the planner is asked for."""

    model_config = ConfigDict(extra="forbid")

    task: str = Field(min_length=1, max_length=20_000, description="what the plan must do")
    context: str | dict[str, Any] | None = Field(
        default=None, description="what the planner should know (text or an object)"
    )
    constraints: list[str] = Field(
        default_factory=list, description="what the plan must respect; each is answered"
    )
    agent_id: str | None = Field(default=None, description="who proposes the plan")
    inputs: dict[str, Any] = Field(
        default_factory=dict, description="the plan's inputs (steps read {{ inputs.x }})"
    )
    max_repair_rounds: int = Field(
        default=3,
        ge=0,
        le=MAX_REPAIR_ROUNDS,
        description="how many times problems are sent back to the model",
    )
    model: str | None = Field(
        default=None, description="a configured model name (default: the planning model)"
    )

    @field_validator("task")
    @classmethod
    def _task_has_text(cls, v: str) -> str:
        if not v.strip():
            raise ValueError("the task must not be blank")
        return v.strip()

    @field_validator("constraints")
    @classmethod
    def _constraints_have_text(cls, v: list[str]) -> list[str]:
        if any(not c.strip() for c in v):
            raise ValueError("a constraint must not be blank")
        return [c.strip() for c in v]


class ConstraintMet(BaseModel):
    constraint: str
    how: str = Field(description="how the plan meets it (or why it cannot)")


class LessonApplied(BaseModel):
    id: int | str
    summary: str


class GeneratedPlan(BaseModel):
    """A plan that passed full validation, and how it was made."""

    plan: dict[str, Any] = Field(description="the validated plan document (no id yet)")
    constraints: list[ConstraintMet] = Field(
        default_factory=list, description="every given constraint and how the plan meets it"
    )
    rounds: int = Field(description="model calls made: 1 + repair rounds")
    repairs: list[list[str]] = Field(
        default_factory=list,
        description="the problems sent back to the model, one list per repair round",
    )
    model: str = Field(description="the model that answered (offline:<name> offline)")
    usage: Usage = Field(default_factory=Usage, description="tokens over every round")
    latency_ms: float = 0.0
    offline: bool = Field(description="true: made by the offline stand-in, not a model")
    lessons_applied: list[LessonApplied] = Field(
        default_factory=list, description="the lessons that went into the prompt"
    )
    generation_id: str | None = Field(
        default=None, description="the planner run's record in the store (plan_generations)"
    )


class PlanningFailed(Exception):
    """No valid plan within the repair rounds; ``problems`` are those of the last answer."""

    def __init__(
        self,
        problems: Sequence[Problem],
        rounds: int,
        repairs: Sequence[Sequence[str]] = (),
        model: str = "",
    ):
        self.problems = list(problems)
        self.rounds = rounds
        self.repairs = [list(r) for r in repairs]
        self.model = model
        lines = "\n".join(f"  - {p}" for p in self.problems)
        super().__init__(
            f"the planner could not make a valid plan in {rounds} round(s); "
            f"{len(self.problems)} problem(s) remain:\n{lines}"
        )

    def details(self) -> dict[str, Any]:
        return {
            "problems": [p.model_dump() for p in self.problems],
            "rounds": self.rounds,
            "repairs": self.repairs,
            "model": self.model,
        }

    @classmethod
    def from_details(cls, data: Mapping[str, Any]) -> PlanningFailed:
        problems = [
            Problem.model_validate(p) for p in data.get("problems") or [] if isinstance(p, dict)
        ]
        return cls(
            problems,
            int(data.get("rounds") or 0),
            data.get("repairs") or [],
            str(data.get("model") or ""),
        )

"""The step activity's contract: what the workflow hands ``execute_step`` and what
comes back (one object in, one object out, so fields can be added later)."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, Field

from plans.models import StepKind

EXECUTE_STEP = "execute_step"


class StepTask(BaseModel):
    plan_id: str
    step_id: str
    kind: StepKind
    tool: str | None = None
    params: dict[str, Any] = Field(default_factory=dict)
    idempotency_key: str
    step_version: int = 1
    context: dict[str, Any] = Field(default_factory=dict)
    # Where the plan's own params reference a secret (``{{ secrets.NAME }}``): the paths
    # into ``params`` the activity resolves. A reference anywhere else (inside a value a
    # step or an input produced, or in a tool call a model asked for) stays text.
    secret_params: list[list[str | int]] = Field(default_factory=list)


class StepOutcome(BaseModel):
    output: Any = None
    attempt: int = 1
    # An llm step whose model asked for tools: the calls the workflow runs next, and the
    # conversation (and model usage) to continue from once their results are in.
    calls: list[dict[str, Any]] = Field(default_factory=list)
    conversation: list[dict[str, Any]] = Field(default_factory=list)
    usage: dict[str, Any] = Field(default_factory=dict)

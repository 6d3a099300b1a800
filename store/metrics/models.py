"""The answers of the planning-metrics queries, which the API returns as they are.

A plan's quality (:class:`plans.quality.PlanQuality`) lives with its formula.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any, Literal

from pydantic import BaseModel, Field

from plans.policy import TrustScore

Dimension = Literal["agent", "tool", "step_kind"]
Bucket = Literal["hour", "day", "week"]
BUCKET_SIZE = {"hour": timedelta(hours=1), "day": timedelta(days=1), "week": timedelta(weeks=1)}


class VersionDiff(BaseModel):
    version: int
    by: str
    at: datetime
    step_id: str | None = None
    change: str = ""
    fields: list[str] = Field(default_factory=list, description="the fields that changed")
    diff: dict[str, Any] = Field(default_factory=dict, description="step -> field -> {old, new}")
    run_id: str | None = None


class RunOutcomes(BaseModel):
    finished: int = 0
    completed: int = 0
    partial: int = 0
    failed: int = 0
    cancelled: int = 0
    rejected: int = 0


class StepOutcomes(BaseModel):
    completed: int = 0
    failed: int = 0
    skipped: int = 0
    cancelled: int = 0


class SuccessRow(BaseModel):
    key: str | None = Field(description="the agent, tool or step kind (null: no agent)")
    runs: RunOutcomes | None = Field(default=None, description="by agent only")
    steps: StepOutcomes
    success_rate: float | None = Field(
        description="agent: completed runs / finished runs; tool, step kind: completed "
        "steps / (completed + failed) steps"
    )
    step_success_rate: float | None = None
    attempts: int = 0
    mean_duration_s: float | None = Field(default=None, description="of completed steps")


class TrendPoint(BaseModel):
    start: datetime
    finished: int = Field(description="runs that finished in the bucket")
    completed: int
    success_rate: float | None
    plans_scored: int = Field(description="plans whose newest run finished in the bucket")
    mean_quality: float | None
    planner_runs: int
    mean_planner_rounds: float | None


class Trends(BaseModel):
    bucket: Bucket
    days: int
    start: datetime
    end: datetime
    points: list[TrendPoint]


class WaitItem(BaseModel):
    kind: str
    step_id: str | None = None
    question: str | None = None
    since: datetime | None = None
    who: str = ""


class WaitingPlan(BaseModel):
    plan_id: str
    title: str = ""
    agent_id: str | None = None
    status: str
    run_id: str
    version: int
    kind: str = Field(description="what the plan waits for first")
    since: datetime | None = Field(description="the oldest wait")
    waiting_s: float | None
    waiting: list[WaitItem]


class PlannerStats(BaseModel):
    runs: int
    ok: int
    failed: int
    offline: int
    offline_share: float | None
    rounds: int = Field(description="rounds over every run")
    mean_rounds: float | None
    repaired: int = Field(description="runs that needed more than one round")
    problems: int = Field(description="validation problems fed back, over every run")
    mean_problems: float | None
    lessons_applied: int
    plans: int = Field(description="runs that produced a plan id")
    input_tokens: int
    output_tokens: int
    mean_latency_ms: float | None


class AgentRow(BaseModel):
    agent_id: str | None
    runs: RunOutcomes
    success_rate: float | None
    step_success_rate: float | None
    plans_scored: int
    mean_quality: float | None
    trust: TrustScore | None = Field(
        description="the agent's trust score, as GET /api/agents/{agent_id}/trust answers it "
        "(null: no agent, or it could not be computed)"
    )


class StoreCounts(BaseModel):
    """What the Prometheus collector exposes, read in one go."""

    plans_by_status: dict[str, int]
    waits_by_kind: dict[str, int]
    oldest_wait_s_by_kind: dict[str, float]
    plans_waiting: int
    runs_by_agent_status: list[tuple[str | None, str, int]]
    steps_by_kind_tool_status: list[tuple[str, str | None, str, int]]
    planner: PlannerStats
    llm_step_input_tokens: int
    llm_step_output_tokens: int

"""What a caller needs to start, find and read back a ``PlanWorkflow``: its Temporal name,
its input (:class:`PlanInput`) and result (:class:`PlanResult`), and the search attributes
it keeps up to date so a person can find waiting plans."""

from __future__ import annotations

from datetime import timedelta

from pydantic import BaseModel, Field
from temporalio import workflow
from temporalio.common import SearchAttributeKey

with workflow.unsafe.imports_passed_through():
    from contracts.snapshots import SnapshotCursor
    from plans.limits import ConcurrencyLimits
    from plans.models import Plan, PlanStatus, ToolSpec
    from plans.run_state import Approval, PlanRun, StepRun

WORKFLOW_NAME = "PlanWorkflow"
PLAN_STATUS = SearchAttributeKey.for_keyword("PlanStatus")
WAITING_FOR = SearchAttributeKey.for_keyword("WaitingFor")
SEARCH_ATTRIBUTES = (PLAN_STATUS, WAITING_FOR)
HEARTBEAT_TIMEOUT = timedelta(seconds=20)


class PlanInput(BaseModel):
    plan: Plan | None = Field(default=None, description="the plan to run (not needed with `run`)")
    run: PlanRun | None = Field(default=None, description="state carried by continue-as-new")
    carried_steps: dict[str, StepRun] | None = Field(
        default=None,
        description="steps of an earlier run (resume from failure): completed ones are not run "
        "again, the others run as a new version of themselves",
    )
    tools: dict[str, ToolSpec] | None = Field(
        default=None,
        description="the tool catalog the plan was validated against; decisions that depend on "
        "a tool (risk, idempotency, schemas for corrections) read this snapshot, so a worker "
        "deployed with changed tools does not change a running plan",
    )
    heartbeat_timeout_s: float = HEARTBEAT_TIMEOUT.total_seconds()
    search_attributes: bool = Field(
        default=True,
        description="upsert PlanStatus/WaitingFor (they must be registered on the server; "
        "the worker registers them at start)",
    )
    resumed_by: str | None = Field(default=None, description="who resumed this plan from failure")
    approval: Approval | None = Field(
        default=None,
        description="a person's approval given before the run started (a draft's), naming the "
        "version and digest it saw: the run counts it only if the plan is that document",
    )
    submitted_by: str | None = Field(
        default=None,
        description="the API key owner that created or started the plan (None with API keys "
        "off); set by the API from the request's key, never from the plan document. The "
        "approval policy reads it (approvals by the submitter do not earn trust; an agent "
        "with too few runs starts from its submitter's record) and the store keeps it",
    )
    feedback: list[str] = Field(
        default_factory=list,
        description="feedback people gave an earlier run (resume from failure)",
    )
    persist: bool = Field(
        default=True, description="record every change in the store (record_snapshot activity)"
    )
    snapshot_interval_s: float = Field(
        default=1.0,
        ge=0,
        description="at most one store snapshot per interval while the plan runs (changes in "
        "between are batched); the last one is always sent before the run ends",
    )
    snapshot_cursor: SnapshotCursor | None = Field(
        default=None, description="what was already sent to the store (carried by continue-as-new)"
    )
    task_queues: dict[str, str] = Field(
        default_factory=dict,
        description="logical task queue of a tool (e.g. 'sandbox') -> the queue its workers poll",
    )
    plan_version: int | None = Field(
        default=None,
        ge=1,
        description="version of `plan` (a resumed plan keeps its corrections' version)",
    )
    max_history_events: int | None = Field(
        default=None,
        ge=50,
        description="continue as new past this many history events (default: when Temporal suggests it)",
    )
    limits: ConcurrencyLimits | None = Field(
        default=None,
        description="concurrency limits of the plan's task queue (PLANSMITH_MAX_CONCURRENT_PLANS, "
        "..._PER_AGENT, read by the starter): the plan waits `queued` for a slot before its "
        "first step; None = no limit, and nothing is asked",
    )


class PlanResult(BaseModel):
    plan_id: str
    status: PlanStatus
    outcome: str | None
    version: int
    steps: dict[str, str]
    plan: Plan | None = Field(default=None, description="the plan as it ended, after corrections")
    feedback: list[str] = Field(default_factory=list)
    final_steps: dict[str, StepRun] = Field(
        default_factory=dict,
        description="every step as it ended; resume-from-failure carries the completed ones over",
    )

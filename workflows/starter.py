"""Client-side ways to start a plan and to resume one from failure.

The plan client (:class:`workflows.client.PlanClient`, which the CLI and the API use)
goes through these functions, so a plan is started the same way everywhere: workflow id
``plan-<id>``, the pydantic converter, the tool catalog snapshot.
"""

from __future__ import annotations

from typing import Any, NamedTuple

from temporalio.client import Client, WorkflowExecutionStatus, WorkflowHandle
from temporalio.common import WorkflowIDConflictPolicy, WorkflowIDReusePolicy
from temporalio.service import RPCError, RPCStatusCode

from config import Settings
from contracts.tools import catalog
from plans.limits import ConcurrencyLimits, limits_of
from plans.models import Plan, PlanStatus, StepStatus, workflow_id_for
from plans.run_state import PlanRun, StepRun
from workflows.errors import ResumeRefused
from workflows.plan_input import WORKFLOW_NAME, PlanInput, PlanResult


def plan_limits(settings: Settings) -> ConcurrencyLimits | None:
    """The concurrency limits a plan started with ``settings`` runs under (None: none,
    and the plan asks no limiter for a slot)."""
    t = settings.temporal
    return limits_of(t.max_concurrent_plans, t.max_concurrent_plans_per_agent, t.limiter_check_s)


RESUMABLE = (PlanStatus.FAILED, PlanStatus.PARTIAL, PlanStatus.CANCELLED)


async def start_plan(
    client: Client,
    plan: Plan,
    task_queue: str,
    heartbeat_timeout_s: float | None = None,
    **extra: Any,
) -> WorkflowHandle[Any, PlanResult]:
    """Start ``plan`` once: starting the same plan id again while it runs returns its handle.

    A plan id whose workflow already closed is refused by Temporal
    (``WorkflowAlreadyStartedError``); resume it with :func:`resume_from_failure`.
    """
    inp = PlanInput(plan=plan, tools=catalog(), **extra)
    if heartbeat_timeout_s:
        inp.heartbeat_timeout_s = heartbeat_timeout_s
    # by name, as the client reaches the queries (workflows.client): starting a plan
    # does not load the workflow's module
    return await client.start_workflow(
        WORKFLOW_NAME,
        inp,
        result_type=PlanResult,
        id=plan.workflow_id,
        task_queue=task_queue,
        id_conflict_policy=WorkflowIDConflictPolicy.USE_EXISTING,
        id_reuse_policy=WorkflowIDReusePolicy.REJECT_DUPLICATE,
        static_summary=plan.title or plan.id,
    )


class LastRun(NamedTuple):
    plan: Plan
    version: int
    status: PlanStatus
    steps: dict[str, StepRun]
    feedback: list[str]


async def last_run(client: Client, plan_id: str) -> LastRun:
    """The plan (and its version), final status and steps of the latest run of ``plan_id``."""
    handle = client.get_workflow_handle(workflow_id_for(plan_id), result_type=PlanResult)
    try:
        desc = await handle.describe()
    except RPCError as e:
        if e.status == RPCStatusCode.NOT_FOUND:
            raise ResumeRefused(f"no plan {plan_id!r}") from None
        raise
    if desc.status == WorkflowExecutionStatus.RUNNING:
        raise ResumeRefused(f"plan {plan_id} is still running; retry_step works on a live plan")
    if desc.status == WorkflowExecutionStatus.COMPLETED:
        result = await handle.result()
        if result.plan is None:
            raise ResumeRefused(f"plan {plan_id}'s last run left no plan document to resume")
        return LastRun(
            result.plan, result.version, result.status, result.final_steps, result.feedback
        )
    # Cancelled, terminated, failed or timed out in Temporal's terms: the workflow's own
    # state (from the query, which needs a worker) says what was done.
    try:
        state: PlanRun = await handle.query("run_state", result_type=PlanRun)
    except RPCError as e:
        raise ResumeRefused(
            f"plan {plan_id} ended {desc.status.name.lower() if desc.status else 'unknown'} in Temporal and its state cannot be read: {e.message}"
        ) from None
    status = state.final_status or PlanStatus.CANCELLED
    return LastRun(state.plan, state.version, status, state.steps, state.feedback)


async def resume_from_failure(
    client: Client, plan_id: str, by: str, task_queue: str, **extra: Any
) -> tuple[WorkflowHandle[Any, PlanResult], int]:
    """Start a new run of the same workflow id carrying the completed steps.

    Completed steps are never run again; failed, skipped, cancelled and pending ones run.
    The new run goes through plan approval again as its options say: resuming never
    approves a plan by itself. Returns the handle and how many steps were carried.
    """
    plan, version, status, steps, feedback = await last_run(client, plan_id)
    if status not in RESUMABLE:
        allowed = ", ".join(s.value for s in RESUMABLE)
        raise ResumeRefused(
            f"plan {plan_id} ended {status.value}; only {allowed} plans can be resumed"
        )
    inp = PlanInput(
        plan=plan,
        plan_version=version,
        tools=catalog(),
        carried_steps=steps,
        feedback=feedback,
        resumed_by=by,
        **extra,
    )
    handle = await client.start_workflow(
        WORKFLOW_NAME,
        inp,
        result_type=PlanResult,
        id=plan.workflow_id,
        task_queue=task_queue,
        id_reuse_policy=WorkflowIDReusePolicy.ALLOW_DUPLICATE,
        id_conflict_policy=WorkflowIDConflictPolicy.FAIL,
        static_summary=f"{plan.title or plan.id} (resumed by {by})",
    )
    return handle, sum(1 for s in steps.values() if s.status == StepStatus.COMPLETED)

"""``GeneratePlan``: the LLM planner as a small workflow, and the client side that runs it.

The workflow runs the ``generate_plan`` activity with a retry policy: a model that is
rate-limited, overloaded or unreachable is tried again; a plan that stays invalid
(``PlanningFailed``), a request the model API refuses, or a model that is not configured
is not. It ends with the :class:`~activities.llm.planner.GeneratedPlan`, or fails with an
``ApplicationError`` of the activity's type and details.

:func:`run_planner` starts it, waits, and turns a failure back into
:class:`PlanningFailed`, :class:`NoModelFits`, :class:`LLMError` or
:class:`~workflows.errors.PlannerUnavailable`; the API and the CLI call it through
:meth:`workflows.client.PlanClient.generate`.
"""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from datetime import timedelta
from typing import Any

from temporalio import workflow
from temporalio.common import RetryPolicy
from temporalio.exceptions import ActivityError, ApplicationError

with workflow.unsafe.imports_passed_through():
    from contracts.planning import GeneratedPlan, PlanningFailed, PlanRequest
    from workflows.errors import PlannerUnavailable

GENERATE_PLAN_WORKFLOW = "GeneratePlan"
GENERATE_PLAN_ACTIVITY = "generate_plan"
# One attempt may take several model calls (up to 1 + 5 repair rounds).
ATTEMPT_TIMEOUT = timedelta(minutes=15)
HEARTBEAT_TIMEOUT = timedelta(seconds=30)
PLANNER_TIMEOUT_S = 3600.0  # the whole workflow, retries included
NON_RETRYABLE = [
    "PlanningFailed",
    "NoModelFits",
    "LLMBadRequest",
    "LLMAuthError",
    "LLMNotFound",
    "LLMRequestTooLarge",
    "LLMClientError",
]
RETRY_POLICY = RetryPolicy(
    initial_interval=timedelta(seconds=1),
    backoff_coefficient=2.0,
    maximum_interval=timedelta(seconds=30),
    maximum_attempts=4,
    non_retryable_error_types=NON_RETRYABLE,
)


@workflow.defn(name=GENERATE_PLAN_WORKFLOW)
class GeneratePlanWorkflow:
    """Plan one request; the result is the validated plan and how it was made."""

    @workflow.run
    async def run(self, req: PlanRequest) -> GeneratedPlan:
        try:
            result: GeneratedPlan = await workflow.execute_activity(
                GENERATE_PLAN_ACTIVITY,
                req,
                result_type=GeneratedPlan,
                start_to_close_timeout=ATTEMPT_TIMEOUT,
                heartbeat_timeout=HEARTBEAT_TIMEOUT,
                retry_policy=RETRY_POLICY,
            )
            return result
        except ActivityError as e:
            cause = e.cause
            if isinstance(cause, ApplicationError):
                raise ApplicationError(
                    cause.message,
                    *cause.details,
                    type=cause.type,
                    non_retryable=True,
                ) from None
            kind = type(cause).__name__ if cause is not None else "ActivityError"
            raise ApplicationError(
                f"the planner did not finish: {cause or e}",
                {"retryable": True},
                type=kind,
                non_retryable=True,
            ) from None


# --- client side -------------------------------------------------------------------------


def _details(err: ApplicationError) -> dict[str, Any]:
    first = err.details[0] if err.details else None
    return first if isinstance(first, dict) else {}


def planner_error(err: BaseException) -> Exception:
    """The workflow's failure as the exception the caller knows."""
    from contracts.errors import LLMError, NoModelFits

    cause: BaseException | None = err
    while cause is not None and not isinstance(cause, ApplicationError):
        cause = getattr(cause, "cause", None) or cause.__cause__
    if cause is None:
        return PlannerUnavailable(f"the planner did not finish: {err}")
    details = _details(cause)
    if cause.type == "PlanningFailed":
        return PlanningFailed.from_details(details)
    if cause.type == "NoModelFits":
        return NoModelFits(cause.message)
    if (cause.type or "").startswith("LLM"):
        return LLMError(
            cause.message,
            retryable=bool(details.get("retryable", not cause.non_retryable)),
            kind=cause.type or "LLMError",
            status=details.get("status"),
        )
    return PlannerUnavailable(f"the planner did not finish: {cause.type}: {cause.message}")


async def run_planner(
    client: Any,
    req: PlanRequest,
    task_queue: str,
    *,
    workflow_id: str | None = None,
    no_worker_after_s: float = 10.0,
    timeout_s: float = PLANNER_TIMEOUT_S,
    rpc_timeout: timedelta | None = None,
) -> GeneratedPlan:
    """Run the GeneratePlan workflow and wait for its plan.

    When no worker has picked the workflow up after ``no_worker_after_s`` it is
    terminated and :class:`PlannerUnavailable` says so, rather than waiting forever.

    Raises:
        PlanningFailed, NoModelFits, LLMError, PlannerUnavailable
    """
    from temporalio.client import WorkflowFailureError

    wid = workflow_id or f"generate-{uuid.uuid4().hex[:12]}"
    summary = " ".join(req.task.split())
    handle = await client.start_workflow(
        GeneratePlanWorkflow.run,
        req,
        id=wid,
        task_queue=task_queue,
        execution_timeout=timedelta(seconds=timeout_s),
        static_summary=f"plan: {summary[:150]}",
        rpc_timeout=rpc_timeout,
    )
    result = asyncio.ensure_future(handle.result())
    try:
        done, _ = await asyncio.wait({result}, timeout=no_worker_after_s)
        if not done:
            desc = await handle.describe(rpc_timeout=rpc_timeout)
            if desc.raw_description.workflow_execution_info.history_length <= 2:
                with contextlib.suppress(Exception):
                    await handle.terminate("no worker picked up the planner")
                raise PlannerUnavailable(
                    f"no worker picked up the planner within {no_worker_after_s:g}s: is a "
                    f"worker polling task queue {task_queue!r} (`plansmith worker`)?"
                )
        plan: GeneratedPlan = await result
        return plan
    except WorkflowFailureError as e:
        raise planner_error(e) from None
    finally:
        if not result.done():
            result.cancel()
            with contextlib.suppress(BaseException):
                await result

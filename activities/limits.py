"""The plan limiter's two activities (:mod:`workflows.limiter_workflow`).

* ``request_plan_slot``: a plan's request reaches its queue's limiter by
  signal-with-start, so the first plan that needs a limiter starts it and every other
  one finds it (a workflow cannot signal-with-start by itself).
* ``check_plan_slots``: which holders of a slot no longer run (terminated, timed out,
  resumed from failure as a new chain): a plan that ends normally, fails or is cancelled
  releases its slot itself; one terminated in Temporal cannot, and the limiter takes its
  slot back after asking here.

Both use the worker's own Temporal client (``activity.client()``).
"""

from __future__ import annotations

from temporalio import activity
from temporalio.client import WorkflowExecutionStatus
from temporalio.common import WorkflowIDReusePolicy
from temporalio.service import RPCError, RPCStatusCode

from contracts.limits import (
    ACQUIRE_SIGNAL,
    CHECK_PLAN_SLOTS,
    LIMITER_WORKFLOW,
    REQUEST_PLAN_SLOT,
    HolderCheck,
    LimiterInput,
    SlotAsk,
    limiter_workflow_id,
)


class LimiterActivities:
    @activity.defn(name=REQUEST_PLAN_SLOT)
    async def request_plan_slot(self, ask: SlotAsk) -> None:
        await activity.client().start_workflow(
            LIMITER_WORKFLOW,
            LimiterInput(),
            id=limiter_workflow_id(ask.task_queue),
            task_queue=ask.task_queue,
            start_signal=ACQUIRE_SIGNAL,
            start_signal_args=[ask.request],
            id_reuse_policy=WorkflowIDReusePolicy.ALLOW_DUPLICATE,
            static_summary=f"concurrency limits of task queue {ask.task_queue}",
        )

    @activity.defn(name=CHECK_PLAN_SLOTS)
    async def check_plan_slots(self, check: HolderCheck) -> list[str]:
        """The keys of the holders whose run chain no longer runs."""
        client = activity.client()
        gone: list[str] = []
        for h in check.holders:
            try:
                desc = await client.get_workflow_handle(h.workflow_id).describe()
            except RPCError as e:
                if e.status == RPCStatusCode.NOT_FOUND:
                    gone.append(h.key)
                    continue
                raise
            first = desc.raw_description.workflow_execution_info.first_run_id
            if desc.status != WorkflowExecutionStatus.RUNNING or (
                first and first != h.first_run_id
            ):
                gone.append(h.key)
        return gone

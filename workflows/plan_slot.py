"""A plan's side of the concurrency limits: ask the queue's limiter for a slot before
the first step, wait ``queued`` for the grant, give the slot back at the end.

Only when the plan's input carries limits (``PlanInput.limits``, set by the starter from
``PLANSMITH_MAX_CONCURRENT_PLANS`` / ``..._PER_AGENT``): without them nothing here runs,
no command, no marker, no event. With them, behind the ``concurrency-limits`` patch:
one activity (``request_plan_slot``: signal-with-start of the limiter), one signal
received (``plan_slot_granted``), and one signal sent when the plan ends (``release``,
alongside the last store snapshot).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from datetime import timedelta

from temporalio import workflow
from temporalio.common import RetryPolicy
from temporalio.exceptions import FailureError

from workflows.plan_input import PlanInput

with workflow.unsafe.imports_passed_through():
    from contracts.limits import (
        RELEASE_SIGNAL,
        REQUEST_PLAN_SLOT,
        SlotAsk,
        limiter_workflow_id,
    )
    from plans import run_state
    from plans.limits import SlotGrant, SlotRelease, SlotRequest, key_of
    from plans.run_state import PlanRun

CONCURRENCY_LIMITS_PATCH = "concurrency-limits"


class PlanSlot:
    """The slot of one plan run chain (its key survives continue-as-new)."""

    def __init__(self, run: PlanRun, inp: PlanInput, changed: Callable[[], None]) -> None:
        self._run = run
        self._input = inp
        self._changed = changed
        self._granted: str | None = None
        self._releasing: asyncio.Task[None] | None = None

    @property
    def key(self) -> str:
        info = workflow.info()
        return key_of(info.workflow_id, info.first_execution_run_id)

    def on_grant(self, grant: SlotGrant) -> None:
        """The ``plan_slot_granted`` signal (a grant for another chain is ignored)."""
        if grant.key == self.key:
            self._granted = grant.key
            self._changed()

    def limited(self) -> bool:
        limits = self._input.limits
        return bool(limits and limits.active) and workflow.patched(CONCURRENCY_LIMITS_PATCH)

    async def acquire(self, publish: Callable[[], None]) -> None:
        """Wait ``queued`` until the limiter grants a slot (or the plan ends meanwhile:
        a cancel or a reject while queued)."""
        run, limits = self._run, self._input.limits
        if run.slot is not None or limits is None:
            return  # carried over continue-as-new
        info = workflow.info()
        key = self.key
        if run.queued_at is None:
            run.queued_at = workflow.now()
        request = SlotRequest(
            key=key,
            workflow_id=info.workflow_id,
            first_run_id=info.first_execution_run_id,
            plan_id=run.plan.id or "",
            agent_id=run.plan.agent_id,
            limits=limits,
            asked_at=run.queued_at,
        )
        # An ordinary activity, not a local one: a local activity's result can reach the
        # code one workflow task later than its marker, and a replay (a query of an evicted
        # run) then sees the patch markers that follow in another task (nondeterminism).
        # Sent again (a retry), the limiter takes it as the same request.
        await workflow.execute_activity(
            REQUEST_PLAN_SLOT,
            SlotAsk(request=request, task_queue=info.task_queue),
            start_to_close_timeout=timedelta(seconds=30),
            retry_policy=RetryPolicy(maximum_interval=timedelta(seconds=10)),
            summary="ask the queue's limiter for a slot",
        )
        if self._granted != key and run.final_status is None:
            run_state.log(
                run,
                workflow.now(),
                "queued: the concurrency limit is reached; the plan starts when a slot frees",
            )
            publish()
        await workflow.wait_condition(
            lambda: self._granted == key or run.final_status is not None,
            timeout_summary="wait for a slot",
        )
        if self._granted == key:
            run.slot = key
            waited = (workflow.now() - run.queued_at).total_seconds()
            run.queued_at = None
            if waited >= 0.5:
                run_state.log(run, workflow.now(), f"slot granted after {waited:.1f}s in the queue")

    def release(self, why: str) -> None:
        """Give the slot back (or leave the queue): the plan ended or was cancelled. The
        signal is sent with the run's last commands; :meth:`settled` waits for it."""
        run = self._run
        if run.slot is None and run.queued_at is None:
            return
        key = run.slot or self.key
        run.slot = None
        run.queued_at = None
        self._releasing = asyncio.create_task(self._send_release(key, why))

    async def _send_release(self, key: str, why: str) -> None:
        try:
            await workflow.get_external_workflow_handle(
                limiter_workflow_id(workflow.info().task_queue)
            ).signal(RELEASE_SIGNAL, SlotRelease(key=key, why=why))
        except FailureError as e:  # no limiter: nothing is held there
            run_state.log(
                self._run, workflow.now(), f"the slot could not be released: {e}", "warning"
            )

    async def settled(self) -> None:
        """The release (if one was sent) reached the limiter."""
        if self._releasing is not None:
            await self._releasing

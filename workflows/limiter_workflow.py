"""``PlanLimiter``: the durable keeper of the concurrency limits of one task queue.

One per namespace and task queue (id ``plansmith-limiter-<queue>``), started by the
first plan that asks for a slot (signal-with-start, the ``request_plan_slot``
activity). Its state (limits, holders, the queue in order) lives in its history, so the
limits hold across worker and API restarts and however many API processes start plans.

* signal ``acquire`` (:class:`~plans.limits.SlotRequest`): a plan asks; it is queued,
  and granted in order (:func:`plans.limits.grant_next`) by the signal
  ``plan_slot_granted`` sent to the plan's workflow;
* signal ``release`` (:class:`~plans.limits.SlotRelease`): a plan ends (completed,
  failed, cancelled, rejected) or leaves the queue;
* a grant that cannot be delivered (the plan's workflow is closed) frees the slot at
  once; while plans wait, every ``check_every_s`` the ``check_plan_slots`` activity
  asks Temporal which holders no longer run (terminated plans) and their slots go to
  the queue;
* query ``queue`` (:class:`~plans.limits.LimiterView`): who executes, who waits, in
  which order;
* it continues as new when its history grows long, carrying its state whole.
"""

from __future__ import annotations

import asyncio
from datetime import timedelta

from temporalio import workflow
from temporalio.common import RetryPolicy
from temporalio.exceptions import ActivityError, FailureError

with workflow.unsafe.imports_passed_through():
    from contracts.limits import (
        ACQUIRE_SIGNAL,
        CHECK_PLAN_SLOTS,
        GRANTED_SIGNAL,
        LIMITER_WORKFLOW,
        QUEUE_QUERY,
        RELEASE_SIGNAL,
        HolderCheck,
        LimiterInput,
    )
    from plans import limits
    from plans.limits import (
        LimiterState,
        LimiterView,
        SlotGrant,
        SlotRelease,
        SlotRequest,
    )


@workflow.defn(name=LIMITER_WORKFLOW)
class LimiterWorkflow:
    @workflow.init
    def __init__(self, inp: LimiterInput) -> None:
        self._state: LimiterState = inp.state or LimiterState()
        self._input = inp
        self._dirty = True  # look at the queue at once (a carried state may have room)
        self._regrant: list[str] = []  # holders that asked again (a retried request)

    @workflow.signal(name=ACQUIRE_SIGNAL)
    def acquire(self, req: SlotRequest) -> None:
        if limits.enqueue(self._state, req) == "held":
            self._regrant.append(req.key)
        self._dirty = True

    @workflow.signal(name=RELEASE_SIGNAL)
    def release(self, rel: SlotRelease) -> None:
        limits.release(self._state, rel.key)
        self._dirty = True

    @workflow.query(name=QUEUE_QUERY)
    def queue(self) -> LimiterView:
        return limits.limiter_view(self._state)

    @workflow.query(name="state")
    def state(self) -> LimiterState:
        return self._state

    def _history_is_long(self) -> bool:
        info = workflow.info()
        limit = self._input.max_history_events
        return info.is_continue_as_new_suggested() or bool(
            limit and info.get_current_history_length() > limit
        )

    @workflow.run
    async def run(self, inp: LimiterInput) -> None:
        state = self._state
        while True:
            await self._grant()
            if self._history_is_long():
                break
            timeout = None
            if limits.check_due(state):  # someone waits: are the holders still alive?
                if state.last_check is None:
                    state.last_check = workflow.now()
                every = timedelta(seconds=state.limits.check_every_s)
                timeout = max(state.last_check + every - workflow.now(), timedelta(milliseconds=1))
            else:
                state.last_check = None
            self._dirty = False
            try:
                await workflow.wait_condition(
                    lambda: self._dirty or self._history_is_long(),
                    timeout=timeout,
                    timeout_summary="check that the holders of slots still run",
                )
            except TimeoutError:
                await self._reclaim()
        await workflow.wait_condition(workflow.all_handlers_finished)
        workflow.continue_as_new(
            LimiterInput(state=state, max_history_events=inp.max_history_events)
        )

    async def _grant(self) -> None:
        """Grant what fits, in order, until nothing changes; a plan that cannot be told
        (its workflow closed) gives its slot back at once."""
        state = self._state
        while True:
            again, self._regrant = self._regrant, []
            todo = [state.holders[k].request for k in again if k in state.holders]
            todo += limits.grant_next(state, workflow.now())
            if not todo:
                return
            # every plan is told at once (one round trip for a burst of free slots)
            sent = await asyncio.gather(*(self._tell(req) for req in todo), return_exceptions=True)
            for req, outcome in zip(todo, sent, strict=True):
                if isinstance(outcome, FailureError):
                    workflow.logger.info("slot of %s freed: %s", req.plan_id, outcome)
                    limits.release(state, req.key, reclaimed=True)
                elif isinstance(outcome, BaseException):
                    raise outcome

    async def _tell(self, req: SlotRequest) -> None:
        holder = self._state.holders.get(req.key)
        if holder is None:
            return  # released meanwhile
        grant = SlotGrant(key=req.key, granted_at=holder.granted_at)
        await workflow.get_external_workflow_handle(req.workflow_id).signal(GRANTED_SIGNAL, grant)

    async def _reclaim(self) -> None:
        state = self._state
        state.last_check = workflow.now()
        holders = [h.request for h in state.holders.values()]
        try:
            gone = await workflow.execute_activity(
                CHECK_PLAN_SLOTS,
                HolderCheck(holders=holders),
                result_type=list[str],
                start_to_close_timeout=timedelta(seconds=30),
                retry_policy=RetryPolicy(maximum_attempts=3),
                summary="which holders of slots no longer run",
            )
        except ActivityError as e:
            workflow.logger.warning("could not check the holders of slots: %s", e)
            return
        for key in gone:
            limits.release(state, key, reclaimed=True)
        self._dirty = self._dirty or bool(gone)

"""``WebhookDispatcher``: sends the webhook deliveries waiting in the store (docs/webhooks.md).

Plans never wait for a delivery: their snapshots write deliveries to the store (the outbox,
in the snapshot's transaction) and wake this workflow with signal-with-start. It then
loops: claim the due deliveries (leased, so another dispatcher does not take them too),
send each with one attempt (an activity each, all at once), and go on at once while
deliveries are due; else sleep until the next one falls due or a kick comes. It ends when
nothing is pending, and continues as new every ``rounds_per_run`` rounds (or when
Temporal suggests it) to keep its history short.

Retries and backoff are the store's (each attempt is logged; see
:func:`store.webhooks.record_attempt`), so they survive worker restarts and are visible in
``GET /api/webhooks/{id}/deliveries``; the activities' own retry policy only covers a
store or worker failure.
"""

from __future__ import annotations

import asyncio
import contextlib
from datetime import timedelta

from temporalio import workflow
from temporalio.common import RetryPolicy
from temporalio.exceptions import ActivityError

with workflow.unsafe.imports_passed_through():
    from contracts.webhooks import (
        CLAIM_DELIVERIES,
        DISPATCHER_WORKFLOW,
        KICK,
        SEND_DELIVERY,
        Claimed,
        ClaimInput,
        DispatcherInput,
        Kick,
        SendInput,
        SendResult,
    )

STORE_RETRIES = RetryPolicy(
    initial_interval=timedelta(seconds=1),
    maximum_interval=timedelta(seconds=30),
    maximum_attempts=5,
)
IDLE_CHECK = timedelta(minutes=10)  # a lease left by a lost worker is looked at again


@workflow.defn(name=DISPATCHER_WORKFLOW)
class WebhookDispatcher:
    @workflow.init
    def __init__(self, inp: DispatcherInput) -> None:
        self._kicked = False

    @workflow.signal(name=KICK)
    def kick(self, _: Kick) -> None:
        self._kicked = True

    @workflow.run
    async def run(self, inp: DispatcherInput) -> int:
        """Returns how many attempts this run made."""
        sent = 0
        for _ in range(inp.rounds_per_run):
            self._kicked = False
            try:
                claimed = await workflow.execute_activity(
                    CLAIM_DELIVERIES,
                    ClaimInput(by=workflow.info().workflow_id),
                    result_type=Claimed,
                    start_to_close_timeout=timedelta(seconds=30),
                    retry_policy=STORE_RETRIES,
                )
            except ActivityError:
                claimed = Claimed(next_due=workflow.now() + timedelta(seconds=30))
            if claimed.ids:
                await asyncio.gather(
                    *(self._send(did, claimed.send_timeout_s) for did in claimed.ids),
                    return_exceptions=True,
                )
                sent += len(claimed.ids)
                if workflow.info().is_continue_as_new_suggested():
                    break
                continue
            if claimed.next_due is None and not self._kicked:
                await workflow.wait_condition(workflow.all_handlers_finished)
                if not self._kicked:
                    return sent  # nothing pending: the next kick starts a new run
                continue
            wait = IDLE_CHECK
            if claimed.next_due is not None:
                wait = min(max(claimed.next_due - workflow.now(), timedelta(0)), IDLE_CHECK)
            if not self._kicked and wait > timedelta(0):
                with contextlib.suppress(TimeoutError):
                    await workflow.wait_condition(
                        lambda: self._kicked, timeout=wait, timeout_summary="next delivery due"
                    )
            if workflow.info().is_continue_as_new_suggested():
                break
        await workflow.wait_condition(workflow.all_handlers_finished)
        workflow.continue_as_new(inp)

    async def _send(self, did: str, timeout_s: float) -> SendResult | None:
        try:
            return await workflow.execute_activity(
                SEND_DELIVERY,
                SendInput(delivery_id=did),
                result_type=SendResult,
                # the attempt's own bound, and time for the store: a worker lost in the
                # middle is noticed soon, and the attempt made again
                start_to_close_timeout=timedelta(seconds=timeout_s + 30),
                retry_policy=STORE_RETRIES,
                summary=f"deliver {did}",
            )
        except ActivityError:
            return None  # the store failed: the lease runs out and it is claimed again

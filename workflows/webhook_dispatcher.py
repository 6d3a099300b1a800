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
        self._room = True  # a free slot: a kick is worth waking for

    @workflow.signal(name=KICK)
    def kick(self, _: Kick) -> None:
        self._kicked = True

    @workflow.run
    async def run(self, inp: DispatcherInput) -> int:
        """Returns how many attempts this run made.

        A pipeline: up to the worker's ``PLANSMITH_WEBHOOK_CONCURRENCY`` attempts are in
        flight; a slot that frees is filled by the next claim at once, so a slow receiver
        holds one slot (up to ``PLANSMITH_WEBHOOK_TIMEOUT_S``), not the others."""
        sent = 0
        rounds = 0
        in_flight: dict[str, asyncio.Task[SendResult | None]] = {}
        slots: int | None = None  # the worker's concurrency, learnt from the first claim
        next_due = None
        while True:
            ending = rounds >= inp.rounds_per_run or workflow.info().is_continue_as_new_suggested()
            free = None if slots is None else slots - len(in_flight)
            if not ending and (free is None or free > 0):
                self._kicked = False
                claimed = await self._claim(free)
                rounds += 1
                slots, next_due = claimed.concurrency, claimed.next_due
                for did in claimed.ids:
                    in_flight[did] = asyncio.create_task(self._send(did, claimed.send_timeout_s))
                sent += len(claimed.ids)
                if claimed.ids:
                    continue  # more may be due: fill the free slots first
            if not in_flight:
                if ending:
                    break
                if next_due is None and not self._kicked:
                    await workflow.wait_condition(workflow.all_handlers_finished)
                    if not self._kicked:
                        return sent  # nothing pending: the next kick starts a new run
                    continue
            if ending:
                await asyncio.gather(*in_flight.values())  # drain, then continue as new
                in_flight.clear()
                continue
            self._room = room = slots is None or len(in_flight) < slots
            wait = None
            if room:
                wait = IDLE_CHECK
                if next_due is not None:
                    wait = min(max(next_due - workflow.now(), timedelta(0)), IDLE_CHECK)
            if wait is None or wait > timedelta(0):
                with contextlib.suppress(TimeoutError):
                    await workflow.wait_condition(
                        lambda: (
                            (self._room and self._kicked)
                            or any(t.done() for t in in_flight.values())
                        ),
                        timeout=wait,
                        timeout_summary="next delivery due",
                    )
            for did in [d for d, t in in_flight.items() if t.done()]:
                del in_flight[did]
        await workflow.wait_condition(workflow.all_handlers_finished)
        workflow.continue_as_new(inp)

    async def _claim(self, limit: int | None) -> Claimed:
        try:
            return await workflow.execute_activity(
                CLAIM_DELIVERIES,
                ClaimInput(by=workflow.info().workflow_id, limit=limit),
                result_type=Claimed,
                start_to_close_timeout=timedelta(seconds=30),
                retry_policy=STORE_RETRIES,
            )
        except ActivityError:  # the store is down: look again in a while
            return Claimed(next_due=workflow.now() + timedelta(seconds=30))

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

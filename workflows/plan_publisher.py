"""How a running plan makes itself seen: search attributes, the current details line in
the Temporal UI, and snapshots in the store (the ``record_snapshot`` activity)."""

from __future__ import annotations

import asyncio
from datetime import timedelta

from temporalio import workflow
from temporalio.common import RetryPolicy

from workflows.plan_input import PLAN_STATUS, WAITING_FOR, PlanInput

with workflow.unsafe.imports_passed_through():
    from contracts.snapshots import RECORD_SNAPSHOT, RecordResult, SnapshotCursor
    from plans.run_state import PlanRun, settle_refused, trim_audit
    from plans.views import summary_line, waits

# The first store snapshot of a run waits one snapshot interval too, so a plan that ends
# within it is written once, at its end (before: at its start and at its end, the second
# on the plan's critical path behind the first; 20 short plans at once spent most of
# their time waiting for the store).
SNAPSHOT_AFTER_INTERVAL_PATCH = "snapshot-after-interval"
# A snapshot that would only repeat the last one (its log window moved on, nothing else)
# is not sent: every run sent one at its end, a store write and an activity round trip
# before its result. Runs recorded before the patch sent it and replay so.
SNAPSHOT_NO_REPEAT_PATCH = "snapshot-no-repeat"


class PlanPublisher:
    """Publishes ``run`` after every change; :meth:`flush` before the run ends."""

    def __init__(self, run: PlanRun, inp: PlanInput) -> None:
        self._run = run
        self._input = inp
        self._published: tuple[str, str] | None = None
        self._details: str | None = None  # the current details last set
        self.cursor = inp.snapshot_cursor or SnapshotCursor()  # what the store already has
        self._persister: asyncio.Task[None] | None = None
        self._persister_pausing = False
        self._flushing = False
        self._first = True  # no snapshot sent by this run yet
        self._no_repeats: bool | None = None  # the patch, asked at the first repeat

    def publish(self) -> None:
        """Search attributes and details at once (if they changed); a store snapshot soon."""
        run = self._run
        status = run.status.value
        pending = waits(run)
        waiting = pending[0].kind if pending else "none"
        if self._input.search_attributes and self._published != (status, waiting):
            self._published = (status, waiting)
            workflow.upsert_search_attributes(
                [PLAN_STATUS.value_set(status), WAITING_FOR.value_set(waiting)]
            )
        details = summary_line(run)
        if details != self._details:
            self._details = details
            workflow.set_current_details(details)
        if run.audit_limits and not self._input.persist:  # no store: nothing to wait for
            run.audit_stored = max(run.audit_total, len(run.audit))
            trim_audit(run)
        if self._input.persist and (self._persister is None or self._persister.done()):
            self._persister = asyncio.create_task(self._send_snapshots())

    async def flush(self) -> None:
        """Before the run ends or continues as new: everything is in the store."""
        if self._run.audit_limits:  # every counted-not-recorded minute gets its summary
            settle_refused(self._run, workflow.now(), final=True)
        if not self._input.persist:
            return
        self._flushing = True
        if self._persister is not None and not self._persister.done():
            if self._persister_pausing:
                self._persister.cancel()  # only waiting to batch: send the last one now
            await asyncio.gather(self._persister, return_exceptions=True)
        await self._send_snapshots(flush=True)

    def _skip_repeats(self) -> bool:
        if self._no_repeats is None:
            self._no_repeats = workflow.patched(SNAPSHOT_NO_REPEAT_PATCH)
        return self._no_repeats

    async def _send_snapshots(self, flush: bool = False) -> None:
        """Send what changed to the store until nothing is new.

        While the plan runs, at most one snapshot per ``snapshot_interval_s`` (changes in
        between travel together), the first one interval after the run starts; with
        ``flush`` (the run is ending) at once, and at least one. The plan never waits for the store while it runs; the store's writes are
        idempotent and ordered, so retries and late deliveries are harmless.
        """
        force = flush
        if self._first and not flush and self._input.snapshot_interval_s:
            self._first = False
            if workflow.patched(SNAPSHOT_AFTER_INTERVAL_PATCH):
                await self._batch()  # a flush cancels it and sends at once
        while True:
            info = workflow.info()
            snap = self.cursor.take(
                self._run,
                info.first_execution_run_id,
                at=workflow.now(),
                workflow_id=info.workflow_id,
                execution_run_id=info.run_id,
                resumed_by=self._input.resumed_by,
                submitted_by=self._input.submitted_by,
                force=force,
                skip_repeats=self._skip_repeats,
            )
            force = False
            if snap is None:
                return
            if self._run.audit_limits:
                # what the store will have (the activity retries until it lands): the
                # audit list may now drop those entries, and only those
                self._run.audit_stored = self.cursor.audit
                trim_audit(self._run)
            await workflow.execute_activity(
                RECORD_SNAPSHOT,
                snap,
                result_type=RecordResult,
                start_to_close_timeout=timedelta(seconds=30),
                retry_policy=RetryPolicy(maximum_interval=timedelta(seconds=30)),
                cancellation_type=workflow.ActivityCancellationType.ABANDON,
                summary="record in the store",
            )
            if flush or not self._input.snapshot_interval_s:
                continue
            if self._flushing:
                return  # the run is ending: the flush sends the rest at once
            await self._batch()

    async def _batch(self) -> None:
        """Wait one snapshot interval, gathering changes (a flush cancels the wait)."""
        self._persister_pausing = True
        try:
            await workflow.sleep(self._input.snapshot_interval_s, summary="batch store writes")
        finally:
            self._persister_pausing = False

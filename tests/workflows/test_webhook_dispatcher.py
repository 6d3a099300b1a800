"""The webhook dispatcher (workflows.webhook_dispatcher): its recorded history replays,
and it keeps its history bounded (continue-as-new) while it delivers everything."""

from __future__ import annotations

import asyncio
import time
from datetime import timedelta
from pathlib import Path

from temporalio import workflow
from temporalio.client import Client, WorkflowHistory
from temporalio.contrib.pydantic import pydantic_data_converter
from temporalio.worker import Replayer
from temporalio.workflow import NondeterminismError

from config import get_settings
from contracts.webhooks import DISPATCHER_WORKFLOW, DispatcherInput, dispatcher_id
from plans.webhooks import EVENTS
from store import webhooks as store_webhooks
from store.db import ensure_migrated, get_engine, session_scope
from tests.helpers import worker_with
from tests.store.test_store import STEPS, Driver
from tests.webhook_receiver import Receiver
from workflows.webhook_dispatcher import WebhookDispatcher
from workflows.webhook_kick import kick_dispatcher

HISTORIES = Path(__file__).resolve().parents[1] / "histories" / "dispatcher"


def recorded() -> list[Path]:
    return sorted(HISTORIES.glob("*.json"))


async def replay(workflows: list[type]) -> dict[str, Exception]:
    histories = {
        p.name: WorkflowHistory.from_json("webhook-dispatcher-plansmith-histories", p.read_text())
        for p in recorded()
    }
    replayer = Replayer(workflows=workflows, data_converter=pydantic_data_converter)
    failures = {}
    for name, history in histories.items():
        result = await replayer.replay_workflow(history, raise_on_replay_failure=False)
        if result.replay_failure is not None:
            failures[name] = result.replay_failure
    return failures


async def test_the_recorded_dispatcher_history_replays() -> None:
    assert recorded(), f"no dispatcher history in {HISTORIES} (make_histories webhooks)"
    assert await replay([WebhookDispatcher]) == {}


@workflow.defn(name=DISPATCHER_WORKFLOW, sandboxed=False)
class DriftedDispatcher:
    """A careless edit: a timer before the first claim."""

    @workflow.run
    async def run(self, inp: DispatcherInput) -> int:
        await workflow.sleep(timedelta(seconds=1))
        return 0


async def test_a_changed_dispatcher_fails_to_replay() -> None:
    failures = await replay([DriftedDispatcher])
    assert failures and all(isinstance(e, NondeterminismError) for e in failures.values())


async def test_it_continues_as_new_and_still_delivers_everything(
    client: Client, task_queue: str, tmp_path: Path
) -> None:
    settings = get_settings().replace(
        temporal={"task_queue": task_queue},
        store={"database_url": f"sqlite:///{tmp_path / 'store.db'}"},
        webhooks={"concurrency": 1},  # one delivery a round
    )
    receiver = Receiver().start()
    try:
        # a finished 3-step plan's 8 events, waiting in the store
        engine = ensure_migrated(get_engine(settings.store.database_url))
        d = Driver(STEPS, plan_id="can")
        d.control("approve")
        d.finish()
        with session_scope(engine, write=True) as s:
            store_webhooks.create_webhook(
                s, url=receiver.url, events=list(EVENTS), secret=None, created_by="t"
            )
            assert store_webhooks.enqueue_snapshot_events(s, d.snap(1)) == 8
        async with worker_with(client, task_queue, settings=settings):
            handle = await client.start_workflow(
                WebhookDispatcher.run,
                DispatcherInput(rounds_per_run=2),
                id=dispatcher_id(task_queue),
                task_queue=task_queue,
            )
            # it ends once nothing is pending: after 8 rounds, in its 5th run
            await asyncio.wait_for(handle.result(), timeout=30)
            first = client.get_workflow_handle(handle.id, run_id=handle.result_run_id)
            events = [e async for e in first.fetch_history_events()]
            assert events[-1].HasField("workflow_execution_continued_as_new_event_attributes")
            last = await client.get_workflow_handle(handle.id).describe()
            assert last.run_id != handle.result_run_id
    finally:
        receiver.stop()
    got = receiver.events("can")
    assert len(got) == 8 and len({r.payload["id"] for r in got}) == 8


async def test_a_slow_receiver_holds_one_slot_not_the_others(
    client: Client, task_queue: str, tmp_path: Path
) -> None:
    settings = get_settings().replace(
        temporal={"task_queue": task_queue},
        store={"database_url": f"sqlite:///{tmp_path / 'store.db'}"},
        webhooks={"concurrency": 2, "timeout_s": 10.0},
    )
    slow, fast = Receiver().start(), Receiver().start()
    slow.delay_s = 4.0
    try:
        engine = ensure_migrated(get_engine(settings.store.database_url))
        d = Driver([{"id": "only", "tool": "noop"}], plan_id="slots")
        d.control("approve")
        d.finish()
        with session_scope(engine, write=True) as s:
            slow_id = store_webhooks.create_webhook(
                s, url=slow.url, events=["plan.started"], secret=None, created_by="t"
            ).id
            store_webhooks.create_webhook(
                s, url=fast.url, events=list(EVENTS), secret=None, created_by="t"
            )
            assert store_webhooks.enqueue_snapshot_events(s, d.snap(1)) == 5
        async with worker_with(client, task_queue, settings=settings):
            await kick_dispatcher(client, task_queue, "test")
            deadline = time.monotonic() + 15
            while len(fast.events("slots")) < 4:
                assert time.monotonic() < deadline, [r.event for r in fast.events()]
                await asyncio.sleep(0.05)
            # every fast delivery arrived while the slow receiver still sat on its one
            with session_scope(engine) as s:
                slow_log = store_webhooks.list_deliveries(s, slow_id)
            assert [(r.status, len(a)) for r, a in slow_log] == [("pending", 0)]
            await asyncio.wait_for(
                client.get_workflow_handle(dispatcher_id(task_queue)).result(), timeout=20
            )
        with session_scope(engine) as s:
            slow_log = store_webhooks.list_deliveries(s, slow_id)
        assert [r.status for r, _ in slow_log] == ["delivered"]
    finally:
        slow.stop()
        fast.stop()

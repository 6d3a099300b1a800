"""Webhooks, as a new user tries them: subscribe a local receiver, run a 3-step plan, get
every event signed; with the receiver down the plan still completes, and the deliveries
arrive once it is back (docs/webhooks.md)."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import pytest_asyncio
from temporalio.testing import WorkflowEnvironment

from api.app import create_app
from config import Settings, get_settings
from tests.api.serving import serve
from tests.helpers import StartWorker, worker_with
from tests.webhook_receiver import Receiver

SECRET = "s3cret-for-the-test"
STEP_EVENTS = ["step.started", "step.completed"]
EVENTS = ["plan.started", "plan.completed", "plan.failed", *STEP_EVENTS, "step.failed"]


def webhook_settings(tmp_path: Path, task_queue: str) -> Settings:
    """A store of the test's own, and retries a test can wait for (0.3 s, doubling, 1 s)."""
    return get_settings().replace(
        temporal={"task_queue": task_queue},
        store={"database_url": f"sqlite:///{tmp_path / 'store.db'}"},
        webhooks={"retry_delay_s": 0.3, "max_retry_delay_s": 1.0, "timeout_s": 5.0},
        api={"rpc_timeout_s": 5.0, "connect_timeout_s": 2.0},
    )


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    r = Receiver().start()
    yield r
    r.stop()


@pytest_asyncio.fixture
async def http(
    env: WorkflowEnvironment, start_worker: StartWorker, task_queue: str, tmp_path: Path
) -> AsyncIterator[httpx.AsyncClient]:
    settings = webhook_settings(tmp_path, task_queue)
    await start_worker(settings=settings)
    async with serve(create_app(settings=settings, client=env.client)) as client:
        yield client


def three_steps(plan_id: str) -> dict[str, Any]:
    return {
        "id": plan_id,
        "title": "three steps",
        "options": {"require_approval": False},
        "steps": [
            {"id": "fetch", "tool": "wait", "params": {"seconds": 0.1, "result": "data"}},
            {"id": "shape", "tool": "wait", "params": {"seconds": 0.1}, "depends_on": ["fetch"]},
            {"id": "store", "tool": "wait", "params": {"seconds": 0.1}, "depends_on": ["shape"]},
        ],
    }


async def run_plan(http: httpx.AsyncClient, plan_id: str, timeout: float = 30) -> float:
    """Create and execute the plan, wait until it completed; the seconds it took."""
    started = time.monotonic()
    r = await http.post("/api/plans", json=three_steps(plan_id))
    assert r.status_code == 201, r.text
    r = await http.post(f"/api/plans/{plan_id}/execute")
    assert r.status_code == 202, r.text
    while True:
        st = (await http.get(f"/api/plans/{plan_id}/status")).json()
        if st["status"] == "completed":
            return time.monotonic() - started
        assert st["status"] in ("approved", "executing", "pending_approval"), st
        assert time.monotonic() - started < timeout, f"plan {plan_id} did not complete: {st}"
        await asyncio.sleep(0.1)


async def received_all(receiver: Receiver, plan_id: str, n: int, timeout: float = 30) -> list:
    deadline = time.monotonic() + timeout
    while True:
        got = receiver.events(plan_id)
        if len({r.payload["id"] for r in got}) >= n:
            return got
        assert time.monotonic() < deadline, [r.event for r in got]
        await asyncio.sleep(0.1)


def expected() -> set[tuple[str, str | None]]:
    steps = ("fetch", "shape", "store")
    return (
        {("plan.started", None), ("plan.completed", None)}
        | {("step.started", s) for s in steps}
        | {("step.completed", s) for s in steps}
    )


def seen(got: list) -> set[tuple[str, str | None]]:
    return {(r.event, r.payload.get("step", {}).get("id")) for r in got}


async def test_a_receiver_gets_every_event_signed_and_a_dead_one_never_slows_a_plan(
    http: httpx.AsyncClient, receiver: Receiver
) -> None:
    r = await http.post(
        "/api/webhooks", json={"url": receiver.url, "events": EVENTS, "secret": SECRET}
    )
    assert r.status_code == 201, r.text
    hook = r.json()
    assert hook["has_secret"] is True and "secret" not in hook

    # 1. Receiver up: every step's start and end and the plan's end, each signed.
    first = f"wh-{uuid.uuid4().hex[:8]}"
    await run_plan(http, first)
    got = await received_all(receiver, first, len(expected()))
    assert seen(got) == expected()
    for one in got:
        assert one.signed_with(SECRET), one.headers
        assert one.headers["x-plansmith-delivery"] == one.payload["id"]
        assert one.headers["x-plansmith-event"] == one.event
        assert one.headers["content-type"] == "application/json"
    completed = [g for g in got if g.event == "step.completed"]
    assert {g.payload["step"]["status"] for g in completed} == {"completed"}
    fetched = next(g for g in completed if g.payload["step"]["id"] == "fetch")
    assert fetched.payload["step"]["output"]["result"] == "data"
    assert all(
        g.payload["plan"]["status"] == "completed" for g in got if g.event == "plan.completed"
    )

    # 2. Receiver down: the plan completes all the same, while it is still down.
    receiver.stop()
    down_since = time.monotonic()
    second = f"wh-{uuid.uuid4().hex[:8]}"
    await run_plan(http, second)  # (its usual speed: the plan never waits for a delivery)
    assert receiver.events(second) == []  # it completed while the receiver was down
    # its deliveries wait in the store (the last snapshot, which holds the plan's end,
    # lands a moment after the plan's status says so), and the failed attempts are
    # logged as they happen
    deadline = time.monotonic() + 15
    mine: list[dict[str, Any]] = []
    while not any(a["error"] for d in mine for a in d["attempt_log"]):
        assert time.monotonic() < deadline, mine
        await asyncio.sleep(0.2)
        log = (await http.get(f"/api/webhooks/{hook['id']}/deliveries")).json()
        mine = [d for d in log["deliveries"] if d["plan_id"] == second]
    assert all(d["status"] == "pending" for d in mine), mine  # retried, not given up

    # 3. Back after ~5 s: everything that waited arrives, signed, once per delivery id.
    await asyncio.sleep(max(0.0, 5.0 - (time.monotonic() - down_since)))
    receiver.start()
    got = await received_all(receiver, second, len(expected()))
    assert seen(got) == expected()
    assert all(one.signed_with(SECRET) for one in got)
    log = (await http.get(f"/api/webhooks/{hook['id']}/deliveries")).json()
    mine = [d for d in log["deliveries"] if d["plan_id"] == second]
    deadline = time.monotonic() + 10
    while not all(d["status"] == "delivered" for d in mine):
        assert time.monotonic() < deadline, mine
        await asyncio.sleep(0.2)
        log = (await http.get(f"/api/webhooks/{hook['id']}/deliveries")).json()
        mine = [d for d in log["deliveries"] if d["plan_id"] == second]
    for d in mine:
        tries = d["attempt_log"]
        assert tries[-1]["ok"] is True and tries[-1]["status_code"] == 200
        assert len(tries) >= 2 and not tries[0]["ok"] and tries[0]["error"]


async def test_deliveries_left_pending_go_out_from_the_next_worker(
    env: WorkflowEnvironment, task_queue: str, tmp_path: Path, receiver: Receiver
) -> None:
    """The outbox and the dispatcher are durable: the worker that ran the plan stops while
    the receiver is down; another worker, started later, delivers."""
    settings = webhook_settings(tmp_path, task_queue)
    app = create_app(settings=settings, client=env.client)
    plan_id = f"wr-{uuid.uuid4().hex[:8]}"
    async with serve(app) as http:
        r = await http.post(
            "/api/webhooks", json={"url": receiver.url, "events": EVENTS, "secret": SECRET}
        )
        hook = r.json()
        receiver.stop()
        async with worker_with(env.client, task_queue, settings=settings):
            await run_plan(http, plan_id)
            # the run closes once its last snapshot (and so its deliveries) is stored
            await env.client.get_workflow_handle(f"plan-{plan_id}").result()
        # no worker now: every delivery of the plan waits in the store
        log = (await http.get(f"/api/webhooks/{hook['id']}/deliveries")).json()
        assert len(log["deliveries"]) == len(expected())
        assert all(d["status"] == "pending" for d in log["deliveries"])
        receiver.start()
        async with worker_with(env.client, task_queue, settings=settings):
            got = await received_all(receiver, plan_id, len(expected()))
    assert seen(got) == expected()
    assert all(one.signed_with(SECRET) for one in got)

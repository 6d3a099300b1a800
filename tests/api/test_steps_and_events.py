"""Watching a plan without slowing it: the paged steps route, shared status reads, and
the event feed that reads the workflow's changes (one reader per plan, shared)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import timedelta
from typing import Any

import httpx
import pytest
import pytest_asyncio
from fastapi import FastAPI
from temporalio.testing import WorkflowEnvironment

import api.sse
from api.coalesce import SingleFlight
from api.sse import EventHub, Feed
from config import ApiSettings
from plans.models import PlanStatus, StepStatus
from plans.views import ChangesView, StatusView, StepChange, StepsPage, StepsQuery, StepView
from tests.api.serving import client
from tests.api.test_plans_routes import (
    closed,
    create_and_execute,
    make_app,
    parse_sse,
    plan_doc,
    wait_status,
    wait_step,
)
from tests.helpers import T0, step_view
from workflows.client import PlanClient, page_of
from workflows.errors import PlanClosed, QueryUnsupported


@pytest_asyncio.fixture
async def app(env: WorkflowEnvironment, worker: Any, task_queue: str) -> AsyncIterator[FastAPI]:
    a = make_app(env.client, task_queue)
    async with a.router.lifespan_context(a):
        yield a


@pytest_asyncio.fixture
async def http(app: FastAPI) -> AsyncIterator[httpx.AsyncClient]:
    async with client(app) as c:
        yield c


# --- the steps route ----------------------------------------------------------------


async def test_steps_route_pages_and_filters_and_names_a_bad_parameter(
    http: httpx.AsyncClient, app: FastAPI, env: WorkflowEnvironment
):
    doc = plan_doc([wait_step(f"s{i}") for i in range(5)])
    # A draft answers from its document: every step pending.
    assert (await http.post("/api/plans", json=doc)).status_code == 201
    r = await http.get(f"/api/plans/{doc['id']}/steps", params={"limit": 2})
    assert r.status_code == 200, r.text
    page = r.json()
    assert page["total"] == 5 and [s["id"] for s in page["steps"]] == ["s0", "s1"]
    assert {s["status"] for s in page["steps"]} == {"pending"}

    r = await http.post(f"/api/plans/{doc['id']}/execute")
    assert r.status_code == 202, r.text
    plan_id = doc["id"]
    await wait_status(http, plan_id, lambda s: s["status"] == "completed")
    r = await http.get(f"/api/plans/{plan_id}/steps", params={"offset": 3, "limit": 10})
    page = r.json()
    assert page["total"] == 5 and page["offset"] == 3 and page["limit"] == 10
    assert [s["id"] for s in page["steps"]] == ["s3", "s4"]
    r = await http.get(f"/api/plans/{plan_id}/steps", params={"status": "completed"})
    assert r.json()["total"] == 5
    r = await http.get(f"/api/plans/{plan_id}/steps", params={"status": "failed"})
    assert r.json()["total"] == 0 and r.json()["steps"] == []

    for params, where in [
        ({"limit": 0}, "query.limit"),
        ({"limit": 1001}, "query.limit"),
        ({"offset": -1}, "query.offset"),
        ({"status": "finished"}, "query.status"),
        ({"page": 2}, "query.page"),
    ]:
        r = await http.get(f"/api/plans/{plan_id}/steps", params=params)
        assert r.status_code == 422, (params, r.text)
        assert [p["location"] for p in r.json()["problems"]] == [where], r.text
    assert (await http.get("/api/plans/no-such-plan/steps")).status_code == 404

    # An ended plan is answered from the store: its workflow is not asked.
    await closed(env.client, plan_id)
    services = app.state.services
    for _ in range(200):  # the final snapshot is written to the store as the run closes
        if await services.store.steps(plan_id, StepsQuery(), ended_only=True) is not None:
            break
        await asyncio.sleep(0.05)

    async def refuse(*args: Any) -> Any:
        raise AssertionError("the workflow was asked for the steps of an ended plan")

    services.temporal.steps = refuse
    r = await http.get(f"/api/plans/{plan_id}/steps", params={"limit": 1})
    assert r.status_code == 200, r.text
    assert r.json()["total"] == 5 and r.json()["steps"][0]["status"] == "completed"


# --- shared status reads ------------------------------------------------------------


async def test_concurrent_status_requests_of_one_plan_make_one_workflow_query(
    http: httpx.AsyncClient, app: FastAPI
):
    plan_id = await create_and_execute(http, plan_doc([wait_step("a", 30)]))
    await wait_status(http, plan_id, lambda s: s["steps"][0]["status"] == "running")
    services = app.state.services
    plans: PlanClient = services.temporal
    real = plans.status
    asked: list[str] = []
    release = asyncio.Event()

    async def gated(pid: str, open_only: bool = False) -> StatusView:
        asked.append(pid)
        await release.wait()
        return await real(pid, open_only=open_only)

    plans.status = gated  # type: ignore[method-assign]
    flight: SingleFlight[StatusView] = services.status_reads
    shared_before = flight.shared
    n = 8
    requests = [asyncio.create_task(http.get(f"/api/plans/{plan_id}/status")) for _ in range(n)]
    for _ in range(2000):  # until every request waits on the one query (or makes its own)
        if flight.shared - shared_before >= n - 1 or len(asked) > 1:
            break
        await asyncio.sleep(0.01)
    release.set()
    answers = await asyncio.gather(*requests)
    assert [r.status_code for r in answers] == [200] * n
    assert asked == [plan_id]
    assert len({r.text for r in answers}) == 1
    # The next request asks again: answers are shared, not cached.
    assert (await http.get(f"/api/plans/{plan_id}/status")).status_code == 200
    assert asked == [plan_id, plan_id]
    plans.status = real  # type: ignore[method-assign]
    await http.post(f"/api/plans/{plan_id}/cancel", json={})


async def test_an_ended_plans_status_comes_from_the_store_not_a_replay(
    http: httpx.AsyncClient, app: FastAPI
):
    """A query of a closed workflow has a worker replay its whole run (seconds for a big
    plan): once the workflow closed, /status answers from the store, where its last
    snapshot landed before it closed."""
    plan_id = await create_and_execute(http, plan_doc([wait_step("a", 0.1)]))
    final = await wait_status(http, plan_id, lambda s: s["status"] == "completed")
    plans: PlanClient = app.state.services.temporal
    await plans.final_result(plan_id)  # the workflow has closed
    real = plans.status
    replays: list[str] = []

    async def guarded(pid: str, open_only: bool = False) -> StatusView:
        if not open_only:
            replays.append(pid)  # the workflow would be replayed to answer this
        return await real(pid, open_only=open_only)

    plans.status = guarded  # type: ignore[method-assign]
    try:
        r = await http.get(f"/api/plans/{plan_id}/status")
    finally:
        plans.status = real  # type: ignore[method-assign]
    assert r.status_code == 200 and replays == []
    body = r.json()
    assert body["status"] == "completed" and body["steps"][0]["status"] == "completed"
    assert body["outcome"] == final["outcome"]


# --- the event feed, with a scripted workflow ---------------------------------------


def status(
    steps: list[StepView],
    plan: PlanStatus = PlanStatus.EXECUTING,
    seq: int = 0,
    complete: bool = True,
    outcome: str | None = None,
) -> StatusView:
    done = sum(1 for s in steps if s.status.terminal)
    return StatusView(
        plan_id="p",
        status=plan,
        progress=round(done / len(steps), 4) if steps else 1.0,
        version=1,
        digest="d",
        waiting_for=None,
        waiting=[],
        outcome=outcome,
        approved_by=None,
        created_at=T0,
        started_at=T0,
        finished_at=None,
        steps=steps if complete else [s for s in steps if s.status != StepStatus.PENDING],
        total_steps=len(steps),
        seq=seq,
        steps_complete=complete,
    )


class Workflow:
    """A plan as its workflow answers the status, changes and steps queries."""

    def __init__(self, ids: list[str], journal: int = 1000, big: bool = False):
        self.steps = {i: step_view(i) for i in ids}
        self.plan = PlanStatus.EXECUTING
        self.log: list[StepChange] = []
        self.journal, self.big = journal, big
        self.calls = {"status": 0, "changes": 0, "steps": 0}
        self.old = False  # an older worker: no changes or steps query
        self.recent = 20  # the newest changes the status lists (as RECENT_CHANGES)

    def change(self, sid: str, to: StepStatus, attempts: int = 1) -> None:
        self.steps[sid] = step_view(sid, to, attempts)
        at = T0 + timedelta(seconds=len(self.log) + 1)
        self.log.append(
            StepChange(seq=len(self.log) + 1, step_id=sid, status=to, at=at, attempts=attempts)
        )

    def view(self) -> StatusView:
        ended = self.plan.terminal
        view = status(
            list(self.steps.values()),
            self.plan,
            len(self.log),
            complete=not self.big,
            outcome="all done" if ended else None,
        )
        return view.model_copy(update={"recent": self.log[-self.recent :]})

    async def status(self) -> StatusView:
        self.calls["status"] += 1
        return self.view()

    async def changes(self, since: int) -> ChangesView:
        self.calls["changes"] += 1
        if self.old:
            raise QueryUnsupported("changes")
        kept = self.log[-self.journal :]
        complete = since >= len(self.log) - len(kept)
        return ChangesView(
            plan_id="p",
            status=self.plan,
            seq=len(self.log),
            complete=complete,
            changes=[c for c in kept if c.seq > since],
        )

    async def page(self, query: StepsQuery) -> StepsPage:
        self.calls["steps"] += 1
        if self.old:
            raise QueryUnsupported("steps")
        full = status(list(self.steps.values()), self.plan)
        return page_of(full, query)


def hub() -> EventHub:
    return EventHub(
        ApiSettings(sse_poll_s=3600, sse_linger_s=3600, sse_ping_s=3600, sse_give_up_s=30)
    )


async def open_feed(h: EventHub, wf: Workflow) -> Feed:
    feed = await h.open("p", wf.status, wf.changes, wf.page)
    assert feed.task is not None
    feed.task.cancel()  # the test reads the plan itself: feed.read_once()
    return feed


async def take(stream: Any, n: int) -> list[dict]:
    """The next ``n`` events of a watcher's stream (without the time each was seen)."""
    got: list[dict] = []
    while len(got) < n:
        chunk = await asyncio.wait_for(stream.__anext__(), 5)
        got += parse_sse(chunk.decode())
    for e in got:
        e["data"].pop("observed_at", None)
    return got


async def test_the_feed_sends_each_change_numbered_by_the_workflow_and_the_end():
    wf = Workflow(["a", "b"])
    h = hub()
    feed = await open_feed(h, wf)
    stream = feed.stream(None)
    snapshot = await take(stream, 3)
    assert [(e["event"], e["data"].get("step_id")) for e in snapshot] == [
        ("plan", None),
        ("step", "a"),
        ("step", "b"),
    ]
    wf.change("a", StepStatus.RUNNING)
    wf.change("a", StepStatus.COMPLETED)  # both between two reads: both are sent
    await feed.read_once()
    events = await take(stream, 3)
    assert [(e["event"], e["data"].get("status"), e["data"].get("seq")) for e in events] == [
        ("step", "running", 1),
        ("step", "completed", 2),
        ("plan", "executing", None),
    ]
    assert events[1]["data"]["completed_at"] == "2026-01-01T00:00:02Z"
    assert events[2]["data"]["progress"] == 0.5
    wf.change("b", StepStatus.RUNNING)
    wf.change("b", StepStatus.COMPLETED)
    wf.plan = PlanStatus.COMPLETED
    await feed.read_once()
    events = await take(stream, 4)
    assert [(e["event"], e["data"].get("step_id"), e["data"]["status"]) for e in events] == [
        ("step", "b", "running"),
        ("step", "b", "completed"),
        ("plan", None, "completed"),
        ("end", None, "completed"),
    ]
    assert events[-1]["data"]["progress"] == 1
    ids = [int(e["id"].split(":")[1]) for e in events]
    assert ids == list(range(ids[0], ids[0] + 4))
    assert [c async for c in stream] == []  # the stream ended with `end`
    # Only the end and the plan's own changes read the status; steps were never paged.
    assert wf.calls["changes"] == 2 and wf.calls["steps"] == 0
    await h.close()


async def test_a_watcher_gets_step_changes_before_a_slow_status_read_returns():
    """The feed reads the status after a change of the plan's own state; a busy worker
    can take long to answer it. The step changes the feed already has must not wait
    for that answer."""
    wf = Workflow(["a", "b"])
    h = hub()
    feed = await open_feed(h, wf)
    stream = feed.stream(None)
    await take(stream, 3)  # the snapshot
    release = asyncio.Event()
    quick_status = wf.status

    async def slow_status() -> StatusView:
        await release.wait()
        return await quick_status()

    feed.fetch = slow_status
    wf.change("a", StepStatus.COMPLETED)
    wf.plan = PlanStatus.PAUSED  # the plan's own state changed: the feed reads status
    waiting = asyncio.create_task(take(stream, 1))
    for _ in range(5):  # the watcher sent what it had and waits for news
        await asyncio.sleep(0)
    assert not waiting.done()
    read = asyncio.create_task(feed.read_once())
    events = await waiting
    assert (events[0]["event"], events[0]["data"]["step_id"]) == ("step", "a")
    assert not read.done()  # ... while the status read still waits
    release.set()
    await read
    assert [e["data"]["status"] for e in await take(stream, 1)] == ["paused"]
    await h.close()


async def test_a_plan_that_closed_between_two_reads_ends_its_feed_from_the_status():
    """Once the workflow closed, its changes query is refused (a query would replay the
    whole run on a worker): the feed reads the status (the store's, for an ended plan),
    journals the steps that changed since, and ends."""
    wf = Workflow(["a", "b"])
    h = hub()
    feed = await open_feed(h, wf)
    stream = feed.stream(None)
    await take(stream, 3)
    wf.change("a", StepStatus.COMPLETED)
    wf.change("b", StepStatus.COMPLETED)
    wf.plan = PlanStatus.COMPLETED

    async def closed(since: int) -> ChangesView:
        raise PlanClosed("p")

    feed.read_changes = closed
    await feed.read_once()
    events = await take(stream, 4)
    assert [
        (e["event"], e["data"].get("step_id"), e["data"]["status"], e["data"].get("seq"))
        for e in events
    ] == [
        ("step", "a", "completed", 1),  # numbered: the status's recent changes reach back
        ("step", "b", "completed", 2),
        ("plan", None, "completed", None),
        ("end", None, "completed", None),
    ]
    assert feed.closed
    await h.close()


async def test_a_closed_plan_with_more_changes_than_its_status_lists_resyncs_its_feed():
    wf = Workflow(["a", "b", "c"])
    wf.recent = 1  # the status lists only the newest change
    h = hub()
    feed = await open_feed(h, wf)
    stream = feed.stream(None)
    await take(stream, 4)
    for sid in ("a", "b", "c"):
        wf.change(sid, StepStatus.COMPLETED)
    wf.plan = PlanStatus.COMPLETED

    async def closed(since: int) -> ChangesView:
        raise PlanClosed("p")

    feed.read_changes = closed
    await feed.read_once()
    events = await take(stream, 5)
    assert [(e["event"], e["data"].get("step_id"), e["data"]["status"]) for e in events] == [
        ("step", "a", "completed"),
        ("step", "b", "completed"),
        ("step", "c", "completed"),
        ("plan", None, "completed"),
        ("end", None, "completed"),
    ]
    await h.close()


async def test_dropped_changes_resync_the_feed_from_status_and_every_step_page():
    wf = Workflow([f"s{i}" for i in range(5)], journal=2, big=True)
    h = hub()
    feed = await open_feed(h, wf)
    assert list(feed.known) == [f"s{i}" for i in range(5)]  # the pages completed the status
    stream = feed.stream(None)
    assert len(await take(stream, 6)) == 6
    for i in range(4):
        wf.change(f"s{i}", StepStatus.COMPLETED)
    before = wf.calls["steps"]
    await feed.read_once()  # the journal kept 2 of 4 changes: the feed reads everything
    assert wf.calls["steps"] > before
    events = await take(stream, 5)
    steps = [(e["data"]["step_id"], e["data"]["status"]) for e in events if e["event"] == "step"]
    assert steps == [(f"s{i}", "completed") for i in range(4)]
    assert events[-1]["event"] == "plan" and events[-1]["data"]["progress"] == 0.8
    wf.change("s4", StepStatus.RUNNING)  # and then it follows the changes again
    await feed.read_once()
    [ev] = await take(stream, 1)
    assert (ev["data"]["step_id"], ev["data"]["seq"]) == ("s4", 5)
    await h.close()


async def test_a_watcher_too_far_behind_gets_a_resync_and_a_snapshot(
    monkeypatch: pytest.MonkeyPatch,
):
    monkeypatch.setattr(api.sse, "JOURNAL_SIZE", 4)
    wf = Workflow(["a", "b", "c"])
    h = hub()
    feed = await open_feed(h, wf)
    slow = feed.stream(None)
    assert len(await take(slow, 4)) == 4
    for sid in ("a", "b", "c"):
        wf.change(sid, StepStatus.RUNNING)
        await feed.read_once()
        wf.change(sid, StepStatus.COMPLETED)
        await feed.read_once()
    events = await take(slow, 5)
    assert events[0]["event"] == "resync"
    assert [(e["event"], e["data"].get("status")) for e in events[1:]] == [
        ("plan", "executing"),
        ("step", "completed"),
        ("step", "completed"),
        ("step", "completed"),
    ]
    # A reconnect with an id whose events are gone: resync, then the snapshot.
    again = await take(feed.stream(f"{feed.epoch}:1"), 5)
    assert [e["event"] for e in again] == ["resync", "plan", "step", "step", "step"]
    await h.close()


async def test_two_watchers_share_one_reader_of_the_plan():
    wf = Workflow(["a", "b"])
    h = hub()
    feed = await open_feed(h, wf)
    assert await h.open("p", wf.status, wf.changes, wf.page) is feed
    one, two = feed.stream(None), feed.stream(None)
    first = await take(one, 3)
    assert await take(two, 3) == first
    for to in (StepStatus.RUNNING, StepStatus.COMPLETED):
        wf.change("a", to)
        await feed.read_once()
    got_one, got_two = await take(one, 3), await take(two, 3)
    assert got_one == got_two
    assert [e["data"]["status"] for e in got_one] == ["running", "completed", "executing"]
    assert feed.subscribers == 2 and feed.polls == 2
    assert wf.calls["changes"] == feed.polls  # one read per poll, whoever watches
    await h.close()


async def test_an_older_worker_is_followed_by_comparing_its_status():
    wf = Workflow(["a", "b"])
    wf.old = True
    h = hub()
    feed = await open_feed(h, wf)
    stream = feed.stream(None)
    assert len(await take(stream, 3)) == 3
    wf.change("a", StepStatus.RUNNING)
    await feed.read_once()
    assert feed.mode == "status"
    [ev] = await take(stream, 1)
    assert (ev["event"], ev["data"]["step_id"], ev["data"]["status"]) == ("step", "a", "running")
    assert ev["data"]["seq"] is None
    wf.change("a", StepStatus.COMPLETED)
    wf.change("b", StepStatus.RUNNING)
    wf.change("b", StepStatus.COMPLETED)  # between two reads: seen once, completed
    wf.plan = PlanStatus.COMPLETED
    await feed.read_once()
    events = await take(stream, 4)
    assert [(e["event"], e["data"].get("step_id"), e["data"]["status"]) for e in events] == [
        ("step", "a", "completed"),
        ("step", "b", "completed"),
        ("plan", None, "completed"),
        ("end", None, "completed"),
    ]
    assert wf.calls["changes"] == 1  # asked once; then the status alone
    await h.close()


# --- the route, against the real worker ---------------------------------------------


async def test_two_event_streams_of_a_plan_get_the_same_events_from_one_feed(
    http: httpx.AsyncClient, app: FastAPI
):
    plan_id = await create_and_execute(
        http, plan_doc([wait_step("a", 0.3), wait_step("b", 0.3, ["a"])])
    )
    url = f"/api/plans/{plan_id}/events"
    one, two = await asyncio.gather(http.get(url), http.get(url))
    a, b = parse_sse(one.text), parse_sse(two.text)
    assert a[-1]["event"] == "end" and b[-1]["event"] == "end"
    assert a[-1]["data"]["status"] == "completed"
    assert {e["id"].split(":")[0] for e in a + b} == {a[0]["id"].split(":")[0]}  # one feed
    seen_b = [e["data"]["status"] for e in a if e.get("data", {}).get("step_id") == "b"]
    assert seen_b[-1] == "completed"


async def test_the_event_stream_reads_the_workflows_changes_numbered_by_seq(
    http: httpx.AsyncClient, app: FastAPI
):
    plan_id = await create_and_execute(
        http, plan_doc([wait_step("a", 0.2), wait_step("b", 0.2, ["a"]), wait_step("c", 0, ["b"])])
    )
    r = await http.get(f"/api/plans/{plan_id}/events")
    events = parse_sse(r.text)
    assert events[-1]["event"] == "end" and events[-1]["data"]["status"] == "completed"
    feed = app.state.services.hub.feeds.get(plan_id)
    assert feed is None or feed.mode == "changes"
    changes = [e["data"] for e in events if e["event"] == "step" and e["data"]["seq"]]
    seqs = [c["seq"] for c in changes]
    assert seqs == sorted(seqs) and len(set(seqs)) == len(seqs), seqs
    # every step's completion arrives, numbered by the workflow
    assert {c["step_id"] for c in changes if c["status"] == "completed"} == {"a", "b", "c"}
    page = (await http.get(f"/api/plans/{plan_id}/steps", params={"status": "completed"})).json()
    assert page["total"] == 3

"""The API and the workers stay up when the database does not.

The store (PostgreSQL) is reached through :class:`tests.tcp_proxy.TcpProxy`, by the
worker and by the API, and then cut (every connection reset) or hung (connections taken,
nothing answered):

* plans keep running and take controls while the store is cut; ``/healthz`` answers
  throughout, status comes from Temporal, reads that need the store answer 503; once the
  store is back every plan's status, logs and audit trail read from the store are
  complete. The cut lasts ``PLANSMITH_TEST_STORE_CUT_S`` seconds (8 here; the issue's
  acceptance uses 30: ``PLANSMITH_TEST_STORE_CUT_S=30``);
* a hung database answers 503 within the API's timeout, then at once, and ``/healthz``
  and ``/readyz`` stay fast;
* the SSE hub keeps nothing for plan ids that are not there.
"""

from __future__ import annotations

import asyncio
import os
import time
import uuid
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
import sqlalchemy as sa
from temporalio.client import Client

from api.errors import not_found
from api.sse import EventHub
from api.store_reads import PlanStore, StorePool
from config import ApiSettings, get_settings
from plans.models import Plan, PlanStatus
from plans.run_state import AuditEntry, LogEntry
from plans.views import LogsQuery
from store import db
from tests.api.serving import serve
from tests.api.test_plans_routes import TEST_CONFIG, make_app
from tests.helpers import start, wait_for, worker_with
from tests.tcp_proxy import TcpProxy, pg_schema_behind_proxy

CUT_S = float(os.environ.get("PLANSMITH_TEST_STORE_CUT_S", "8"))
PLANS = 10


@pytest.fixture
def pg_behind_proxy(pg_database: str) -> Iterator[tuple[str, str, TcpProxy]]:
    with pg_schema_behind_proxy(pg_database) as found:
        yield found


def chained_plan(n_steps: int = 4, seconds: float = 1.0, approval: bool = True) -> Plan:
    steps = [
        {
            "id": f"s{i}",
            "tool": "wait",
            "params": {"seconds": seconds},
            "depends_on": [f"s{i - 1}"] if i else [],
        }
        for i in range(n_steps)
    ]
    return Plan.model_validate(
        {
            "id": f"outage-{uuid.uuid4().hex[:10]}",
            "title": "store outage",
            "options": {"require_approval": approval},
            "steps": steps,
        }
    )


class Heartbeat:
    """``GET /healthz`` every 0.1 s while it runs: how many answered, the slowest one."""

    def __init__(self, http: httpx.AsyncClient):
        self.http = http
        self.answers: list[tuple[int, float]] = []
        self.task: asyncio.Task[None] | None = None

    async def _beat(self) -> None:
        while True:
            t = time.monotonic()
            r = await self.http.get("/healthz")
            self.answers.append((r.status_code, time.monotonic() - t))
            await asyncio.sleep(0.1)

    def __enter__(self) -> Heartbeat:
        self.task = asyncio.create_task(self._beat())
        return self

    def __exit__(self, *exc: object) -> None:
        assert self.task is not None
        self.task.cancel()


async def test_plans_run_through_a_store_cut_and_the_store_catches_up(
    client: Client, task_queue: str, pg_behind_proxy: Any
) -> None:
    direct_url, proxy_url, proxy = pg_behind_proxy
    settings = get_settings().replace(store={"database_url": proxy_url})
    app = make_app(client, task_queue, database_url=proxy_url)
    async with worker_with(client, task_queue, settings=settings), serve(app) as http:
        plans = [chained_plan() for _ in range(PLANS)]
        handles = [await start(client, p, task_queue) for p in plans]
        for h in handles:
            await wait_for(h, lambda s: s.status == PlanStatus.PENDING_APPROVAL)
        r = await http.get("/api/plans", params={"limit": 100})
        assert r.status_code == 200, r.text  # the store answers through the proxy
        assert proxy.accepted > 0

        with Heartbeat(http) as beat:
            proxy.cut()
            cut_at = time.monotonic()
            for p in plans:
                # a person approves while the store is down; a second approval is refused
                r = await http.post(f"/api/plans/{p.id}/approve", json={"by": "alice"})
                assert r.status_code == 200, r.text
                r = await http.post(f"/api/plans/{p.id}/approve", json={"by": "mallory"})
                assert r.status_code == 409, r.text
            for p in plans:  # status from Temporal keeps answering
                r = await http.get(f"/api/plans/{p.id}/status")
                assert r.status_code == 200, r.text
                assert r.json()["status"] in ("executing", "completed")
            t = time.monotonic()
            r = await http.get("/api/plans")  # only the store can list: 503, in time
            assert r.status_code == 503, r.text
            assert time.monotonic() - t < TEST_CONFIG.rpc_timeout_s + 1
            r = await http.get("/readyz")
            assert r.status_code == 503 and r.json()["database"] == "unreachable"
            await asyncio.sleep(max(0.0, CUT_S - (time.monotonic() - cut_at)))
            assert proxy.refused > 0  # the worker and the API did try the store meanwhile
            proxy.restore()
            results = await asyncio.wait_for(
                asyncio.gather(*(h.result() for h in handles)), timeout=120
            )
        assert [r.status for r in results] == [PlanStatus.COMPLETED] * PLANS
        codes = [code for code, _ in beat.answers]
        assert len(codes) >= CUT_S * 5 and set(codes) == {200}
        assert max(s for _, s in beat.answers) < 1.0

        # Everything is in the store: read it directly (not through the proxy).
        direct = db.make_engine(direct_url, poolclass=sa.NullPool)
        store = PlanStore(direct, timeout_s=30, pool=StorePool(2))
        try:
            for p, h in zip(plans, handles, strict=True):
                assert p.id is not None
                st = await store.status(p.id)
                assert st is not None and st.status == PlanStatus.COMPLETED, p.id
                assert [s.status.value for s in st.steps] == ["completed"] * 4
                logs = await store.logs(p.id, LogsQuery())
                live_logs = await h.query("logs", LogsQuery(), result_type=list[LogEntry])
                assert logs is not None
                assert [(e.level, e.message) for e in logs] == [
                    (e.level, e.message) for e in live_logs
                ]
                trail = await store.audit(p.id)
                live_trail = await h.query("audit", result_type=list[AuditEntry])
                assert trail is not None
                seen = [(e.by, e.action, e.accepted) for e in trail]
                assert seen == [(e.by, e.action, e.accepted) for e in live_trail]
                assert ("alice", "approve", True) in seen
                assert ("mallory", "approve", False) in seen
        finally:
            direct.dispose()

        r = await http.get("/readyz")
        assert r.status_code == 200, r.text
        r = await http.get("/api/plans", params={"limit": 100})
        assert r.status_code == 200
        listed = {row["plan_id"] for row in r.json()["plans"]}
        assert {p.id for p in plans} <= listed


async def test_a_hung_store_answers_503_in_time_and_health_stays_fast(
    client: Client, task_queue: str, worker: Any, pg_behind_proxy: Any
) -> None:
    _, proxy_url, proxy = pg_behind_proxy
    timeout = 1.0
    config = ApiSettings(**{**TEST_CONFIG.model_dump(), "rpc_timeout_s": timeout})
    app = make_app(client, task_queue, config=config, database_url=proxy_url)
    pool: StorePool = app.state.services.store.pool
    # a plan that runs (its worker writes to the tests' own store, not this one)
    plan = chained_plan(n_steps=1, seconds=30, approval=False)
    handle = await start(client, plan, task_queue)
    try:
        async with serve(app) as http:
            r = await http.get("/api/plans")
            assert r.status_code == 200, r.text
            proxy.hang()
            try:
                started = time.monotonic()

                async def timed_read() -> tuple[int, float, str]:
                    t = time.monotonic()
                    r = await http.get("/api/plans")
                    return r.status_code, time.monotonic() - t, r.json()["detail"]

                # as many reads as store threads: each waits for the database, then 503
                answers = await asyncio.gather(*(timed_read() for _ in range(pool.size)))
                assert {code for code, _, _ in answers} == {503}, answers
                assert all(s < timeout + 0.5 for _, s, _ in answers), answers
                assert all("did not answer within 1s" in d for _, _, d in answers), answers
                # every store thread still waits for the database: the next reads fail
                # at once (connecting waits up to PLANSMITH_DB_CONNECT_TIMEOUT_S, 5 s)
                assert pool.busy == pool.size
                for _ in range(4):
                    code, took, detail = await timed_read()
                    assert (code, "not answering" in detail) == (503, True), detail
                    assert took < 0.2

                for path in ("/healthz", "/readyz"):
                    t = time.monotonic()
                    r = await http.get(path)
                    assert time.monotonic() - t < 0.5, path
                    assert r.status_code == (200 if path == "/healthz" else 503), r.text
                # status comes from Temporal even though the draft lookup cannot be done
                r = await http.get(f"/api/plans/{plan.id}/status")
                assert r.status_code == 200, r.text
                assert r.json()["status"] == "executing"
                # a read that only the store can answer: 503, not a wrong 404
                r = await http.get("/api/plans/no-such-plan/status")
                assert r.status_code == 503, r.text
                assert time.monotonic() - started < 30
            finally:
                proxy.restore()  # the hung connections are closed: the threads come back
            deadline = time.monotonic() + 20
            while pool.busy and time.monotonic() < deadline:
                await asyncio.sleep(0.1)
            assert pool.busy == 0
            r = await http.get("/api/plans")
            assert r.status_code == 200, r.text
    finally:
        await handle.terminate("test over")


async def test_the_event_hub_keeps_nothing_for_unknown_plan_ids() -> None:
    hub = EventHub(ApiSettings(sse_poll_s=0.01, sse_linger_s=0.1))
    asked: list[str] = []

    async def fetch_of(plan_id: str) -> Any:
        async def fetch() -> Any:
            asked.append(plan_id)
            await asyncio.sleep(0)  # let other openers of the same id wait for the lock
            raise not_found(f"plan {plan_id} not found")

        return fetch

    async def open_unknown(plan_id: str) -> None:
        with pytest.raises(Exception) as e:
            await hub.open(plan_id, await fetch_of(plan_id))
        assert getattr(e.value, "status", None) == 404

    ids = [f"nope-{i}" for i in range(10_000)]
    for chunk in range(0, len(ids), 500):  # each id twice at once: they take turns
        batch = ids[chunk : chunk + 500]
        await asyncio.gather(*(open_unknown(i) for i in batch + batch))
        assert len(hub._locks) == 0
    assert len(asked) == 20_000  # every open did read (and was refused)
    assert hub.feeds == {} and hub._locks == {}

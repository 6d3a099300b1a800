"""Queued plans as API clients, the console and Prometheus see them: with
``PLANSMITH_MAX_CONCURRENT_PLANS=1``, a second plan's status, events, console page and
``GET /api/limits`` say ``queued`` until the first one ends."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

import httpx
import pytest_asyncio
from fastapi import FastAPI
from temporalio.service import RPCError
from temporalio.testing import WorkflowEnvironment

from api.app import create_app
from config import get_settings
from contracts.limits import limiter_workflow_id
from tests.api.serving import client
from tests.api.test_plans_routes import (
    TEST_CONFIG,
    create_and_execute,
    parse_sse,
    plan_doc,
    wait_step,
)
from tests.api.test_plans_routes import wait_status as wait_for_status
from tests.helpers import StartWorker


@pytest_asyncio.fixture
async def http(
    env: WorkflowEnvironment, start_worker: StartWorker, task_queue: str
) -> AsyncIterator[httpx.AsyncClient]:
    settings = get_settings().replace(
        temporal={"task_queue": task_queue, "max_concurrent_plans": 1},
        api=TEST_CONFIG.model_dump(),
    )
    await start_worker(None, settings)
    app: FastAPI = create_app(settings=settings, client=env.client)
    async with app.router.lifespan_context(app), client(app) as c:
        yield c
    with contextlib.suppress(RPCError):
        await env.client.get_workflow_handle(limiter_workflow_id(task_queue)).terminate("done")


async def test_a_queued_plan_in_status_events_limits_console_and_metrics(
    http: httpx.AsyncClient, task_queue: str
) -> None:
    r = await http.get("/api/limits")
    assert r.status_code == 200, r.text
    assert r.json()["max_concurrent_plans"] == 1 and r.json()["limiter"] is None

    first = await create_and_execute(http, plan_doc([wait_step("a", 2.0)]))
    await wait_for_status(http, first, lambda s: s["status"] == "executing")
    second = await create_and_execute(http, plan_doc([wait_step("b", 0)]))
    st = await wait_for_status(http, second, lambda s: s["status"] == "queued")
    assert st["queued_at"] is not None and st["started_at"] is None

    events = asyncio.create_task(http.get(f"/api/plans/{second}/events"))
    limits = (await http.get("/api/limits")).json()
    assert limits["limiter_workflow_id"] == f"plansmith-limiter-{task_queue}"
    assert [p["plan_id"] for p in limits["limiter"]["executing"]] == [first]
    assert [(q["position"], q["plan_id"]) for q in limits["limiter"]["queued"]] == [(1, second)]

    page = await http.get(f"/console/plans/{second}")
    assert page.status_code == 200, page.text
    assert 'class="status status-queued">queued<' in page.text and 'id="queued-note"' in page.text

    metrics = (await http.get("/metrics")).text
    assert 'plansmith_plans{status="queued"}' in metrics

    r = await events  # the whole stream, to its end
    plan_statuses = [
        e["data"]["status"] for e in parse_sse(r.text) if e["event"] in ("plan", "end")
    ]
    assert plan_statuses[0] == "queued" and plan_statuses[-1] == "completed"
    done = await wait_for_status(http, second, lambda s: s["status"] == "completed")
    assert done["queued_at"] is None
    limits = (await http.get("/api/limits")).json()["limiter"]
    assert (limits["executing"], limits["queued"], limits["granted_total"]) == ([], [], 2)

"""The API and the store: drafts survive the API process, reads fall back to the store
once the workflow is gone from Temporal, ``/readyz`` checks the database."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import httpx
import pytest
from temporalio.api.common.v1 import WorkflowExecution
from temporalio.api.workflowservice.v1 import DeleteWorkflowExecutionRequest
from temporalio.client import Client
from temporalio.service import RPCError, RPCStatusCode
from temporalio.testing import WorkflowEnvironment

from tests.api.serving import serve
from tests.api.test_executions_routes import execution
from tests.api.test_plans_routes import (
    closed,
    create_and_execute,
    make_app,
    plan_doc,
    wait_status,
    wait_step,
)


async def delete_workflow(client: Client, plan_id: str) -> None:
    """Delete the plan's workflow from Temporal and wait until Temporal forgets it (the
    dev server takes about half a minute)."""
    await client.workflow_service.delete_workflow_execution(
        DeleteWorkflowExecutionRequest(
            namespace=client.namespace,
            workflow_execution=WorkflowExecution(workflow_id=f"plan-{plan_id}"),
        )
    )
    deadline = time.monotonic() + 90
    while True:
        try:
            await client.get_workflow_handle(f"plan-{plan_id}").describe()
        except RPCError as e:
            if e.status == RPCStatusCode.NOT_FOUND:
                return
            raise
        assert time.monotonic() < deadline, "Temporal never forgot the workflow"
        await asyncio.sleep(0.5)


READS = ("status", "logs", "audit", "versions", "execution-state", "")


async def read_all(http: httpx.AsyncClient, plan_id: str) -> dict[str, Any]:
    out = {}
    for what in READS:
        r = await http.get(f"/api/plans/{plan_id}/{what}".rstrip("/"))
        assert r.status_code == 200, (what, r.text)
        out[what] = r.json()
    return out


async def test_reads_come_from_the_store_once_the_workflow_is_gone(
    env: WorkflowEnvironment, worker: Any, task_queue: str
):
    doc = plan_doc([wait_step("a", 0.1), wait_step("b", 0.1, ["a"])])
    graph = execution([{"id": "in", "type": "input"}], [], q="why")  # and its own routes
    eid = graph["execution_id"]
    v1 = [f"/api/v1/execute/{eid}/status", f"/api/v1/execute/{eid}/logs"]
    async with serve(make_app(env.client, task_queue)) as http:
        plan_id = await create_and_execute(http, doc)
        assert (await http.post("/api/v1/execute", json=graph)).status_code == 202
        await wait_status(http, plan_id, lambda s: s["status"] == "completed")
        await wait_status(http, eid, lambda s: s["status"] == "completed")
        await closed(env.client, plan_id)
        await closed(env.client, eid)
        before = await read_all(http, plan_id)
        assert before["status"]["status"] == "completed" and before["logs"] and before["audit"]
        v1_before = [(await http.get(path)).json() for path in v1]
        assert v1_before[0]["status"] == "completed" and v1_before[1]["logs"]

        await asyncio.gather(delete_workflow(env.client, plan_id), delete_workflow(env.client, eid))
        after = await read_all(http, plan_id)
        for what in READS:
            assert after[what] == before[what], what
        assert [(await http.get(path)).json() for path in v1] == v1_before

        listed = (await http.get("/api/plans", params={"status": "completed"})).json()
        mine = [p for p in listed["plans"] if p["plan_id"] == plan_id]
        assert mine and mine[0]["executed"] and listed["source"] == "store"

        # neither Temporal nor the store knows it: 404
        r = await http.get("/api/plans/never-was-a-plan/status")
        assert r.status_code == 404 and r.json()["code"] == "not_found"
        # the id stays taken: the store remembers the plan
        r = await http.post("/api/plans", json=doc)
        assert r.status_code == 409
        assert (await http.post(f"/api/plans/{plan_id}/execute")).status_code == 404

    # a new API process (another app on the same DATABASE_URL) answers the same
    async with serve(make_app(env.client, task_queue)) as http:
        again = await read_all(http, plan_id)
        assert again == before


async def test_a_draft_is_shared_by_api_processes_and_survives_a_restart(
    env: WorkflowEnvironment, worker: Any, task_queue: str
):
    doc = plan_doc([wait_step("a", 0.1)])
    plan_id = doc["id"]
    async with serve(make_app(env.client, task_queue)) as one:
        r = await one.post("/api/plans", json=doc)
        assert r.status_code == 201, r.text
        async with serve(make_app(env.client, task_queue)) as two:
            r = await two.get(f"/api/plans/{plan_id}")
            assert r.status_code == 200 and r.json()["status"] == "draft"
            assert r.json()["executed"] is False
            assert (await two.post("/api/plans", json=doc)).status_code == 200  # same document
            other = {**doc, "title": "another document"}
            assert (await two.post("/api/plans", json=other)).status_code == 409
            drafts = (await two.get("/api/plans", params={"status": "draft"})).json()
            assert plan_id in {p["plan_id"] for p in drafts["plans"]}
            st = (await two.get(f"/api/plans/{plan_id}/status")).json()
            assert st["status"] == "draft"

    # the first API is gone; a restarted one executes the draft it never saw created
    async with serve(make_app(env.client, task_queue)) as three:
        r = await three.post(f"/api/plans/{plan_id}/execute")
        assert r.status_code == 202 and r.json()["started"], r.text
        st = await wait_status(three, plan_id, lambda s: s["status"] == "completed")
        assert st["steps"][0]["status"] == "completed"
        detail = (await three.get(f"/api/plans/{plan_id}")).json()
        assert detail["executed"] is True
        await closed(env.client, plan_id)


async def test_readyz_reports_temporal_and_the_database(
    env: WorkflowEnvironment, task_queue: str, tmp_path: Any
):
    async with serve(make_app(env.client, task_queue)) as http:
        r = await http.get("/readyz")
        assert r.status_code == 200, r.text
        assert r.json() == {"status": "ok", "temporal": "reachable", "database": "reachable"}

    # a fresh database is migrated at start-up
    fresh = f"sqlite:///{tmp_path}/fresh.db"
    async with serve(make_app(env.client, task_queue, database_url=fresh)) as http:
        assert (await http.get("/readyz")).json()["database"] == "reachable"
        r = await http.post("/api/plans", json=plan_doc([wait_step("a")]))
        assert r.status_code == 201, r.text

    # a database that cannot be opened: 503, and why
    broken = f"sqlite:///{tmp_path}/no/such/dir/store.db"
    async with serve(make_app(env.client, task_queue, database_url=broken)) as http:
        r = await http.get("/readyz")
        assert r.status_code == 503
        body = r.json()
        assert body["temporal"] == "reachable" and "unreachable" in body["database"]


@pytest.fixture(autouse=True)
def _quiet_logs(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level("WARNING")

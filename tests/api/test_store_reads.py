"""The API and the store: drafts survive the API process, reads fall back to the store
once the workflow is gone from Temporal, ``/readyz`` checks the database."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import httpx
import pytest
from pydantic_core import to_jsonable_python
from temporalio.api.common.v1 import WorkflowExecution
from temporalio.api.workflowservice.v1 import DeleteWorkflowExecutionRequest
from temporalio.client import Client, Interceptor, OutboundInterceptor, QueryWorkflowInput
from temporalio.common import QueryRejectCondition
from temporalio.service import RPCError, RPCStatusCode
from temporalio.testing import WorkflowEnvironment

from api.schemas import LogLine
from config import get_settings
from plans.views import LogsQuery
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
from tests.helpers import worker_with
from workflows.client import PlanClient


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


class QueriesToWorkers(Interceptor):
    """Counts the queries a client sends that a worker must answer (Temporal answers
    those refused for a closed workflow itself)."""

    def __init__(self) -> None:
        self.sent: list[str] = []

    def intercept_client(self, next: OutboundInterceptor) -> OutboundInterceptor:
        counter = self

        class Counting(OutboundInterceptor):
            async def query_workflow(self, input: QueryWorkflowInput) -> Any:
                if input.reject_condition != QueryRejectCondition.NOT_OPEN:
                    counter.sent.append(input.query)
                return await super().query_workflow(input)

        return Counting(next)


async def test_an_ended_plan_is_read_from_the_store_not_replayed(
    env: WorkflowEnvironment, task_queue: str
):
    """Once a plan's workflow has closed, the API answers its reads from what the store
    recorded at its end: a query would make a worker replay the whole run (seconds for
    a big plan; with no worker up, a wait until the query times out). They say what the
    workflow itself says."""
    doc = plan_doc([wait_step("a", 0.1), wait_step("b", 0.1, ["a"])], require_approval=True)
    plans = PlanClient(
        get_settings().replace(temporal={"task_queue": task_queue}), client=env.client
    )
    queries = QueriesToWorkers()
    api_client = Client(**{**env.client.config(), "interceptors": [queries]})
    async with serve(make_app(api_client, task_queue)) as http, worker_with(env.client, task_queue):
        plan_id = await create_and_execute(http, doc)
        await wait_status(http, plan_id, lambda s: s["status"] == "pending_approval")
        fix = {"step_id": "b", "correction": {"updated_step": {"params": {"seconds": 0.2}}}}
        r = await http.post(f"/api/plans/{plan_id}/apply-correction", json=fix)
        assert r.status_code == 200, r.text
        r = await http.post(f"/api/plans/{plan_id}/approve", json={"version": 2})
        assert r.status_code == 200, r.text
        await wait_status(http, plan_id, lambda s: s["status"] == "completed")
        await closed(env.client, plan_id)
        # what the workflow answers: a worker replays the closed run for each
        asked = {
            "audit": to_jsonable_python(await plans.audit(plan_id)),
            "versions": to_jsonable_python((await plans.plan(plan_id)).versions),
            "logs": [
                LogLine(at=e.at, level=e.level, message=e.message, step_id=e.step_id).model_dump(
                    mode="json"
                )
                for e in await plans.logs(plan_id, LogsQuery())
            ],
        }
        state = to_jsonable_python(await plans.execution_state(plan_id))
        assert [v["version"] for v in asked["versions"]] == [1, 2]
        assert [a["action"] for a in asked["audit"]] == ["apply_correction", "approve"]

        queries.sent.clear()
        for what, expected in asked.items():
            r = await http.get(f"/api/plans/{plan_id}/{what}")
            assert r.status_code == 200, (what, r.text)
            assert r.json() == expected, what
        r = await http.get(f"/api/plans/{plan_id}/execution-state")
        assert r.status_code == 200 and r.json()["state"] == state["state"] == "completed"
        r = await http.get(f"/api/plans/{plan_id}")
        assert r.status_code == 200, r.text
        detail = r.json()
        assert (detail["status"], detail["version"]) == ("completed", 2)
        assert detail["plan"]["steps"][1]["params"]["seconds"] == 0.2
        r = await http.get(f"/api/plans/{plan_id}/status")
        assert r.status_code == 200 and r.json()["status"] == "completed"
        assert queries.sent == []  # no worker was asked to replay the run

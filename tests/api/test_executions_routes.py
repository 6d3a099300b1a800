"""The nodes/edges execution API (/api/v1/execute) on the real app, dev server and worker."""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest_asyncio
from temporalio.client import Client
from temporalio.testing import WorkflowEnvironment

from tests.api.serving import BASE_URL, JSON
from tests.api.test_plans_routes import closed, create_and_execute, make_app, plan_doc, wait_step


@pytest_asyncio.fixture
async def http(
    env: WorkflowEnvironment, worker: Any, task_queue: str
) -> AsyncIterator[httpx.AsyncClient]:
    app = make_app(env.client, task_queue)
    async with (
        app.router.lifespan_context(app),
        httpx.AsyncClient(
            transport=httpx.ASGITransport(app=app), base_url=BASE_URL, headers=JSON
        ) as c,
    ):
        yield c


EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "execution_request.json"


def execution(nodes: list[dict], edges: list[dict], **inputs: Any) -> dict:
    return {
        "execution_id": f"exec-{uuid.uuid4().hex[:10]}",
        "workflow_id": "wf-test",
        "definition": {"nodes": nodes, "edges": edges},
        "input_data": inputs,
    }


async def wait_execution(
    http: httpx.AsyncClient, execution_id: str, predicate: Any, timeout: float = 20
) -> dict:
    deadline = time.monotonic() + timeout
    while True:
        r = await http.get(f"/api/v1/execute/{execution_id}/status")
        assert r.status_code == 200, r.text
        st = r.json()
        if predicate(st):
            return st
        assert time.monotonic() < deadline, f"status not reached: {st}"
        await asyncio.sleep(0.05)


async def test_the_example_request_runs_to_completion(
    http: httpx.AsyncClient,
    client: Client,
):
    body = json.loads(EXAMPLE.read_text())
    body["execution_id"] = f"Exec {uuid.uuid4().hex[:6]}"  # not a valid plan id: cleaned
    r = await http.post("/api/v1/execute", json=body)
    assert r.status_code == 202, r.text
    first = r.json()
    assert first["execution_id"] == body["execution_id"] and first["status"] == "pending"
    st = await wait_execution(http, body["execution_id"], lambda s: s["status"] == "completed")
    assert st["progress"] == 1 and st["current_node"] is None
    logs = (await http.get(f"/api/v1/execute/{body['execution_id']}/logs")).json()
    assert logs["execution_id"] == body["execution_id"] and logs["count"] == len(logs["logs"])
    nodes = {entry["node_id"] for entry in logs["logs"]} - {None}
    assert nodes <= {n["id"] for n in body["definition"]["nodes"]} and nodes
    limited = (
        await http.get(f"/api/v1/execute/{body['execution_id']}/logs", params={"limit": 1})
    ).json()
    assert limited["count"] == 1
    # The execution is an ordinary plan too: its outputs are in the plan's status.
    plan_id = first["message"].rsplit("plan-", 1)[1]
    steps = {s["id"]: s for s in (await http.get(f"/api/plans/{plan_id}/status")).json()["steps"]}
    final = [s for s in steps.values() if s["description"].endswith("(output node result)")]
    assert final and final[0]["output"] == {
        "vip": "Welcome back, Ada! Your score: 97",
        "plain": None,
    }
    # Refused once it has ended.
    await closed(client, plan_id)
    again = await http.post("/api/v1/execute", json=body)
    assert again.status_code == 409 and again.json()["code"] == "already_ran"


async def test_running_execution_is_returned_not_started_twice(http: httpx.AsyncClient):
    body = execution(
        [
            {"id": "in", "type": "input"},
            {"id": "ask", "type": "llm", "config": {"prompt": "hi {{input.q}}"}},
        ],
        [{"source": "in", "target": "ask"}],
        q="why",
    )
    r1, r2 = await asyncio.gather(
        http.post("/api/v1/execute", json=body), http.post("/api/v1/execute", json=body)
    )
    assert {r1.status_code, r2.status_code} == {202}, (r1.text, r2.text)
    # An llm node runs as an llm step; with no ANTHROPIC_API_KEY the offline model answers.
    st = await wait_execution(http, body["execution_id"], lambda s: s["status"] == "completed")
    assert st["progress"] == 1
    plan_steps = (await http.get(f"/api/plans/{body['execution_id']}/status")).json()["steps"]
    ask = next(s for s in plan_steps if s["id"] == "ask")
    assert ask["kind"] == "llm" and ask["attempts"] == 1  # started once, not twice
    assert ask["output"]["offline"] is True and ask["output"]["text"].startswith("[offline]")
    assert "hi why" in ask["output"]["text"]  # the rendered prompt reached the model
    logs = (await http.get(f"/api/v1/execute/{body['execution_id']}/logs")).json()
    assert any(e["node_id"] == "ask" for e in logs["logs"])


async def test_invalid_definitions_are_422_with_located_problems(http: httpx.AsyncClient):
    body = execution(
        [
            {"id": "in", "type": "input"},
            {"id": "x", "type": "webhook"},
            {"id": "t", "type": "transform", "config": {"code": "return 1"}},
        ],
        [{"source": "in", "target": "t"}, {"source": "t", "target": "ghost"}],
    )
    r = await http.post("/api/v1/execute", json=body)
    assert r.status_code == 422, r.text
    got = {p["location"]: p["message"] for p in r.json()["problems"]}
    assert "unknown node type 'webhook'" in got["definition.nodes[1].type"]
    assert "code transforms are not run" in got["definition.nodes[2].config.code"]
    assert got["definition.edges[1].target"] == "unknown node 'ghost'"
    r = await http.post("/api/v1/execute", json={"execution_id": "e", "workflow_id": "w"})
    assert r.status_code == 422 and r.json()["problems"][0]["location"] == "definition"
    r = await http.get(f"/api/v1/execute/nope-{uuid.uuid4().hex[:6]}/status")
    assert r.status_code == 404


async def test_pause_resume_and_stop(http: httpx.AsyncClient):
    # A nodes/edges execution ends in an instant; a plan with a slow step, reached by its id as an
    # execution id, shows the controls.
    plan_id = await create_and_execute(
        http, plan_doc([wait_step("slow", 30), wait_step("next", 0, ["slow"])])
    )
    await wait_execution(
        http, plan_id, lambda s: s["status"] == "running" and s["current_node"] == "slow"
    )
    r = await http.post(f"/api/v1/execute/{plan_id}/pause")
    assert r.status_code == 200 and r.json()["status"] == "paused", r.text
    assert r.json()["action"] == "pause"
    r = await http.post(f"/api/v1/execute/{plan_id}/pause")
    assert r.status_code == 409 and "already paused" in r.json()["detail"]
    st = await wait_execution(http, plan_id, lambda s: s["status"] == "paused")
    assert "waiting for resume" in st["message"]
    r = await http.post(f"/api/v1/execute/{plan_id}/resume", json={"by": "erin"})
    assert r.status_code == 200 and r.json()["status"] == "running", r.text
    r = await http.post(f"/api/v1/execute/{plan_id}/resume")
    assert r.status_code == 409 and "not paused" in r.json()["detail"]
    r = await http.post(f"/api/v1/execute/{plan_id}/stop")
    assert r.status_code == 200, r.text
    st = await wait_execution(http, plan_id, lambda s: s["status"] == "stopped", timeout=10)
    assert "stopped through the nodes/edges execution API" in st["message"]
    r = await http.post(f"/api/v1/execute/{plan_id}/stop")
    assert r.status_code == 409
    audit = (await http.get(f"/api/plans/{plan_id}/audit")).json()
    assert [(a["by"], a["action"]) for a in audit if a["accepted"] and a["by"] != "policy"] == [
        ("api", "pause"),
        ("erin", "resume"),
        ("api", "cancel"),
    ]

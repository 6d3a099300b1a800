"""The REST façade against the real app (httpx + ASGI), a real dev server and worker."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import itertools
import json
import logging
import os
import socket
import time
import uuid
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
import pytest_asyncio
import uvicorn
from fastapi import FastAPI
from temporalio.client import Client
from temporalio.contrib.pydantic import pydantic_data_converter
from temporalio.testing import WorkflowEnvironment

from api.app import create_app
from api.errors import api_error_of
from api.logs import JsonFormatter, configure_logging
from config import ApiSettings, Settings, get_settings
from tests.api.serving import BASE_URL, JSON
from workflows.client import PlanClient
from workflows.errors import ControlRefused, InvalidControl, PlanNotFound
from workflows.plan_workflow import PlanWorkflow

TEST_CONFIG = ApiSettings(
    rpc_timeout_s=5.0,
    connect_timeout_s=2.0,
    sse_poll_s=0.05,
    sse_linger_s=5.0,
    sse_ping_s=1.0,
    log_format="json",
)


def make_app(
    client: Client | None,
    task_queue: str,
    api_keys: str | None = None,
    config: ApiSettings = TEST_CONFIG,
    **kw: Any,
) -> FastAPI:
    settings = get_settings().replace(
        temporal={"task_queue": task_queue}, api={**config.model_dump(), "keys": api_keys}
    )
    return create_app(settings=settings, client=client, **kw)


@pytest_asyncio.fixture
async def app(env: WorkflowEnvironment, worker: Any, task_queue: str) -> AsyncIterator[FastAPI]:
    a = make_app(env.client, task_queue)
    async with a.router.lifespan_context(a):
        yield a


@pytest_asyncio.fixture
async def http(app: FastAPI) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app), base_url=BASE_URL, headers=JSON, timeout=30
    ) as c:
        yield c


def pid() -> str:
    return f"api-{uuid.uuid4().hex[:10]}"


def wait_step(sid: str, seconds: float = 0, deps: list[str] | None = None, **kw: Any) -> dict:
    return {
        "id": sid,
        "tool": "wait",
        "params": {"seconds": seconds},
        "depends_on": deps or [],
        **kw,
    }


def plan_doc(steps: list[dict], plan_id: str | None = None, **options: Any) -> dict:
    return {
        "id": plan_id or pid(),
        "title": "api test",
        "options": {"require_approval": False, **options},
        "steps": steps,
    }


async def create_and_execute(http: httpx.AsyncClient, doc: dict) -> str:
    r = await http.post("/api/plans", json=doc)
    assert r.status_code == 201, r.text
    r = await http.post(f"/api/plans/{doc['id']}/execute")
    assert r.status_code == 202, r.text
    return str(doc["id"])


async def wait_status(
    http: httpx.AsyncClient, plan_id: str, predicate: Any, timeout: float = 20
) -> dict:
    deadline = time.monotonic() + timeout
    while True:
        r = await http.get(f"/api/plans/{plan_id}/status")
        assert r.status_code == 200, r.text
        st = r.json()
        if predicate(st):
            return st
        if time.monotonic() > deadline:
            raise AssertionError(f"status not reached: {st['status']} {st['steps']}")
        await asyncio.sleep(0.05)


async def closed(client: Client, plan_id: str) -> None:
    """Wait until the plan's run has closed (it shows its final status a moment before)."""
    with contextlib.suppress(Exception):
        await asyncio.wait_for(client.get_workflow_handle(f"plan-{plan_id}").result(), 20)


def steps_of(st: dict) -> dict[str, dict]:
    return {s["id"]: s for s in st["steps"]}


def parse_sse(text: str) -> list[dict]:
    events = []
    for block in text.split("\n\n"):
        ev: dict[str, Any] = {}
        for line in block.splitlines():
            if line.startswith(":"):
                continue
            key, _, value = line.partition(": ")
            if key == "data":
                ev["data"] = json.loads(value)
            elif key in ("id", "event", "retry"):
                ev[key] = value
        if "event" in ev:
            events.append(ev)
    return events


# --- the whole life of a plan ---------------------------------------------------------


async def test_create_execute_approve_gate_and_read_everything(
    http: httpx.AsyncClient, client: Client
):
    plan_id = pid()
    doc = plan_doc(
        [
            {"id": "build", "tool": "wait", "params": {"seconds": 0, "result": "app.tgz"}},
            wait_step("deploy", 0, ["build"], requires_approval=True, description="deploy it"),
        ],
        plan_id,
        require_approval=True,
    )
    r = await http.post("/api/plans", json=doc)
    assert r.status_code == 201, r.text
    created = r.json()
    assert created["status"] == "draft" and created["created"] is True
    assert r.headers["location"] == f"/api/plans/{plan_id}"
    # The same document again is not an error; a different one under the id is.
    again = await http.post("/api/plans", json=doc)
    assert again.status_code == 200 and again.json()["created"] is False
    other = await http.post("/api/plans", json=doc | {"title": "something else"})
    assert other.status_code == 409 and other.json()["code"] == "id_taken"

    # A draft answers every read from its document, and refuses controls and events.
    st = (await http.get(f"/api/plans/{plan_id}/status")).json()
    assert st["status"] == "draft" and [s["status"] for s in st["steps"]] == ["pending"] * 2
    detail = (await http.get(f"/api/plans/{plan_id}")).json()
    assert detail["executed"] is False and detail["plan"]["id"] == plan_id
    assert (await http.get(f"/api/plans/{plan_id}/versions")).json()[0]["version"] == 1
    assert (await http.get(f"/api/plans/{plan_id}/audit")).json() == []
    es = (await http.get(f"/api/plans/{plan_id}/execution-state")).json()
    assert (es["state"], es["status"]) == ("paused", "draft")
    listed = (await http.get("/api/plans", params={"status": "draft"})).json()
    assert plan_id in {p["plan_id"] for p in listed["plans"] if not p["executed"]}
    refused = await http.post(f"/api/plans/{plan_id}/pause", json={})
    assert refused.status_code == 409 and refused.json()["code"] == "not_executed"
    assert (await http.get(f"/api/plans/{plan_id}/events")).status_code == 409

    r = await http.post(f"/api/plans/{plan_id}/execute")
    assert r.status_code == 202 and r.json()["started"] is True, r.text
    assert r.json()["workflow_id"] == f"plan-{plan_id}"
    r = await http.post(f"/api/plans/{plan_id}/execute")  # idempotent
    assert r.status_code == 202 and r.json()["started"] is False, r.text

    await wait_status(http, plan_id, lambda s: s["status"] == "pending_approval")
    # A stale approval is refused at once with the workflow's reason.
    stale = await http.post(f"/api/plans/{plan_id}/approve", json={"version": 7, "by": "carol"})
    assert stale.status_code == 409, stale.text
    assert stale.json()["code"] == "transition_refused"
    assert "stale approval for version 7" in stale.json()["detail"]
    ok = await http.post(f"/api/plans/{plan_id}/approve", json={"comment": "go", "by": "carol"})
    assert ok.status_code == 200, ok.text
    assert ok.json()["control"] == "approve" and ok.json()["accepted"] is True

    st = await wait_status(http, plan_id, lambda s: s["status"] == "waiting_approval")
    assert st["waiting_for"]["kind"] == "step_approval" and st["waiting_for"]["step_id"] == "deploy"
    es = (await http.get(f"/api/plans/{plan_id}/execution-state")).json()
    assert (es["state"], es["status"]) == ("paused", "waiting_approval") and es[
        "step_id"
    ] == "deploy"
    bad_step = await http.post(f"/api/plans/{plan_id}/steps/nope/approve", json={})
    assert bad_step.status_code == 409 and "no step 'nope'" in bad_step.json()["detail"]
    r = await http.post(f"/api/plans/{plan_id}/steps/deploy/approve")  # no body at all
    assert r.status_code == 200, r.text

    st = await wait_status(http, plan_id, lambda s: s["status"] == "completed")
    assert steps_of(st)["build"]["output"]["result"] == "app.tgz"
    late = await http.post(f"/api/plans/{plan_id}/reject", json={"reason": "too late"})
    assert late.status_code == 409 and "already ended completed" in late.json()["detail"]

    audit = (await http.get(f"/api/plans/{plan_id}/audit")).json()
    mine = [(a["by"], a["action"], a["accepted"]) for a in audit if a["by"] != "policy"]
    assert ("carol", "approve", False) in mine and ("carol", "approve", True) in mine
    assert ("api", "approve_step", True) in mine
    logs = (await http.get(f"/api/plans/{plan_id}/logs", params={"level": "warning"})).json()
    assert logs and all(entry["level"] in ("warning", "error") for entry in logs)
    two = (await http.get(f"/api/plans/{plan_id}/logs", params={"limit": 2})).json()
    assert len(two) == 2
    detail = (await http.get(f"/api/plans/{plan_id}")).json()
    assert detail["executed"] is True and detail["status"] == "completed"
    await closed(client, plan_id)
    r = await http.post(f"/api/plans/{plan_id}/execute")
    assert r.status_code == 409 and r.json()["code"] == "already_ran"
    again = await http.post("/api/plans", json=doc)
    assert again.status_code == 409 and again.json()["code"] == "id_taken"


async def test_invalid_document_lists_every_located_problem(http: httpx.AsyncClient):
    doc = plan_doc(
        [
            wait_step("build"),
            wait_step("test", 0, ["bulid"]),
            {"id": "fetch", "tool": "http_request", "params": {"url": "x", "methd": "GET"}},
            wait_step("a", 0, ["b"]),
            wait_step("b", 0, ["a"]),
            {"id": "odd", "tool": "wiat", "params": {}},
        ]
    )
    r = await http.post("/api/plans", json=doc)
    assert r.status_code == 422, r.text
    body = r.json()
    got = {p["location"]: p["message"] for p in body["problems"]}
    assert "unknown step 'bulid' (did you mean 'build'?)" in got["steps[1].depends_on[0]"]
    assert "methd" in got["steps[2].params"]
    assert any(k.startswith("steps[") and "dependency cycle: " in m for k, m in got.items())
    assert "unknown tool 'wiat'" in got["steps[5].tool"]
    assert body["code"] == "invalid"

    shape = plan_doc([{"id": "Bad Id", "tool": "wait", "depends-on": [], "params": {}}])
    shape["options"]["on_error"] = "explode"
    r = await http.post("/api/plans", json=shape)
    assert r.status_code == 422
    got = {p["location"]: p["message"] for p in r.json()["problems"]}
    assert got["steps[0].depends-on"] == "unknown field"
    assert "must match" in got["steps[0].id"]
    assert "options.on_error" in got
    assert (await http.post("/api/plans", content=b"{not json")).status_code == 422
    assert (await http.post("/api/plans", json=[1, 2])).status_code == 422


async def test_unknown_plans_and_bad_ids(http: httpx.AsyncClient):
    for path in ("", "/status", "/execution-state", "/logs", "/audit", "/versions", "/events"):
        r = await http.get(f"/api/plans/no-such-plan{path}")
        assert r.status_code == 404, (path, r.text)
        assert r.json()["code"] == "not_found"
    for verb in ("execute", "approve", "resume-from-failure"):
        r = await http.post(f"/api/plans/no-such-plan/{verb}", json={})
        assert r.status_code == 404, (verb, r.text)
    r = await http.post("/api/plans/no-such-plan/steps/s1/skip", json={"reason": "x"})
    assert r.status_code == 404
    r = await http.get("/api/plans/Not_A_Valid_ID/status")
    assert r.status_code == 422 and r.json()["problems"][0]["location"] == "path.plan_id"
    r = await http.get("/api/plans/x/logs", params={"level": "loud", "limit": 0})
    assert {p["location"] for p in r.json()["problems"]} == {"query.level", "query.limit"}


async def test_control_bodies_are_validated_and_invalid_control_maps_to_422(
    http: httpx.AsyncClient, app: FastAPI
):
    plan_id = await create_and_execute(http, plan_doc([wait_step("a")], require_approval=True))
    await wait_status(http, plan_id, lambda s: s["status"] == "pending_approval")
    r = await http.post(f"/api/plans/{plan_id}/approve", json={"version": 0, "extra": 1})
    assert r.status_code == 422
    assert {p["location"] for p in r.json()["problems"]} == {"version", "extra"}
    r = await http.post(f"/api/plans/{plan_id}/reject", json={})
    assert r.status_code == 422 and r.json()["problems"][0]["location"] == "reason"
    # The workflow's own validator (InvalidControl) answers 422 as well.
    plans: PlanClient = app.state.services.temporal
    with pytest.raises(InvalidControl) as info:
        await plans.update(plan_id, PlanWorkflow.approve, {"by": "x", "version": 0})
    assert api_error_of(info.value).status == 422
    assert "invalid approve argument" in str(info.value)
    r = await http.post(f"/api/plans/{plan_id}/reject", json={"reason": "no"})
    assert r.status_code == 200
    await wait_status(http, plan_id, lambda s: s["status"] == "rejected")


async def test_plan_client_sends_controls_as_signals_and_names_its_refusals(
    http: httpx.AsyncClient, app: FastAPI
):
    plan_id = await create_and_execute(http, plan_doc([wait_step("a")], require_approval=True))
    await wait_status(http, plan_id, lambda s: s["status"] == "pending_approval")
    plans: PlanClient = app.state.services.temporal
    await plans.signal(plan_id, "approve", {"by": "sig"})
    await wait_status(http, plan_id, lambda s: s["status"] == "completed")
    audit = await plans.audit(plan_id)
    assert any(a.action == "approve" and a.by == "sig" and a.via == "signal" for a in audit)
    await closed(await plans.client(), plan_id)
    with pytest.raises(ControlRefused, match="cancel refused: the plan already ended completed"):
        await plans.control(plan_id, "cancel", {"by": "late", "reason": "too late"})
    with pytest.raises(PlanNotFound):
        await plans.status(f"no-such-{plan_id}")


async def test_ask_correct_retry_pause_resume_and_skip(http: httpx.AsyncClient):
    doc = plan_doc(
        [
            {"id": "fetch", "tool": "boom", "params": {"permanent": True}},
            wait_step("after", 0, ["fetch"]),
            wait_step("side", 0),
            {"id": "other", "tool": "boom", "params": {"permanent": True}},
        ],
        on_error="ask",
    )
    plan_id = await create_and_execute(http, doc)
    await wait_status(http, plan_id, lambda s: s["status"] == "waiting_correction")
    r = await http.post(
        f"/api/plans/{plan_id}/apply-correction",
        json={
            "step_id": "fetch",
            "correction": {"updated_step": {"tool": "wait", "params": {"seconds": 0}}},
            "approve": True,  # correct and approve: the step needs no approve_step after
        },
    )
    assert r.status_code == 200 and r.json()["version"] == 2, r.text
    bad = await http.post(
        f"/api/plans/{plan_id}/apply-correction",
        json={"step_id": "fetch", "correction": {"updated_step": {"tool": "nope"}}},
    )
    assert bad.status_code == 409 and "unknown tool 'nope'" in bad.json()["detail"]
    r = await http.post(f"/api/plans/{plan_id}/pause", json={"reason": "look first"})
    assert r.status_code == 200, r.text
    again = await http.post(f"/api/plans/{plan_id}/pause", json={})
    assert again.status_code == 409 and "already paused" in again.json()["detail"]
    r = await http.post(f"/api/plans/{plan_id}/resume", json={"feedback": "fine"})
    assert r.status_code == 200
    assert (await http.post(f"/api/plans/{plan_id}/steps/fetch/retry")).status_code == 200
    r = await http.post(f"/api/plans/{plan_id}/steps/other/skip", json={"reason": "by hand"})
    assert r.status_code == 200, r.text
    st = await wait_status(http, plan_id, lambda s: s["status"] in ("completed", "partial"))
    steps = steps_of(st)
    assert steps["fetch"]["status"] == "completed" and steps["after"]["status"] == "completed"
    assert steps["other"]["status"] == "skipped"
    versions = (await http.get(f"/api/plans/{plan_id}/versions")).json()
    assert [v["version"] for v in versions] == [1, 2]
    assert versions[1]["step_id"] == "fetch" and "tool" in versions[1]["diff"]["fetch"]
    assert (await http.get(f"/api/plans/{plan_id}")).json()["plan"]["steps"][0]["tool"] == "wait"


async def test_answer_a_clarification(http: httpx.AsyncClient):
    doc = plan_doc(
        [
            {
                "id": "ask",
                "tool": "wait",
                "params": {"seconds": 0, "result": "{{ answer }}"},
                "requires_clarification": True,
                "clarification_question": "Which region?",
            }
        ]
    )
    plan_id = await create_and_execute(http, doc)
    st = await wait_status(http, plan_id, lambda s: s["status"] == "waiting_clarification")
    assert st["waiting_for"]["question"] == "Which region?"
    r = await http.post(f"/api/plans/{plan_id}/steps/ask/answer", json={"answer": {"region": "eu"}})
    assert r.status_code == 200, r.text
    st = await wait_status(http, plan_id, lambda s: s["status"] == "completed")
    assert steps_of(st)["ask"]["output"]["result"] == {"region": "eu"}


async def test_resume_from_failure_carries_completed_steps(http: httpx.AsyncClient):
    doc = plan_doc(
        [wait_step("ok"), {"id": "bad", "tool": "boom", "params": {"permanent": True}}],
        on_error="continue",
    )
    plan_id = await create_and_execute(http, doc)
    await wait_status(http, plan_id, lambda s: s["status"] == "partial")
    r = await http.post(f"/api/plans/{plan_id}/resume-from-failure", json={"by": "dave"})
    assert r.status_code == 202, r.text
    assert r.json()["carried_steps"] == 1
    st = await wait_status(
        http, plan_id, lambda s: s["status"] == "partial" and s["steps"][1]["version"] == 2
    )
    assert steps_of(st)["ok"]["attempts"] == 1
    audit = (await http.get(f"/api/plans/{plan_id}/audit")).json()
    assert any(a["action"] == "resume_from_failure" and a["by"] == "dave" for a in audit)
    completed = await create_and_execute(http, plan_doc([wait_step("x")]))
    await wait_status(http, completed, lambda s: s["status"] == "completed")
    r = await http.post(f"/api/plans/{completed}/resume-from-failure")
    assert r.status_code == 409 and r.json()["code"] == "resume_refused"


async def test_cancel_and_list_from_visibility(http: httpx.AsyncClient):
    plan_id = await create_and_execute(http, plan_doc([wait_step("long", 30)]))
    await wait_status(http, plan_id, lambda s: s["steps"][0]["status"] == "running")
    r = await http.post(f"/api/plans/{plan_id}/cancel", json={"reason": "changed my mind"})
    assert r.status_code == 200, r.text
    await wait_status(http, plan_id, lambda s: s["status"] == "cancelled", timeout=10)
    deadline = time.monotonic() + 10
    while True:
        listed = (
            await http.get("/api/plans", params={"status": "cancelled", "limit": 1000})
        ).json()
        mine = [p for p in listed["plans"] if p["plan_id"] == plan_id]
        if mine and mine[0]["closed_at"]:
            break
        assert time.monotonic() < deadline, "the cancelled plan never showed in the list"
        await asyncio.sleep(0.2)
    assert mine[0]["executed"] and listed["source"] == "store"
    assert all(p["status"] == "cancelled" for p in listed["plans"])


async def test_generate_answers_a_validated_plan(http: httpx.AsyncClient):
    r = await http.post("/api/plans/generate", json={"task": "ship it"})  # the offline model
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["offline"] is True and body["plan_id"] is None
    assert (await http.post("/api/plans", json={**body["plan"], "id": pid()})).status_code == 201
    assert (await http.post("/api/plans/generate", json={})).status_code == 422
    # the planner is fully covered in test_planner*.py


# --- server-sent events ---------------------------------------------------------------


async def test_events_stream_until_the_end_and_resume_from_last_event_id(http: httpx.AsyncClient):
    plan_id = await create_and_execute(
        http, plan_doc([wait_step("a", 0.3), wait_step("b", 0.3, ["a"])])
    )
    r = await http.get(f"/api/plans/{plan_id}/events")  # ASGI: the whole stream, to its end
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
    events = parse_sse(r.text)
    assert events[0]["event"] == "plan" and {e["data"]["step_id"] for e in events[1:3]} == {
        "a",
        "b",
    }
    assert events[-1]["event"] == "end" and events[-1]["data"]["status"] == "completed"
    seqs = [int(e["id"].split(":")[1]) for e in events[3:]]
    assert seqs == sorted(seqs) and len(set(seqs)) == len(seqs), seqs
    assert all(b == a + 1 for a, b in itertools.pairwise(seqs)), seqs
    seen_b = [e["data"]["status"] for e in events if e.get("data", {}).get("step_id") == "b"]
    assert seen_b[-1] == "completed" and "running" in seen_b
    # Resuming after a middle event gives exactly the events after it.
    middle = events[len(events) // 2]
    r2 = await http.get(f"/api/plans/{plan_id}/events", headers={"Last-Event-ID": middle["id"]})
    rest = parse_sse(r2.text)
    assert [e["id"] for e in rest] == [e["id"] for e in events[events.index(middle) + 1 :]]
    # After the end: 204, so an EventSource stops reconnecting.
    r3 = await http.get(f"/api/plans/{plan_id}/events", headers={"Last-Event-ID": events[-1]["id"]})
    assert r3.status_code == 204
    # An id the server does not know: a fresh snapshot, then the end.
    r4 = await http.get(f"/api/plans/{plan_id}/events", headers={"Last-Event-ID": "zzz:9"})
    again = parse_sse(r4.text)
    assert again[0]["event"] == "plan" and again[-1]["event"] == "end"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def test_events_arrive_live_over_http(env: WorkflowEnvironment, worker: Any, task_queue: str):
    """A real server on 127.0.0.1: events arrive while the plan runs, not at its end."""
    app = make_app(env.client, task_queue)
    port = _free_port()
    server = uvicorn.Server(
        uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", lifespan="on")
    )
    serving = asyncio.create_task(server.serve())
    try:
        while not server.started:
            await asyncio.sleep(0.02)
        async with httpx.AsyncClient(
            base_url=f"http://127.0.0.1:{port}", headers=JSON, timeout=20
        ) as http:
            plan_id = await create_and_execute(
                http, plan_doc([wait_step("a")], require_approval=True)
            )
            seen: list[dict] = []
            approved = False

            async def watch() -> None:
                nonlocal approved
                async with http.stream("GET", f"/api/plans/{plan_id}/events") as resp:
                    assert resp.status_code == 200
                    buffer = ""
                    async for chunk in resp.aiter_text():
                        buffer += chunk
                        *blocks, buffer = buffer.split("\n\n")
                        for ev in parse_sse("\n\n".join(blocks)):
                            seen.append(ev)
                            if (
                                not approved
                                and ev["event"] == "plan"
                                and ev["data"]["status"] == "pending_approval"
                            ):
                                approved = True  # seen live: the plan cannot end without this
                                r = await http.post(f"/api/plans/{plan_id}/approve", json={})
                                assert r.status_code == 200, r.text

            await asyncio.wait_for(watch(), timeout=20)
            assert approved
            assert seen[-1]["event"] == "end" and seen[-1]["data"]["status"] == "completed"
            assert any(e["event"] == "step" and e["data"]["status"] == "completed" for e in seen)
    finally:
        server.should_exit = True
        await asyncio.wait_for(serving, 10)


# --- API keys, CORS, logs -------------------------------------------------------------


async def test_api_keys_and_the_recorded_actor(
    env: WorkflowEnvironment, worker: Any, task_queue: str
):
    app = make_app(env.client, task_queue, api_keys="k-alice:alice, k-bot")
    async with (
        app.router.lifespan_context(app),
        httpx.AsyncClient(
            transport=httpx.ASGITransport(app=app), base_url=BASE_URL, headers=JSON
        ) as http,
    ):
        assert (await http.get("/healthz")).status_code == 200
        assert (await http.get("/readyz")).status_code == 200
        assert (await http.get("/openapi.json")).status_code == 200
        r = await http.get("/api/plans")
        assert r.status_code == 401 and r.headers["www-authenticate"] == "Bearer"
        r = await http.get("/api/plans", headers={"Authorization": "Bearer wrong"})
        assert r.status_code == 401 and r.json()["detail"] == "unknown API key"
        assert (
            await http.get("/api/plans/x/status", headers={"X-API-Key": "nope"})
        ).status_code == 401
        alice = {"Authorization": "Bearer k-alice"}
        doc = plan_doc([wait_step("a")], require_approval=True)
        assert (await http.post("/api/plans", json=doc)).status_code == 401
        assert (await http.post("/api/plans", json=doc, headers=alice)).status_code == 201
        r = await http.post(f"/api/plans/{doc['id']}/execute", headers={"X-API-Key": "k-alice"})
        assert r.status_code == 202
        r = await http.post(
            f"/api/plans/{doc['id']}/approve", json={"by": "mallory"}, headers=alice
        )
        assert (
            r.status_code == 403
            and "differs from the API key's owner 'alice'" in r.json()["detail"]
        )
        r = await http.post(f"/api/plans/{doc['id']}/approve", json={"by": "alice"}, headers=alice)
        assert r.status_code == 200, r.text
        bot = {"X-API-Key": "k-bot"}
        plan2 = plan_doc([wait_step("a")], require_approval=True)
        await http.post("/api/plans", json=plan2, headers=bot)
        await http.post(f"/api/plans/{plan2['id']}/execute", headers=bot)
        r = await http.post(f"/api/plans/{plan2['id']}/reject", json={"reason": "no"}, headers=bot)
        assert r.status_code == 200, r.text
        audit = (await http.get(f"/api/plans/{doc['id']}/audit", headers=alice)).json()
        assert [a["by"] for a in audit if a["action"] == "approve"] == ["alice"]
        audit2 = (await http.get(f"/api/plans/{plan2['id']}/audit", headers=bot)).json()
        rejecter = next(a["by"] for a in audit2 if a["action"] == "reject")
        assert rejecter.startswith("key-") and "k-bot" not in rejecter


async def test_cors_is_configurable(env: WorkflowEnvironment, task_queue: str):
    config = ApiSettings(cors_origins=("https://ui.example",), log_format="text")
    app = make_app(env.client, task_queue, config=config)
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app), base_url=BASE_URL, headers=JSON
    ) as http:
        r = await http.options(
            "/api/plans",
            headers={"Origin": "https://ui.example", "Access-Control-Request-Method": "POST"},
        )
        assert r.status_code == 200
        assert r.headers["access-control-allow-origin"] == "https://ui.example"
        r = await http.get("/healthz", headers={"Origin": "https://evil.example"})
        assert "access-control-allow-origin" not in r.headers
    plain = make_app(env.client, task_queue)
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=plain), base_url=BASE_URL, headers=JSON
    ) as http:
        r = await http.get("/healthz", headers={"Origin": "https://ui.example"})
        assert "access-control-allow-origin" not in r.headers


async def test_json_logs_carry_plan_and_step_ids(http: httpx.AsyncClient):
    lines: list[str] = []

    class Capture(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            lines.append(JsonFormatter().format(record))

    handler = configure_logging(True)
    capture = Capture()
    capture.filters = handler.filters
    logger = logging.getLogger("plansmith.api")
    level = logger.level
    logger.setLevel(logging.INFO)  # the first app of the process set it (maybe to WARNING)
    logger.addHandler(capture)
    try:
        await http.post("/api/plans/p-log-1/steps/s-9/retry", json={})
    finally:
        logger.removeHandler(capture)
        logger.setLevel(level)
    records = [json.loads(x) for x in lines]
    req = [r for r in records if r.get("path") == "/api/plans/p-log-1/steps/s-9/retry"]
    assert req and req[0]["plan_id"] == "p-log-1" and req[0]["step_id"] == "s-9"
    assert req[0]["status"] == 404 and req[0]["level"] == "info" and req[0]["request_id"]
    assert isinstance(req[0]["duration_ms"], float) and req[0]["actor"] == "api"


# --- Temporal down, no worker ---------------------------------------------------------


async def test_temporal_unreachable_is_503_quickly(task_queue: str):
    async def lazy_dead(settings: Settings) -> Client:
        return await Client.connect(
            f"127.0.0.1:{_free_port()}", data_converter=pydantic_data_converter, lazy=True
        )

    async def refuse(settings: Settings) -> Client:
        raise RuntimeError("connection refused")

    for kw in ({"connect": refuse}, {"connect": lazy_dead}):
        app = make_app(None, task_queue, **kw)
        async with (
            app.router.lifespan_context(app),
            httpx.AsyncClient(
                transport=httpx.ASGITransport(app=app), base_url=BASE_URL, headers=JSON
            ) as http,
        ):
            t0 = time.monotonic()
            r = await http.get("/readyz")
            assert r.status_code == 503 and "unreachable" in r.json()["temporal"]
            assert (await http.get("/api/plans")).status_code == 200  # from the store
            for method, path in (
                ("GET", "/api/plans/some-plan/status"),
                ("POST", "/api/plans/some-plan/approve"),
                ("GET", "/api/v1/execute/x/status"),
            ):
                r = await http.request(method, path)
                assert r.status_code == 503, (kw, path, r.text)
                assert r.json()["code"] == "unavailable" and r.headers["retry-after"]
            r = await http.post("/api/plans", json=plan_doc([wait_step("a")]))
            assert r.status_code == 503
            assert time.monotonic() - t0 < 10


async def test_no_worker_is_503_within_the_timeout(env: WorkflowEnvironment):
    config = ApiSettings(rpc_timeout_s=1.0, log_format="text")
    app = make_app(env.client, f"tq-nobody-{uuid.uuid4()}", config=config)
    async with (
        app.router.lifespan_context(app),
        httpx.AsyncClient(
            transport=httpx.ASGITransport(app=app), base_url=BASE_URL, headers=JSON
        ) as http,
    ):
        doc = plan_doc([wait_step("a")], require_approval=True)
        await http.post("/api/plans", json=doc)
        assert (await http.post(f"/api/plans/{doc['id']}/execute")).status_code == 202
        t0 = time.monotonic()
        r = await http.get(f"/api/plans/{doc['id']}/status")
        assert r.status_code == 503 and "is a worker polling task queue" in r.json()["detail"]
        r = await http.post(f"/api/plans/{doc['id']}/approve", json={})
        assert r.status_code == 503 and "no worker" in r.json()["detail"]
        assert time.monotonic() - t0 < 8
        await env.client.get_workflow_handle(f"plan-{doc['id']}").terminate("test over")


async def test_openapi_document_is_complete(http: httpx.AsyncClient):
    doc = (await http.get("/openapi.json")).json()
    paths = doc["paths"]
    expected = {
        ("post", "/api/plans"),
        ("get", "/api/plans"),
        ("get", "/api/plans/{plan_id}"),
        ("post", "/api/plans/generate"),
        ("post", "/api/plans/{plan_id}/execute"),
        ("get", "/api/plans/{plan_id}/events"),
        ("post", "/api/plans/{plan_id}/resume-from-failure"),
        ("post", "/api/v1/execute"),
        ("get", "/api/v1/execute/{execution_id}/logs"),
        ("post", "/api/v1/execute/{execution_id}/stop"),
    }
    for verb in ("approve", "reject", "pause", "resume", "apply-correction", "cancel"):
        expected.add(("post", f"/api/plans/{{plan_id}}/{verb}"))
    for verb in ("approve", "reject", "answer", "retry", "skip"):
        expected.add(("post", f"/api/plans/{{plan_id}}/steps/{{step_id}}/{verb}"))
    for q in ("status", "execution-state", "logs", "audit", "versions"):
        expected.add(("get", f"/api/plans/{{plan_id}}/{q}"))
    have = {(m, p) for p, ops in paths.items() for m in ops}
    assert expected <= have, expected - have
    for p, ops in paths.items():
        for m, op in ops.items():
            ok = [s for s in op["responses"] if s.startswith("2")]
            assert ok, (m, p)
            content = op["responses"][ok[0]].get("content", {})
            assert content, f"{m} {p} documents no response body"
            if p.startswith("/api/"):
                assert "401" in op["responses"] and "422" in op["responses"], (m, p)
            if "requestBody" in op:
                schema = op["requestBody"]["content"]["application/json"]
                assert (
                    "examples" in schema
                    or "example" in schema
                    or "$ref" in schema.get("schema", {})
                ), (m, p)
    assert "BearerKey" in doc["components"]["securitySchemes"]
    generate = paths["/api/plans/generate"]["post"]["responses"]
    assert {"200", "422", "502", "503"} <= set(generate) and "501" not in generate
    assert generate["200"]["content"]["application/json"]["schema"]["$ref"].endswith(
        "/GenerateResponse"
    )
    schemas = doc["components"]["schemas"]
    for name in ("ApproveBody", "ExecutionCreate", "GenerateRequest", "PauseBody"):
        assert schemas[name].get("examples"), name


# --- the event hub on its own (no Temporal) -------------------------------------------


async def test_event_hub_journal_errors_and_a_new_run():
    from datetime import UTC, datetime, timedelta

    from api.errors import unavailable
    from api.sse import EventHub
    from plans.models import Plan
    from plans.run_state import Approval, new_run
    from plans.scheduler import advance, finish, record_success
    from plans.views import status_view

    t0 = datetime(2026, 1, 1, tzinfo=UTC)
    plan = Plan.model_validate(
        {"id": "p1", "options": {"require_approval": False}, "steps": [wait_step("a")]}
    )
    run = new_run(plan, t0)
    run.approval = Approval(by="policy", at=t0, version=1)
    state: dict[str, Any] = {"view": status_view(run), "fail": False}

    async def fetch():
        if state["fail"]:
            raise unavailable("Temporal is down")
        return state["view"]

    hub = EventHub(
        ApiSettings(sse_poll_s=0.01, sse_linger_s=0.3, sse_ping_s=0.05, sse_give_up_s=0.05)
    )

    async def read(feed, last=None) -> list[dict]:
        chunks = [c async for c in feed.stream(last)]
        assert chunks[0].startswith(b"retry: ")
        return parse_sse(b"".join(chunks).decode())

    feed = await hub.open("p1", fetch)
    watching = asyncio.create_task(read(feed))
    await asyncio.sleep(0.05)
    advance(run, t0)
    state["view"] = status_view(run)
    await asyncio.sleep(0.05)
    record_success(run, "a", {"ok": 1}, 1, t0)
    finish(run, t0)
    state["view"] = status_view(run)
    events = await asyncio.wait_for(watching, 2)
    kinds = [(e["event"], e["data"].get("status")) for e in events]
    assert kinds[:2] == [("plan", "approved"), ("step", "pending")]
    assert ("step", "running") in kinds and ("step", "completed") in kinds
    assert kinds[-1] == ("end", "completed")
    assert feed.subscribers == 0
    # Exactly the rest after any event; nothing after the end (204 in the route).
    assert await read(feed, events[2]["id"]) == events[3:]
    assert feed.finished_for(events[-1]["id"]) and not feed.finished_for("other:1")

    # A new run of the same plan (resume from failure) gets a new feed.
    run2 = new_run(plan, t0 + timedelta(seconds=5))
    run2.approval = Approval(by="policy", at=t0, version=1)
    state["view"] = status_view(run2)
    feed2 = await hub.open("p1", fetch)
    assert feed2 is not feed and feed2.epoch != feed.epoch and not feed2.closed

    # Temporal gone for longer than sse_give_up_s: an `error` event ends the stream, and
    # the next watcher tries afresh instead of getting the old error.
    state["fail"] = True
    errors = await asyncio.wait_for(read(feed2), 2)
    assert errors[-1]["event"] == "error" and "Temporal is down" in errors[-1]["data"]["detail"]
    state["fail"] = False
    feed3 = await hub.open("p1", fetch)
    assert feed3 is not feed2 and feed3.final is None
    await hub.close()
    assert hub.closing


async def test_create_approve_then_execute_runs_without_asking_again(http: httpx.AsyncClient):
    """The order create -> approve -> execute: the approval of the draft is bound to the
    digest it saw, and the run it starts does not ask again."""
    plan_id = pid()
    doc = plan_doc([wait_step("build", 0)], plan_id, require_approval=True)
    created = (await http.post("/api/plans", json=doc)).json()
    stale = await http.post(
        f"/api/plans/{plan_id}/approve", json={"by": "carol", "digest": "0" * 16}
    )
    assert stale.status_code == 409 and "does not match" in stale.json()["detail"]
    ok = await http.post(
        f"/api/plans/{plan_id}/approve",
        json={"by": "carol", "version": 1, "digest": created["digest"], "comment": "fine"},
    )
    assert ok.status_code == 200, ok.text
    assert ok.json()["status"] == "approved" and "without asking again" in ok.json()["detail"]
    assert (await http.get(f"/api/plans/{plan_id}")).json()["status"] == "approved"
    st = (await http.get(f"/api/plans/{plan_id}/status")).json()
    assert st["status"] == "approved" and st["approved_by"] == "carol"
    assert st["approved_digest"] == created["digest"]
    twice = await http.post(f"/api/plans/{plan_id}/approve", json={"by": "dan"})
    assert twice.status_code == 409 and "already approved by carol" in twice.json()["detail"]

    r = await http.post(f"/api/plans/{plan_id}/execute")
    assert r.status_code == 202, r.text
    st = await wait_status(http, plan_id, lambda s: s["status"] == "completed")
    assert st["approved_by"] == "carol" and st["approved_digest"] == created["digest"]
    audit = (await http.get(f"/api/plans/{plan_id}/audit")).json()
    approvals = [(a["by"], a["accepted"]) for a in audit if a["action"] == "approve"]
    assert approvals == [("carol", True)]


async def test_a_plan_over_temporals_size_limit_is_a_413_not_an_outage(http: httpx.AsyncClient):
    """5 MB of inputs pass the API's own body limit, but Temporal refuses a start request
    that large: the answer says so (413), rather than "Temporal is unreachable" (503).
    Random data: big payloads are compressed, and 5 MB of one letter would fit."""
    plan_id = pid()
    blob = base64.b64encode(os.urandom(3_700_000)).decode()  # ~3.7 MB even compressed
    doc = plan_doc([wait_step("a")], plan_id) | {"inputs": {"blob": blob}}
    r = await http.post("/api/plans", json=doc)
    assert r.status_code == 201, r.text[:500]
    r = await http.post(f"/api/plans/{plan_id}/execute")
    assert r.status_code == 413, r.text[:500]
    assert r.json()["code"] == "too_large"
    assert "over its size limit" in r.json()["detail"]

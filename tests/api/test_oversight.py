"""Oversight that cannot be bypassed, attacked the way an attacker would.

The real app, with ``PLANSMITH_API_KEYS=k1:alice:operator,k2:bot:agent`` read from the
environment, against the dev server and a worker: the agent key tries to act as another
agent, to approve its own plan, to steer someone else's plan and to change the models;
an operator tries to change the models. Then what a web page can do to a local API:
a control without a JSON content type (415), a re-pointed name (Host ``evil.example``,
400, also over a real socket), and what ``/readyz`` and error answers tell an anonymous
caller when Temporal or the database is down. And the CLI: ``plansmith api --host
0.0.0.0`` without keys refuses to start (a real process, before binding anything).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from temporalio.client import Client
from temporalio.contrib.pydantic import pydantic_data_converter
from temporalio.testing import WorkflowEnvironment
from temporalio.worker import Worker

from api.app import create_app
from api.auth import AGENT_OWN_CONTROLS, PERSON_CONTROLS, ApiKeys, Role
from api.guard import allowed_hosts, host_allowed, normalize_host
from config import ConfigError, Settings, load_settings
from contracts.tools import SANDBOX_QUEUE
from plans.controls import CONTROL_MODELS
from plansmith.cli.processes import check_exposure, is_loopback
from tests.api.serving import BASE_URL, JSON, serve
from tests.api.test_dashboard import uvicorn_serving
from tests.api.test_plans_routes import TEST_CONFIG, plan_doc, wait_step
from tests.helpers import activity_deps
from tests.key_server import KeyServer
from worker import sandbox_activities_for

ROOT = Path(__file__).resolve().parents[2]
KEYS = "k1:alice:operator,k2:bot:agent"
ALICE = {"Authorization": "Bearer k1"}
BOT = {"X-API-Key": "k2"}


async def wait_status(
    http: httpx.AsyncClient, plan_id: str, predicate: Any, timeout: float = 20
) -> dict:
    """The plan's status (read with alice's key) once ``predicate`` holds."""
    deadline = time.monotonic() + timeout
    while True:
        r = await http.get(f"/api/plans/{plan_id}/status", headers=ALICE)
        assert r.status_code == 200, r.text
        if predicate(st := r.json()):
            return dict(st)
        assert time.monotonic() < deadline, f"status not reached: {st['status']}"
        await asyncio.sleep(0.05)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def settings_from_env(monkeypatch: pytest.MonkeyPatch, **env: str) -> Settings:
    """The settings a process started with ``env`` reads (no .env file)."""
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    return load_settings(env_file=None)


def app_with_keys(
    monkeypatch: pytest.MonkeyPatch, client: Client | None, task_queue: str, **kw: Any
) -> FastAPI:
    settings = settings_from_env(monkeypatch, PLANSMITH_API_KEYS=KEYS)
    settings = settings.replace(
        temporal={"task_queue": task_queue},
        api={**TEST_CONFIG.model_dump(), "keys": settings.api.keys},
    )
    return create_app(settings=settings, client=client, **kw)


# --- roles on the real app --------------------------------------------------------------


async def test_an_agent_key_proposes_only_as_itself_and_never_approves(
    env: WorkflowEnvironment, worker: Any, task_queue: str, monkeypatch: pytest.MonkeyPatch
):
    app = app_with_keys(monkeypatch, env.client, task_queue)
    async with serve(app) as http:
        # bot creating a plan as another agent: 403, and nothing is stored
        doc = plan_doc([wait_step("a")], require_approval=True) | {"agent_id": "other"}
        r = await http.post("/api/plans", json=doc, headers=BOT)
        assert r.status_code == 403, r.text
        assert "agent_id='other' differs from the API key's owner 'bot'" in r.json()["detail"]
        assert (await http.get(f"/api/plans/{doc['id']}", headers=ALICE)).status_code == 404
        # ... nor through the planner or the nodes/edges API
        r = await http.post(
            "/api/plans/generate", json={"task": "say hi", "agent_id": "other"}, headers=BOT
        )
        assert r.status_code == 403 and "agent_id='other'" in r.json()["detail"], r.text

        # without agent_id, the plan is the bot's
        doc.pop("agent_id")
        r = await http.post("/api/plans", json=doc, headers=BOT)
        assert r.status_code == 201, r.text
        assert r.json()["plan"]["agent_id"] == "bot"
        plan_id = doc["id"]
        r = await http.post(f"/api/plans/{plan_id}/execute", headers=BOT | JSON)
        assert r.status_code == 202, r.text
        await wait_status(http, plan_id, lambda s: s["status"] == "pending_approval")

        # bot approving (or rejecting) its own plan: 403; the plan still waits for a person
        for verb, body in (("approve", {}), ("reject", {"reason": "no"}), ("resume", {})):
            r = await http.post(f"/api/plans/{plan_id}/{verb}", json=body, headers=BOT)
            assert r.status_code == 403, (verb, r.text)
            assert "agent key" in r.json()["detail"] and "a person" in r.json()["detail"]
        r = await http.post(f"/api/plans/{plan_id}/resume-from-failure", json={}, headers=BOT)
        assert r.status_code == 403, r.text
        st = (await http.get(f"/api/plans/{plan_id}/status", headers=BOT)).json()
        assert st["status"] == "pending_approval" and st["approved_by"] is None
        audit = (await http.get(f"/api/plans/{plan_id}/audit", headers=ALICE)).json()
        assert not [a for a in audit if a["action"] in ("approve", "reject")]

        # alice's approval is recorded as alice, in the status and the audit trail
        r = await http.post(f"/api/plans/{plan_id}/approve", json={}, headers=ALICE)
        assert r.status_code == 200, r.text
        st = await wait_status(http, plan_id, lambda s: s["status"] == "completed")
        assert st["approved_by"] == "alice"
        audit = (await http.get(f"/api/plans/{plan_id}/audit", headers=ALICE)).json()
        assert [a["by"] for a in audit if a["action"] == "approve"] == ["alice"]

        # alice's plan: the bot may neither run it nor steer it
        theirs = plan_doc([wait_step("a", 30)], require_approval=False)
        assert (await http.post("/api/plans", json=theirs, headers=ALICE)).status_code == 201
        r = await http.post(f"/api/plans/{theirs['id']}/execute", headers=BOT | JSON)
        assert r.status_code == 403 and "proposed by 'no agent'" in r.json()["detail"], r.text
        r = await http.post(f"/api/plans/{theirs['id']}/execute", headers=ALICE | JSON)
        assert r.status_code == 202, r.text
        await wait_status(http, theirs["id"], lambda s: s["status"] == "executing")
        for verb in ("pause", "cancel"):
            r = await http.post(
                f"/api/plans/{theirs['id']}/{verb}", json={"reason": "mine now"}, headers=BOT
            )
            assert r.status_code == 403 and "only its own plans" in r.json()["detail"], r.text
        r = await http.post(
            f"/api/plans/{theirs['id']}/steps/a/skip", json={"reason": "x"}, headers=BOT
        )
        assert r.status_code == 403, r.text
        st = (await http.get(f"/api/plans/{theirs['id']}/status", headers=ALICE)).json()
        assert st["status"] == "executing"
        r = await http.post(
            f"/api/plans/{theirs['id']}/cancel", json={"reason": "done"}, headers=ALICE
        )
        assert r.status_code == 200, r.text

        # its own running plan: the bot may pause and cancel it
        own = plan_doc([wait_step("a", 30)], require_approval=True)
        assert (await http.post("/api/plans", json=own, headers=BOT)).status_code == 201
        assert (
            await http.post(f"/api/plans/{own['id']}/execute", headers=BOT | JSON)
        ).status_code == 202
        await wait_status(http, own["id"], lambda s: s["status"] == "pending_approval")
        r = await http.post(f"/api/plans/{own['id']}/approve", json={}, headers=ALICE)
        assert r.status_code == 200, r.text
        await wait_status(http, own["id"], lambda s: s["status"] == "executing")
        r = await http.post(f"/api/plans/{own['id']}/cancel", json={"reason": "x"}, headers=BOT)
        assert r.status_code == 200, r.text
        st = await wait_status(http, own["id"], lambda s: s["status"] == "cancelled")


@pytest.mark.parametrize(
    ("options", "named"),
    [
        ({"require_approval": False}, "options.require_approval=false"),
        ({"require_approval": "auto", "auto_approve": True}, "options.auto_approve=true"),
        (
            {"require_approval": True, "approval_timeout_s": 0.5, "on_approval_timeout": "approve"},
            "options.on_approval_timeout='approve'",
        ),
        (
            {"require_approval": "auto", "on_step_approval_timeout": "approve"},
            "options.on_step_approval_timeout='approve'",
        ),
    ],
)
async def test_an_agent_key_cannot_waive_a_persons_approval_in_its_own_plan(
    env: WorkflowEnvironment,
    worker: Any,
    task_queue: str,
    monkeypatch: pytest.MonkeyPatch,
    options: dict[str, Any],
    named: str,
):
    """The bot proposes a DELETE on a production target and says nobody needs to approve
    it (or that a timeout approves it): 403, nothing is stored or run; a person's key may
    still make that choice."""
    app = app_with_keys(monkeypatch, env.client, task_queue)
    with KeyServer() as srv:
        wipe = {
            "id": "wipe",
            "tool": "http_request",
            "params": {"url": srv.url("/prod/users"), "method": "DELETE"},
            "requires_approval": True,
        }
        doc = plan_doc([wipe]) | {"options": options}
        async with serve(app) as http:
            r = await http.post("/api/plans", json=doc, headers=BOT)
            assert r.status_code == 403, r.text
            assert named in r.json()["detail"] and "agent key" in r.json()["detail"], r.text
            assert (await http.get(f"/api/plans/{doc['id']}", headers=ALICE)).status_code == 404
            r = await http.post(f"/api/plans/{doc['id']}/execute", headers=BOT)
            assert r.status_code == 404, r.text
            await asyncio.sleep(1)  # longer than the approval timeout the bot asked for
            assert srv.seen == []
            # a person's key may waive its own approval (the plan is only stored)
            r = await http.post("/api/plans", json=doc, headers=ALICE)
            assert r.status_code == 201, r.text


async def test_an_agent_key_runs_nodes_edges_executions_as_itself(
    env: WorkflowEnvironment, worker: Any, task_queue: str, monkeypatch: pytest.MonkeyPatch
):
    app = app_with_keys(monkeypatch, env.client, task_queue)
    definition = {
        "nodes": [
            {"id": "start", "type": "input", "config": {"fields": ["message"]}},
            {"id": "end", "type": "output"},
        ],
        "edges": [{"source": "start", "target": "end"}],
    }
    async with serve(app) as http:
        exec_id = f"ex-{uuid.uuid4().hex[:8]}"
        body = {
            "execution_id": exec_id,
            "workflow_id": "wf-1",
            "definition": definition,
            "input_data": {"message": "hi"},
        }
        r = await http.post("/api/v1/execute", json=body, headers=BOT)
        assert r.status_code == 202, r.text
        plan = (await http.get(f"/api/plans/{exec_id}", headers=ALICE)).json()["plan"]
        assert plan["agent_id"] == "bot"
        r = await http.post(f"/api/v1/execute/{exec_id}/resume", json={}, headers=BOT)
        assert r.status_code == 403, r.text

        # squatting the id of a person's approved draft: 409, and the draft still runs
        doc = plan_doc([wait_step("a", 0)], require_approval=True)
        assert (await http.post("/api/plans", json=doc, headers=ALICE)).status_code == 201
        r = await http.post(f"/api/plans/{doc['id']}/approve", json={"version": 1}, headers=ALICE)
        assert r.status_code == 200, r.text
        r = await http.post("/api/v1/execute", json=body | {"execution_id": doc["id"]}, headers=BOT)
        assert r.status_code == 409 and r.json()["code"] == "id_taken", r.text
        r = await http.post(f"/api/plans/{doc['id']}/execute", headers=ALICE)
        assert r.status_code == 202 and r.json()["started"] is True, r.text
        st = await wait_status(http, doc["id"], lambda s: s["status"] == "completed")
        assert st["approved_by"] == "alice"


async def test_only_an_admin_key_changes_the_models(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    async def no_temporal(settings: Settings) -> Client:
        raise RuntimeError("this test needs no Temporal")

    url = f"sqlite:///{tmp_path / 'store.db'}"
    settings = settings_from_env(
        monkeypatch, PLANSMITH_API_KEYS=KEYS + ",k3:root:admin", DATABASE_URL=url
    )
    app = create_app(settings=settings, connect=no_temporal, database_url=url)
    async with serve(app) as http:
        body = {"capabilities": ["planning"], "priority": -5}
        for who in (BOT, ALICE):
            r = await http.put("/api/models/x-model", json=body, headers=who)
            assert r.status_code == 403 and "needs an admin key" in r.json()["detail"], r.text
            r = await http.delete("/api/models/x-model", headers=who)
            assert r.status_code == 403, r.text
        names = [m["name"] for m in (await http.get("/api/models", headers=BOT)).json()["models"]]
        assert "x-model" not in names  # nothing changed
        root = {"Authorization": "Bearer k3"}
        assert (await http.put("/api/models/x-model", json=body, headers=root)).status_code == 201
        models = (await http.get("/api/models", headers=BOT)).json()
        assert models["choices"]["planning"] == "x-model"


def test_the_role_table_covers_every_control():
    assert set(CONTROL_MODELS) <= PERSON_CONTROLS | AGENT_OWN_CONTROLS
    assert not (PERSON_CONTROLS & AGENT_OWN_CONTROLS)
    assert {"approve", "reject", "approve_step", "reject_step", "answer_clarification"} <= (
        PERSON_CONTROLS
    )


def test_key_entries_with_roles(monkeypatch: pytest.MonkeyPatch):
    keys = ApiKeys.parse("k1:alice:operator, k2:bot:agent,k3:root:ADMIN,k4:carol,k5,,")
    roles = {e.owner: e.role for e in keys.entries}
    assert roles["alice"] is Role.OPERATOR and roles["bot"] is Role.AGENT
    assert roles["root"] is Role.ADMIN and roles["carol"] is Role.OPERATOR
    hashed = next(e for e in keys.entries if e.owner.startswith("key-"))
    assert hashed.role is Role.OPERATOR and "k5" not in hashed.owner
    # an unknown role stops the process, naming the variable and never the key
    with pytest.raises(ConfigError) as e:
        settings_from_env(monkeypatch, PLANSMITH_API_KEYS="s3cr3t-key-9:alice:wizard")
    text = str(e.value)
    assert "PLANSMITH_API_KEYS" in text and "'wizard'" in text and "agent, operator, admin" in text
    assert "s3cr3t-key-9" not in text


# --- what a web page can do to a local API --------------------------------------------


async def test_a_control_without_a_json_content_type_is_415_and_never_sent(
    env: WorkflowEnvironment, worker: Any, task_queue: str, monkeypatch: pytest.MonkeyPatch
):
    app = app_with_keys(monkeypatch, env.client, task_queue)
    async with serve(app) as http:
        doc = plan_doc([wait_step("a")], require_approval=True)
        assert (await http.post("/api/plans", json=doc, headers=ALICE)).status_code == 201
        r = await http.post(f"/api/plans/{doc['id']}/execute", headers=ALICE)
        assert r.status_code == 202
        await wait_status(http, doc["id"], lambda s: s["status"] == "pending_approval")
    # what a cross-site form or fetch can send without a CORS preflight
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url=BASE_URL) as bare:
        url = f"/api/plans/{doc['id']}/approve"
        for kw in (
            {},  # no body, no content type
            {"content": b"{}", "headers": {"Content-Type": "text/plain"}},
            {"data": {"by": "alice"}},  # an HTML form
            {"content": b"{}", "headers": {"Content-Type": "multipart/form-data; boundary=x"}},
        ):
            headers = ALICE | kw.pop("headers", {})
            r = await bare.post(url, headers=headers, **kw)
            assert r.status_code == 415, (kw, r.text)
            assert r.json()["code"] == "unsupported_media_type"
            assert "Content-Type: application/json" in r.json()["detail"]
        r = await bare.request("DELETE", "/api/models/x", headers=ALICE)
        assert r.status_code == 415
        st = (await bare.get(f"/api/plans/{doc['id']}/status", headers=ALICE)).json()
        assert st["status"] == "pending_approval" and st["approved_by"] is None
        # the same control as JSON, with a charset, goes through
        r = await bare.post(
            url, content=b"", headers=ALICE | {"Content-Type": "application/json; charset=utf-8"}
        )
        assert r.status_code == 200, r.text


async def test_a_rebound_host_name_gets_400(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    async def no_temporal(settings: Settings) -> Client:
        raise RuntimeError("this test needs no Temporal")

    url = f"sqlite:///{tmp_path / 'store.db'}"
    settings = settings_from_env(monkeypatch, PLANSMITH_API_KEYS=KEYS, DATABASE_URL=url)
    app = create_app(settings=settings, connect=no_temporal, database_url=url)
    # over a real socket: what a browser sends once evil.example resolves to 127.0.0.1
    with uvicorn_serving(app) as base:
        port = base.rsplit(":", 1)[1]
        async with httpx.AsyncClient(base_url=base, timeout=10) as http:
            for path in ("/api/plans", "/dashboard", "/openapi.json", "/metrics"):
                r = await http.get(path, headers=ALICE | {"Host": f"evil.example:{port}"})
                assert r.status_code == 400, (path, r.text)
                assert r.json()["code"] == "bad_host"
            r = await http.get("/api/plans", headers=ALICE | {"Host": "evil.example"})
            assert r.status_code == 400
            r = await http.get("/api/plans", headers=ALICE | {"Host": "localhost.evil.example"})
            assert r.status_code == 400
            # the names of this machine work
            for host in (f"127.0.0.1:{port}", f"localhost:{port}", "[::1]", "LOCALHOST."):
                r = await http.get("/api/plans", headers=ALICE | {"Host": host})
                assert r.status_code == 200, (host, r.text)
            # probes address containers by IP: they stay open, and tell nothing
            r = await http.get("/healthz", headers={"Host": "10.1.2.3:8000"})
            assert r.status_code == 200

    # PLANSMITH_API_ALLOWED_HOSTS adds names; the bound host is one of them
    settings = settings.replace(api={"allowed_hosts": ("plansmith.example.org", "*.corp.test")})
    app = create_app(settings=settings, connect=no_temporal, database_url=url, bind_host="10.9.8.7")
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app)) as http:
        for host, status in (
            ("plansmith.example.org", 200),
            ("api.corp.test:8443", 200),
            ("10.9.8.7:8000", 200),
            ("localhost", 200),
            ("corp.test", 400),
            ("evil.example", 400),
        ):
            r = await http.get(f"http://{host}/api/plans", headers=ALICE)
            assert r.status_code == status, (host, r.text)


async def test_guard_bypasses_by_header_tricks_fail(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    """Ways round the Host and JSON checks: a header sent twice (the guard and the routes
    could read different copies), an absolute-form request target naming another host,
    X-Forwarded-Host, media types that only start like JSON. Parameters and case of the
    JSON type pass (the request reaches validation: 422)."""

    async def no_temporal(settings: Settings) -> Client:
        raise RuntimeError("this test needs no Temporal")

    url = f"sqlite:///{tmp_path / 'store.db'}"
    settings = settings_from_env(monkeypatch, PLANSMITH_API_KEYS=KEYS, DATABASE_URL=url)
    app = create_app(settings=settings, connect=no_temporal, database_url=url)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url=BASE_URL) as http:
        auth = list(ALICE.items())
        for headers in (
            [*auth, ("Content-Type", "text/plain"), ("Content-Type", "application/json")],
            [*auth, ("Content-Type", "application/json"), ("Content-Type", "text/plain")],
            [*auth, ("Host", "evil.example"), ("Host", "localhost"), *JSON.items()],
        ):
            r = await http.post("/api/plans", content=b"{}", headers=headers)
            assert r.status_code == 400, (headers, r.text)
            assert r.json()["code"] == "bad_request" and "more than one" in r.json()["detail"]
        for ctype, status in (
            ("application/json-patch+json", 415),
            ("application/jsonx", 415),
            ("text/plain; application/json", 415),
            ("application/json, text/plain", 415),
            ("APPLICATION/JSON", 422),
            ("application/json;charset=utf-8", 422),
        ):
            r = await http.post(
                "/api/plans", content=b"{}", headers=ALICE | {"Content-Type": ctype}
            )
            assert r.status_code == status, (ctype, r.text)
    with uvicorn_serving(app) as base:
        port = int(base.rsplit(":", 1)[1])

        def raw(request: str) -> bytes:
            with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
                sock.sendall(request.encode())
                data = b""
                while chunk := sock.recv(65536):
                    data += chunk
            return data

        key = "Authorization: Bearer k1\r\nConnection: close\r\n"
        for request in (
            f"GET /api/plans HTTP/1.1\r\nHost: evil.example\r\nHost: localhost\r\n{key}\r\n",
            f"GET /api/plans HTTP/1.1\r\nHost: evil.example\r\nX-Forwarded-Host: localhost\r\n"
            f"{key}\r\n",
        ):
            assert raw(request).startswith(b"HTTP/1.1 400"), request
        # an absolute-form target naming another host is not served (no route matches it)
        answer = raw(f"GET http://evil.example/api/plans HTTP/1.1\r\nHost: localhost\r\n{key}\r\n")
        assert answer.split(b" ", 2)[1] in (b"400", b"404"), answer[:200]
        answer = raw(f"GET http://localhost/api/plans HTTP/1.1\r\nHost: evil.example\r\n{key}\r\n")
        assert answer.startswith(b"HTTP/1.1 400")


def test_host_names_are_normalized_and_matched():
    assert normalize_host("Example.COM.:8000") == "example.com"
    assert normalize_host("[::1]:8000") == normalize_host("::1") == "[::1]"
    assert normalize_host("a b") is None and normalize_host("x:y") is None
    allowed = allowed_hosts(["*.example.org"], "0.0.0.0")
    assert "0.0.0.0" not in allowed and "[::1]" in allowed and "localhost" in allowed
    assert host_allowed("a.example.org", allowed) and not host_allowed("example.org", allowed)
    assert not host_allowed(None, allowed)
    assert host_allowed("anything", allowed_hosts(["*"]))


async def test_readyz_and_errors_tell_an_anonymous_caller_no_address(
    task_queue: str, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
):
    temporal_port, db_port = free_port(), free_port()
    temporal_address = f"127.0.0.1:{temporal_port}"
    password = f"pw-{uuid.uuid4().hex[:10]}"
    dsn = f"postgresql+psycopg://plansmith:{password}@127.0.0.1:{db_port}/plansmith"

    async def dead_temporal(settings: Settings) -> Client:
        return await Client.connect(
            settings.temporal.address, data_converter=pydantic_data_converter, lazy=True
        )

    settings = settings_from_env(
        monkeypatch, PLANSMITH_API_KEYS=KEYS, TEMPORAL_ADDRESS=temporal_address, DATABASE_URL=dsn
    ).replace(temporal={"task_queue": task_queue}, api={"rpc_timeout_s": 2.0})
    app = create_app(settings=settings, connect=dead_temporal, database_url=dsn)
    # the API's logger stops propagating once an app configures it (its own handler):
    # listen on it directly, whichever test of the process configured it first
    api_log = logging.getLogger("plansmith.api")
    api_log.addHandler(caplog.handler)
    caplog.set_level(logging.WARNING, logger="plansmith.api")
    leaks = (temporal_address, str(temporal_port), password, str(db_port), dsn)
    async with contextlib.AsyncExitStack() as stack:
        stack.callback(api_log.removeHandler, caplog.handler)
        http = await stack.enter_async_context(serve(app))
        r = await http.get("/readyz")
        assert r.status_code == 503
        assert r.json() == {
            "status": "unavailable",
            "temporal": "unreachable",
            "database": "unreachable",
        }
        r = await http.get("/readyz", headers={"X-API-Key": "not-a-key"})
        assert r.json()["temporal"] == "unreachable"
        answers = [r.text]
        # what a key holder learns proves the server did know the details
        r = await http.get("/readyz", headers=ALICE)
        assert r.status_code == 503 and temporal_address in r.json()["temporal"]
        assert r.json()["database"] != "unreachable"
        # every route that needs Temporal or the database: 503 without an address
        for method, path in (
            ("GET", "/api/plans/some-plan/status"),
            ("POST", "/api/plans/some-plan/approve"),
            ("GET", "/api/plans"),
            ("GET", "/api/models"),
            ("GET", "/api/metrics/success"),
        ):
            r = await http.request(method, path, headers=ALICE)
            assert r.status_code == 503, (path, r.text)
            answers.append(r.text)
    for text in answers:
        for leak in leaks:
            assert leak not in text, (leak, text)
    logged = "\n".join(rec.getMessage() for rec in caplog.records)
    assert temporal_address in logged  # the operator finds why in the log


async def test_a_key_holder_learns_which_address_did_not_answer_a_health_check_in_time(
    task_queue: str, monkeypatch: pytest.MonkeyPatch
):
    """A Temporal that accepts the connection but lets the health check run out its
    deadline (a loaded or wedged frontend) is named to an operator like a refused one is."""
    from temporalio.service import RPCError, RPCStatusCode

    class WedgedService:
        async def get_system_info(self, *_: Any, **__: Any) -> Any:
            raise RPCError("Deadline Exceeded", RPCStatusCode.DEADLINE_EXCEEDED, b"")

    class Wedged:
        workflow_service = WedgedService()

    async def wedged(settings: Settings) -> Any:
        return Wedged()

    address = f"127.0.0.1:{free_port()}"
    settings = settings_from_env(
        monkeypatch, PLANSMITH_API_KEYS=KEYS, TEMPORAL_ADDRESS=address
    ).replace(temporal={"task_queue": task_queue})
    async with serve(create_app(settings=settings, connect=wedged)) as http:
        anonymous = await http.get("/readyz")
        operator = await http.get("/readyz", headers=ALICE)
    assert anonymous.status_code == operator.status_code == 503
    assert anonymous.json()["temporal"] == "unreachable"
    assert address in operator.json()["temporal"], operator.json()
    assert "Deadline Exceeded" in operator.json()["temporal"]


def test_the_redaction_net_catches_configured_secrets():
    from api.errors import redact

    assert redact("at db.internal:5432 with pw", ["db.internal:5432", "pw!x"]) == (
        "at [redacted] with pw"
    )


# --- the CLI refuses to serve an open API beyond loopback -----------------------------


def cli(*args: str, **env: str) -> subprocess.CompletedProcess[str]:
    base = {k: v for k, v in os.environ.items() if not k.startswith("PLANSMITH_API")}
    base.pop("PLANSMITH_ALLOW_OPEN_API", None)
    return subprocess.run(
        [sys.executable, "-m", "plansmith.cli", *args],
        cwd=ROOT,
        env=base | {"PLANSMITH_API_KEYS": ""} | env,
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_plansmith_api_beyond_loopback_without_keys_refuses_to_start():
    port = free_port()
    t0 = time.monotonic()
    done = cli("api", "--host", "0.0.0.0", "--port", str(port))
    assert done.returncode != 0, done.stdout + done.stderr
    assert "PLANSMITH_API_KEYS" in done.stderr and "PLANSMITH_ALLOW_OPEN_API" in done.stderr
    assert time.monotonic() - t0 < 30
    with socket.socket() as s:  # it bound nothing: the port is still free
        s.bind(("127.0.0.1", port))
    # `plansmith up` refuses before it starts any process of the stack
    done = cli("up", "--host", "0.0.0.0", "--port", str(port))
    assert done.returncode != 0 and "PLANSMITH_API_KEYS" in done.stderr
    assert "Temporal dev server" not in done.stdout
    # an unknown role: the variable is named, the key is not printed
    done = cli("api", "--port", str(port), PLANSMITH_API_KEYS="sekrit-k3y-77:alice:boss")
    assert done.returncode == 2 and "PLANSMITH_API_KEYS" in done.stderr
    assert "'boss'" in done.stderr and "sekrit-k3y-77" not in done.stderr + done.stdout


def test_exposure_rules(monkeypatch: pytest.MonkeyPatch):
    for host in ("127.0.0.1", "127.0.0.2", "localhost", "::1", "[::1]"):
        assert is_loopback(host), host
    for host in ("0.0.0.0", "::", "10.0.0.5", "plansmith.example.org"):
        assert not is_loopback(host), host
    open_settings = settings_from_env(monkeypatch, PLANSMITH_API_KEYS="")
    check_exposure("127.0.0.1", open_settings)
    from plansmith.cli.console import CliError

    with pytest.raises(CliError, match="PLANSMITH_API_KEYS"):
        check_exposure("0.0.0.0", open_settings)
    check_exposure("0.0.0.0", open_settings.replace(api={"keys": "k:ops:admin"}))
    check_exposure("0.0.0.0", open_settings.replace(api={"allow_open_api": True}))
    allowed = settings_from_env(monkeypatch, PLANSMITH_ALLOW_OPEN_API="1")
    assert allowed.api.allow_open_api is True


@pytest.fixture(autouse=True)
def _no_env_file(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("PLANSMITH_API_KEYS", raising=False)


# --- approvals bound to content, through the API with roles ----------------------------


async def test_an_agent_correction_to_code_after_approval_runs_only_after_an_operator_approves(
    env: WorkflowEnvironment, worker: Any, task_queue: str, monkeypatch: pytest.MonkeyPatch
):
    """Alice approves version 1; the bot (agent key) turns a pending step into python code.
    That step waits with the diff; the bot can neither approve it nor correct-and-approve;
    a counting server behind it sees nothing until alice approves version 2 of the step."""

    app = app_with_keys(monkeypatch, env.client, task_queue)
    sandbox = Worker(  # the sandbox pool the API's plans send python steps to
        env.client,
        task_queue=SANDBOX_QUEUE,
        activities=sandbox_activities_for(activity_deps()),
    )
    async with sandbox:
        await _code_change_waits_for_an_operator(app)


async def _code_change_waits_for_an_operator(app: FastAPI) -> None:
    with KeyServer() as srv:
        notify = {
            "id": "notify",
            "tool": "http_request",
            "params": {"url": srv.url("/hook"), "method": "POST", "json": {"done": True}},
            "depends_on": ["code"],
        }
        doc = plan_doc(
            [wait_step("first", 1.5), wait_step("code", 0, ["first"]), notify],
            require_approval=True,
        )
        plan_id = doc["id"]
        async with serve(app) as http:
            assert (await http.post("/api/plans", json=doc, headers=BOT)).status_code == 201
            r = await http.post(f"/api/plans/{plan_id}/execute", headers=BOT)
            assert r.status_code == 202, r.text
            st = await wait_status(http, plan_id, lambda s: s["status"] == "pending_approval")
            r = await http.post(
                f"/api/plans/{plan_id}/approve",
                json={"version": 1, "digest": st["digest"]},
                headers=ALICE,
            )
            assert r.status_code == 200, r.text
            await wait_status(http, plan_id, lambda s: s["steps"][0]["status"] == "running")

            code = "print('hello from a change nobody approved')"
            change = {"tool": "python", "params": {"code": code}}
            sneaky = {"step_id": "code", "correction": {"updated_step": change}, "approve": True}
            r = await http.post(f"/api/plans/{plan_id}/apply-correction", json=sneaky, headers=BOT)
            assert r.status_code == 403 and "agent key" in r.json()["detail"], r.text
            sneaky.pop("approve")
            r = await http.post(f"/api/plans/{plan_id}/apply-correction", json=sneaky, headers=BOT)
            assert r.status_code == 200 and r.json()["version"] == 2, r.text

            st = await wait_status(
                http, plan_id, lambda s: s["steps"][1]["status"] == "waiting_approval"
            )
            wait = next(w for w in st["waiting"] if w["step_id"] == "code")
            assert "changed after the plan was approved" in wait["question"]
            assert "by bot" in wait["question"]
            assert wait["change"]["tool"] == {"old": "wait", "new": "python"}
            assert wait["change"]["params"]["new"]["code"] == code
            assert st["approved_by"] == "alice" and st["approved_version"] == 1
            r = await http.post(f"/api/plans/{plan_id}/steps/code/approve", json={}, headers=BOT)
            assert r.status_code == 403, r.text
            await asyncio.sleep(0.5)
            assert srv.seen == []
            assert (await wait_status(http, plan_id, lambda s: True))["steps"][2][
                "status"
            ] == "pending"

            r = await http.post(
                f"/api/plans/{plan_id}/steps/code/approve", json={"version": 2}, headers=ALICE
            )
            assert r.status_code == 200, r.text
            st = await wait_status(http, plan_id, lambda s: s["status"] == "completed", 60)
            assert "hello from a change" in str(st["steps"][1]["output"])
            assert len(srv.requests("/hook", "POST")) == 1
            audit = (await http.get(f"/api/plans/{plan_id}/audit", headers=ALICE)).json()
            accepted = [(a["by"], a["action"]) for a in audit if a["accepted"]]
            assert ("alice", "approve") in accepted and ("alice", "approve_step") in accepted
            assert ("bot", "apply_correction") in accepted


async def test_an_agent_key_cannot_undo_a_persons_skip_by_retrying(
    env: WorkflowEnvironment, worker: Any, task_queue: str, monkeypatch: pytest.MonkeyPatch
):
    """Alice skips the bot's notify step (a POST); the bot retries it on its own plan:
    403, and the server never sees the POST (before, the retry ran it)."""
    app = app_with_keys(monkeypatch, env.client, task_queue)
    with KeyServer() as srv:
        notify = {
            "id": "notify",
            "tool": "http_request",
            "params": {"url": srv.url("/hook"), "method": "POST", "json": {"n": 1}},
            "depends_on": ["first"],
        }
        doc = plan_doc([wait_step("first", 1.5), notify], require_approval=True)
        plan_id = doc["id"]
        async with serve(app) as http:
            assert (await http.post("/api/plans", json=doc, headers=BOT)).status_code == 201
            assert (
                await http.post(f"/api/plans/{plan_id}/execute", headers=BOT)
            ).status_code == 202
            await wait_status(http, plan_id, lambda s: s["status"] == "pending_approval")
            r = await http.post(f"/api/plans/{plan_id}/approve", json={}, headers=ALICE)
            assert r.status_code == 200, r.text
            r = await http.post(
                f"/api/plans/{plan_id}/steps/notify/skip", json={"reason": "no"}, headers=ALICE
            )
            assert r.status_code == 200, r.text
            r = await http.post(f"/api/plans/{plan_id}/steps/notify/retry", json={}, headers=BOT)
            assert r.status_code == 403, r.text
            assert "only a person undoes" in r.json()["detail"]
            st = await wait_status(http, plan_id, lambda s: s["status"] in ("completed", "partial"))
            assert st["steps"][1]["status"] == "skipped"
            assert srv.seen == []

"""Who submitted a plan comes from the API key, never from the document (issue 12): real
HTTP requests against the app with keys configured, a real worker and store.

A key that approves the plans it submitted approves them (the run goes on), but that is no
person's approval for trust; a document naming its own ``submitted_by`` is refused.
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from pathlib import Path
from typing import Any

import httpx
from temporalio.testing import WorkflowEnvironment

from plans.graph_document import plan_id_for_execution
from store.db import session_scope
from store.models import PlanRecord
from tests.api.serving import client
from tests.api.test_plans_routes import closed, make_app
from tests.helpers import store_engine


async def wait_status(
    http: httpx.AsyncClient, plan_id: str, headers: dict[str, str], want: str
) -> dict[str, Any]:
    deadline = time.monotonic() + 20
    while True:
        r = await http.get(f"/api/plans/{plan_id}/status", headers=headers)
        assert r.status_code == 200, r.text
        if r.json()["status"] == want:
            return dict(r.json())
        assert time.monotonic() < deadline, r.json()["status"]
        await asyncio.sleep(0.05)


async def test_the_submitter_comes_from_the_key_and_its_own_approval_earns_no_trust(
    env: WorkflowEnvironment, worker: Any, task_queue: str
) -> None:
    app = make_app(env.client, task_queue, api_keys="k-bot:ci-bot,k-alice:alice")
    bot = {"Authorization": "Bearer k-bot"}
    agent_id = f"agent-{uuid.uuid4().hex[:8]}"
    doc = {
        "id": f"sub-{uuid.uuid4().hex[:10]}",
        "agent_id": agent_id,
        "options": {"require_approval": "auto"},
        "steps": [{"id": "book", "tool": "count", "params": {"key": uuid.uuid4().hex}}],
    }
    doc["steps"][0]["idempotent"] = False  # high risk: a fresh agent waits for a person
    async with (
        app.router.lifespan_context(app),
        client(app) as http,
    ):
        # A document cannot name its submitter.
        forged = {**doc, "id": f"sub-{uuid.uuid4().hex[:10]}", "submitted_by": "alice"}
        r = await http.post("/api/plans", json=forged, headers=bot)
        assert r.status_code == 422, r.text
        assert "submitted_by" in r.text

        assert (await http.post("/api/plans", json=doc, headers=bot)).status_code == 201
        r = await http.post(f"/api/plans/{doc['id']}/execute", headers=bot)
        assert r.status_code == 202, r.text
        st = await wait_status(http, doc["id"], bot, "pending_approval")
        assert st["approval_policy"]["required"] is True
        # The key approves what it submitted: the run goes on...
        r = await http.post(f"/api/plans/{doc['id']}/approve", json={}, headers=bot)
        assert r.status_code == 200, r.text
        await wait_status(http, doc["id"], bot, "completed")
        await closed(env.client, doc["id"])

        with session_scope(store_engine()) as s:
            row = s.get(PlanRecord, doc["id"])
            assert row is not None and row.submitted_by == "ci-bot"
        # ...but it earned the agent nothing.
        trust = (await http.get(f"/api/agents/{agent_id}/trust", headers=bot)).json()
        assert trust["inputs"]["completed"] == 1
        assert trust["inputs"]["approved_by_self"] == 1
        assert trust["inputs"]["approved_by_person"] == 0
        assert trust["score"] == 0.3


async def test_an_execution_started_with_a_key_records_its_submitter(
    env: WorkflowEnvironment, worker: Any, task_queue: str
) -> None:
    app = make_app(env.client, task_queue, api_keys="k-bot:ci-bot")
    bot = {"X-API-Key": "k-bot"}
    body = json.loads(EXAMPLE.read_text())
    body["execution_id"] = f"exec-{uuid.uuid4().hex[:10]}"
    plan_id = plan_id_for_execution(body["execution_id"])
    async with (
        app.router.lifespan_context(app),
        client(app) as http,
    ):
        r = await http.post("/api/v1/execute", json=body, headers=bot)
        assert r.status_code == 202, r.text
        await closed(env.client, plan_id)
    with session_scope(store_engine()) as s:
        row = s.get(PlanRecord, plan_id)
        assert row is not None and row.submitted_by == "ci-bot"


EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "execution_request.json"

"""The interactive-execution routes (pause with a question, resume with feedback,
execution-state) speak their own seven state words, as a client written for them waits
for: ``running``, then ``waiting_clarification``, then ``resumed``, then ``completed``."""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from pathlib import Path
from typing import Any

import httpx
from temporalio.testing import WorkflowEnvironment

from plans.models import PlanStatus
from plans.views import INTERACTIVE_STATES
from tests.api.serving import serve
from tests.api.test_plans_routes import (
    create_and_execute,
    make_app,
    plan_doc,
    wait_status,
    wait_step,
)

ROOT = Path(__file__).resolve().parents[2]


def test_every_plan_status_has_a_word():
    words = {
        "running",
        "paused",
        "waiting_clarification",
        "waiting_correction",
        "completed",
        "failed",
    }
    assert set(INTERACTIVE_STATES) == set(PlanStatus)
    assert set(INTERACTIVE_STATES.values()) <= words


async def state_of(http: httpx.AsyncClient, plan_id: str) -> dict[str, Any]:
    r = await http.get(f"/api/plans/{plan_id}/execution-state")
    assert r.status_code == 200, r.text
    es: dict[str, Any] = r.json()
    return es


async def until(
    http: httpx.AsyncClient, plan_id: str, seen: list[str], want: str
) -> dict[str, Any]:
    deadline = time.monotonic() + 20
    while True:
        es = await state_of(http, plan_id)
        if not seen or seen[-1] != es["state"]:
            seen.append(es["state"])
        if es["state"] == want:
            return es
        assert time.monotonic() < deadline, f"never {want}: {seen}"
        await asyncio.sleep(0.05)


async def test_a_client_of_the_interactive_routes_sees_its_own_words(
    env: WorkflowEnvironment, worker: Any, task_queue: str
) -> None:
    doc = plan_doc([wait_step("a", 0.6), wait_step("b", 1.5, ["a"])])
    async with serve(make_app(env.client, task_queue)) as http:
        plan_id = await create_and_execute(http, doc)
        seen: list[str] = []
        es = await until(http, plan_id, seen, "running")
        assert es["status"] == "executing"
        st = (await http.get(f"/api/plans/{plan_id}/status")).json()
        assert st["current_step"] == "a" and st["approved_at"] is not None  # by the policy

        pause = {"step_id": "b", "question": "Do you want to proceed?"}
        assert (await http.post(f"/api/plans/{plan_id}/pause", json=pause)).status_code == 200
        es = await until(http, plan_id, seen, "waiting_clarification")
        assert (es["step_id"], es["question"]) == ("b", "Do you want to proceed?")
        assert es["paused_at"] is not None
        await wait_status(http, plan_id, lambda s: s["steps"][0]["status"] == "completed")
        assert (await state_of(http, plan_id))["state"] == "waiting_clarification"

        r = await http.post(
            f"/api/plans/{plan_id}/resume", json={"feedback": "Proceed with execution"}
        )
        assert r.status_code == 200, r.text
        es = await until(http, plan_id, seen, "resumed")
        assert es["status"] == "executing"  # b runs, started by the resume
        await until(http, plan_id, seen, "completed")
        assert seen == ["running", "waiting_clarification", "resumed", "completed"]
        # the status as the execution-plan format's clients read it as well
        st = (await http.get(f"/api/plans/{plan_id}/status")).json()
        assert st["current_step"] is None and st["counts"] == {"completed": 2}
        b = st["steps"][1]
        assert b["duration_ms"] >= 1400 and b["duration_ms"] < 10_000, b


async def test_post_an_execution_plan_as_it_is(
    env: WorkflowEnvironment, worker: Any, task_queue: str
) -> None:
    """POST /api/plans takes the execution-plan format; the approval it claims is not one."""
    doc = json.loads((ROOT / "examples" / "execution_plan.json").read_text())
    doc["ID"] = f"ep-{uuid.uuid4().hex[:8]}"
    doc["Options"]["RequireApproval"] = True
    doc |= {"UserApproved": True, "ApprovedBy": "mallory", "Status": "approved"}
    async with serve(make_app(env.client, task_queue)) as http:
        r = await http.post("/api/plans", json=doc)
        assert r.status_code == 201, r.text
        plan = (await http.get(f"/api/plans/{doc['ID']}")).json()["plan"]
        assert [s["tool"] for s in plan["steps"]] == ["transform", "transform", "wait"]
        assert plan["steps"][0]["retry_delay_s"] == 0.5 and plan["options"]["step_timeout_s"] == 30
        assert (await http.post(f"/api/plans/{doc['ID']}/execute")).status_code == 202
        st = await wait_status(http, doc["ID"], lambda s: s["status"] == "pending_approval")
        assert st["approved_by"] is None  # a person still has to approve it

        bad = {**doc, "ID": f"ep-{uuid.uuid4().hex[:8]}", "Steps": [{"ID": "x", "ToolNme": "wait"}]}
        r = await http.post("/api/plans", json=bad)
        assert r.status_code == 422, r.text
        assert [p["location"] for p in r.json()["problems"]] == ["Steps[0].ToolNme"]

"""The adaptive approval policy end to end (issue #6): real workflows on the dev server,
the worker's store (the tests' temporary SQLite), the ``assess_approval`` activity.

A fresh agent's risky plan waits for a person and the status says why; after a history of
approved, successful plans from the same agent, a low-risk plan (and now the risky one
too) runs without asking, and the audit trail says why; a step deleting production data
still waits for a person — it is rejected here, so nothing is ever sent.
"""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

import httpx
from temporalio.client import Client, WorkflowHandle
from temporalio.contrib.pydantic import pydantic_data_converter
from temporalio.worker import Replayer, Worker

from api.app import create_app
from config import get_settings
from contracts.approval import ASSESS_APPROVAL
from plans.models import Plan, PlanStatus, StepStatus
from plans.run_state import AuditEntry
from plans.views import StatusView
from store import reads
from store.db import session_scope
from tests.api.serving import BASE_URL, JSON
from tests.helpers import activity_deps, start, status, store_engine, wait_for
from worker import WORKFLOWS, activities_for
from workflows.plan_input import PlanResult
from workflows.plan_workflow import PlanWorkflow

PROD_URL = "https://db.prod.example.com/tables/customers"


def agent() -> str:
    return f"agent-{uuid.uuid4().hex[:10]}"


def plan_of(agent_id: str, steps: list[dict[str, Any]], **options: Any) -> Plan:
    return Plan.model_validate(
        {
            "id": f"aa-{uuid.uuid4().hex[:12]}",
            "title": "adaptive approval",
            "agent_id": agent_id,
            "options": {"require_approval": "auto", **options},
            "steps": steps,
        }
    )


def risky(agent_id: str) -> Plan:
    """High risk, harmless to run: a step that is not idempotent (runs once)."""
    k = uuid.uuid4().hex
    return plan_of(
        agent_id,
        [{"id": "book", "tool": "count", "params": {"key": k}, "idempotent": False}],
    )


def low_risk(agent_id: str) -> Plan:
    return plan_of(
        agent_id,
        [{"id": "shape", "tool": "transform", "params": {"data": [1, 2], "expression": "@"}}],
    )


def with_wipe(agent_id: str) -> Plan:
    return plan_of(
        agent_id,
        [
            {"id": "shape", "tool": "transform", "params": {"data": [1], "expression": "@"}},
            {
                "id": "wipe",
                "tool": "http_request",
                "description": "drop the old customers table",
                "params": {"url": PROD_URL, "method": "DELETE"},
                "depends_on": ["shape"],
            },
        ],
    )


async def audit(handle: WorkflowHandle) -> list[AuditEntry]:
    return await handle.query("audit", result_type=list[AuditEntry])


async def result(handle: WorkflowHandle) -> PlanResult:
    return await asyncio.wait_for(handle.result(), timeout=20)


async def run_with_approval(client: Client, plan: Plan, task_queue: str) -> StatusView:
    """Start ``plan``; it must wait for a person; alice approves; it must complete."""
    handle = await start(client, plan, task_queue)
    st = await wait_for(handle, lambda s: s.status == PlanStatus.PENDING_APPROVAL)
    await handle.execute_update("approve", {"by": "alice"})
    assert (await result(handle)).status == PlanStatus.COMPLETED
    return st


async def test_trust_is_earned_and_a_production_delete_still_asks(client, worker, task_queue):
    bot = agent()

    # A fresh agent's risky plan waits for a person; the status says why.
    first = await run_with_approval(client, risky(bot), task_queue)
    policy = first.approval_policy
    assert policy is not None and policy.required and policy.source == "policy"
    assert (policy.risk_level, policy.trust_level, policy.trust_score) == ("high", "low", 0.3)
    assert "step book: the step is not idempotent" in policy.reasons[0]
    assert f"{bot} has no finished run on record yet" in policy.reasons[1]
    assert policy.reasons[2].startswith("a person must approve: the plan counts as high-risk")
    assert first.waiting_for is not None and first.waiting_for.kind == "plan_approval"
    assert first.approval_note and first.approval_note.startswith("auto: risk high")

    # A history of approved, successful plans (5 with the first: "high" trust).
    levels = []
    for _ in range(4):
        st = await run_with_approval(client, risky(bot), task_queue)
        assert st.approval_policy is not None and st.approval_policy.required
        levels.append(st.approval_policy.trust_level)
    assert levels == ["low", "low", "moderate", "moderate"]

    # Now a low-risk plan runs without asking, and the audit trail says why.
    handle = await start(client, low_risk(bot), task_queue)
    done = await result(handle)
    assert done.status == PlanStatus.COMPLETED
    entries = await audit(handle)
    decided = next(a for a in entries if a.action == "approval_policy")
    assert decided.by == "policy" and decided.accepted
    assert decided.detail.startswith(f"no person needed: risk low, trust of {bot} 0.77 (high)")
    assert "5 finished run(s)" in decided.detail and "5 approved by a person" in decided.detail
    approved = next(a for a in entries if a.action == "approve")
    assert approved.by == "policy" and approved.detail.startswith("no person needed: auto: ")
    st = await status(handle)
    assert st.approved_by == "policy"
    assert st.approval_policy is not None and not st.approval_policy.required
    assert st.approval_policy.trust is not None
    assert st.approval_policy.trust.inputs["approved_by_person"] == 5
    with session_scope(store_engine()) as session:  # the store keeps the decision too
        stored = reads.get_status(session, st.plan_id)
    assert stored is not None and stored.approval_policy is not None
    assert stored.approval_policy.model_dump(mode="json") == st.approval_policy.model_dump(
        mode="json"
    )

    # The run replays deterministically (the decision is in its history).
    replayer = Replayer(workflows=[PlanWorkflow], data_converter=pydantic_data_converter)
    await replayer.replay_workflow(await handle.fetch_history())

    # Trust made the difference: the same risky plan runs without a person now.
    handle = await start(client, risky(bot), task_queue)
    assert (await result(handle)).status == PlanStatus.COMPLETED
    st = await status(handle)
    assert st.approved_by == "policy" and st.approval_policy is not None
    assert st.approval_policy.trust_level == "high"

    # A step deleting production data still waits for a person, whatever the trust.
    handle = await start(client, with_wipe(bot), task_queue)
    st = await wait_for(handle, lambda s: s.status == PlanStatus.WAITING_APPROVAL)
    assert st.approved_by == "policy"
    assert st.waiting_for is not None and st.waiting_for.kind == "step_approval"
    assert st.waiting_for.step_id == "wipe"
    assert st.waiting_for.question is not None
    assert f"deletion on a production target (DELETE {PROD_URL})" in st.waiting_for.question
    assert st.approval_policy is not None
    assert "whatever the trust" in st.approval_policy.step_gates["wipe"]
    gate = next(a for a in await audit(handle) if a.action == "policy_gate")
    assert gate.step_id == "wipe" and gate.by == "policy"
    await handle.execute_update("reject_step", {"by": "alice", "step_id": "wipe", "reason": "no"})
    done = await result(handle)
    assert done.steps == {"shape": "completed", "wipe": "skipped"}


async def test_a_fresh_agents_production_delete_waits_twice(client, worker, task_queue):
    """A new agent: the plan waits for a person, and the critical step waits again."""
    handle = await start(client, with_wipe(agent()), task_queue)
    st = await wait_for(handle, lambda s: s.status == PlanStatus.PENDING_APPROVAL)
    assert st.approval_policy is not None and st.approval_policy.required
    assert st.approval_policy.step_gates.keys() == {"wipe"}
    await handle.execute_update("approve", {"by": "alice"})
    st = await wait_for(handle, lambda s: s.status == PlanStatus.WAITING_APPROVAL)
    assert st.waiting_for is not None and st.waiting_for.step_id == "wipe"
    assert next(s for s in st.steps if s.id == "shape").status == StepStatus.COMPLETED
    await handle.execute_update("cancel", {"by": "alice", "reason": "not sending that"})
    assert (await result(handle)).status == PlanStatus.CANCELLED


async def test_explicit_options_keep_their_meaning(client, worker, task_queue):
    """require_approval true/false are not touched by the policy (no assessment)."""
    plan = risky(agent()).model_copy(deep=True)
    plan.options.require_approval = False
    handle = await start(client, plan, task_queue)
    assert (await result(handle)).status == PlanStatus.COMPLETED
    st = await status(handle)
    assert st.approval_policy is None and st.approval_note == "require_approval is false"
    assert not [a for a in await audit(handle) if a.action == "approval_policy"]


async def test_when_the_assessment_fails_a_person_is_asked(client, env, task_queue):
    """Fails closed: even a low-risk plan the policy would run alone waits for a person."""
    from temporalio import activity

    @activity.defn(name=ASSESS_APPROVAL)
    async def broken(_: Any) -> Any:
        raise RuntimeError("the store is on fire")

    activities = [a for a in activities_for(activity_deps()) if a.__name__ != "assess_approval"]
    async with Worker(
        env.client,
        task_queue=task_queue,
        workflows=list(WORKFLOWS),
        activities=[*activities, broken],
    ):
        handle = await start(client, low_risk(agent()), task_queue)
        st = await wait_for(handle, lambda s: s.status == PlanStatus.PENDING_APPROVAL)
        assert st.approval_policy is not None and st.approval_policy.source == "fallback"
        assert st.approval_policy.required and st.approval_policy.risk_level == "low"
        assert "the store is on fire" in st.approval_policy.reasons[1]
        assert st.approval_policy.trust_unread is not None
        assert st.approval_policy.trust_unread.startswith("the assessment failed: ")
        decided = next(a for a in await audit(handle) if a.action == "approval_policy")
        assert "[the trust could not be read (the assessment failed: " in decided.detail
        replayer = Replayer(workflows=[PlanWorkflow], data_converter=pydantic_data_converter)
        await replayer.replay_workflow(await handle.fetch_history())
        await handle.execute_update("reject", {"by": "alice", "reason": "test"})
        assert (await result(handle)).status == PlanStatus.REJECTED


async def test_trust_and_risk_over_the_api(client, worker, task_queue):
    bot = agent()
    await run_with_approval(client, risky(bot), task_queue)
    settings = get_settings().replace(temporal={"task_queue": task_queue})
    app = create_app(settings=settings, client=client)
    async with (
        app.router.lifespan_context(app),
        httpx.AsyncClient(
            transport=httpx.ASGITransport(app=app), base_url=BASE_URL, headers=JSON
        ) as http,
    ):
        got = (await http.get(f"/api/agents/{bot}/trust")).json()
        assert got["agent_id"] == bot and got["inputs"]["completed"] == 1
        assert got["inputs"]["approved_by_person"] == 1 and got["level"] == "low"
        assert "1 finished run(s)" in got["explanation"]
        fresh = (await http.get("/api/agents/nobody-yet/trust")).json()
        assert (fresh["score"], fresh["level"]) == (0.3, "low")

        doc = with_wipe(bot).model_dump(mode="json", exclude_none=True)
        created = await http.post("/api/plans", json=doc)
        assert created.status_code == 201, created.text
        risk = (await http.get(f"/api/plans/{doc['id']}/risk")).json()
        assert risk["level"] == "critical" and risk["agent_id"] == bot
        assert (
            risk["reasons"][0] == f"step wipe: deletion on a production target (DELETE {PROD_URL})"
        )
        assert risk["risk"]["steps"]["shape"]["level"] == "low"
        assert risk["decision"]["required"] is True
        assert set(risk["decision"]["step_gates"]) == {"wipe"}
        missing = await http.get("/api/plans/no-such-plan/risk")
        assert missing.status_code == 404

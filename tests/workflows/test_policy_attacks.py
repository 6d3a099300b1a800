"""Oversight that cannot be bypassed (issue 12): the adaptive approval policy attacked the
way an agent would, on real workflows (the local dev server), the ``assess_approval``
activity and a real store.

* a fresh agent's ``auto`` plan that POSTs to a production deploy URL (a local server whose
  path and query say so) waits for a person, and the server receives nothing until a
  person approves;
* with the store unreachable (PostgreSQL behind a TCP proxy the test cuts) an ``auto``
  plan the policy would otherwise run alone waits for a person, and its status says the
  trust could not be read;
* an agent approving its own plans (under its own name, or as the key that submitted
  them) keeps its low trust;
* an agent with a bad record resubmitting under a new ``agent_id`` through the same
  submitter starts from the bad record.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
import sqlalchemy as sa
from temporalio.client import Client, WorkflowHandle

from config import get_settings
from plans.models import Plan, PlanStatus
from plans.run_state import AuditEntry
from plans.views import StatusView
from store import db
from store.models import PlanRecord
from tests.helpers import start, wait_for, worker_with
from tests.key_server import KeyServer
from tests.tcp_proxy import TcpProxy, pg_schema_behind_proxy
from workflows.plan_input import PlanResult


def agent() -> str:
    return f"agent-{uuid.uuid4().hex[:10]}"


def plan_of(agent_id: str | None, steps: list[dict[str, Any]]) -> Plan:
    return Plan.model_validate(
        {
            "id": f"pa-{uuid.uuid4().hex[:12]}",
            "title": "policy attack",
            "agent_id": agent_id,
            "options": {"require_approval": "auto"},
            "steps": steps,
        }
    )


def low_risk(agent_id: str | None) -> Plan:
    return plan_of(
        agent_id,
        [{"id": "shape", "tool": "transform", "params": {"data": [1, 2], "expression": "@"}}],
    )


def risky(agent_id: str) -> Plan:
    """High risk, harmless to run: a step that is not idempotent."""
    return plan_of(
        agent_id,
        [{"id": "book", "tool": "count", "params": {"key": uuid.uuid4().hex}, "idempotent": False}],
    )


async def result(handle: WorkflowHandle) -> PlanResult:
    return await asyncio.wait_for(handle.result(), timeout=30)


async def audit(handle: WorkflowHandle) -> list[AuditEntry]:
    return await handle.query("audit", result_type=list[AuditEntry])


async def waits_for_a_person(handle: WorkflowHandle) -> StatusView:
    st = await wait_for(handle, lambda s: s.status == PlanStatus.PENDING_APPROVAL, timeout=30)
    assert st.waiting_for is not None and st.waiting_for.kind == "plan_approval"
    assert st.approval_policy is not None and st.approval_policy.required
    return st


# --- a production deploy --------------------------------------------------------------


async def test_a_fresh_agents_production_deploy_waits_for_a_person(
    client: Client, worker: Any, task_queue: str
) -> None:
    with KeyServer() as srv:
        url = srv.url("/prod-deploy?env=production")
        plan = plan_of(
            agent(),
            [{"id": "ship", "tool": "http_request", "params": {"url": url, "method": "POST"}}],
        )
        handle = await start(client, plan, task_queue)
        st = await waits_for_a_person(handle)
        policy = st.approval_policy
        assert policy is not None
        assert (policy.risk_level, policy.trust_level) == ("high", "low")
        assert f"step ship: write to a production target (POST {url})" in policy.reasons[0]
        assert "has no finished run on record yet" in policy.reasons[1]
        await asyncio.sleep(1.0)  # it keeps waiting: nothing was sent
        assert (await wait_for(handle, lambda s: True)).status == PlanStatus.PENDING_APPROVAL
        assert srv.seen == []

        await handle.execute_update("approve", {"by": "alice"})
        assert (await result(handle)).status == PlanStatus.COMPLETED
        assert [(m, p) for m, p, _ in srv.seen] == [("POST", "/prod-deploy")]


# --- the store unreachable ------------------------------------------------------------


@pytest.fixture
def pg_behind_proxy(pg_database: str) -> Iterator[tuple[str, str, TcpProxy]]:
    """A fresh schema in the session's PostgreSQL database: (direct URL, URL through a
    TCP proxy, the proxy)."""
    with pg_schema_behind_proxy(pg_database) as found:
        yield found


async def test_with_the_store_unreachable_an_auto_plan_waits_for_a_person(
    client: Client, task_queue: str, pg_behind_proxy: Any
) -> None:
    direct_url, proxy_url, proxy = pg_behind_proxy
    settings = get_settings().replace(store={"database_url": proxy_url})
    bot = agent()
    async with worker_with(client, task_queue, settings=settings):
        # Through the proxy the store answers: the policy reads the trust and runs the
        # low-risk plan without a person, and the run is recorded in PostgreSQL.
        handle = await start(client, low_risk(bot), task_queue)
        assert (await result(handle)).status == PlanStatus.COMPLETED
        st = await wait_for(handle, lambda s: True)
        assert st.approved_by == "policy"
        assert st.approval_policy is not None and st.approval_policy.trust_unread is None
        assert proxy.accepted > 0
        direct = db.make_engine(direct_url, poolclass=sa.NullPool)
        try:
            with db.session_scope(direct) as s:
                row = s.get(PlanRecord, st.plan_id)
                assert row is not None and row.agent_id == bot
        finally:
            direct.dispose()

        proxy.cut()  # the store goes away

        handle = await start(client, low_risk(bot), task_queue)
        try:
            st = await waits_for_a_person(handle)
            policy = st.approval_policy
            assert policy is not None and policy.risk_level == "low"
            assert policy.trust_unread is not None
            assert policy.trust_unread.startswith("store unreachable: ")
            assert (
                f"the trust of {bot} could not be read (store unreachable: " in (policy.reasons[1])
            )
            assert "a person must approve: the trust could not be read" in policy.reasons[-1]
            assert st.approval_note is not None and "could not be read" in st.approval_note
            decided = next(a for a in await audit(handle) if a.action == "approval_policy")
            assert decided.detail.startswith("a person must approve: risk low")
            assert "[the trust could not be read (store unreachable: " in decided.detail
            assert st.approved_by is None
        finally:
            # its records cannot reach the store: end it here rather than wait for them
            await handle.terminate("test over")


# --- trust farming --------------------------------------------------------------------


async def test_an_agent_approving_its_own_plans_keeps_its_low_trust(
    client: Client, worker: Any, task_queue: str
) -> None:
    bot, key = agent(), f"key-{uuid.uuid4().hex[:8]}"
    for approver in (bot, bot, bot, key, key):  # its own name, then the submitting key
        handle = await start(client, risky(bot), task_queue, submitted_by=key)
        await waits_for_a_person(handle)
        await handle.execute_update("approve", {"by": approver})
        assert (await result(handle)).status == PlanStatus.COMPLETED

    handle = await start(client, risky(bot), task_queue, submitted_by=key)
    st = await waits_for_a_person(handle)
    policy = st.approval_policy
    assert policy is not None and policy.trust is not None
    assert (policy.trust_score, policy.trust_level) == (0.3, "low")
    assert policy.trust.inputs["completed"] == 5
    assert policy.trust.inputs["approved_by_self"] == 5
    assert policy.trust.inputs["approved_by_person"] == 0
    assert "5 approved by their own agent or submitter" in policy.reasons[1]
    # the same five runs approved by a person would have made it moderate (0.68)
    await handle.execute_update("reject", {"by": "alice", "reason": "test over"})
    assert (await result(handle)).status == PlanStatus.REJECTED


async def test_a_new_agent_id_from_the_same_submitter_starts_from_the_bad_record(
    client: Client, worker: Any, task_queue: str
) -> None:
    key = f"key-{uuid.uuid4().hex[:8]}"
    old = agent()
    for _ in range(3):  # a bad record: a person rejects three of its plans
        handle = await start(client, risky(old), task_queue, submitted_by=key)
        await waits_for_a_person(handle)
        await handle.execute_update("reject", {"by": "alice", "reason": "wrong"})
        assert (await result(handle)).status == PlanStatus.REJECTED

    # The same submitter under a new agent_id: even a low-risk plan waits for a person.
    new = agent()
    handle = await start(client, low_risk(new), task_queue, submitted_by=key)
    st = await waits_for_a_person(handle)
    policy = st.approval_policy
    assert policy is not None and policy.trust is not None
    assert policy.trust_level == "untrusted" and policy.trust_score < 0.2
    assert policy.trust.inputs["from_submitter"] == key
    assert policy.trust.inputs["rejected"] == 3
    assert f"so its trust starts from the record of its submitter {key}" in policy.reasons[1]
    await handle.execute_update("reject", {"by": "alice", "reason": "test over"})
    await result(handle)

    # Control: the same plan from a new agent through another submitter runs alone.
    handle = await start(client, low_risk(agent()), task_queue, submitted_by="another-key")
    assert (await result(handle)).status == PlanStatus.COMPLETED
    assert (await wait_for(handle, lambda s: True)).approved_by == "policy"

"""``on_error: replan`` through the workflow, offline: a step that fails for good gets a
proposal from the planner (the ``propose_replan`` activity with the offline model),
which is applied unattended or waits for a person; completed steps never run again.

Every request goes to a server the test starts on 127.0.0.1 that counts them by path."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from typing import Any

import pytest

from contracts.replan import PROPOSE_REPLAN_TOOL
from tests.helpers import make_plan, start, wait_for
from tests.key_server import KeyServer
from tests.llm_fakes import ScriptedModel, tool_use


@pytest.fixture
def server() -> Iterator[KeyServer]:
    with KeyServer() as srv:
        yield srv


def steps(server: KeyServer, flaky: str = "/flaky?fail=2", **fetch: Any) -> list[dict[str, Any]]:
    return [
        {"id": "upstream", "tool": "http_request", "params": {"url": server.url("/ok")}},
        {
            "id": "fetch",
            "tool": "http_request",
            "params": {"url": server.url(flaky)},
            "depends_on": ["upstream"],
            "max_retries": 0,
            **fetch,
        },
        {"id": "after", "tool": "wait", "params": {"seconds": 0}, "depends_on": ["fetch"]},
    ]


async def test_a_low_risk_proposal_is_applied_unattended_and_completes_the_plan(
    client, worker, task_queue, server
):
    plan = make_plan(steps(server), on_error="replan")  # require_approval false
    handle = await start(client, plan, task_queue)
    res = await asyncio.wait_for(handle.result(), 60)
    assert res.status == "completed", res.outcome
    assert len(server.requests("/ok")) == 1  # the completed upstream step ran once
    assert len(server.requests("/flaky")) == 3  # 503, then (after the replan) 503, 200
    assert res.plan.step("fetch").max_retries == 3
    assert res.version == 2
    audit = await handle.query("audit")
    actions = [(a["action"] if isinstance(a, dict) else a.action) for a in audit]
    replan_actions = [a for a in actions if a.startswith("replan_")]
    assert replan_actions == ["replan_asked", "replan_proposed", "replan_applied"]
    st = await wait_for(handle, lambda s: s.status == "completed")
    (p,) = st.replans
    assert (p.state, p.decided_by, p.kind, p.offline) == ("applied", "policy", "correction", True)


async def test_a_proposal_waits_for_a_person_who_accepts_it(client, worker, task_queue, server):
    plan = make_plan(steps(server), on_error="replan", require_approval=True)
    handle = await start(client, plan, task_queue)
    await handle.execute_update("approve", {"by": "alice"})
    st = await wait_for(
        handle,
        lambda s: (
            s.waiting_for and s.waiting_for.proposal and s.waiting_for.proposal.state == "proposed"
        ),
    )
    assert st.status == "waiting_correction"
    w = st.waiting_for
    assert (w.kind, w.step_id) == ("replan", "fetch")
    assert "max_retries" in (w.question or "")
    await handle.execute_update("accept_replan", {"by": "rita", "step_id": "fetch"})
    res = await asyncio.wait_for(handle.result(), 60)
    assert res.status == "completed", res.outcome
    assert len(server.requests("/ok")) == 1
    st = await wait_for(handle, lambda s: s.status == "completed")
    assert (st.replans[0].state, st.replans[0].decided_by) == ("accepted", "rita")


async def test_nothing_to_propose_waits_for_a_person_instead_of_looping(
    client, worker, task_queue, server
):
    # a 404 is no transient failure: the offline planner has no fix to offer
    plan = make_plan(steps(server, "/status?code=404"), on_error="replan")
    handle = await start(client, plan, task_queue)
    st = await wait_for(
        handle, lambda s: s.waiting_for is not None and s.waiting_for.kind == "correction"
    )
    assert [p.state for p in st.replans] == ["nothing"]
    assert "nothing to propose" in st.replans[0].why
    await asyncio.sleep(0.3)
    assert len((await wait_for(handle, lambda s: True)).replans) == 1  # no second round
    await handle.execute_update("skip_step", {"by": "ops", "step_id": "fetch", "reason": "ok"})
    res = await asyncio.wait_for(handle.result(), 30)
    assert res.status == "partial"


async def test_a_hostile_proposal_is_refused_and_changes_nothing(
    client, start_worker, task_queue, server
):
    # the model tries to re-run (and rewrite) the completed upstream step
    hostile = {
        "kind": "replacement",
        "reason": "trust me",
        "replaces": ["fetch", "upstream"],
        "steps": [
            {"id": "upstream", "tool": "http_request", "params": {"url": server.url("/ok")}},
            {"id": "fetch", "tool": "http_request", "params": {"url": server.url("/ok")}},
        ],
    }
    await start_worker(ScriptedModel(tool_use(PROPOSE_REPLAN_TOOL, hostile)))
    plan = make_plan(steps(server), on_error="replan")
    handle = await start(client, plan, task_queue)
    st = await wait_for(
        handle, lambda s: s.waiting_for is not None and s.waiting_for.kind == "correction"
    )
    (p,) = st.replans
    assert p.state == "refused" and p.model == "scripted"
    assert "replaces: step upstream is completed" in p.why
    assert st.version == 1 and len(server.requests("/ok")) == 1
    await handle.execute_update("cancel", {"by": "ops", "reason": "enough"})
    assert (await asyncio.wait_for(handle.result(), 30)).status == "cancelled"

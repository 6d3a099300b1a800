"""``on_error: replan`` as a user meets it through the REST API, with API keys: a step
that calls a local server answering 503 twice, then 200, fails; the (offline) planner
proposes more retries; the plan waits with the proposal in its status; an agent key may
not accept it; a person does, and the plan completes. The completed upstream step was
called once; the audit trail and the versions name the proposal and who accepted it.

Every request goes to a server the test starts on 127.0.0.1 and stops."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from temporalio.testing import WorkflowEnvironment

from tests.api.serving import JSON, serve
from tests.api.test_console import browser_like, inbox_with, post_action, sign_in
from tests.api.test_oversight import ALICE, BOT, app_with_keys, wait_status
from tests.api.test_plans_routes import plan_doc
from tests.key_server import KeyServer


@pytest.fixture
def server() -> Iterator[KeyServer]:
    with KeyServer() as srv:
        yield srv


def replan_doc(server: KeyServer) -> dict[str, Any]:
    return plan_doc(
        [
            {"id": "upstream", "tool": "http_request", "params": {"url": server.url("/ok")}},
            {
                "id": "fetch",
                "tool": "http_request",
                "params": {"url": server.url("/flaky?fail=2")},
                "depends_on": ["upstream"],
                "max_retries": 0,
            },
        ],
        require_approval=True,
        on_error="replan",
    )


def proposed(st: dict[str, Any]) -> bool:
    w = st.get("waiting_for") or {}
    return w.get("kind") == "replan" and (w.get("proposal") or {}).get("state") == "proposed"


async def start_and_fail(http: Any, server: KeyServer) -> tuple[str, dict[str, Any]]:
    doc = replan_doc(server)
    assert (await http.post("/api/plans", json=doc, headers=BOT)).status_code == 201
    plan_id = doc["id"]
    r = await http.post(f"/api/plans/{plan_id}/execute", headers=BOT | JSON)
    assert r.status_code == 202, r.text
    await wait_status(http, plan_id, lambda s: s["status"] == "pending_approval")
    r = await http.post(f"/api/plans/{plan_id}/approve", json={}, headers=ALICE)
    assert r.status_code == 200, r.text
    return plan_id, await wait_status(http, plan_id, proposed, timeout=30)


async def test_a_person_accepts_the_planners_proposal_and_the_plan_completes(
    env: WorkflowEnvironment, worker: Any, task_queue: str, monkeypatch: pytest.MonkeyPatch, server
):
    app = app_with_keys(monkeypatch, env.client, task_queue)
    async with serve(app) as http:
        plan_id, st = await start_and_fail(http, server)
        assert st["status"] == "waiting_correction"
        proposal = st["waiting_for"]["proposal"]
        assert proposal["kind"] == "correction" and proposal["offline"] is True
        assert proposal["updated_step"]["max_retries"] == 3
        assert "503" in proposal["error"] and proposal["needs_person"] is True
        assert st["waiting_for"]["step_id"] == "fetch"

        # the agent that proposed the plan may not accept the planner's proposal
        r = await http.post(f"/api/plans/{plan_id}/replan/accept", json={}, headers=BOT)
        assert r.status_code == 403 and "a person" in r.json()["detail"], r.text

        r = await http.post(
            f"/api/plans/{plan_id}/replan/accept",
            json={"step_id": "fetch", "comment": "retries are fine"},
            headers=ALICE,
        )
        assert r.status_code == 200, r.text
        st = await wait_status(http, plan_id, lambda s: s["status"] == "completed", timeout=30)
        assert st["version"] == 2
        (round_,) = st["replans"]  # the ended plan's status still lists the round
        assert (round_["state"], round_["decided_by"]) == ("accepted", "alice")

        assert len(server.requests("/ok")) == 1  # the completed upstream step: once
        assert len(server.requests("/flaky")) == 3  # 503; then 503, 200 with the retries

        audit = (await http.get(f"/api/plans/{plan_id}/audit", headers=ALICE)).json()
        (accepted,) = [a for a in audit if a["action"] == "accept_replan"]
        assert accepted["by"] == "alice" and accepted["accepted"] is True
        assert (
            "replan #1 accepted: correct step fetch (max_retries, retry_delay_s)"
            in (accepted["detail"])
        )
        (proposed_entry,) = [a for a in audit if a["action"] == "replan_proposed"]
        assert (
            proposed_entry["by"].startswith("planner") and "replan #1" in (proposed_entry["detail"])
        )
        versions = (await http.get(f"/api/plans/{plan_id}/versions", headers=ALICE)).json()
        items = versions["versions"] if isinstance(versions, dict) else versions
        assert any(v["by"] == "alice" and "replan #1" in v["change"] for v in items), items


async def test_a_rejected_proposal_leaves_the_failure_to_a_person(
    env: WorkflowEnvironment, worker: Any, task_queue: str, monkeypatch: pytest.MonkeyPatch, server
):
    app = app_with_keys(monkeypatch, env.client, task_queue)
    async with serve(app) as http:
        plan_id, _ = await start_and_fail(http, server)
        r = await http.post(
            f"/api/plans/{plan_id}/replan/reject", json={"reason": "host is down"}, headers=ALICE
        )
        assert r.status_code == 200, r.text
        st = await wait_status(
            http, plan_id, lambda s: (s.get("waiting_for") or {}).get("kind") == "correction"
        )
        assert st["status"] == "waiting_correction"
        assert st["replans"][0]["state"] == "rejected"
        assert st["replans"][0]["decided_by"] == "alice"
        # a second decision on the same proposal is refused with the reason (409)
        r = await http.post(f"/api/plans/{plan_id}/replan/accept", json={}, headers=ALICE)
        assert r.status_code == 409 and "no replan proposal waits" in r.text, r.text
        assert len(server.requests("/flaky")) == 1
        r = await http.post(f"/api/plans/{plan_id}/cancel", json={"reason": "x"}, headers=ALICE)
        assert r.status_code == 200, r.text


async def test_the_console_shows_the_proposal_and_a_person_accepts_it_there(
    env: WorkflowEnvironment, worker: Any, task_queue: str, monkeypatch: pytest.MonkeyPatch, server
):
    """In the console's inbox the proposal is a wait of its own: what it changes, its
    risk, and Accept/Reject for a person; an agent key is offered neither and a forged
    Accept is refused; alice accepts it there and the plan completes."""
    app = app_with_keys(monkeypatch, env.client, task_queue)
    async with browser_like(app) as bot, browser_like(app) as alice, serve(app) as http:
        plan_id, _ = await start_and_fail(http, server)

        await sign_in(bot, "k2")
        _, entry = await inbox_with(bot, plan_id, "replan")
        assert "proposed replan (on_error: replan)" in entry and "max_retries" in entry
        assert ">Accept</button>" not in entry and ">Reject</button>" not in entry
        page = (await bot.get(f"/console/plans/{plan_id}")).text
        shown = await post_action(bot, plan_id, "accept_replan", page, step_id="fetch")
        assert "refused (403)" in shown, shown

        await sign_in(alice, "k1")
        _, entry = await inbox_with(alice, plan_id, "replan")
        assert ">Accept</button>" in entry and ">Reject</button>" in entry
        assert 'class="level level-' in entry  # the proposal's risk
        # the entry's own version and digest (the inbox lists other tests' plans too)
        shown = await post_action(alice, plan_id, "accept_replan", entry, step_id="fetch")
        assert "Accept step fetch" in shown and "done" in shown, shown
        await wait_status(http, plan_id, lambda s: s["status"] == "completed", timeout=30)
        audit = (await http.get(f"/api/plans/{plan_id}/audit", headers=ALICE)).json()
        assert [a["by"] for a in audit if a["action"] == "accept_replan" and a["accepted"]] == [
            "alice"
        ]

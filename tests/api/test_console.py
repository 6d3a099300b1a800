"""The console's routes through the app, against the dev server and a worker: sign-in,
the session cookie, CSRF, roles, the recorded actor, stale pages, keys off.

The browser flows are in ``tests/api/test_console_browser.py``.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import time
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from temporalio.testing import WorkflowEnvironment

from api.console.dag import layout
from api.console.sessions import COOKIE, Sessions
from plans.plan_loading import parse_plan
from tests.api.serving import BASE_URL
from tests.api.test_plans_routes import make_app, plan_doc, wait_step

KEYS = "k1:alice:operator,k2:bot:agent"
ALICE = {"Authorization": "Bearer k1"}


@contextlib.asynccontextmanager
async def browser_like(app: FastAPI) -> AsyncIterator[httpx.AsyncClient]:
    """A client that talks to the app as a browser does: forms, cookies, no JSON header."""
    async with (
        app.router.lifespan_context(app),
        httpx.AsyncClient(
            transport=httpx.ASGITransport(app=app), base_url=BASE_URL, timeout=30
        ) as http,
    ):
        yield http


def csrf_of(html: str) -> str:
    found = re.search(r'name="csrf" value="([^"]+)"', html)
    assert found, "no CSRF token on the page"
    return found.group(1)


async def api(http: httpx.AsyncClient, method: str, path: str, **kw: Any) -> httpx.Response:
    """A call of the REST API with alice's key (JSON)."""
    headers = {"Content-Type": "application/json", **ALICE}
    return await http.request(method, path, headers=headers, **kw)


async def wait_status(http: httpx.AsyncClient, plan_id: str, wanted: str, timeout: float = 20):
    deadline = time.monotonic() + timeout
    while True:
        st = (await api(http, "GET", f"/api/plans/{plan_id}/status")).json()
        if st["status"] == wanted:
            return st
        assert time.monotonic() < deadline, f"{plan_id}: {st['status']}, not {wanted}"
        await asyncio.sleep(0.05)


async def start_plan(http: httpx.AsyncClient, doc: dict, key: dict | None = None) -> str:
    headers = {"Content-Type": "application/json", **(key or ALICE)}
    r = await http.post("/api/plans", json=doc, headers=headers)
    assert r.status_code == 201, r.text
    r = await http.post(f"/api/plans/{doc['id']}/execute", headers=headers)
    assert r.status_code == 202, r.text
    return str(doc["id"])


async def sign_in(http: httpx.AsyncClient, key: str) -> str:
    page = await http.get("/console")
    r = await http.post("/console/sign-in", data={"csrf": csrf_of(page.text), "key": key})
    assert r.status_code == 303, r.text
    page = await http.get("/console")
    assert page.status_code == 200
    return page.text


def item_of(html: str, plan_id: str) -> str:
    """The inbox entry of ``plan_id`` (its <li>)."""
    found = re.search(
        rf'<li class="item" data-plan-id="{plan_id}".*?(?=<li class="item"|</ol>)', html, re.S
    )
    assert found, f"{plan_id} is not in the inbox"
    return found.group(0)


async def inbox_with(
    http: httpx.AsyncClient, plan_id: str, kind: str, timeout: float = 20
) -> tuple[str, str]:
    """The inbox page once it lists a wait of ``kind`` for ``plan_id`` (the inbox reads
    which plans wait from the store, which the workflow's snapshots reach a moment after
    its status changes), and that entry."""
    deadline = time.monotonic() + timeout
    while True:
        html = (await http.get("/console")).text
        entry = item_of_or_empty(html, plan_id)
        if f'data-kind="{kind}"' in entry:
            return html, entry
        assert time.monotonic() < deadline, f"{plan_id}: no {kind} in the inbox"
        await asyncio.sleep(0.1)


def notices(html: str) -> str:
    found = re.search(r'<div id="notices".*?</div>', html, re.S)
    return found.group(0) if found else ""


# --- pure parts -----------------------------------------------------------------------


def test_the_dag_is_laid_out_in_layers_of_dependencies() -> None:
    plan = parse_plan(
        plan_doc(
            [
                wait_step("a"),
                wait_step("b"),
                wait_step("c", deps=["a", "b"]),
                wait_step("d", deps=["c"]),
                wait_step("e", deps=["a"]),
            ]
        )
    )
    drawn = layout(plan.steps, {"a": "completed"})
    assert drawn is not None
    x = {n.id: n.x for n in drawn.nodes}
    assert x["a"] == x["b"] < x["c"] == x["e"] < x["d"]  # a step sits right of its deps
    ys = {(n.x, n.y) for n in drawn.nodes}
    assert len(ys) == 5, "two steps share a place"
    assert {n.id: n.status for n in drawn.nodes}["a"] == "completed"
    assert {n.id: n.status for n in drawn.nodes}["d"] == "pending"
    assert {(e.source, e.target) for e in drawn.edges} == {
        ("a", "c"),
        ("b", "c"),
        ("c", "d"),
        ("a", "e"),
    }
    assert all(n.x >= 0 and n.x + 168 <= drawn.width for n in drawn.nodes)
    assert all(n.y >= 0 and n.y + 44 <= drawn.height for n in drawn.nodes)


def test_sessions_expire_and_stay_bounded() -> None:
    sessions = Sessions(idle_s=0.05, max_sessions=3)
    first = sessions.new()
    assert sessions.get(first.id) is first
    time.sleep(0.1)
    assert sessions.get(first.id) is None
    made = [sessions.new() for _ in range(5)]
    assert sessions.get(made[0].id) is None and sessions.get(made[-1].id) is made[-1]
    assert not made[-1].csrf_ok(None) and not made[-1].csrf_ok("x")
    assert made[-1].csrf_ok(made[-1].csrf)


# --- with keys ------------------------------------------------------------------------


async def test_sign_in_csrf_roles_and_the_recorded_actor(
    env: WorkflowEnvironment, worker: Any, task_queue: str
) -> None:
    app = make_app(env.client, task_queue, api_keys=KEYS)
    async with browser_like(app) as http, browser_like(app) as bot:
        doc = plan_doc([wait_step("a")], require_approval=True) | {"title": "console keys"}
        plan_id = await start_plan(http, doc, {"X-API-Key": "k2"})  # proposed by the bot
        await wait_status(http, plan_id, "pending_approval")

        # without a session: only the sign-in form, on every page
        page = await http.get("/console")
        assert page.status_code == 200
        cookie = page.headers["set-cookie"]  # a session, signed out
        assert "httponly" in cookie.lower() and "samesite=lax" in cookie.lower()
        assert "path=/console" in cookie.lower()
        assert 'id="sign-in"' in page.text and 'name="key"' in page.text
        assert plan_id not in page.text and "Waiting for a person" not in page.text
        page = await http.get(f"/console/plans/{plan_id}")
        assert 'id="sign-in"' in page.text and "console keys" not in page.text
        assert (await http.get("/console/inbox")).status_code == 401
        assert (await http.get(f"/console/plans/{plan_id}/events")).status_code == 401
        # an action without a session: refused, nothing sent
        token = csrf_of(page.text)
        r = await http.post(
            f"/console/plans/{plan_id}/actions/approve", data={"csrf": token, "version": "1"}
        )
        assert r.status_code == 401, r.text

        # a wrong key: refused
        r = await http.post("/console/sign-in", data={"csrf": token, "key": "nope"})
        assert r.status_code == 401 and "that key was refused" in r.text
        # the sign-in form needs the CSRF token too
        r = await http.post("/console/sign-in", data={"key": "k1"})
        assert r.status_code == 403

        # alice signs in: a new session id, and the key is not in the cookie
        before = http.cookies.get(COOKIE)
        html = await sign_in(http, "k1")
        after = http.cookies.get(COOKIE)
        assert after and after != before and "k1" not in after
        assert "Signed in as <strong>alice</strong> (operator)" in html
        html, entry = await inbox_with(http, plan_id, "plan_approval")
        assert "plan approval" in entry and "bot" in entry  # proposed by the bot
        assert ">Approve</button>" in entry and ">Reject</button>" in entry
        assert 'for="reject-reason-' in entry  # inputs have labels
        token = csrf_of(html)

        # an action POST without the CSRF token (or with another one): 403, nothing sent
        for data in ({"version": "1"}, {"version": "1", "csrf": "forged"}):
            r = await http.post(f"/console/plans/{plan_id}/actions/approve", data=data)
            assert r.status_code == 403 and "CSRF" in r.json()["detail"], r.text
        assert (await wait_status(http, plan_id, "pending_approval"))["approved_by"] is None

        # the bot signs in: what an agent key may not do is not offered ...
        bot_html = await sign_in(bot, "k2")
        assert "Signed in as <strong>bot</strong> (agent)" in bot_html
        bot_entry = item_of(bot_html, plan_id)
        assert ">Approve</button>" not in bot_entry and ">Reject</button>" not in bot_entry
        # ... nor accepted: the same 403 as the REST route, shown on the page
        r = await bot.post(
            f"/console/plans/{plan_id}/actions/approve",
            data={"csrf": csrf_of(bot_html), "version": "1", "back": "inbox"},
        )
        assert r.status_code == 303 and r.headers["location"] == "/console"
        shown = notices((await bot.get("/console")).text)
        assert "refused (403)" in shown and "agent key" in shown, shown
        # the bot may cancel its own plan: offered on its plan page
        bot_plan = (await bot.get(f"/console/plans/{plan_id}")).text
        assert 'data-action="cancel"' in bot_plan and 'data-action="approve"' not in bot_plan

        # a stale page: the version shown is not the plan's, refused with the reason
        r = await http.post(
            f"/console/plans/{plan_id}/actions/approve",
            data={"csrf": token, "version": "7", "digest": "feed", "back": "inbox"},
        )
        assert r.status_code == 303
        shown = notices((await http.get("/console")).text)
        assert "refused" in shown and "changed since the page was loaded" in shown, shown
        assert (await wait_status(http, plan_id, "pending_approval"))["approved_by"] is None

        # alice approves from her plan page: recorded as alice
        plan_page = (await http.get(f"/console/plans/{plan_id}")).text
        assert 'id="dag"' in plan_page and 'data-step-id="a"' in plan_page
        digest = re.search(r'name="digest" value="([0-9a-f]+)"', plan_page)
        assert digest
        r = await http.post(
            f"/console/plans/{plan_id}/actions/approve",
            data={
                "csrf": token,
                "version": "1",
                "digest": digest.group(1),
                "comment": "from the console",
            },
        )
        assert r.status_code == 303 and r.headers["location"] == f"/console/plans/{plan_id}"
        st = await wait_status(http, plan_id, "completed")
        assert st["approved_by"] == "alice"
        audit = (await api(http, "GET", f"/api/plans/{plan_id}/audit")).json()
        approvals = [a for a in audit if a["action"] == "approve"]
        # (the bot's 403 never reached the workflow)
        assert [(a["by"], a["accepted"]) for a in approvals] == [("alice", True)]
        done = (await http.get(f"/console/plans/{plan_id}")).text
        assert "done; the plan is" in notices(done)
        assert re.search(r'class="by">alice</td><td><code>approve</code>', done)
        # a refused action on a plan that ended: the workflow's reason, shown
        r = await http.post(
            f"/console/plans/{plan_id}/actions/approve",
            data={"csrf": token},
        )
        shown = notices((await http.get(f"/console/plans/{plan_id}")).text)
        assert "refused (" in shown, shown

        # signing out ends the session
        r = await http.post("/console/sign-out", data={"csrf": token})
        assert r.status_code == 303
        assert 'id="sign-in"' in (await http.get("/console")).text


async def test_without_keys_the_console_says_so_and_records_console(
    env: WorkflowEnvironment, worker: Any, task_queue: str
) -> None:
    app = make_app(env.client, task_queue)
    async with browser_like(app) as http:
        doc = plan_doc(
            [wait_step("a", requires_approval=True)],
            require_approval=False,
            step_approval_timeout_s=600,
        ) | {"agent_id": "release-bot"}
        plan_id = await start_plan(http, doc)
        await wait_status(http, plan_id, "waiting_approval")
        html, entry = await inbox_with(http, plan_id, "step_approval")
        assert "API keys are off" in html and 'id="sign-in"' not in html
        assert "step approval" in entry and "release-bot" in entry
        assert re.search(r'class="timeout"><time datetime="[^"]+">', entry), entry
        assert "then reject" in entry
        r = await http.post(
            f"/console/plans/{plan_id}/actions/approve_step",
            data={"csrf": csrf_of(html), "step_id": "a", "version": "1", "back": "inbox"},
        )
        assert r.status_code == 303
        await wait_status(http, plan_id, "completed")
        audit = (await api(http, "GET", f"/api/plans/{plan_id}/audit")).json()
        assert [a["by"] for a in audit if a["action"] == "approve_step"] == ["console"]
        # CSRF holds without keys too
        r = await http.post(f"/console/plans/{plan_id}/actions/cancel", data={"reason": "x"})
        assert r.status_code == 403
        assert plan_id not in item_of_or_empty((await http.get("/console")).text, plan_id)


def item_of_or_empty(html: str, plan_id: str) -> str:
    found = re.search(
        rf'<li class="item" data-plan-id="{plan_id}".*?(?=<li class="item"|</ol>)', html, re.S
    )
    return found.group(0) if found else ""


@pytest.mark.parametrize(
    "path", ["/console/static/console.js", "/console/static/vendor/htmx.min.js"]
)
async def test_assets_are_served_with_the_csp(
    env: WorkflowEnvironment, task_queue: str, path: str
) -> None:
    app = make_app(env.client, task_queue)
    async with browser_like(app) as http:
        r = await http.get(path)
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/javascript")
        assert "default-src 'none'" in r.headers["content-security-policy"]
        assert (await http.get("/console/static/../app.py")).status_code == 404
        assert (await http.get("/console/static/nothing.js")).status_code == 404


async def post_action(
    http: httpx.AsyncClient, plan_id: str, control: str, page: str, **fields: str
) -> str:
    """Send ``control`` with the CSRF token, version and digest ``page`` shows; the notice
    the page then shows."""
    digest = re.search(r'name="digest" value="([0-9a-f]+)"', page)
    version = re.search(r'name="version" value="(\d+)"', page)
    assert digest and version, "no version/digest on the page"
    data = {"csrf": csrf_of(page), "version": version.group(1), "digest": digest.group(1)}
    if step_version := re.search(r'name="step_version" value="(\d+)"', page):
        data["step_version"] = step_version.group(1)
    r = await http.post(f"/console/plans/{plan_id}/actions/{control}", data=data | fields)
    assert r.status_code == 303, r.text
    return notices((await http.get(r.headers["location"])).text)


async def test_questions_failures_pause_resume_and_cancel(
    env: WorkflowEnvironment, worker: Any, task_queue: str
) -> None:
    app = make_app(env.client, task_queue)
    async with browser_like(app) as http:
        asks = plan_doc(
            [
                {
                    "id": "ask",
                    "tool": "wait",
                    "params": {"seconds": 0, "result": "{{ answer }}"},
                    "requires_clarification": True,
                    "clarification_question": "Which region?",
                }
            ],
            clarification_timeout_s=900,
            on_clarification_timeout="skip",
        )
        fails = plan_doc([{"id": "fetch", "tool": "boom", "params": {}}], on_error="ask")
        fails["steps"][0]["params"] = {"permanent": True}
        await start_plan(http, asks)
        await start_plan(http, fails)
        await wait_status(http, asks["id"], "waiting_clarification")
        await wait_status(http, fails["id"], "waiting_correction")

        await inbox_with(http, asks["id"], "clarification")
        html, failed = await inbox_with(http, fails["id"], "correction")
        question = item_of(html, asks["id"])
        assert "Which region?" in question
        assert "then skip" in question and 'for="answer-' in question
        assert "failed step (on_error: ask)" in failed and "boom" in failed
        assert ">Retry</button>" in failed and ">Skip</button>" in failed
        assert f'href="/console/plans/{fails["id"]}#correct-fetch"' in failed
        # the oldest first
        assert html.index(f'data-plan-id="{asks["id"]}"') < html.index(
            f'data-plan-id="{fails["id"]}"'
        )

        shown = await post_action(
            http, asks["id"], "answer_clarification", question, step_id="ask", answer="eu-west"
        )
        assert "done" in shown, shown
        st = await wait_status(http, asks["id"], "completed")
        assert st["steps"][0]["output"]["result"] == "eu-west"

        # a running plan: Pause with a question, answer it, Resume, Cancel
        runs = plan_doc([wait_step("long", 60)])
        await start_plan(http, runs)
        await wait_status(http, runs["id"], "executing")
        page = (await http.get(f"/console/plans/{runs['id']}")).text
        assert 'data-action="pause"' in page and 'data-action="resume"' not in page
        shown = await post_action(
            http, runs["id"], "pause", page, reason="look", question="Go on tonight?"
        )
        assert "done" in shown, shown
        await wait_status(http, runs["id"], "waiting_clarification")
        _, entry = await inbox_with(http, runs["id"], "clarification")
        assert "Go on tonight?" in entry and ">Answer</button>" in entry
        assert "done" in await post_action(
            http, runs["id"], "answer_clarification", entry, answer="yes"
        )
        await wait_status(http, runs["id"], "paused")
        _, entry = await inbox_with(http, runs["id"], "resume")
        assert ">Resume</button>" in entry
        assert "done" in await post_action(http, runs["id"], "resume", entry, feedback="ok")
        await wait_status(http, runs["id"], "executing")
        page = (await http.get(f"/console/plans/{runs['id']}")).text
        # a refusal shows the server's reason: resuming a plan that is not paused
        shown = await post_action(http, runs["id"], "resume", page)
        assert "refused (409)" in shown and "paused" in shown, shown
        page = (await http.get(f"/console/plans/{runs['id']}")).text
        assert "done" in await post_action(http, runs["id"], "cancel", page, reason="enough")
        await wait_status(http, runs["id"], "cancelled")
        audit = (await api(http, "GET", f"/api/plans/{runs['id']}/audit")).json()
        assert {(a["action"], a["by"]) for a in audit if a["accepted"]} >= {
            ("pause", "console"),
            ("answer_clarification", "console"),
            ("resume", "console"),
            ("cancel", "console"),
        }


async def test_a_step_gate_is_bound_to_the_steps_version_not_the_plans(
    env: WorkflowEnvironment, worker: Any, task_queue: str
) -> None:
    app = make_app(env.client, task_queue)
    async with browser_like(app) as http:
        doc = plan_doc([wait_step("gate", requires_approval=True), wait_step("later", 0, ["gate"])])
        plan_id = await start_plan(http, doc)
        await wait_status(http, plan_id, "waiting_approval")
        # another step is corrected: the plan is at version 2, the gated step at 1
        r = await api(
            http,
            "POST",
            f"/api/plans/{plan_id}/apply-correction",
            json={
                "step_id": "later",
                "approve": True,
                "correction": {"updated_step": {"params": {"seconds": 0.1}}},
            },
        )
        assert r.status_code == 200 and r.json()["version"] == 2, r.text
        page = (await http.get(f"/console/plans/{plan_id}")).text
        assert 'name="version" value="2"' in page and 'name="step_version" value="1"' in page
        shown = await post_action(http, plan_id, "approve_step", page, step_id="gate")
        assert "done" in shown, shown
        await wait_status(http, plan_id, "completed")

"""The console attacked the way an attacker would, through the app: a hostile plan's text
in every place the pages show it, forged and replayed sessions and tokens, forged action
fields, floods of sessions, and a plan document built to make its page expensive.

Each test is an attack that must fail; the helpers are those of
``tests/api/test_console.py``.
"""

from __future__ import annotations

import contextlib
import re
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from temporalio.testing import WorkflowEnvironment

from api.app import create_app
from api.console import inbox as inbox_module
from api.console.sessions import COOKIE, Sessions
from config import get_settings
from tests.api.test_console import (
    KEYS,
    api,
    browser_like,
    csrf_of,
    inbox_with,
    notices,
    sign_in,
    start_plan,
    wait_status,
)
from tests.api.test_dashboard import browser, uvicorn_serving
from tests.api.test_plans_routes import TEST_CONFIG, make_app, plan_doc, wait_step

BOT = {"Content-Type": "application/json", "X-API-Key": "k2"}
ALICE_JSON = {"Authorization": "Bearer k1"}


def hostile(n: int) -> str:
    """Text that breaks out of an element, an attribute (either quote) and a script."""
    return f'x{n}"\' onmouseover="alert({n})"></code></pre><img src=x onerror=alert({n})>'


def escaped(n: int) -> str:
    return f"&lt;img src=x onerror=alert({n})&gt;"


def assert_inert(html: str, shown: list[int]) -> None:
    """No markup of the hostile texts reached the page; each of ``shown`` is there as text."""
    assert "<img" not in html and 'onmouseover="alert' not in html, html
    assert "<script>alert" not in html
    for n in shown:
        assert escaped(n) in html, f"hostile text {n} is not shown (escaped)"


# --- XSS: a hostile plan's text ---------------------------------------------------------


async def test_a_hostile_plans_text_is_shown_as_text_everywhere(
    env: WorkflowEnvironment, worker: Any, task_queue: str
) -> None:
    app = make_app(env.client, task_queue)  # keys off: agent_id and `by` are free text
    async with browser_like(app) as http:
        doc = plan_doc(
            [
                {
                    "id": "ask",
                    "tool": "wait",
                    "description": hostile(2),
                    "params": {"seconds": 0, "result": "{{ answer }}"},
                    "requires_clarification": True,
                    "clarification_question": hostile(4),
                },
                wait_step("gate", deps=["ask"], requires_approval=True)
                | {"params": {"seconds": 0, "result": hostile(3)}},
            ],
            clarification_timeout_s=600,
            step_approval_timeout_s=600,
        ) | {"title": "</title><script>alert(1)</script>" + hostile(1), "agent_id": hostile(5)}
        plan_id = await start_plan(http, doc)
        await wait_status(http, plan_id, "waiting_clarification")
        html, entry = await inbox_with(http, plan_id, "clarification")
        assert_inert(html, [1, 4, 5])
        assert "&lt;/title&gt;&lt;script&gt;" in entry
        # the answer (an output), who answered and why a gate was refused: all hostile
        r = await api(
            http,
            "POST",
            f"/api/plans/{plan_id}/steps/ask/answer",
            json={"answer": hostile(6), "by": hostile(7)},
        )
        assert r.status_code == 200, r.text
        await wait_status(http, plan_id, "waiting_approval")
        r = await api(
            http,
            "POST",
            f"/api/plans/{plan_id}/steps/gate/reject",
            json={"reason": hostile(8), "by": hostile(7)},
        )
        assert r.status_code == 200, r.text
        st = await wait_status(http, plan_id, "partial")
        assert st["steps"][0]["output"]["result"] == hostile(6)
        for path in (f"/console/plans/{plan_id}", f"/console/plans/{plan_id}/body"):
            page = (await http.get(path)).text
            assert_inert(page, [1, 2, 3, 5, 6, 7, 8])
        # a refused action's notice echoes the forged step id: as text too
        r = await http.post(
            f"/console/plans/{plan_id}/actions/approve_step",
            data={"csrf": csrf_of(html), "step_id": hostile(9)},
        )
        assert r.status_code == 303
        shown = (await http.get(r.headers["location"])).text
        assert_inert(shown, [1])
        assert "refused" in notices(shown)


# --- sessions and CSRF ------------------------------------------------------------------


async def test_a_session_cannot_be_fixed_forged_or_replayed(
    env: WorkflowEnvironment, task_queue: str
) -> None:
    app = make_app(env.client, task_queue, api_keys=KEYS)
    async with browser_like(app) as victim, browser_like(app) as attacker:
        # fixation: the attacker's own (signed-out) session id and token, planted in the
        # victim's browser, are worth nothing once she signs in with them
        page = (await attacker.get("/console")).text
        planted, planted_csrf = attacker.cookies[COOKIE], csrf_of(page)
        r = await victim.post(
            "/console/sign-in",
            data={"csrf": planted_csrf, "key": "k1"},
            headers={"Cookie": f"{COOKIE}={planted}"},
        )
        assert r.status_code == 303
        assert victim.cookies[COOKIE] != planted
        assert "Signed in as <strong>alice</strong>" in (await victim.get("/console")).text
        r = await attacker.get("/console")
        assert 'id="sign-in"' in r.text and "alice" not in r.text
        r = await attacker.post("/console/sign-out", data={"csrf": planted_csrf})
        assert r.status_code == 403  # the planted session is gone: a new one, a new token
        # a cookie the attacker makes up names no session: a new one, with its own id
        attacker.cookies.clear()
        r = await attacker.get("/console", headers={"Cookie": f"{COOKIE}=attacker-chosen"})
        assert "attacker-chosen" not in r.headers.get("set-cookie", "")
        assert COOKIE in r.headers.get("set-cookie", "")
        assert 'id="sign-in"' in r.text

        # sign-in CSRF: another site posts its own key into the victim's browser. With
        # SameSite=Lax the cookie is not sent on a cross-site POST; with or without it,
        # the attacker's token is not the session's.
        fresh = (await attacker.get("/console")).text
        for cookie in ("", f"{COOKIE}={victim.cookies[COOKIE]}"):
            r = await attacker.post(
                "/console/sign-in",
                data={"csrf": csrf_of(fresh), "key": "k2"},
                headers={"Cookie": cookie},
            )
            assert r.status_code == 403, r.text
        assert "Signed in as <strong>alice</strong>" in (await victim.get("/console")).text

        # the victim's token does not work with the attacker's session
        token = csrf_of((await victim.get("/console")).text)
        r = await attacker.post("/console/sign-out", data={"csrf": token})
        assert r.status_code == 403

        # after sign-out, the old cookie and token are dead
        old_cookie = victim.cookies[COOKIE]
        assert (await victim.post("/console/sign-out", data={"csrf": token})).status_code == 303
        victim.cookies.clear()
        replayed = {"Cookie": f"{COOKIE}={old_cookie}"}
        assert 'id="sign-in"' in (await victim.get("/console", headers=replayed)).text
        victim.cookies.clear()
        r = await victim.post(
            "/console/plans/p1/actions/cancel", data={"csrf": token}, headers=replayed
        )
        assert r.status_code == 403


async def test_another_origin_cannot_read_the_console(
    env: WorkflowEnvironment, task_queue: str
) -> None:
    """Even with CORS origins configured for the REST API, the console's pages and event
    stream are not readable with the session cookie by another origin (no
    Access-Control-Allow-Credentials), and a foreign Host is refused."""
    config = TEST_CONFIG.model_copy(update={"cors_origins": ("http://evil.test",)})
    app = make_app(env.client, task_queue, api_keys=KEYS, config=config)
    async with browser_like(app) as http:
        await sign_in(http, "k1")
        for path in ("/console", "/console/inbox", "/console/plans/nope/events"):
            r = await http.get(path, headers={"Origin": "http://evil.test"})
            assert r.headers.get("access-control-allow-credentials") != "true", path
        r = await http.get("/console", headers={"Host": "evil.test"})
        assert r.status_code == 400


async def test_a_flood_of_sessions_signs_nobody_out(
    env: WorkflowEnvironment, task_queue: str
) -> None:
    """Anyone who reaches the console makes a session with each cookie-less request, and
    an agent key may sign in again and again: neither evicts a signed-in person."""
    app = make_app(env.client, task_queue, api_keys=KEYS)
    app.state.console_sessions = Sessions(max_sessions=40)  # the bound, made small
    async with (
        browser_like(app) as alice,
        browser_like(app) as anonymous,
        browser_like(app) as bot,
    ):
        html = await sign_in(alice, "k1")
        token = csrf_of(html)
        for _ in range(100):
            anonymous.cookies.clear()
            assert (await anonymous.get("/console")).status_code == 200
        for _ in range(60):
            bot.cookies.clear()
            await sign_in(bot, "k2")
        page = (await alice.get("/console")).text
        assert "Signed in as <strong>alice</strong>" in page, "alice was signed out"
        assert csrf_of(page) == token
        # the newest anonymous visitor and the newest bot session still work too
        assert 'id="sign-in"' in (await anonymous.get("/console")).text
        assert "Signed in as <strong>bot</strong>" in (await bot.get("/console")).text
        r = await alice.post("/console/sign-out", data={"csrf": token})
        assert r.status_code == 303


# --- forged action fields -----------------------------------------------------------------


async def test_a_forged_step_id_is_refused_like_the_rest_api_refuses_it(
    env: WorkflowEnvironment, worker: Any, task_queue: str
) -> None:
    """``POST /api/plans/{id}/steps/{step_id}/…`` refuses a step id that is no step id
    (422) before anything is sent; the console's form field must not carry one to the
    workflow either (where it would land in the audit trail, up to the body limit), nor
    add a step to a plan-wide control."""
    app = make_app(env.client, task_queue, api_keys=KEYS)
    async with browser_like(app) as http:
        doc = plan_doc(
            [wait_step("gate", requires_approval=True), wait_step("b", 0, ["gate"])],
            step_approval_timeout_s=600,
        )
        plan_id = await start_plan(http, doc)
        await wait_status(http, plan_id, "waiting_approval")
        html = await sign_in(http, "k1")
        token = csrf_of(html)
        for step_id in ("x" * 200_000, "Gate <b>", "gate\n"):
            r = await http.post(
                f"/console/plans/{plan_id}/actions/approve_step",
                data={"csrf": token, "step_id": step_id},
            )
            assert r.status_code == 303, r.text
            shown = notices((await http.get(r.headers["location"])).text)
            assert "refused" in shown and "step id" in shown, shown
            assert len(shown) < 3000
        # a plan-wide control does not take a step from the form
        r = await http.post(
            f"/console/plans/{plan_id}/actions/reject",
            data={"csrf": token, "step_id": "gate", "reason": "forged"},
        )
        assert r.status_code == 303
        audit = (await api(http, "GET", f"/api/plans/{plan_id}/audit")).json()
        sent = [a for a in audit if a["by"] == "alice"]
        assert all(a["action"] != "approve_step" for a in sent), sent
        assert all(a["step_id"] is None for a in sent if a["action"] == "reject"), sent
        st = await wait_status(http, plan_id, "waiting_approval")
        assert st["steps"][0]["status"] == "waiting_approval"


# --- an expensive page --------------------------------------------------------------------


async def test_a_dense_plan_does_not_make_a_huge_page(
    env: WorkflowEnvironment, task_queue: str
) -> None:
    """An agent proposes 400 steps, each depending on every earlier one: a 0.6 MB
    document of 79,800 dependencies. Drawing each as an SVG path made a 10 MB page that
    took seconds of the event loop (every request of the API waited) on every view and
    every live refresh of the plan's body."""
    app = make_app(env.client, task_queue, api_keys=KEYS)
    async with browser_like(app) as http:
        steps = [wait_step(f"s{i}", deps=[f"s{j}" for j in range(i)]) for i in range(400)]
        doc = plan_doc(steps, require_approval=True)
        r = await http.post("/api/plans", json=doc, headers=BOT)
        assert r.status_code == 201, r.text[:500]
        await sign_in(http, "k1")
        for path in (f"/console/plans/{doc['id']}", f"/console/plans/{doc['id']}/body"):
            r = await http.get(path)
            assert r.status_code == 200
            assert len(r.content) < 1_000_000, f"{path}: {len(r.content)} bytes"
            # a plan of over 200 steps lists its first 100 (and those that need a look)
            assert re.search(r'id="step-s99"', r.text) and "300 more step(s)" in r.text
            assert "too many steps or dependencies to draw" in r.text


def test_a_big_plan_of_ordinary_density_is_still_drawn() -> None:
    from api.console.dag import MAX_DRAWN, MAX_EDGES, layout
    from plans.plan_loading import parse_plan

    def plan(fan_in: int) -> Any:
        steps = [
            wait_step(f"s{i}", deps=[f"s{j}" for j in range(max(0, i - fan_in), i)])
            for i in range(MAX_DRAWN)
        ]
        return parse_plan(plan_doc(steps)).steps

    drawn = layout(plan(MAX_EDGES // MAX_DRAWN), {})
    assert drawn is not None and len(drawn.nodes) == MAX_DRAWN
    assert len(drawn.edges) <= MAX_EDGES
    assert layout(plan(MAX_EDGES // MAX_DRAWN + 1), {}) is None


# --- in a browser: another site's link and form -------------------------------------------


@contextlib.contextmanager
def another_site(console: str) -> Iterator[str]:
    """A page of another site (``localhost`` is not the same site as ``127.0.0.1``): a
    link to the console, and a form that posts its sign-out without a token."""
    page = (
        f'<!doctype html><a href="{console}/console">open the console</a>'
        f'<form method="post" action="{console}/console/sign-out">'
        '<input type="hidden" name="csrf" value="guessed"><button>go</button></form>'
    ).encode()

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(200)
            self.send_header("Content-Type", "text/html")
            self.send_header("Content-Length", str(len(page)))
            self.end_headers()
            self.wfile.write(page)

        def log_message(self, *args: Any) -> None:
            pass

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://localhost:{httpd.server_address[1]}/"
    finally:
        httpd.shutdown()
        httpd.server_close()
        thread.join(timeout=5)


async def test_another_sites_link_keeps_the_person_signed_in_and_its_form_is_refused(
    env: WorkflowEnvironment, task_queue: str
) -> None:
    """A link to the console in a chat or a notification (another site) must open it
    signed in: with a SameSite=Strict cookie the browser did not send it on that
    navigation, the console made a new signed-out session and its cookie replaced the
    person's: any site could sign them out by sending them to /console. A form of another
    site still cannot act (no token, and no cookie on a cross-site POST)."""
    settings = get_settings().replace(
        temporal={
            "task_queue": task_queue,
            "address": env.client.service_client.config.target_host,
        },
        api={**TEST_CONFIG.model_dump(), "keys": KEYS},
    )
    with uvicorn_serving(create_app(settings=settings)) as base, another_site(base) as evil:
        async with browser() as b:
            page = await b.new_page()
            page.set_default_timeout(20_000)
            await page.goto(f"{base}/console")
            await page.get_by_label("API key").fill("k1")
            await page.get_by_role("button", name="Sign in").click()
            await page.locator("#who", has_text="alice").wait_for()

            await page.goto(evil)
            await page.get_by_role("link", name="open the console").click()
            await page.wait_for_url(f"{base}/console")
            assert "alice" in await page.locator("#who").inner_text()
            await page.goto(f"{base}/console")
            assert "alice" in await page.locator("#who").inner_text()

            await page.goto(evil)
            async with page.expect_response(f"{base}/console/sign-out") as answer:
                await page.get_by_role("button", name="go").click()
            assert (await answer.value).status == 403
            await page.goto(f"{base}/console")
            assert "alice" in await page.locator("#who").inner_text()


# --- the inbox -------------------------------------------------------------------------------


async def test_one_agents_plans_cannot_push_other_waits_out_of_the_inbox(
    env: WorkflowEnvironment, start_worker: Any, task_queue: str, monkeypatch: Any, tmp_path: Any
) -> None:
    """The inbox shows the longest-waiting plans, up to a bound. An agent key's plans
    always wait for a person: submitted early, enough of them filled the inbox, and every
    later wait (another plan's approval, a step gate, a question, whose timeout may then
    fire unseen) was left out, with nothing saying so."""
    monkeypatch.setattr(inbox_module, "MAX_PLANS", 4)  # the bound (50), made small
    monkeypatch.setattr(inbox_module, "MAX_PER_AGENT", 2, raising=False)
    # a store of its own: the waits other tests leave behind would take the 4 places
    store = {"database_url": f"sqlite:///{tmp_path}/store.db"}
    await start_worker(None, get_settings().replace(store=store))
    settings = get_settings().replace(
        temporal={"task_queue": task_queue},
        api={**TEST_CONFIG.model_dump(), "keys": KEYS},
        store=store,
    )
    app = create_app(settings=settings, client=env.client)
    async with browser_like(app) as http:
        flood = []
        for _ in range(4):
            doc = plan_doc([wait_step("a")], require_approval=True)
            flood.append(await start_plan(http, doc, {"X-API-Key": "k2"}))
        for plan_id in flood:
            await wait_status(http, plan_id, "pending_approval")
        await sign_in(http, "k1")
        for plan_id in flood[:2]:
            await inbox_with(http, plan_id, "plan_approval")
        doc = plan_doc([wait_step("gate", requires_approval=True)], step_approval_timeout_s=60)
        gated = await start_plan(http, doc)
        await wait_status(http, gated, "waiting_approval")
        html, _ = await inbox_with(http, gated, "step_approval")
        assert sum(f'data-plan-id="{p}"' in html for p in flood) == 2


# --- authorization ---------------------------------------------------------------------------


async def test_an_agent_key_cannot_decide_for_a_person_through_forged_console_posts(
    env: WorkflowEnvironment, worker: Any, task_queue: str
) -> None:
    """Its own plan waits for an answer and a gate; another agent's plan runs: every
    control the console would not offer the agent, forged with its valid CSRF token,
    is refused with the REST API's 403, and nothing reaches the workflows."""
    app = make_app(env.client, task_queue, api_keys=KEYS + ",k3:other:agent")
    async with browser_like(app) as bot:
        own = plan_doc(
            [
                {
                    "id": "ask",
                    "tool": "wait",
                    "params": {"seconds": 0},
                    "requires_clarification": True,
                    "clarification_question": "Which region?",
                },
                wait_step("gate", deps=["ask"], requires_approval=True),
            ],
            require_approval=True,
            clarification_timeout_s=600,
            step_approval_timeout_s=600,
        )
        mine = await start_plan(bot, own, {"X-API-Key": "k2"})
        theirs = await start_plan(bot, plan_doc([wait_step("long", 60)]), ALICE_JSON)
        other = await start_plan(
            bot, plan_doc([wait_step("a")], require_approval=True), {"X-API-Key": "k3"}
        )
        await wait_status(bot, mine, "pending_approval")
        await wait_status(bot, theirs, "executing")
        await wait_status(bot, other, "pending_approval")
        html = await sign_in(bot, "k2")
        token = csrf_of(html)
        forged = [
            (mine, "approve", {}),
            (mine, "reject", {"reason": "r"}),
            (other, "approve", {}),
            (other, "cancel", {"reason": "r"}),
            (theirs, "pause", {}),
            (theirs, "cancel", {"reason": "r"}),
            (mine, "answer_clarification", {"step_id": "ask", "answer": "eu"}),
            (mine, "approve_step", {"step_id": "gate"}),
            (mine, "reject_step", {"step_id": "gate", "reason": "r"}),
            (mine, "resume", {}),
        ]
        for plan_id, control, fields in forged:
            r = await bot.post(
                f"/console/plans/{plan_id}/actions/{control}",
                data={"csrf": token, "back": "inbox", **fields},
            )
            assert r.status_code == 303, (control, r.text)
            shown = notices((await bot.get("/console")).text)
            assert "refused (403)" in shown and "agent key" in shown, (control, shown)
        for plan_id in (mine, theirs, other):
            audit = (await api(bot, "GET", f"/api/plans/{plan_id}/audit")).json()
            assert not [a for a in audit if a["by"] == "bot"], audit
        assert (await wait_status(bot, mine, "pending_approval"))["approved_by"] is None
        await wait_status(bot, theirs, "executing")

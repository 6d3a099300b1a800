"""The console's new-plan page and charts page through the app, against the dev server
and a worker: paste or upload a document, review it (problems with their locations,
risk), save it as a draft or execute it; ask the offline planner; CSRF, roles, the
recorded creator; the charts page and its session-authenticated metrics routes.

The browser flow is in ``tests/api/test_console_new_plan_browser.py``.
"""

from __future__ import annotations

import html as html_lib
import json
import re
from typing import Any

import httpx
from temporalio.testing import WorkflowEnvironment

from tests.api.test_console import (
    api,
    browser_like,
    csrf_of,
    inbox_with,
    notices,
    sign_in,
    wait_status,
)
from tests.api.test_plans_routes import make_app, pid

KEYS = "k1:alice:operator,k2:bot:agent"

INVALID_YAML = """\
title: broken release
options:
  require_approval: true
steps:
  - id: build
    tool: wait
    params: {seconds: 0}
  - id: deploy
    tool: no_such_tool
    depends_on: [build, nowhere]
"""


def valid_yaml(plan_id: str, require_approval: str = "true", agent: str = "") -> str:
    return f"""\
id: {plan_id}
title: Release from the console
{agent}options:
  require_approval: {require_approval}
steps:
  - id: build
    tool: wait
    params: {{seconds: 0}}
  - id: deploy-prod
    tool: wait
    depends_on: [build]
    idempotent: false
    params: {{seconds: 0, result: {{env: production}}}}
"""


def reviewed_of(page: str) -> str:
    found = re.search(r'name="reviewed" value="([0-9a-f]+)"', page)
    assert found, "the review carries no digest"
    return found.group(1)


def section(page: str, ident: str) -> str:
    found = re.search(rf'<section class="card" id="{ident}".*?</section>', page, re.S)
    return found.group(0) if found else ""


async def review(http: httpx.AsyncClient, csrf: str, text: str) -> httpx.Response:
    return await http.post("/console/new/review", data={"csrf": csrf, "document": text})


async def save(
    http: httpx.AsyncClient, csrf: str, text: str, reviewed: str, intent: str
) -> httpx.Response:
    data = {"csrf": csrf, "document": text, "reviewed": reviewed, "intent": intent}
    return await http.post("/console/new/save", data=data)


async def exists(http: httpx.AsyncClient, plan_id: str) -> bool:
    r = await api(http, "GET", f"/api/plans/{plan_id}")
    assert r.status_code in (200, 404), r.text
    return r.status_code == 200


async def test_paste_review_and_save_a_draft_without_keys(
    env: WorkflowEnvironment, worker: Any, task_queue: str
) -> None:
    app = make_app(env.client, task_queue)
    async with browser_like(app) as http:
        page = (await http.get("/console/new")).text
        assert 'href="/console/new"' in page and 'href="/console/charts"' in page  # the nav
        assert '<label for="document">Plan document (JSON or YAML)</label>' in page
        assert '<label for="file">' in page and '<label for="task">Task</label>' in page
        assert ">Review</button>" in page
        assert ">Save as draft</button>" not in page and ">Execute</button>" not in page
        csrf = csrf_of(page)

        # invalid: every problem with its location; nothing to save
        r = await review(http, csrf, INVALID_YAML)
        assert r.status_code == 200  # the review is the answer, whatever it finds
        got = section(r.text, "review")
        assert 'data-valid="no"' in got
        problems = re.findall(r'<code class="where">([^<]+)</code> <span class="what">', got)
        assert problems == ["steps[1].depends_on[1]", "steps[1].tool"], problems
        assert "no_such_tool" in html_lib.unescape(got) and "nowhere" in html_lib.unescape(got)
        assert ">Save as draft</button>" not in r.text and ">Execute</button>" not in r.text
        assert "broken release" in r.text  # the document is kept for fixing

        # a forged Save of the invalid document: refused with the problems, nothing stored
        bad_id = pid()
        bad = f"id: {bad_id}\n" + INVALID_YAML
        r = await save(http, csrf, bad, reviewed_of((await review(http, csrf, bad)).text), "draft")
        assert r.status_code == 422 and "steps[1].tool" in r.text
        assert "not valid" in notices(r.text)
        assert not await exists(http, bad_id)

        # not JSON/YAML at all: located by line and column
        r = await review(http, csrf, "title: [unclosed\nsteps: -\n")
        assert 'data-valid="no"' in r.text
        assert re.search(r"line \d+, column \d+", section(r.text, "review")), r.text

        # nested too deep for the API (PLANSMITH_API_MAX_JSON_DEPTH): refused, located
        deep = '{"title": "t", "steps": [{"id": "a", "tool": "wait", "params": {"x": '
        r = await review(http, csrf, deep + "[" * 100 + "]" * 100 + "}}]}")
        assert 'data-valid="no"' in r.text and "nested deeper than" in r.text

        # the document is untrusted: shown escaped, never as markup
        r = await review(http, csrf, INVALID_YAML.replace("broken release", "<b>x</b>"))
        assert "<b>x</b>" not in r.text and "&lt;b&gt;x&lt;/b&gt;" in r.text

        # valid: the risk with its reasons, Save and Execute offered
        plan_id = pid()
        text = valid_yaml(plan_id)
        r = await review(http, csrf, text)
        assert r.status_code == 200, r.text
        got = section(r.text, "review")
        assert 'data-valid="yes"' in got and "Release from the console" in got
        assert re.search(r'id="review-risk"><span class="level level-\w+">', got)
        assert "not idempotent" in got and "production" in got  # the reasons
        assert 'id="review-trust"' in got
        assert ">Save as draft</button>" in r.text and ">Execute</button>" in r.text
        reviewed = reviewed_of(r.text)
        assert not await exists(http, plan_id)  # a review creates nothing

        # the document changed since its review: reviewed again, nothing created
        edited = text.replace("Release from the console", "Something else")
        r = await save(http, csrf, edited, reviewed, "execute")
        assert r.status_code == 409 and "changed since its review" in notices(r.text)
        assert not await exists(http, plan_id)

        # Save as draft: a draft in the store, the creator recorded as "console"
        r = await save(http, csrf, text.replace("\n", "\r\n"), reviewed, "draft")
        assert r.status_code == 303, r.text
        assert r.headers["location"] == f"/console/plans/{plan_id}"
        detail = (await api(http, "GET", f"/api/plans/{plan_id}")).json()
        assert detail["status"] == "draft" and detail["executed"] is False
        draft = await app.state.services.drafts.get(plan_id)
        assert draft is not None and draft.created_by == "console"
        landed = await http.get(f"/console/plans/{plan_id}")
        assert landed.status_code == 200 and "kept as a draft" in notices(landed.text)
        # its page offers Execute: the draft starts as its workflow
        run_it = section(landed.text, "run-draft")
        assert ">Execute</button>" in run_it, landed.text
        form = {"csrf": csrf, "version": "1", "digest": detail["digest"]}
        r = await http.post(f"/console/plans/{plan_id}/actions/execute", data={"version": "1"})
        assert r.status_code == 403 and await app.state.services.drafts.get(plan_id) is not None
        r = await http.post(f"/console/plans/{plan_id}/actions/execute", data=form)
        assert r.status_code == 303 and r.headers["location"] == f"/console/plans/{plan_id}"
        await wait_status(http, plan_id, "pending_approval")
        landed = await http.get(f"/console/plans/{plan_id}")
        assert "Execute plan of" in notices(landed.text) and "started workflow" in notices(
            landed.text
        )
        assert section(landed.text, "run-draft") == ""  # executed: no Execute any more
        r = await http.post(f"/console/plans/{plan_id}/actions/execute", data=form)
        assert r.status_code == 303
        again = notices((await http.get(f"/console/plans/{plan_id}")).text)
        assert "already running; nothing new was started" in again, again

        # an upload: the file's text is reviewed (and a too big one refused)
        up_id = pid()
        files = {"file": ("plan.yaml", valid_yaml(up_id).encode(), "application/yaml")}
        r = await http.post("/console/new/review", data={"csrf": csrf, "document": ""}, files=files)
        assert r.status_code == 200 and f"<code>{up_id}</code>" in section(r.text, "review")
        assert up_id in r.text.split('id="document"')[1]  # now in the text area
        big = {"file": ("big.json", b" " * (1024 * 1024 + 1), "application/json")}
        r = await http.post("/console/new/review", data={"csrf": csrf}, files=big)
        assert 'data-valid="no"' in r.text and "at most 1 MiB" in r.text

        # CSRF: every POST needs the token
        for path, data in (
            ("/console/new/review", {"document": text}),
            ("/console/new/generate", {"task": "x"}),
            ("/console/new/save", {"document": text, "reviewed": reviewed, "intent": "draft"}),
            ("/console/new/save", {"csrf": "forged", "document": text, "intent": "execute"}),
        ):
            r = await http.post(path, data=data)
            assert r.status_code == 403 and "CSRF" in r.json()["detail"], (path, r.text)


async def test_execute_from_the_review_starts_the_workflow(
    env: WorkflowEnvironment, worker: Any, task_queue: str
) -> None:
    app = make_app(env.client, task_queue, api_keys=KEYS)
    async with browser_like(app) as http:
        # signed out: only the sign-in form; a POST is refused
        page = await http.get("/console/new")
        assert 'id="sign-in"' in page.text and 'id="document"' not in page.text
        r = await review(http, csrf_of(page.text), valid_yaml(pid()))
        assert r.status_code == 401

        html = await sign_in(http, "k1")
        csrf = csrf_of(html)
        plan_id = pid()
        text = valid_yaml(plan_id)
        r = await review(http, csrf, text)
        assert r.status_code == 200
        assert '<label for="agent-id">' in r.text  # an operator may name the agent
        r = await save(http, csrf, text, reviewed_of(r.text), "execute")
        assert r.status_code == 303 and r.headers["location"] == f"/console/plans/{plan_id}"
        await wait_status(http, plan_id, "pending_approval")
        landed = (await http.get(f"/console/plans/{plan_id}")).text
        assert "Execute: started workflow" in notices(landed)
        assert 'data-status="pending_approval"' in landed
        # submitted with alice's key: the session's key owner
        _, entry = await inbox_with(http, plan_id, "plan_approval")
        assert "submitted with the key of alice" in entry, entry

        # executing the same document again: its id is taken now, refused, shown
        r = await save(
            http, csrf, text, reviewed_of((await review(http, csrf, text)).text), "draft"
        )
        assert r.status_code == 409 and "taken" in notices(r.text), r.text


async def test_generate_with_the_offline_planner_then_save(
    env: WorkflowEnvironment, worker: Any, task_queue: str
) -> None:
    app = make_app(env.client, task_queue)
    async with browser_like(app) as http:
        csrf = csrf_of((await http.get("/console/new")).text)
        r = await http.post(
            "/console/new/generate",
            data={
                "csrf": csrf,
                "task": "Fetch the release notes and summarise them",
                "context": "the notes are on the wiki",
                "constraints": "production needs a person's approval\n\n",
                "agent_id": "notes-bot",
            },
        )
        assert r.status_code == 200, r.text
        got = section(r.text, "review")
        assert 'data-valid="yes"' in got and 'id="planner-notes"' in got
        assert "offline stand-in" in got and 'id="lessons"' in got
        met = re.search(r'<table id="constraints-met">.*?</table>', got, re.S)
        assert met and "production needs a person&#39;s approval" in met.group(0)
        assert re.search(r'id="review-risk"><span class="level', got)
        # the plan is in the text area, as JSON, with the agent asked for
        area = re.search(r'<textarea id="document"[^>]*>(.*?)</textarea>', r.text, re.S)
        assert area
        doc = json.loads(html_lib.unescape(area.group(1)))
        assert doc["agent_id"] == "notes-bot" and doc["steps"]
        assert 'name="planner_notes"' in r.text  # carried to a second review
        notes = html_lib.unescape(re.findall(r'name="planner_notes" value="([^"]*)"', r.text)[0])

        # saved as it was reviewed: a draft with an id made from its title
        r = await http.post(
            "/console/new/save",
            data={
                "csrf": csrf,
                "document": html_lib.unescape(area.group(1)),
                "reviewed": reviewed_of(r.text),
                "intent": "draft",
                "planner_notes": notes,
            },
        )
        assert r.status_code == 303, r.text
        plan_id = r.headers["location"].rsplit("/", 1)[1]
        detail = (await api(http, "GET", f"/api/plans/{plan_id}")).json()
        assert detail["status"] == "draft" and detail["plan"]["agent_id"] == "notes-bot"

        # a request the planner cannot take: its problems, located
        r = await http.post("/console/new/generate", data={"csrf": csrf, "task": "  "})
        assert r.status_code == 422
        assert re.search(r'<code class="where">task</code>', section(r.text, "ask-planner"))


async def test_an_agent_key_plans_only_as_itself_and_cannot_waive_approval(
    env: WorkflowEnvironment, worker: Any, task_queue: str
) -> None:
    app = make_app(env.client, task_queue, api_keys=KEYS)
    async with browser_like(app) as bot:
        html = await sign_in(bot, "k2")
        csrf = csrf_of(html)
        page = (await bot.get("/console/new")).text
        assert '<label for="agent-id">' not in page  # an agent plans as itself

        # a plan that would run without a person: refused in the review, not offered ...
        waiver_id = pid()
        waiver = valid_yaml(waiver_id, require_approval="false")
        r = await review(bot, csrf, waiver)
        assert 'data-valid="no"' in r.text
        refusal = re.search(r'<p class="error" id="refusal">(.*?)</p>', r.text, re.S)
        assert refusal and "require_approval=false" in refusal.group(1)
        assert ">Execute</button>" not in r.text and ">Save as draft</button>" not in r.text
        # ... nor accepted when forged: the REST route's 403, nothing stored
        r = await save(bot, csrf, waiver, reviewed_of(r.text), "execute")
        assert r.status_code == 403 and "agent key" in r.text
        assert not await exists(bot, waiver_id)

        # another agent's name: refused the same way
        r = await review(bot, csrf, valid_yaml(pid(), agent="agent_id: someone-else\n"))
        assert 'data-valid="no"' in r.text and "only as itself" in r.text

        # the planner plans for it as itself
        r = await bot.post("/console/new/generate", data={"csrf": csrf, "task": "ship it"})
        area = re.search(r'<textarea id="document"[^>]*>(.*?)</textarea>', r.text, re.S)
        assert r.status_code == 200 and area, r.text
        assert json.loads(html_lib.unescape(area.group(1)))["agent_id"] == "bot"
        # naming another agent (a forged field; none is offered): the REST route's 403
        r = await bot.post(
            "/console/new/generate", data={"csrf": csrf, "task": "x", "agent_id": "other"}
        )
        assert r.status_code == 403 and "only as itself" in section(r.text, "ask-planner")

        # its own plan, behind a person's approval: executed, proposed by the bot
        plan_id = pid()
        text = valid_yaml(plan_id)
        r = await review(bot, csrf, text)
        assert r.status_code == 200 and ">Execute</button>" in r.text
        r = await save(bot, csrf, text, reviewed_of(r.text), "execute")
        assert r.status_code == 303
        await wait_status(bot, plan_id, "pending_approval")
        detail = (await api(bot, "GET", f"/api/plans/{plan_id}")).json()
        assert detail["plan"]["agent_id"] == "bot"
        landed = (await bot.get(f"/console/plans/{plan_id}")).text
        assert 'data-action="approve"' not in landed  # a person approves it


async def test_the_charts_page_and_its_metrics_need_the_session(
    env: WorkflowEnvironment, task_queue: str
) -> None:
    app = make_app(env.client, task_queue, api_keys=KEYS)
    async with browser_like(app) as http:
        page = await http.get("/console/charts")
        assert 'id="sign-in"' in page.text and 'id="charts"' not in page.text
        assert (await http.get("/console/metrics/waiting")).status_code == 401
        await sign_in(http, "k1")
        page = await http.get("/console/charts")
        assert page.status_code == 200
        assert 'data-metrics-base="/console/metrics/"' in page.text
        assert '<script src="/dashboard/static/dashboard.js" defer>' in page.text
        assert "default-src 'none'" in page.headers["content-security-policy"]
        r = await http.get("/console/metrics/waiting?limit=5")
        assert r.status_code == 200 and set(r.json()) == {"count", "plans"}
        assert (await http.get("/console/metrics/trends?days=30&bucket=day")).status_code == 200
        assert (await http.get("/console/metrics/trends?days=0")).status_code == 422
        assert (await http.get("/console/metrics/agents?nope=1")).status_code == 422

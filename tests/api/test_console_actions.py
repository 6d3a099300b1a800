"""The plan page's correction editor, Retry, Skip and Resume from failure, the version
history with each correction's diff, the log and an llm step's tool calls: through the
app, against the dev server and a worker. An ``http_request`` step asks a server on
127.0.0.1 that this test starts (500 on a bad path, 200 on a good one).

The browser flow is ``tests/api/test_console_correction_browser.py``.
"""

from __future__ import annotations

import asyncio
import html as htmllib
import re
import threading
import time
import uuid
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import httpx
import pytest
from temporalio.testing import WorkflowEnvironment

from api.console.correction import MAX_DOCUMENT_CHARS, check_correction
from api.console.history import field_changes
from config import get_settings
from contracts.tools import catalog
from plans.plan_loading import parse_plan
from tests.api.test_console import (
    api,
    browser_like,
    csrf_of,
    inbox_with,
    notices,
    post_action,
    sign_in,
    start_plan,
    wait_status,
)
from tests.api.test_plans_routes import make_app, plan_doc, wait_step
from tests.helpers import StartWorker
from tests.llm_fakes import ScriptedModel, text, tool_use

KEYS = "k1:alice:operator,k2:bot:agent"
BOT = {"Content-Type": "application/json", "Authorization": "Bearer k2"}
HTMX = {"HX-Request": "true"}


class StatusServer:
    """An HTTP server on 127.0.0.1 (a free port): ``/good...`` answers 200, any other
    path 500, except while ``healthy`` is set, when every path answers 200. It records
    the paths it was asked."""

    def __init__(self) -> None:
        self.paths: list[str] = []
        self.healthy = False
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                outer.paths.append(self.path)
                ok = outer.healthy or self.path.startswith("/good")
                body = b'{"ok": true}' if ok else b'{"error": "broken"}'
                self.send_response(200 if ok else 500)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> StatusServer:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def status_server() -> Iterator[StatusServer]:
    with StatusServer() as server:
        yield server


def failing_plan(url: str, agent_id: str | None = None, **options: Any) -> dict[str, Any]:
    """A plan whose ``fetch`` step asks ``url`` once (no retry), then ``report`` runs."""
    doc = plan_doc(
        [
            {
                "id": "fetch",
                "tool": "http_request",
                "description": "Ask the service",
                "params": {"url": url, "timeout_s": 5},
                "max_retries": 0,
            },
            wait_step("report", 0, ["fetch"]),
        ],
        **options,
    ) | {"title": "fetch and report"}
    if agent_id:
        doc["agent_id"] = agent_id
    return doc


def editor_text(page: str, step_id: str) -> str:
    found = re.search(rf'<textarea id="document-{step_id}"[^>]*>\n?(.*?)</textarea>', page, re.S)
    assert found, f"no correction editor of {step_id} on the page"
    return htmllib.unescape(found.group(1))


def problems_of(page: str) -> list[tuple[str, str, str]]:
    """The editor's problems: (field or location, location in the plan, message)."""
    out = []
    for li in re.findall(r'<li class="problem".*?</li>', page, re.S):
        loc = re.search(r'data-location="([^"]*)"', li)
        shown = re.search(r'<code class="location">(.*?)</code>', li, re.S)
        msg = re.search(r'<span class="message">(.*?)</span>', li, re.S)
        assert loc and shown and msg, li
        out.append(
            (
                htmllib.unescape(shown.group(1)),
                htmllib.unescape(loc.group(1)),
                htmllib.unescape(msg.group(1)),
            )
        )
    return out


async def correct(
    http: httpx.AsyncClient,
    plan_id: str,
    page: str,
    document: str,
    do: str = "check",
    htmx: bool = True,
    **extra: str,
) -> httpx.Response:
    """Press "Check" or "Apply correction" in the editor of ``fetch`` the page shows."""
    version = re.search(r'id="correct-fetch".*?name="version" value="(\d+)"', page, re.S)
    digest = re.search(r'id="correct-fetch".*?name="digest" value="([0-9a-f]+)"', page, re.S)
    assert version and digest, "no editor of fetch on the page"
    data = {
        "csrf": csrf_of(page),
        "version": version.group(1),
        "digest": digest.group(1),
        "document": document,
        "do": do,
        **extra,
    }
    return await http.post(
        f"/console/plans/{plan_id}/steps/fetch/correction",
        data=data,
        headers=HTMX if htmx else {},
    )


async def nothing_was_corrected(http: httpx.AsyncClient, plan_id: str) -> None:
    versions = (await api(http, "GET", f"/api/plans/{plan_id}/versions")).json()
    assert [v["version"] for v in versions] == [1], versions
    audit = (await api(http, "GET", f"/api/plans/{plan_id}/audit")).json()
    assert not [a for a in audit if a["action"] == "apply_correction"], audit


# --- pure parts -----------------------------------------------------------------------


def test_the_check_locates_every_problem_in_the_edited_step() -> None:
    plan = parse_plan(failing_plan("http://127.0.0.1:9/bad"))
    tools = catalog()

    def problems(text: str) -> list[tuple[str | None, str, str]]:
        checked = check_correction(plan, "fetch", text, tools)
        assert not checked.ok and checked.updated_step is None
        return [(p.field, p.location, p.message) for p in checked.problems]

    [(field, where, message)] = problems('{"params": {"url": }')
    assert field is None and where == "document"
    assert message == (
        "not valid JSON/YAML at line 1, column 21: while parsing a flow mapping: "
        "expected ',' or '}', but got '<stream end>'"
    )
    [(field, where, message)] = problems('{"tool": "htp_request"}')
    assert (field, where) == ("tool", "steps[0].tool") and "did you mean 'http_request'" in message
    [(field, where, message)] = problems('{"params": {"url": 5}}')
    assert (field, where) == ("params.url", "steps[0].params.url") and "not of type" in message
    [(field, where, message)] = problems('{"when": "steps.nope.output =="}')
    assert (field, where) == ("when", "steps[0].when") and "bad expression" in message
    [(field, where, message)] = problems('{"id": "other"}')
    assert (field, where) == ("id", "updated_step.id") and "cannot change" in message
    [(field, _, message)] = problems('{"params": {"url": "{{ steps.fetch.outptu }}"}}')
    assert field == "params.url" and "outptu" in message
    [(_, where, message)] = problems("<script>alert(1)</script>")
    assert where == "document" and "must be an object" in message
    [(_, where, message)] = problems("x" * (MAX_DOCUMENT_CHARS + 1))
    assert where == "document" and f"at most {MAX_DOCUMENT_CHARS}" in message
    [(_, where, message)] = problems("a: &a [1, 2]\nb: &b [*a, *a]\nid: .nan\nx: .inf")
    assert where == "document" and "JSON" in message

    # YAML works as JSON does; the same tool's params merge key by key
    checked = check_correction(plan, "fetch", "params:\n  url: http://127.0.0.1:9/good\n", tools)
    assert checked.ok and checked.updated_step == {"params": {"url": "http://127.0.0.1:9/good"}}
    assert checked.changes == {
        "params": {
            "old": {"url": "http://127.0.0.1:9/bad", "timeout_s": 5},
            "new": {"url": "http://127.0.0.1:9/good", "timeout_s": 5},
        }
    }


def test_a_versions_diff_reads_field_by_field() -> None:
    rows = field_changes(
        {
            "fetch": {
                "params": {
                    "old": {"url": "http://a/bad", "timeout_s": 5, "gone": 1},
                    "new": {"url": "http://a/good", "timeout_s": 5, "headers": {"X": "<b>"}},
                },
                "when": {"old": None, "new": "inputs.go"},
            }
        }
    )
    assert [(r.field, r.kind, r.old, r.new) for r in rows] == [
        ("params.gone", "removed", "1", None),
        ("params.headers", "added", None, '{"X": "<b>"}'),
        ("params.url", "changed", '"http://a/bad"', '"http://a/good"'),
        ("when", "added", None, '"inputs.go"'),
    ]


# --- through the app ------------------------------------------------------------------


async def test_correct_a_failed_step_in_the_editor_then_retry(
    env: WorkflowEnvironment, worker: Any, task_queue: str, status_server: StatusServer
) -> None:
    app = make_app(env.client, task_queue, api_keys=KEYS)
    server = status_server
    async with browser_like(app) as http:
        doc = failing_plan(server.url + "/bad", on_error="ask")
        plan_id = await start_plan(http, doc)
        await wait_status(http, plan_id, "waiting_correction")
        await sign_in(http, "k1")
        page = (await http.get(f"/console/plans/{plan_id}")).text

        # the failed step: its error, Retry and Skip, and its editor holding its document
        assert 'data-kind="correction"' in page and "500" in page
        assert ">Retry</button>" in page and ">Skip</button>" in page
        assert 'for="document-fetch"' in page and ">Check</button>" in page
        assert 'id="correct-report"' in page  # a pending step may be corrected too
        assert ">Apply correction</button>" in page
        document = editor_text(page, "fetch")
        assert '"url": "' + server.url + '/bad"' in document
        # the step's own log lines are in its details
        assert re.search(r'<ol class="log step-log">.*?fetch', page, re.S)

        # invalid edits: located, shown in the editor, nothing sent
        bad_url = document.replace(server.url + "/bad", server.url + "/good")
        invalid = {
            bad_url.replace('"url":', '"url"'): ("document", "not valid JSON/YAML"),
            bad_url.replace('"http_request"', '"htp_request"'): ("tool", "unknown tool"),
            '{"params": {"url": 5}}': ("params.url", "is not of type 'string'"),
            '{"when": "steps.fetch.status =="}': ("when", "bad expression"),
            bad_url.replace('"id": "fetch"', '"id": "fetch2"'): ("id", "cannot change"),
        }
        for text_, (where, message) in invalid.items():
            r = await correct(http, plan_id, page, text_)
            assert r.status_code == 200, r.text
            [(shown, _, said)] = problems_of(r.text)
            assert shown == where and message in said, (shown, said)
            assert "nothing was sent" in r.text
            assert editor_text(r.text, "fetch") == text_  # what was typed is kept
        # hostile text is shown back escaped, never as markup
        r = await correct(http, plan_id, page, "<script>alert(1)</script>")
        assert "&lt;script&gt;alert(1)&lt;/script&gt;" in r.text and "<script>" not in r.text
        r = await correct(http, plan_id, page, "x" * (MAX_DOCUMENT_CHARS + 10))
        assert f"at most {MAX_DOCUMENT_CHARS}" in r.text
        assert len(editor_text(r.text, "fetch")) == MAX_DOCUMENT_CHARS
        # "Apply correction" pressed directly with an invalid edit: refused, nothing sent
        r = await correct(http, plan_id, page, '{"tool": "htp_request"}', do="apply")
        assert r.status_code == 200 and "HX-Redirect" not in r.headers
        assert "refused: the correction has problems" in r.text
        assert problems_of(r.text)[0][0] == "tool"
        # ... and as a plain form (no htmx): the whole page, 422, the problem in the editor
        r = await correct(http, plan_id, page, '{"params": {"url": 5}}', "apply", htmx=False)
        assert r.status_code == 422 and 'id="plan-body"' in r.text
        assert problems_of(r.text)[0][0] == "params.url"
        await nothing_was_corrected(http, plan_id)

        # a valid edit: "Check" shows what would change, and still sends nothing
        r = await correct(http, plan_id, page, bad_url)
        assert r.status_code == 200 and "Valid: nothing was sent yet" in r.text
        assert 'data-field="params.url"' in r.text and "/good" in r.text
        await nothing_was_corrected(http, plan_id)
        # a stale page: refused with the reason, nothing sent
        stale = page.replace('name="version" value="1"', 'name="version" value="9"')
        r = await correct(http, plan_id, stale, bad_url, do="apply")
        assert "changed since the page was loaded" in r.text
        await nothing_was_corrected(http, plan_id)

        # "Apply correction": sent as alice, bound to the page's version
        r = await correct(http, plan_id, page, bad_url, do="apply", approve="on")
        assert r.status_code == 200 and r.headers["HX-Redirect"] == f"/console/plans/{plan_id}"
        page = (await http.get(f"/console/plans/{plan_id}")).text
        assert "Apply correction to step fetch" in notices(page) and "done" in notices(page)
        versions = (await api(http, "GET", f"/api/plans/{plan_id}/versions")).json()
        assert [(v["version"], v["by"], v["step_id"]) for v in versions][-1] == (
            2,
            "alice",
            "fetch",
        )
        assert versions[-1]["diff"]["fetch"]["params"]["new"]["url"] == server.url + "/good"
        # the version history shows the diff field by field
        history = re.search(r'<section class="card" id="versions">.*?</section>', page, re.S)
        assert history
        row = re.search(
            r'<tr class="diff-row diff-changed" data-field="params.url">.*?</tr>',
            history.group(0),
            re.S,
        )
        assert row, history.group(0)
        assert f"<del>&#34;{server.url}/bad&#34;</del>" in row.group(0)
        assert f"<ins>&#34;{server.url}/good&#34;</ins>" in row.group(0)
        assert 'data-version="2" data-by="alice" data-step-id="fetch"' in history.group(0)

        # Retry: the corrected step runs, the plan completes
        assert "done" in await post_action(http, plan_id, "retry_step", page, step_id="fetch")
        st = await wait_status(http, plan_id, "completed")
        assert [s["status"] for s in st["steps"]] == ["completed", "completed"]
        assert server.paths == ["/bad", "/good"]
        audit = (await api(http, "GET", f"/api/plans/{plan_id}/audit")).json()
        assert [
            (a["action"], a["by"], a["accepted"])
            for a in audit
            if a["action"] in ("apply_correction", "retry_step")
        ] == [("apply_correction", "alice", True), ("retry_step", "alice", True)]
        done = (await http.get(f"/console/plans/{plan_id}")).text
        assert 'id="correct-fetch"' not in done and ">Retry</button>" not in done


async def test_roles_csrf_skip_and_resume_from_failure(
    env: WorkflowEnvironment, worker: Any, task_queue: str, status_server: StatusServer
) -> None:
    app = make_app(env.client, task_queue, api_keys=KEYS)
    server = status_server
    async with browser_like(app) as http, browser_like(app) as bot:
        alices = await start_plan(http, failing_plan(server.url + "/bad", on_error="ask"))
        bots = await start_plan(
            http,
            failing_plan(server.url + "/bad", on_error="ask", require_approval=True),
            BOT,
        )
        r = await api(http, "POST", f"/api/plans/{bots}/approve", json={})
        assert r.status_code == 200, r.text
        await wait_status(http, alices, "waiting_correction")
        await wait_status(http, bots, "waiting_correction")
        alice_html = await sign_in(http, "k1")
        bot_html = await sign_in(bot, "k2")

        # CSRF: a correction or a retry without the token (or another one) is refused
        page = (await http.get(f"/console/plans/{alices}")).text
        for token in (None, "forged"):
            data = {"version": "1", "document": '{"params": {"url": "x"}}', "do": "apply"}
            if token:
                data["csrf"] = token
            r = await http.post(f"/console/plans/{alices}/steps/fetch/correction", data=data)
            assert r.status_code == 403 and "CSRF" in r.json()["detail"]
            r = await http.post(
                f"/console/plans/{alices}/actions/retry_step", data={**data, "step_id": "fetch"}
            )
            assert r.status_code == 403
        await nothing_was_corrected(http, alices)

        # an agent key on another's plan: nothing offered ...
        theirs = (await bot.get(f"/console/plans/{alices}")).text
        assert 'id="correct-fetch"' not in theirs
        assert ">Retry</button>" not in theirs and ">Skip</button>" not in theirs
        # ... and a forged POST gets the REST route's refusal
        rest = await http.post(
            f"/api/plans/{alices}/apply-correction",
            json={"step_id": "fetch", "correction": {"updated_step": {"description": "x"}}},
            headers=BOT,
        )
        assert rest.status_code == 403
        digest = (await api(http, "GET", f"/api/plans/{alices}/status")).json()["digest"]
        forged = {
            "csrf": csrf_of(theirs),
            "version": "1",
            "digest": digest,
            "document": '{"description": "x"}',
        }
        for do in ("check", "apply"):
            r = await bot.post(
                f"/console/plans/{alices}/steps/fetch/correction", data=forged | {"do": do}
            )
            assert r.status_code == 303
            shown = notices((await bot.get(r.headers["location"])).text)
            assert "refused (403)" in shown and rest.json()["detail"] in htmllib.unescape(shown)
        rest = await http.post(f"/api/plans/{alices}/steps/fetch/retry", json={}, headers=BOT)
        assert rest.status_code == 403
        r = await bot.post(
            f"/console/plans/{alices}/actions/retry_step", data=forged | {"step_id": "fetch"}
        )
        shown = notices((await bot.get(r.headers["location"])).text)
        assert "refused (403)" in shown and rest.json()["detail"] in htmllib.unescape(shown)
        await nothing_was_corrected(http, alices)

        # on its own plan the agent may correct and retry, but not skip, nor approve its
        # own change
        own = (await bot.get(f"/console/plans/{bots}")).text
        assert 'id="correct-fetch"' in own and ">Retry</button>" in own
        assert ">Skip</button>" not in own and 'name="approve"' not in own
        shown = await post_action(bot, bots, "skip_step", own, step_id="fetch", reason="meh")
        assert "refused (403)" in shown and "only" in shown, shown

        # a person skips the bot's failed step: its dependent runs, the plan ends
        _, entry = await inbox_with(http, bots, "correction")
        assert ">Skip</button>" in entry and 'for="skip-reason-' in entry
        shown = await post_action(
            http, bots, "skip_step", entry, step_id="fetch", reason="done by hand", back="inbox"
        )
        assert "done" in shown, shown
        st = await wait_status(http, bots, "partial")  # a step was skipped
        assert {s["id"]: s["status"] for s in st["steps"]} == {
            "fetch": "skipped",
            "report": "completed",
        }

        # a plan that ended failed: Resume from failure, for a person only
        stops = failing_plan(server.url + "/flaky", on_error="stop", require_approval=True)
        doomed = await start_plan(http, stops, BOT)
        r = await api(http, "POST", f"/api/plans/{doomed}/approve", json={})
        assert r.status_code == 200, r.text
        await wait_status(http, doomed, "failed")
        theirs = (await bot.get(f"/console/plans/{doomed}")).text
        assert ">Resume from failure</button>" not in theirs and ">Retry</button>" not in theirs
        rest = await http.post(f"/api/plans/{doomed}/resume-from-failure", json={}, headers=BOT)
        assert rest.status_code == 403
        digest = (await api(http, "GET", f"/api/plans/{doomed}/status")).json()["digest"]
        r = await bot.post(
            f"/console/plans/{doomed}/actions/resume_from_failure",
            data={"csrf": csrf_of(theirs), "version": "1", "digest": digest},
        )
        shown = notices((await bot.get(r.headers["location"])).text)
        assert "refused (403)" in shown and rest.json()["detail"] in htmllib.unescape(shown)

        server.healthy = True
        page = (await http.get(f"/console/plans/{doomed}")).text
        assert ">Resume from failure</button>" in page
        assert 'id="correct-fetch"' not in page  # an ended plan takes no correction
        shown = await post_action(http, doomed, "resume_from_failure", page)
        assert "done; resumed by alice" in shown, shown
        # the new run asks for the plan's approval again, as its options say
        _, entry = await inbox_with(http, doomed, "plan_approval")
        assert "done" in await post_action(http, doomed, "approve", entry, back="inbox")
        st = await wait_status(http, doomed, "completed")
        assert [s["status"] for s in st["steps"]] == ["completed", "completed"]
        assert server.paths.count("/flaky") == 2
        assert alice_html and bot_html


async def test_an_llm_steps_tool_calls_and_log_in_its_details(
    env: WorkflowEnvironment, start_worker: StartWorker, task_queue: str
) -> None:
    key = f"console-{uuid.uuid4().hex[:8]}"
    await start_worker(ScriptedModel(tool_use("count", {"key": key}), text("counted <once>")))
    app = make_app(env.client, task_queue)
    async with browser_like(app) as http:
        doc = plan_doc(
            [{"id": "ask", "kind": "llm", "params": {"prompt": "count it", "tools": ["count"]}}]
        )
        plan_id = await start_plan(http, doc)
        await wait_status(http, plan_id, "completed")
        page = (await http.get(f"/console/plans/{plan_id}")).text
        calls = re.search(r'<table class="calls">.*?</table>', page, re.S)
        assert calls, "no tool calls in the llm step's details"
        row = re.search(r'<tr class="call" data-status="completed">.*?</tr>', calls.group(0), re.S)
        assert row and "<code>count</code>" in row.group(0) and key in row.group(0)
        assert "counted &lt;once&gt;" in page  # the output, escaped
        log = re.search(r'<ol class="log step-log">.*?</ol>', page, re.S)
        assert log and "tool call 1 count completed" in log.group(0)
        plan_log = re.search(r'<section class="card" id="log">.*?</section>', page, re.S)
        assert plan_log and "tool call 1 count started" in plan_log.group(0)


async def test_a_large_output_kept_by_reference_is_linked_and_served_whole(
    env: WorkflowEnvironment, start_worker: Any, task_queue: str
) -> None:
    """A step output over PLANSMITH_LARGE_OUTPUT_BYTES stays out of the workflow's history
    (its status shows a reference): the plan page shows its size and preview with a
    link, and the link (and the API route) answer the whole output from the store."""
    await start_worker(None, get_settings().replace(store={"large_output_bytes": 200}))
    rows = [{"n": i, "name": f"row <{i}>"} for i in range(300)]
    doc = plan_doc(
        [
            {
                "id": "big",
                "tool": "transform",
                "params": {"data": {"rows": rows}, "expression": "rows"},
            },
            {
                "id": "small",
                "tool": "transform",
                "depends_on": ["big"],
                "params": {"data": 7, "expression": "@"},
            },
        ]
    )
    plan_id = doc["id"]
    app = make_app(env.client, task_queue)
    async with browser_like(app) as http:
        r = await api(http, "POST", "/api/plans", json=doc)
        assert r.status_code == 201, r.text
        assert (await api(http, "POST", f"/api/plans/{plan_id}/execute")).status_code == 202
        st = await wait_status(http, plan_id, "completed")
        big = next(s for s in st["steps"] if s["id"] == "big")
        assert "output_ref" in big["output"]  # the status carries only the reference

        r = await api(http, "GET", f"/api/plans/{plan_id}/steps/big/output")
        assert r.status_code == 200 and r.json() == rows
        r = await api(http, "GET", f"/api/plans/{plan_id}/steps/small/output")
        assert r.status_code == 200 and r.json() == 7
        r = await api(http, "GET", f"/api/plans/{plan_id}/steps/nope/output")
        assert r.status_code == 404 and "no step 'nope'" in r.json()["detail"]

        page = (await http.get(f"/console/plans/{plan_id}")).text
        assert "Kept in the store" in page and "row &lt;0&gt;" in page  # the preview, escaped
        link = f'href="/console/plans/{plan_id}/steps/big/output"'
        assert link in page
        assert f'href="/console/plans/{plan_id}/steps/small/output"' not in page  # all shown
        r = await http.get(f"/console/plans/{plan_id}/steps/big/output")
        assert r.status_code == 200 and r.json() == rows
        assert (
            r.headers["content-disposition"] == f'attachment; filename="{plan_id}-big-output.json"'
        )
        assert r.headers["x-content-type-options"] == "nosniff"


async def test_a_big_plans_page_lists_what_needs_a_look_and_its_first_steps(
    env: WorkflowEnvironment, worker: Any, task_queue: str
) -> None:
    """A plan of thousands of steps made a page of megabytes (every step's row): a plan
    over 200 steps lists its first 100 and the ones that need a look (here the failed
    one far down), each with its true status, and says how many it leaves out."""
    n = 450
    steps: list[dict[str, Any]] = [
        {"id": f"s{i:04d}", "tool": "transform", "params": {"data": i, "expression": "@"}}
        for i in range(n)
    ]
    steps[420] = {
        "id": "s0420",
        "tool": "transform",
        "params": {"data": {}, "expression": "x.y.z | abs(@)"},
    }
    doc = plan_doc(steps, on_error="continue", max_parallel_steps=50)
    app = make_app(env.client, task_queue)
    async with browser_like(app) as http:
        plan_id = await start_plan(http, doc)
        await wait_status(http, plan_id, "partial", timeout=120)
        page = (await http.get(f"/console/plans/{plan_id}")).text
        rows = re.findall(r'<tr id="step-(s\d{4})"', page)
        assert rows[:100] == [f"s{i:04d}" for i in range(100)] and "s0420" in rows
        assert len(rows) == 101
        assert f"{n - 101} more step(s)" in page
        assert re.search(r'id="step-s0005".*?data-status="completed"', page, re.S)
        assert re.search(r'id="step-s0420".*?data-status="failed"', page, re.S)
        assert "449 completed" in page and "1 failed" in page
        assert len(page) < 1_500_000, len(page)


async def test_a_big_running_plans_page_shows_true_statuses(
    env: WorkflowEnvironment, worker: Any, task_queue: str
) -> None:
    """While a plan of over 200 steps runs, its status lists only its active steps: the
    page reads the others' statuses from the steps pages (not all "pending")."""
    steps: list[dict[str, Any]] = [
        {"id": f"s{i:04d}", "tool": "transform", "params": {"data": i, "expression": "@"}}
        for i in range(250)
    ]
    steps[240] = wait_step("s0240", requires_approval=True)
    doc = plan_doc(steps, max_parallel_steps=50, step_approval_timeout_s=600)
    app = make_app(env.client, task_queue)
    async with browser_like(app) as http:
        plan_id = await start_plan(http, doc)
        await wait_status(http, plan_id, "waiting_approval", timeout=60)
        st = (await api(http, "GET", f"/api/plans/{plan_id}/status")).json()
        assert st["steps_complete"] is False  # the status lists the active steps only
        page = (await http.get(f"/console/plans/{plan_id}")).text
        assert re.search(r'id="step-s0005".*?data-status="completed"', page, re.S)
        assert re.search(r'id="step-s0240".*?data-status="waiting_approval"', page, re.S)
        assert "249 completed" in page and "149 more step(s)" in page
        await api(http, "POST", f"/api/plans/{plan_id}/cancel", json={"reason": "done"})


async def test_one_plans_many_gates_take_ten_places_in_the_inbox(
    env: WorkflowEnvironment, worker: Any, task_queue: str
) -> None:
    """A plan of many gated steps in parallel listed one entry per gate (300 gates: a
    738 KB inbox, refreshed every 4 s): ten are listed, the rest are on its page."""
    gates = [wait_step(f"g{i:02d}", requires_approval=True) for i in range(15)]
    doc = plan_doc(gates, max_parallel_steps=20, step_approval_timeout_s=600)
    app = make_app(env.client, task_queue)
    async with browser_like(app) as http:
        plan_id = await start_plan(http, doc)
        deadline = time.monotonic() + 30
        while True:
            html = (await http.get("/console")).text
            entries = re.findall(rf'<li class="item" data-plan-id="{plan_id}"', html)
            if "5 more time(s)" in html:
                break
            assert time.monotonic() < deadline, len(entries)
            await asyncio.sleep(0.2)
        assert len(entries) == 10
        page = (await http.get(f"/console/plans/{plan_id}")).text
        assert len(re.findall(r'data-kind="step_approval"', page)) == 15  # all on its page
        await api(http, "POST", f"/api/plans/{plan_id}/cancel", json={"reason": "done"})

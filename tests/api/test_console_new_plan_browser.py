"""The console's new-plan and charts pages in a real browser: Debian's Chromium driven by
Playwright, as ``tests/api/test_console_browser.py`` does, against the dev server, a
worker and the API under uvicorn on 127.0.0.1 with API keys on.

Alice signs in, opens New plan, pastes a document with mistakes and sees each problem
with its location; she fixes it, the review shows its risk and reasons, and Execute lands
her on the plan's page, waiting for approval. She approves it there, it completes, and
the Charts page draws the run in the dashboard's charts. Nothing is asked of another
host, no script error is logged, and the screenshots are decoded and checked.
"""

from __future__ import annotations

import uuid
from pathlib import Path
from typing import Any

import httpx
from playwright.async_api import Page
from temporalio.testing import WorkflowEnvironment

from api.app import create_app
from config import get_settings
from tests.api.test_console_browser import JSON_ALICE, TIMEOUT_MS, until
from tests.api.test_dashboard import SUCCESS, Watch, browser, colours, near, uvicorn_serving
from tests.api.test_plans_routes import TEST_CONFIG

KEYS = "k1:alice:operator"
BAD = (0xD1, 0x49, 0x5B)  # api/static/console.css: an invalid review's edge


def document(plan_id: str, tool: str, dependency: str) -> str:
    return f"""\
id: {plan_id}
title: Release notes digest
agent_id: notes-bot
options:
  require_approval: true
steps:
  - id: fetch
    tool: wait
    params: {{seconds: 0.2, result: {{notes: "2.4 is out"}}}}
  - id: publish-prod
    tool: {tool}
    depends_on: [{dependency}]
    idempotent: false
    params: {{seconds: 0.2}}
"""


async def finished_runs(base: str) -> int:
    async with httpx.AsyncClient(base_url=base, timeout=10) as http:
        r = await http.get("/api/metrics/trends?days=30&bucket=day", headers=JSON_ALICE)
        return sum(p["finished"] for p in r.json()["points"])


async def test_new_plan_review_execute_then_the_charts(
    env: WorkflowEnvironment, worker: Any, task_queue: str, tmp_path: Path
) -> None:
    settings = get_settings().replace(
        temporal={
            "task_queue": task_queue,
            "address": env.client.service_client.config.target_host,
        },
        api={**TEST_CONFIG.model_dump(), "keys": KEYS},
    )
    plan_id = f"notes-{uuid.uuid4().hex[:8]}"
    with uvicorn_serving(create_app(settings=settings)) as base:
        async with browser() as b:
            page: Page = await b.new_page(viewport={"width": 1280, "height": 900})
            page.set_default_timeout(TIMEOUT_MS)
            watch = Watch(page, base)

            # keys on: New plan shows only the sign-in form until alice signs in
            await page.goto(f"{base}/console/new")
            assert await page.locator("#sign-in").is_visible()
            assert await page.locator("#document").count() == 0
            await page.get_by_label("API key").fill("k1")
            await page.get_by_role("button", name="Sign in").click()
            await page.locator("#who", has_text="alice").wait_for()
            await page.get_by_role("link", name="New plan").click()
            await page.get_by_label("Plan document (JSON or YAML)").wait_for()

            # a document with mistakes: every problem shown with its location
            await page.get_by_label("Plan document (JSON or YAML)").fill(
                document(plan_id, "no_such_tool", "nowhere")
            )
            await page.get_by_role("button", name="Review").click()
            await page.locator("#review[data-valid=no]").wait_for()
            wheres = await page.locator("#problems li.problem code.where").all_inner_texts()
            assert wheres == ["steps[1].depends_on[0]", "steps[1].tool"], wheres
            text = await page.locator("#problems").inner_text()
            assert "nowhere" in text and "no_such_tool" in text, text
            assert await page.get_by_role("button", name="Execute").count() == 0
            assert await page.get_by_role("button", name="Save as draft").count() == 0
            shot = tmp_path / "new-plan-invalid.png"
            await page.screenshot(path=str(shot), full_page=True)
            width, _, seen = colours(shot.read_bytes())
            assert width == 1280 and len(seen) > 50, "the review looks blank"
            assert near(seen, BAD) > 200, "the invalid review is not marked"

            # fixed: the review shows the risk and its reasons, and offers Execute
            area = page.get_by_label("Plan document (JSON or YAML)")
            assert "no_such_tool" in await area.input_value()  # kept for fixing
            await area.fill(document(plan_id, "wait", "fetch"))
            await page.get_by_role("button", name="Review").click()
            await page.locator("#review[data-valid=yes]").wait_for()
            risk = await page.locator("#review-risk").inner_text()
            assert "not idempotent" in risk, risk
            assert await page.locator("#review-risk .level").count() == 1
            assert "notes-bot" in await page.locator("#review").inner_text()
            shot = tmp_path / "new-plan-review.png"
            await page.screenshot(path=str(shot), full_page=True)
            width, _, seen = colours(shot.read_bytes())
            assert width == 1280 and len(seen) > 50, "the review looks blank"
            assert near(seen, SUCCESS) > 200, "the valid review is not marked"

            # Execute: the plan's page, the plan running up to its approval
            await page.get_by_role("button", name="Execute").click()
            await page.locator("#plan-body[data-status=pending_approval]").wait_for()
            assert page.url == f"{base}/console/plans/{plan_id}"
            ok = await page.locator("#notices .notice.ok").inner_text()
            assert "started workflow" in ok, ok
            assert await page.locator("#dag .node").count() == 2

            # approved there, it completes
            waits = page.locator('#waits li.item[data-kind="plan_approval"]')
            await waits.get_by_role("button", name="Approve").click()
            await page.locator("#plan-body[data-status=completed]").wait_for()

            # the charts: the dashboard's charts inside the console, drawn from the store
            async def recorded() -> bool:
                return await finished_runs(base) >= 1

            await until(recorded, "the finished run reaches the store's metrics")
            await page.get_by_role("link", name="Charts").click()
            await page.locator("#charts[data-state=ready]").wait_for(state="attached")
            assert page.url == f"{base}/console/charts"
            assert "alice" in await page.locator("#who").inner_text()  # the console's layout
            assert await page.locator("#trend-chart circle.point.success").count() >= 1
            assert await page.locator("#agents-chart rect.bar").count() >= 1
            assert await page.locator("#runs-chart rect.bar").count() >= 1
            assert "notes-bot" in await page.locator("#agents-chart").inner_text()
            bars = await page.locator("#agents-chart svg").screenshot()
            w, h, seen = colours(bars)
            assert w > 300 and h > 20 and len(seen) > 20, "the agents chart looks blank"
            assert near(seen, SUCCESS) > 50, "no success bar drawn"
            shot = tmp_path / "console-charts.png"
            await page.screenshot(path=str(shot), full_page=True)
            width, height, seen = colours(shot.read_bytes())
            assert width == 1280 and height >= 600 and len(seen) > 50

            # back to the inbox: a page of its own, without the dashboard's files
            await page.get_by_role("navigation").get_by_role("link", name="Inbox").click()
            await page.locator("#inbox").wait_for()
            assert page.url == f"{base}/console"
            assert await page.locator("#charts").count() == 0
            assert await page.locator('link[href^="/dashboard/"]').count() == 0

            assert watch.foreign == [], f"the console asked another host: {watch.foreign}"
            assert watch.errors == [], watch.errors

"""Issue 15's second acceptance in a real browser (Debian's Chromium driven by Playwright,
as ``tests/api/test_console_browser.py``): a plan with ``on_error: ask`` whose
``http_request`` step fails (a server on 127.0.0.1 that this test starts answers 500 on
the bad path). In the console alice corrects the step's URL: first an invalid edit,
shown inline with its location while nothing is sent (the versions and the audit say
so), then a valid one; she retries the step, the plan completes, and the version history
shows the diff. No request goes to another host, no script error is logged, and the
screenshots are decoded and checked.
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
from tests.api.test_console_actions import StatusServer, failing_plan
from tests.api.test_console_browser import JSON_ALICE, KEYS, TIMEOUT_MS, status_of, until
from tests.api.test_dashboard import Watch, browser, colours, near, uvicorn_serving
from tests.api.test_plans_routes import TEST_CONFIG

FAILED = (0xD1, 0x49, 0x5B)  # api/static/console.css, a failed step
COMPLETED = (0x2F, 0x9E, 0x6B)  # a completed step


async def corrections(base: str, plan_id: str) -> tuple[list[int], list[str]]:
    """The plan's versions and its audit trail's corrections and retries (REST API)."""
    async with httpx.AsyncClient(base_url=base, timeout=10) as http:
        versions = (await http.get(f"/api/plans/{plan_id}/versions", headers=JSON_ALICE)).json()
        audit = (await http.get(f"/api/plans/{plan_id}/audit", headers=JSON_ALICE)).json()
    steer = ("apply_correction", "retry_step")
    return [v["version"] for v in versions], [a["action"] for a in audit if a["action"] in steer]


async def test_correct_a_failed_steps_url_then_retry_in_the_console(
    env: WorkflowEnvironment, worker: Any, task_queue: str, tmp_path: Path
) -> None:
    settings = get_settings().replace(
        temporal={
            "task_queue": task_queue,
            "address": env.client.service_client.config.target_host,
        },
        api={**TEST_CONFIG.model_dump(), "keys": KEYS},
    )
    with StatusServer() as server, uvicorn_serving(create_app(settings=settings)) as base:
        doc = failing_plan(server.url + "/bad", on_error="ask") | {
            "id": f"fetch-{uuid.uuid4().hex[:8]}",
            "title": "Fetch the report",
        }
        plan_id = doc["id"]
        async with httpx.AsyncClient(base_url=base, timeout=30) as http:
            r = await http.post("/api/plans", json=doc, headers=JSON_ALICE)
            assert r.status_code == 201, r.text
            r = await http.post(f"/api/plans/{plan_id}/execute", headers=JSON_ALICE)
            assert r.status_code == 202, r.text

        async def waits_for_correction() -> bool:
            return await status_of(base, plan_id) == "waiting_correction"

        await until(waits_for_correction, "the failed step waits for a correction")

        async with browser() as b:
            page: Page = await b.new_page(viewport={"width": 1280, "height": 900})
            page.set_default_timeout(TIMEOUT_MS)
            watch = Watch(page, base)
            await page.goto(f"{base}/console")
            await page.get_by_label("API key").fill("k1")
            await page.get_by_role("button", name="Sign in").click()
            await page.locator("#who", has_text="alice").wait_for()

            # the inbox lists the failed step; its link opens the editor on the plan page
            item = page.locator(f'li.item[data-plan-id="{plan_id}"][data-kind="correction"]')
            await item.wait_for()
            assert await item.get_by_role("button", name="Retry").count() == 1
            await item.get_by_role("link", name="Correct the step").click()
            await page.locator("#plan-body[data-status=waiting_correction]").wait_for()
            editor = page.locator("form#correct-fetch")
            document = page.get_by_label("Corrected step fetch")
            await document.wait_for()
            text = await document.input_value()
            assert f'"url": "{server.url}/bad"' in text, text

            # an invalid edit, sent with "Apply correction": shown inline with its
            # location, and nothing is sent
            await document.fill(text.replace(f'"{server.url}/bad"', "42"))
            await editor.get_by_role("button", name="Apply correction").click()
            problem = page.locator('form#correct-fetch li.problem[data-field="params.url"]')
            await problem.wait_for()
            said = await problem.inner_text()
            assert "params.url" in said and "42 is not of type 'string'" in said, said
            assert "nothing was sent" in await editor.inner_text()
            assert await corrections(base, plan_id) == ([1], [])
            shot = tmp_path / "console-correction-invalid.png"
            await page.screenshot(path=str(shot), full_page=True)
            width, _, seen = colours(shot.read_bytes())
            assert width == 1280 and len(seen) > 50, "the plan page looks blank"
            assert near(seen, FAILED) > 300, "the failed step is not drawn"

            # the URL corrected: "Check" (by keyboard) says it is valid and what changes
            document = page.get_by_label("Corrected step fetch")
            await document.fill(text.replace("/bad", "/good"))
            await editor.get_by_role("button", name="Check").focus()
            await page.keyboard.press("Enter")
            row = page.locator('form#correct-fetch tr.diff-row[data-field="params.url"]')
            await row.wait_for()
            assert "Valid" in await editor.inner_text()
            assert await corrections(base, plan_id) == ([1], [])

            # "Apply correction", approving the change as she sends it
            await page.get_by_label("Approve the change to step fetch").check()
            await editor.get_by_role("button", name="Apply correction").click()
            await page.locator("#notices .notice.ok", has_text="Apply correction").wait_for()
            assert await corrections(base, plan_id) == ([1, 2], ["apply_correction"])

            # Retry: the step runs again, with the corrected URL, and the plan completes
            waits = page.locator('#waits li.item[data-kind="correction"]')
            await waits.get_by_role("button", name="Retry").click()
            await page.locator("#notices .notice.ok", has_text="Retry step fetch").wait_for()
            await page.locator("#plan-body[data-status=completed]").wait_for()
            assert await page.locator('#dag .node[data-status="completed"]').count() == 2
            assert server.paths == ["/bad", "/good"]

            # the version history: who, which step, the URL's old and new value
            version = page.locator('#versions li.version[data-version="2"]')
            assert await version.get_attribute("data-by") == "alice"
            assert await version.get_attribute("data-step-id") == "fetch"
            diff = version.locator('tr.diff-row[data-field="params.url"]')
            assert await diff.locator("del").inner_text() == f'"{server.url}/bad"'
            assert await diff.locator("ins").inner_text() == f'"{server.url}/good"'
            by = [
                (await r.get_attribute("data-action"), await r.get_attribute("data-by"))
                for r in await page.locator("#audit tr.audit-row").all()
            ]
            assert ("apply_correction", "alice") in by and ("retry_step", "alice") in by, by

            await version.scroll_into_view_if_needed()
            shot = tmp_path / "console-correction-done.png"
            await page.screenshot(path=str(shot), full_page=True)
            width, height, seen = colours(shot.read_bytes())
            assert width == 1280 and height >= 900 and len(seen) > 50, "the page looks blank"
            assert near(seen, COMPLETED) > 1000, "the completed steps are not drawn"

            assert watch.foreign == [], f"the console asked another host: {watch.foreign}"
            assert watch.errors == [], watch.errors

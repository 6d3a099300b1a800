"""The console in a real browser: Debian's Chromium driven by Playwright, as the dashboard
test does (``tests/api/test_dashboard.py``), against the dev server, a worker and the API
under uvicorn on 127.0.0.1 with API keys on.

A release plan waits for approval: alice signs in, sees it in the inbox with its risk
reasons, approves it there, watches its DAG change live on the plan page, approves the
production step's gate from the inbox and sees the plan complete, with herself in the
audit trail. Nothing is asked of another host, no script error is logged, and the
screenshots are decoded and checked for the colours of the drawn steps.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from pathlib import Path
from typing import Any

import httpx
from playwright.async_api import Page
from temporalio.testing import WorkflowEnvironment

from api.app import create_app
from config import get_settings
from tests.api.test_dashboard import Watch, browser, colours, near, uvicorn_serving
from tests.api.test_plans_routes import TEST_CONFIG

KEYS = "k1:alice:operator"
JSON_ALICE = {"Content-Type": "application/json", "Authorization": "Bearer k1"}
TIMEOUT_MS = 20_000
COMPLETED = (0x2F, 0x9E, 0x6B)  # api/static/console.css, a completed step


def release_plan(plan_id: str) -> dict[str, Any]:
    """examples/release_approval.yaml without the network: a plan approval, then a gate."""
    return {
        "id": plan_id,
        "title": "Release 2.4 to production",
        "agent_id": "release-bot",
        "options": {
            "require_approval": True,
            "approval_timeout_s": 3600,
            "on_approval_timeout": "reject",
            "step_approval_timeout_s": 3600,
        },
        "steps": [
            {
                "id": "deploy-staging",
                "description": "Deploy to staging",
                "tool": "wait",
                # long enough to be seen running, then completed, on the plan page
                "params": {"seconds": 5, "result": {"env": "staging"}},
            },
            {
                "id": "verify-staging",
                "description": "Staging is healthy",
                "tool": "wait",
                "depends_on": ["deploy-staging"],
                "params": {"seconds": 0.2},
            },
            {
                "id": "deploy-prod",
                "description": "Deploy to production",
                "tool": "wait",
                "depends_on": ["verify-staging"],
                "requires_approval": True,
                "idempotent": False,
                "params": {"seconds": 0.2, "result": {"env": "production"}},
            },
        ],
    }


async def until(check: Any, what: str, timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while not await check():
        assert time.monotonic() < deadline, f"not seen within {timeout}s: {what}"
        await asyncio.sleep(0.1)


async def status_of(base: str, plan_id: str) -> str:
    async with httpx.AsyncClient(base_url=base, timeout=10) as http:
        r = await http.get(f"/api/plans/{plan_id}/status", headers=JSON_ALICE)
        return str(r.json()["status"])


async def test_approve_watch_and_gate_a_release_in_the_console(
    env: WorkflowEnvironment, worker: Any, task_queue: str, tmp_path: Path
) -> None:
    settings = get_settings().replace(
        temporal={
            "task_queue": task_queue,
            "address": env.client.service_client.config.target_host,
        },
        api={**TEST_CONFIG.model_dump(), "keys": KEYS},
    )
    plan_id = f"release-{uuid.uuid4().hex[:8]}"
    with uvicorn_serving(create_app(settings=settings)) as base:
        async with httpx.AsyncClient(base_url=base, timeout=30) as http:
            r = await http.post("/api/plans", json=release_plan(plan_id), headers=JSON_ALICE)
            assert r.status_code == 201, r.text
            r = await http.post(f"/api/plans/{plan_id}/execute", headers=JSON_ALICE)
            assert r.status_code == 202, r.text

        async def waiting_approval() -> bool:
            return await status_of(base, plan_id) == "pending_approval"

        await until(waiting_approval, "the plan waits for approval")

        async with browser() as b:
            page: Page = await b.new_page(viewport={"width": 1280, "height": 900})
            page.set_default_timeout(TIMEOUT_MS)
            watch = Watch(page, base)

            # keys on: only the sign-in form
            await page.goto(f"{base}/console")
            assert await page.locator("#sign-in").is_visible()
            assert await page.locator("li.item").count() == 0
            await page.get_by_label("API key").fill("k1")
            await page.get_by_role("button", name="Sign in").click()
            await page.locator("#who", has_text="alice").wait_for()

            # the inbox: the plan, who proposed it, its risk and reasons, its timeout
            item = page.locator(f'li.item[data-plan-id="{plan_id}"][data-kind="plan_approval"]')
            await item.wait_for()
            text = await item.inner_text()
            assert "Release 2.4 to production" in text and "release-bot" in text
            assert "step deploy-prod: the step is not idempotent" in text, text
            assert "step deploy-prod: production target" in text, text
            assert await item.locator(".risk .level").count() == 1
            assert await item.locator(".risk ul.reasons li").count() >= 1
            assert "then reject" in await item.locator(".timeout").inner_text()

            shot = tmp_path / "console-inbox.png"
            await page.screenshot(path=str(shot), full_page=True)
            width, _, seen = colours(shot.read_bytes())
            assert width == 1280 and len(seen) > 50, "the inbox looks blank"

            # a second reviewer, in another browser, starts rejecting the same plan
            other: Page = await b.new_page()
            other.set_default_timeout(TIMEOUT_MS)
            other_watch = Watch(other, base)
            await other.goto(f"{base}/console")
            await other.get_by_label("API key").fill("k1")
            await other.get_by_role("button", name="Sign in").click()
            late = other.locator(f'li.item[data-plan-id="{plan_id}"][data-kind="plan_approval"]')
            await late.get_by_label("Reason").fill("wrong version")

            # "Approve", by keyboard: focus the button and press Enter
            await item.get_by_role("button", name="Approve").focus()
            await page.keyboard.press("Enter")
            await page.locator("#notices .notice.ok", has_text="done").wait_for()
            assert page.url == f"{base}/console"

            # the late "Reject": refused with the workflow's reason, and the page refreshed
            await late.get_by_role("button", name="Reject").click()
            refusal = other.locator("#notices .notice.error")
            await refusal.wait_for()
            assert "refused (409)" in await refusal.inner_text()
            assert await late.count() == 0, "the refreshed inbox still offers the approval"
            assert other_watch.foreign == [] and other_watch.errors == [], other_watch.errors
            await other.close()

            # the plan page: the DAG changes live, from the event stream
            await page.goto(f"{base}/console/plans/{plan_id}")
            staging = await page.query_selector('#dag .node[data-step-id="deploy-staging"]')
            assert staging is not None
            first = await staging.get_attribute("data-status")
            assert first in ("pending", "running"), first
            await until(
                lambda: _attr_is(staging, "data-status", "completed"),
                "deploy-staging drawn completed in place (no reload)",
            )
            # the gate: the plan page refreshes and shows it
            await page.locator('#waits li.item[data-kind="step_approval"]').wait_for()
            assert (
                await page.locator(
                    '#dag .node[data-step-id="deploy-prod"][data-status="waiting_approval"]'
                ).count()
                == 1
            )
            dag = await page.locator("#dag").screenshot()
            _, _, seen = colours(dag)
            assert near(seen, COMPLETED) > 500, "no completed step drawn in the DAG"

            # the gate from the inbox
            await page.get_by_role("link", name="Inbox").click()
            gate = page.locator(f'li.item[data-plan-id="{plan_id}"][data-kind="step_approval"]')
            await gate.wait_for()
            assert "deploy-prod" in await gate.inner_text()
            await gate.get_by_role("button", name="Approve").click()
            await page.locator("#notices .notice.ok", has_text="step deploy-prod").wait_for()

            # the plan completes; the audit names alice for both approvals
            await page.goto(f"{base}/console/plans/{plan_id}")
            await page.locator("#plan-body[data-status=completed]").wait_for()
            assert await page.locator('#dag .node[data-status="completed"]').count() == 3
            by = {
                await row.get_attribute("data-action"): await row.get_attribute("data-by")
                for row in await page.locator("#audit tr.audit-row").all()
            }
            assert by.get("approve") == "alice" and by.get("approve_step") == "alice", by

            shot = tmp_path / "console-plan.png"
            await page.screenshot(path=str(shot), full_page=True)
            width, height, seen = colours(shot.read_bytes())
            assert width == 1280 and height >= 600
            assert len(seen) > 50, "the plan page looks blank"
            assert near(seen, COMPLETED) > 1000, "the completed steps are not drawn"

            assert watch.foreign == [], f"the console asked another host: {watch.foreign}"
            assert watch.errors == [], watch.errors


async def _attr_is(handle: Any, name: str, value: str) -> bool:
    return bool(await handle.get_attribute(name) == value)

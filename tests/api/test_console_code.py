"""The console shows a ``kind: code`` step's generated code while its gate waits: in the
inbox entry and on the plan page (escaped), before the code has run anywhere."""

from __future__ import annotations

from typing import Any

from temporalio.testing import WorkflowEnvironment

from tests.api.test_console import (
    KEYS,
    api,
    browser_like,
    inbox_with,
    sign_in,
    start_plan,
    wait_status,
)
from tests.api.test_plans_routes import closed, make_app, plan_doc


async def test_a_code_steps_gate_shows_its_generated_code_in_the_inbox_and_on_the_page(
    env: WorkflowEnvironment, worker: Any, task_queue: str
) -> None:
    app = make_app(env.client, task_queue, api_keys=KEYS)
    step = {
        "id": "sum",
        "kind": "code",
        "description": "Sum of amount per region where status is paid",
        "requires_approval": True,
        "params": {
            "input": [{"region": "eu", "amount": 2, "status": "paid"}],
            "output_schema": {"type": "object"},
        },
    }
    async with browser_like(app) as http:
        plan_id = await start_plan(http, plan_doc([step]))
        st = await wait_status(http, plan_id, "waiting_approval")
        code = st["steps"][0]["code"]
        assert "json.load(sys.stdin)" in code and st["waiting_for"]["code"] == code
        await sign_in(http, "k1")
        _, entry = await inbox_with(http, plan_id, "step_approval")
        assert 'class="generated-code"' in entry and "json.load(sys.stdin)" in entry
        assert "&#39;paid&#39;" in entry  # escaped, as every model output
        page = (await http.get(f"/console/plans/{plan_id}")).text
        assert (
            'class="generated-code"' in page
            and 'class="code-attempt" data-status="waiting"' in page
        )
        r = await api(
            http,
            "POST",
            f"/api/plans/{plan_id}/steps/sum/reject",
            json={"reason": "not this code"},
        )
        assert r.status_code == 200, r.text
        # its only step rejected, the plan ends failed; the code never ran
        await wait_status(http, plan_id, "failed")
        # once the workflow has closed, the status comes from the store: the code too
        await closed(env.client, plan_id)
        st = (await api(http, "GET", f"/api/plans/{plan_id}/status")).json()
        assert st["steps"][0]["code"] == code
        (attempt,) = st["steps"][0]["code_attempts"]
        assert attempt["status"] == "not run" and "not this code" in attempt["error"]

"""People teach the planner: a rejection and a correction become lessons in the store, and
the next plan for a similar task avoids the same mistake and names the lesson it used.

Everything runs as a user would: the offline planner through the GeneratePlan workflow,
the plans through PlanWorkflow on the in-process worker (which answers with the offline
model), the controls as updates, the lessons written by the worker's store snapshots.
"""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

from temporalio.client import Client

from contracts.planning import PlanRequest
from plans.models import Plan, PlanStatus
from store import knowledge
from store.db import ensure_migrated, get_engine, session_scope
from tests.helpers import start, status, wait_for
from workflows.planner_workflow import run_planner


def _lessons_of(plan_ids: set[str]) -> list[dict[str, Any]]:
    with session_scope(ensure_migrated(get_engine())) as session:
        return [x for x in knowledge.list_lessons(session) if x["plan_id"] in plan_ids]


async def _wait_lessons(plan_ids: set[str], count: int) -> list[dict[str, Any]]:
    for _ in range(100):
        found = _lessons_of(plan_ids)
        if len(found) >= count:
            return found
        await asyncio.sleep(0.1)
    raise AssertionError(f"lessons not recorded: {_lessons_of(plan_ids)}")


async def test_a_rejection_and_a_correction_teach_the_next_plan(
    client: Client, worker: Any, task_queue: str, text_server: tuple[str, list[str]]
) -> None:
    base, asked = text_server
    tag = uuid.uuid4().hex[:6]
    agent = f"agent-{tag}"
    task = f"fetch the {tag} release notes from {base}/prod/notes and summarise them"
    first = await run_planner(client, PlanRequest(task=task, agent_id=agent), task_queue)
    fetch = next(s for s in first.plan["steps"] if s.get("tool") == "http_request")
    assert fetch["params"]["url"] == f"{base}/prod/notes"  # the mistake: production

    def a_plan() -> Plan:
        doc = {**first.plan, "id": f"l-{uuid.uuid4().hex[:10]}"}
        doc["options"] = {**doc.get("options", {}), "require_approval": True}
        return Plan.model_validate(doc)

    # 1. A person rejects the plan, saying why.
    rejected = a_plan()
    h1 = await start(client, rejected, task_queue)
    await wait_for(h1, lambda st: st.status == PlanStatus.PENDING_APPROVAL)
    await h1.execute_update(
        "reject", {"by": "alice", "reason": "it reads production; use the staging notes"}
    )
    assert (await h1.result()).status == PlanStatus.REJECTED

    # 2. Another person corrects the fetch step of the same plan, then approves it.
    corrected = a_plan()
    h2 = await start(client, corrected, task_queue)
    await wait_for(h2, lambda st: st.status == PlanStatus.PENDING_APPROVAL)
    fixed = {**fetch, "params": {"url": f"{base}/staging/notes"}}
    await h2.execute_update(
        "apply_correction",
        {"by": "bob", "step_id": fetch["id"], "correction": {"updated_step": fixed}},
    )
    await h2.execute_update("approve", {"by": "bob"})
    assert (await h2.result()).status == PlanStatus.COMPLETED
    assert asked == ["/staging/notes"]  # production was never read

    lessons = await _wait_lessons({rejected.id or "", corrected.id or ""}, 2)
    by_source = {x["source"]: x for x in lessons}
    assert "use the staging notes" in by_source["rejection"]["what_wrong"]
    assert by_source["rejection"]["by"] == "alice"
    correction = by_source["correction"]
    assert correction["tools"] == ["http_request"] and correction["by"] == "bob"
    assert f"{base}/prod/notes" in correction["what_wrong"]
    assert f"{base}/staging/notes" in correction["fix"]

    # 3. A similar task: the new plan avoids the mistake and names the lessons it used.
    similar = (
        f"fetch the {tag} release notes from {base}/prod/notes and summarise them for the team"
    )
    again = await run_planner(client, PlanRequest(task=similar, agent_id=agent), task_queue)
    new_fetch = next(s for s in again.plan["steps"] if s.get("tool") == "http_request")
    assert new_fetch["params"]["url"] == f"{base}/staging/notes"
    used = {x.id for x in again.lessons_applied}
    assert {correction["id"], by_source["rejection"]["id"]} <= used
    assert f"lesson {correction['id']}" in new_fetch["description"]
    # and the new plan runs against staging only
    plan = Plan.model_validate({**again.plan, "id": f"l-{uuid.uuid4().hex[:10]}"})
    plan.options.require_approval = False
    h3 = await start(client, plan, task_queue)
    assert (await h3.result()).status == PlanStatus.COMPLETED
    assert asked == ["/staging/notes", "/staging/notes"]
    st = await status(h3)
    assert st.status == PlanStatus.COMPLETED

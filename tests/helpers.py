"""Helpers for workflow tests: build plans, start them, wait for states."""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

from temporalio.client import Client, WorkflowHandle

from plans.models import Plan
from plans.views import StatusView
from workflows.plan_input import PlanInput, PlanResult
from workflows.plan_workflow import PlanWorkflow


def make_plan(steps: list[dict[str, Any]], **options: Any) -> Plan:
    opts = {"require_approval": False, **options}
    return Plan.model_validate(
        {"id": f"p-{uuid.uuid4().hex[:12]}", "title": "test", "options": opts, "steps": steps}
    )


async def start(
    client: Client, plan: Plan, task_queue: str, **kw: Any
) -> WorkflowHandle[PlanWorkflow, PlanResult]:
    return await client.start_workflow(
        PlanWorkflow.run, PlanInput(plan=plan, **kw), id=plan.workflow_id, task_queue=task_queue
    )


async def status(handle: WorkflowHandle) -> StatusView:
    return await handle.query("status", result_type=StatusView)


async def wait_for(handle: WorkflowHandle, predicate: Any, timeout: float = 20.0) -> StatusView:
    """Poll the status query until ``predicate(status)`` holds."""
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        st = await status(handle)
        if predicate(st):
            return st
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(
                f"condition not reached; last status {st.status}: {[(s.id, s.status) for s in st.steps]}"
            )
        await asyncio.sleep(0.1)

"""Helpers for workflow tests: build plans, start them, wait for states; the store, and
workers whose activities use a model (or settings) of the test's choosing."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import Any

from sqlalchemy.engine import Engine
from temporalio.client import Client, WorkflowHandle
from temporalio.worker import Worker

from activities.deps import ActivityDeps
from activities.llm.base import ChatModel
from activities.llm.offline.model import OfflineModel
from config import Settings, get_settings
from plans.models import Plan, StepStatus
from plans.views import StatusView, StepView
from store.db import ensure_migrated, get_engine
from worker import build_worker
from workflows.plan_input import PlanInput, PlanResult
from workflows.plan_workflow import PlanWorkflow


def activity_deps(
    chat_model: ChatModel | None = None, settings: Settings | None = None
) -> ActivityDeps:
    """What the tests' activities work with: the tests' settings and store, and the
    offline model unless the test brings its own (no test talks to the Anthropic API)."""
    return ActivityDeps.from_settings(
        settings or get_settings(), chat_model=chat_model or OfflineModel()
    )


def worker_with(
    client: Client,
    task_queue: str,
    chat_model: ChatModel | None = None,
    settings: Settings | None = None,
) -> Worker:
    """A worker like the ``worker`` fixture's whose activities ask ``chat_model`` (and
    read ``settings``): ``async with worker_with(client, task_queue, model): ...``."""
    return build_worker(client, task_queue, deps=activity_deps(chat_model, settings))


StartWorker = Callable[..., Awaitable[Worker]]
"""The ``start_worker`` fixture: ``await start_worker(chat_model, settings)``."""


def store_engine() -> Engine:
    """The store the tests' workers write to (``DATABASE_URL``), migrated."""
    return ensure_migrated(get_engine())


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


T0 = datetime(2026, 1, 1, tzinfo=UTC)


def step_view(sid: str, status: StepStatus = StepStatus.PENDING, attempts: int = 0) -> StepView:
    """A step as status shows it: started and ended at T0 as its status says."""
    return StepView(
        id=sid,
        kind="tool",
        status=status,
        attempts=attempts,
        version=1,
        started_at=T0 if status != StepStatus.PENDING else None,
        completed_at=T0 if status.terminal else None,
        error=None,
    )

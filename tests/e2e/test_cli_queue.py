"""``plansmith queue``: the concurrency limits' queue as an operator reads it."""

from __future__ import annotations

import contextlib
import json

import pytest
from temporalio.service import RPCError

from config import get_settings
from contracts.limits import limiter_workflow_id
from plans.models import PlanStatus
from tests.e2e.test_cli import cli_env, plansmith
from tests.helpers import make_plan, wait_for, worker_with
from workflows.client import PlanClient

pytestmark = pytest.mark.slow


async def test_queue_shows_who_executes_and_who_waits_in_order(env, task_queue):
    settings = get_settings().replace(
        temporal={"task_queue": task_queue, "max_concurrent_plans": 1}
    )
    plans = PlanClient(settings, client=env.client)
    env_vars = {**cli_env(env, task_queue), "PLANSMITH_MAX_CONCURRENT_PLANS": "1"}
    code, out, err = await plansmith("queue", env_vars=env_vars)
    assert code == 0, err
    assert json.loads(out)["limiter"] is None

    gated = make_plan(
        [{"id": "g", "tool": "wait", "params": {"seconds": 0}, "requires_approval": True}]
    )
    later = [make_plan([{"id": "w", "tool": "wait", "params": {"seconds": 0}}]) for _ in range(2)]
    async with worker_with(env.client, task_queue, settings=settings):
        holder, _ = await plans.start(gated)
        await wait_for(holder, lambda v: v.status == PlanStatus.WAITING_APPROVAL)
        for p in later:
            handle, _ = await plans.start(p)
            await wait_for(handle, lambda v: v.status == PlanStatus.QUEUED)

        code, out, err = await plansmith("queue", env_vars=env_vars)
        assert code == 0, err
        answer = json.loads(out)
        assert answer["max_concurrent_plans"] == 1 and answer["task_queue"] == task_queue
        assert [h["plan_id"] for h in answer["limiter"]["executing"]] == [gated.id]
        assert [(q["position"], q["plan_id"]) for q in answer["limiter"]["queued"]] == [
            (1, later[0].id),
            (2, later[1].id),
        ]
        await holder.signal("cancel", {"by": "ops", "reason": "test over"})
        for p in later:
            await env.client.get_workflow_handle(p.workflow_id).result()
    with contextlib.suppress(RPCError):
        await env.client.get_workflow_handle(limiter_workflow_id(task_queue)).terminate("done")

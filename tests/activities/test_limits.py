"""The limiter's ``check_plan_slots`` activity: which holders of a slot no longer run."""

from __future__ import annotations

from datetime import UTC, datetime

from temporalio.testing import ActivityEnvironment, WorkflowEnvironment

from activities.limits import LimiterActivities
from contracts.limits import HolderCheck
from plans.limits import ConcurrencyLimits, SlotRequest, key_of
from tests.helpers import make_plan, start


def holder(workflow_id: str, first_run_id: str) -> SlotRequest:
    return SlotRequest(
        key=key_of(workflow_id, first_run_id),
        workflow_id=workflow_id,
        first_run_id=first_run_id,
        plan_id=workflow_id.removeprefix("plan-"),
        limits=ConcurrencyLimits(max_plans=1),
        asked_at=datetime.now(UTC),
    )


async def test_closed_unknown_and_other_chains_are_gone_running_ones_are_not(
    env: WorkflowEnvironment, task_queue: str
) -> None:
    # no worker: the plans stay running as far as Temporal knows
    running = await start(env.client, make_plan([{"id": "a", "tool": "wait"}]), task_queue)
    ended = await start(env.client, make_plan([{"id": "a", "tool": "wait"}]), task_queue)
    await ended.terminate("gone")
    alive = holder(running.id, running.first_execution_run_id or "")
    other_chain = holder(running.id, "an-earlier-run")
    terminated = holder(ended.id, ended.first_execution_run_id or "")
    unknown = holder("plan-never-started", "x")

    gone = await ActivityEnvironment(client=env.client).run(
        LimiterActivities().check_plan_slots,
        HolderCheck(holders=[alive, other_chain, terminated, unknown]),
    )

    assert gone == [other_chain.key, terminated.key, unknown.key]
    await running.terminate("test over")

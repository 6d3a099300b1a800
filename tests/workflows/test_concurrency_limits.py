"""Concurrency limits: ``PLANSMITH_MAX_CONCURRENT_PLANS`` and ``..._PER_AGENT``.

Plans are started as the API and the CLI start them (``PlanClient`` with the settings);
over a limit they wait ``queued`` and start in order as slots free. The limits live in
the queue's limiter workflow, so they hold while no worker runs."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from datetime import datetime
from pathlib import Path
from typing import Any, NamedTuple

import pytest
import pytest_asyncio
from temporalio.client import Client, WorkflowHandle, WorkflowHistory
from temporalio.contrib.pydantic import pydantic_data_converter
from temporalio.service import RPCError
from temporalio.testing import WorkflowEnvironment
from temporalio.worker import Replayer

from config import Settings, get_settings
from contracts.limits import LIMITER_WORKFLOW, QUEUE_QUERY, LimiterInput, limiter_workflow_id
from plans.limits import ConcurrencyLimits, LimiterView
from plans.models import Plan, PlanStatus
from plans.run_state import LogEntry
from plans.views import LogsQuery, StatusView
from tests.helpers import StartWorker, make_plan, start, status, wait_for, worker_with
from workflows.client import PlanClient
from workflows.limiter_workflow import LimiterWorkflow


@pytest_asyncio.fixture(autouse=True)
async def no_limiter_left(env: WorkflowEnvironment, task_queue: str) -> AsyncIterator[None]:
    yield
    with contextlib.suppress(RPCError):
        await env.client.get_workflow_handle(limiter_workflow_id(task_queue)).terminate("test over")


def limited(task_queue: str, **temporal: Any) -> Settings:
    return get_settings().replace(temporal={"task_queue": task_queue, **temporal})


def waiting_plan(seconds: float, agent: str | None = None) -> Plan:
    plan = make_plan([{"id": "w", "tool": "wait", "params": {"seconds": seconds}}])
    plan.agent_id = agent
    return plan


async def start_all(
    client: Client, settings: Settings, plans: list[Plan], processes: int = 1
) -> list[WorkflowHandle]:
    """Start ``plans`` at once as the API does, spread over ``processes`` API processes
    (plan clients of their own, with the same settings)."""
    apis = [PlanClient(settings.replace(), client=client) for _ in range(processes)]
    started = await asyncio.gather(*(apis[i % processes].start(p) for i, p in enumerate(plans)))
    return [handle for handle, _ in started]


async def limiter_queue(client: Client, task_queue: str) -> LimiterView:
    handle = client.get_workflow_handle(limiter_workflow_id(task_queue))
    return await handle.query(QUEUE_QUERY, result_type=LimiterView)


async def until_queued(client: Client, task_queue: str, n: int, timeout: float = 20) -> LimiterView:
    """The limiter's queue once ``n`` plans wait in it (the first plan starts the limiter)."""
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        with contextlib.suppress(RPCError):
            view = await limiter_queue(client, task_queue)
            if len(view.queued) >= n:
                return view
        assert asyncio.get_running_loop().time() < deadline, f"fewer than {n} plans queued"
        await asyncio.sleep(0.05)


class Watched(NamedTuple):
    polls: list[dict[str, PlanStatus]]  # every poll's statuses, by plan
    held: list[int]  # the slots the limiter said were held, at each poll
    views: list[StatusView]  # each plan's status at its end


async def watch(
    client: Client, task_queue: str, handles: list[WorkflowHandle], timeout: float = 30.0
) -> Watched:
    """Poll every plan's status, and the limiter, until all plans are done.

    Statuses of several workflows are read by several queries, answered a few ms apart: a
    poll can see a plan still executing and the next one already started. The limiter's
    answer is one snapshot, and the plans' own start and end times are exact: the counts
    of plans executing at once are taken from those (:func:`most_at_once`)."""
    seen: list[dict[str, PlanStatus]] = []
    held: list[int] = []
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        views = await asyncio.gather(*(status(h) for h in handles))
        seen.append({v.plan_id: v.status for v in views})
        with contextlib.suppress(RPCError):
            held.append(len((await limiter_queue(client, task_queue)).executing))
        if all(v.status.terminal for v in views):
            return Watched(seen, held, list(views))
        assert asyncio.get_running_loop().time() < deadline, f"not done: {seen[-1]}"
        await asyncio.sleep(0.05)


def most_at_once(views: list[StatusView], among: set[str] | None = None) -> int:
    """The most plans that were executing at one instant (from their start and end)."""
    edges: list[tuple[datetime, int]] = []
    for v in views:
        if among is not None and v.plan_id not in among:
            continue
        assert v.started_at is not None and v.finished_at is not None, v.plan_id
        edges += [(v.started_at, 1), (v.finished_at, -1)]
    running = top = 0
    for _, delta in sorted(edges):  # at one instant, an end (-1) comes before a start
        running += delta
        top = max(top, running)
    return top


def queued(poll: dict[str, PlanStatus]) -> int:
    return list(poll.values()).count(PlanStatus.QUEUED)


async def test_at_most_two_execute_and_all_five_complete(
    env: WorkflowEnvironment, task_queue: str, start_worker: StartWorker
) -> None:
    settings = limited(task_queue, max_concurrent_plans=2)
    await start_worker(None, settings)
    plans = [waiting_plan(0.4) for _ in range(5)]
    handles = await start_all(env.client, settings, plans, processes=2)

    seen = await watch(env.client, task_queue, handles)

    assert max(seen.held) <= 2 and most_at_once(seen.views) == 2
    assert any(queued(p) >= 3 for p in seen.polls)
    results = [await h.result() for h in handles]
    assert [r.status for r in results] == [PlanStatus.COMPLETED] * 5
    view = await limiter_queue(env.client, task_queue)
    assert (view.max_plans, view.executing, view.queued) == (2, [], [])
    assert view.granted_total == view.released_total == 5


async def test_a_queued_plan_says_so(
    env: WorkflowEnvironment, task_queue: str, start_worker: StartWorker
) -> None:
    settings = limited(task_queue, max_concurrent_plans=1)
    await start_worker(None, settings)
    (first,) = await start_all(env.client, settings, [waiting_plan(1.0)])
    await wait_for(first, lambda v: v.status == PlanStatus.EXECUTING)
    (second,) = await start_all(env.client, settings, [waiting_plan(0)])
    queue = await until_queued(env.client, task_queue, 1)
    view = await status(second)
    assert view.status == PlanStatus.QUEUED
    assert view.queued_at is not None and view.started_at is None
    assert [q.plan_id for q in queue.queued] == [view.plan_id]
    found: list[str] = []
    query = f"PlanStatus='queued' AND TaskQueue='{task_queue}'"
    async with asyncio.timeout(10):
        while not found:  # the PlanStatus search attribute (visibility lags a little)
            found = [w.id async for w in env.client.list_workflows(query)]
    assert found == [second.id]
    assert (await second.result()).status == PlanStatus.COMPLETED
    done = await status(second)
    assert done.queued_at is None and done.started_at is not None
    logs = await second.query("logs", LogsQuery(), result_type=list[LogEntry])
    assert any(log.message.startswith("queued") for log in logs)


async def test_per_agent_limit(
    env: WorkflowEnvironment, task_queue: str, start_worker: StartWorker
) -> None:
    settings = limited(task_queue, max_concurrent_plans_per_agent=1)
    await start_worker(None, settings)
    alice = [waiting_plan(0.4, "alice") for _ in range(3)]
    bob = [waiting_plan(0.4, "bob")]
    nobody = [waiting_plan(0.4), waiting_plan(0.4)]
    handles = await start_all(env.client, settings, alice + bob + nobody)

    seen = await watch(env.client, task_queue, handles)

    alices = {p.id or "" for p in alice}
    assert most_at_once(seen.views, alices) == 1
    assert any(
        sum(s == PlanStatus.QUEUED for pid, s in p.items() if pid in alices) == 2
        for p in seen.polls
    ), "two of alice's plans wait"
    assert most_at_once(seen.views) >= 3, "bob and the plans without an agent run beside alice's"
    results = [await h.result() for h in handles]
    assert [r.status for r in results] == [PlanStatus.COMPLETED] * 6


async def test_limit_and_order_hold_across_a_worker_restart(
    env: WorkflowEnvironment, task_queue: str
) -> None:
    settings = limited(task_queue, max_concurrent_plans=1)
    gated = make_plan(
        [{"id": "w", "tool": "wait", "params": {"seconds": 0}, "requires_approval": True}]
    )
    plans = [waiting_plan(0.3) for _ in range(3)]
    async with worker_with(env.client, task_queue, settings=settings):
        (holder,) = await start_all(env.client, settings, [gated])
        await wait_for(holder, lambda v: v.status == PlanStatus.WAITING_APPROVAL)
        handles = await start_all(env.client, settings, plans)
        queue = await until_queued(env.client, task_queue, 3)
    order = [q.plan_id for q in queue.queued]
    assert sorted(order) == sorted(p.id for p in plans)

    # no worker; then a new one: the holder still holds, the queue keeps its order
    async with worker_with(env.client, task_queue, settings=settings):
        assert [q.plan_id for q in (await limiter_queue(env.client, task_queue)).queued] == order
        assert {(await status(h)).status for h in handles} == {PlanStatus.QUEUED}
        await holder.signal("approve_step", {"by": "ops", "step_id": "w"})
        seen = await watch(env.client, task_queue, [holder, *handles])
    assert max(seen.held) == 1 and most_at_once(seen.views) == 1
    views = seen.views[1:]
    assert [v.status for v in views] == [PlanStatus.COMPLETED] * 3
    started = sorted(views, key=lambda v: v.started_at or v.finished_at)
    assert [v.plan_id for v in started] == order


async def test_a_terminated_holder_gives_its_slot_back_and_a_cancelled_plan_leaves_the_queue(
    env: WorkflowEnvironment, task_queue: str, start_worker: StartWorker
) -> None:
    settings = limited(task_queue, max_concurrent_plans=1, limiter_check_s=0.5)
    await start_worker(None, settings)
    (holder,) = await start_all(env.client, settings, [waiting_plan(60)])
    await wait_for(holder, lambda v: v.status == PlanStatus.EXECUTING)
    leaving, waiting = await start_all(env.client, settings, [waiting_plan(0), waiting_plan(0)])
    await until_queued(env.client, task_queue, 2)
    leaving_id = (await status(leaving)).plan_id

    await leaving.signal("cancel", {"by": "ops", "reason": "not needed"})
    assert (await leaving.result()).status == PlanStatus.CANCELLED
    queue = await limiter_queue(env.client, task_queue)
    assert leaving_id not in [q.plan_id for q in queue.queued]

    await holder.terminate("stuck")  # it cannot release its slot: the limiter notices
    assert (await waiting.result()).status == PlanStatus.COMPLETED
    view = await limiter_queue(env.client, task_queue)
    assert view.reclaimed_total == 1 and view.executing == [] and view.queued == []


async def test_the_recorded_limiter_history_replays() -> None:
    """The limiter's history (tests/histories/limiter/, recorded with the
    ``concurrency_limits`` scenario) replays against today's ``LimiterWorkflow``."""
    path = Path(__file__).resolve().parents[1] / "histories" / "limiter" / "plan_limiter.json"
    history = WorkflowHistory.from_json("plansmith-limiter-plansmith-histories", path.read_text())
    replayer = Replayer(workflows=[LimiterWorkflow], data_converter=pydantic_data_converter)
    await replayer.replay_workflow(history)


async def test_a_plan_waiting_for_approval_holds_no_slot(
    env: WorkflowEnvironment, task_queue: str, start_worker: StartWorker
) -> None:
    settings = limited(task_queue, max_concurrent_plans=1)
    await start_worker(None, settings)
    asking = waiting_plan(0)
    asking.options.require_approval = True
    (asks,) = await start_all(env.client, settings, [asking])
    await wait_for(asks, lambda v: v.status == PlanStatus.PENDING_APPROVAL)
    (runs,) = await start_all(env.client, settings, [waiting_plan(0)])
    assert (await runs.result()).status == PlanStatus.COMPLETED  # not queued behind it
    await asks.signal("approve", {"by": "ops"})
    assert (await asks.result()).status == PlanStatus.COMPLETED


async def test_a_plan_keeps_its_slot_when_it_continues_as_new(
    env: WorkflowEnvironment, task_queue: str, start_worker: StartWorker
) -> None:
    limits = ConcurrencyLimits(max_plans=1)
    await start_worker(None, limited(task_queue, max_concurrent_plans=1))
    chain = make_plan(
        [
            {
                "id": f"s{i:02d}",
                "tool": "count",
                "params": {"key": f"lim-can-{i}-{task_queue}"},
                "depends_on": [f"s{i - 1:02d}"] if i else [],
            }
            for i in range(12)
        ]
    )
    long = await start(env.client, chain, task_queue, limits=limits, max_history_events=50)
    await wait_for(long, lambda v: v.status == PlanStatus.EXECUTING)
    short = await start(env.client, waiting_plan(0), task_queue, limits=limits)

    assert (await short.result()).status == PlanStatus.COMPLETED
    assert (await long.result()).status == PlanStatus.COMPLETED
    desc = await env.client.get_workflow_handle(chain.workflow_id).describe()
    assert desc.run_id != long.first_execution_run_id, "the long plan continued as new"
    after = await status(short)
    before = await status(long)
    assert after.started_at is not None and before.finished_at is not None
    assert after.started_at >= before.finished_at, "the short plan waited for the slot"
    view = await limiter_queue(env.client, task_queue)
    assert (view.granted_total, view.released_total, view.reclaimed_total) == (2, 2, 0)


async def test_without_limits_a_plan_asks_nobody(
    env: WorkflowEnvironment, task_queue: str, start_worker: StartWorker
) -> None:
    """The default (no limit): not one event more in the plan's history, and no limiter."""
    settings = limited(task_queue)
    await start_worker(None, settings)
    (handle,) = await start_all(env.client, settings, [waiting_plan(0)])
    assert (await handle.result()).status == PlanStatus.COMPLETED
    history = (await handle.fetch_history()).to_json()
    for trace in (
        "concurrency-limits",
        "request_plan_slot",
        "SIGNAL_EXTERNAL",
        "plan_slot_granted",
    ):
        assert trace not in history
    with pytest.raises(RPCError):
        await env.client.get_workflow_handle(limiter_workflow_id(task_queue)).describe()


async def test_the_limiter_continues_as_new_with_its_queue_and_holders(
    env: WorkflowEnvironment, task_queue: str, start_worker: StartWorker
) -> None:
    settings = limited(task_queue, max_concurrent_plans=2)
    await start_worker(None, settings)
    limiter = await env.client.start_workflow(
        LIMITER_WORKFLOW,
        LimiterInput(max_history_events=50),
        id=limiter_workflow_id(task_queue),
        task_queue=task_queue,
    )
    handles = await start_all(env.client, settings, [waiting_plan(0.2) for _ in range(10)])

    seen = await watch(env.client, task_queue, handles)

    assert max(seen.held) <= 2 and most_at_once(seen.views) == 2
    results = [await h.result() for h in handles]
    assert [r.status for r in results] == [PlanStatus.COMPLETED] * 10
    desc = await env.client.get_workflow_handle(limiter.id).describe()
    assert desc.run_id != limiter.first_execution_run_id, "the limiter continued as new"
    view = await limiter_queue(env.client, task_queue)
    assert (view.granted_total, view.released_total, view.executing, view.queued) == (
        10,
        10,
        [],
        [],
    )

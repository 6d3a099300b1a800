"""A worker SIGKILLed in the middle of a fast-path chain: a new worker finishes the plan,
and only the fast steps of the dead worker's last workflow task run again (their local
activities' markers were not in the history yet); the steps recorded before run once.
The run's history replays."""

from __future__ import annotations

import uuid
from collections import Counter

import pytest
from temporalio.contrib.pydantic import pydantic_data_converter
from temporalio.worker import Replayer

from tests.fast_crash import chain_plan, crash_mid_chain, ran
from workflows.plan_workflow import PlanWorkflow

pytestmark = pytest.mark.slow


async def test_sigkill_mid_fast_chain_repeats_only_the_unrecorded_fast_steps(
    env, task_queue, tmp_path
):
    log = tmp_path / "ticks.log"
    plan = chain_plan(f"fast-crash-{uuid.uuid4().hex[:8]}", log, steps=12, ordinary_at=3)
    crash = await crash_mid_chain(env.client, task_queue, plan, log, after=5)
    res = await crash.handle.result()
    assert res.status == "completed"

    ticks = [f"t{i}" for i in range(12) if i != 3]
    counts = Counter(ran(log))
    assert set(counts) == set(ticks), "every fast step ran"
    # The ordinary step ended the workflow task that ran t0..t2: their markers are in
    # the history, so the new worker does not run them again.
    assert crash.durable >= 3
    durable = ticks[: crash.durable]
    assert all(counts[k] == 1 for k in durable), counts
    # What runs again is at most what the dead worker ran after the last recorded
    # workflow task, plus the step in flight -- and each of those once more at most.
    repeated = {k for k, n in counts.items() if n > 1}
    assert repeated <= set(ticks[crash.durable :]), (repeated, crash)
    unrecorded_then = [k for k in crash.ran_before if k not in durable]
    assert len(repeated) <= len(unrecorded_then) + 1, (repeated, crash)
    assert max(counts.values()) <= 2, counts

    history = await crash.handle.fetch_history()
    replayer = Replayer(workflows=[PlanWorkflow], data_converter=pydantic_data_converter)
    await replayer.replay_workflow(history)  # raises on nondeterminism

"""The bare baseline: the same ``execute_step`` activity driven by plain Temporal code.

A scenario is a list of *stages*; the stages run one after another and the tasks in a
stage run at once (``asyncio.gather``). A chain is N stages of one task, a fan-out is
``[root], [N children], [join]``, a diamond is ``[a], [b, c], [d]``. The activity options
mirror what ``PlanWorkflow`` uses for a step with the default plan options, so the only
difference measured is the plan engine around the calls.
"""

from __future__ import annotations

import asyncio
from datetime import timedelta

from pydantic import BaseModel
from temporalio import workflow
from temporalio.common import RetryPolicy

with workflow.unsafe.imports_passed_through():
    from contracts.steps import EXECUTE_STEP, StepOutcome, StepTask
    from workflows.plan_input import HEARTBEAT_TIMEOUT
    from workflows.step_policy import NON_RETRYABLE

BASELINE_WORKFLOW = "BenchBaseline"


class BaselineInput(BaseModel):
    stages: list[list[StepTask]]
    step_timeout_s: float = 300.0


class BaselineResult(BaseModel):
    steps: int


@workflow.defn(name=BASELINE_WORKFLOW)
class Baseline:
    @workflow.run
    async def run(self, inp: BaselineInput) -> BaselineResult:
        timeout = timedelta(seconds=inp.step_timeout_s)
        done = 0

        async def call(task: StepTask) -> StepOutcome:
            return await workflow.execute_activity(
                EXECUTE_STEP,
                task,
                result_type=StepOutcome,
                start_to_close_timeout=timeout,
                heartbeat_timeout=min(HEARTBEAT_TIMEOUT, timeout),
                retry_policy=RetryPolicy(
                    maximum_attempts=1, non_retryable_error_types=NON_RETRYABLE
                ),
            )

        for stage in inp.stages:
            if len(stage) == 1:
                await call(stage[0])
            else:
                await asyncio.gather(*(call(t) for t in stage))
            done += len(stage)
        return BaselineResult(steps=done)

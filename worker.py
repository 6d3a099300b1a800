"""The worker process: hosts ``PlanWorkflow`` and the step activities on a task queue."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence

from temporalio.client import Client
from temporalio.worker import Worker

from activities.steps import execute_step
from plansmith.settings import Settings, get_settings
from plansmith.temporal import connect
from workflows.plan_workflow import PlanWorkflow

log = logging.getLogger("plansmith.worker")

ACTIVITIES: Sequence = (execute_step,)
WORKFLOWS: Sequence = (PlanWorkflow,)


def build_worker(client: Client, task_queue: str, max_concurrent_activities: int = 100) -> Worker:
    return Worker(
        client,
        task_queue=task_queue,
        workflows=list(WORKFLOWS),
        activities=list(ACTIVITIES),
        max_concurrent_activities=max_concurrent_activities,
    )


async def run_worker(settings: Settings | None = None, queue: str | None = None) -> None:
    s = settings or get_settings()
    client = await connect(s)
    worker = build_worker(client, queue or s.task_queue)
    log.info("worker polling task queue %s at %s", queue or s.task_queue, s.temporal_address)
    await worker.run()


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO)
    asyncio.run(run_worker())

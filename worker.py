"""The worker process: hosts ``PlanWorkflow`` and the step activities on a task queue."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from datetime import timedelta

from temporalio.api.enums.v1 import IndexedValueType
from temporalio.api.operatorservice.v1 import (
    AddSearchAttributesRequest,
    ListSearchAttributesRequest,
)
from temporalio.client import Client
from temporalio.service import RPCError
from temporalio.worker import Worker

from activities.persist import record_snapshot
from activities.steps import execute_step
from plansmith.settings import Settings, get_settings
from plansmith.temporal import connect
from workflows.plan_workflow import SEARCH_ATTRIBUTES, PlanWorkflow

log = logging.getLogger("plansmith.worker")

ACTIVITIES: Sequence = (execute_step, record_snapshot)
WORKFLOWS: Sequence = (PlanWorkflow,)


def build_worker(client: Client, task_queue: str, max_concurrent_activities: int = 100) -> Worker:
    return Worker(
        client,
        task_queue=task_queue,
        workflows=list(WORKFLOWS),
        activities=list(ACTIVITIES),
        max_concurrent_activities=max_concurrent_activities,
        # Cancellation reaches an activity only in answer to a heartbeat: send them often
        # enough that a cancel or a total timeout stops a running step within ~1 s.
        max_heartbeat_throttle_interval=timedelta(seconds=1),
        default_heartbeat_throttle_interval=timedelta(seconds=1),
    )


async def ensure_search_attributes(client: Client, namespace: str) -> None:
    """Register PlanStatus and WaitingFor on the server if they are missing.

    Plans upsert them on every change; on a server without them every workflow task
    would fail, so the worker makes sure they exist before it polls.
    """
    wanted = {key.name: IndexedValueType.INDEXED_VALUE_TYPE_KEYWORD for key in SEARCH_ATTRIBUTES}
    try:
        have = await client.operator_service.list_search_attributes(
            ListSearchAttributesRequest(namespace=namespace)
        )
        missing = {k: v for k, v in wanted.items() if k not in have.custom_attributes}
        if missing:
            await client.operator_service.add_search_attributes(
                AddSearchAttributesRequest(namespace=namespace, search_attributes=missing)
            )
            log.info("registered search attributes %s", ", ".join(missing))
    except RPCError as e:
        log.warning(
            "could not check or register search attributes %s: %s", ", ".join(wanted), e.message
        )


async def run_worker(settings: Settings | None = None, queue: str | None = None) -> None:
    s = settings or get_settings()
    client = await connect(s)
    await ensure_search_attributes(client, s.temporal_namespace)
    worker = build_worker(client, queue or s.task_queue)
    log.info("worker polling task queue %s at %s", queue or s.task_queue, s.temporal_address)
    await worker.run()


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO)
    asyncio.run(run_worker())

"""Waking the webhook dispatcher from the API (``POST .../redeliver``): signal-with-start
of ``webhook-dispatcher-<queue>`` (the worker's activities do the same,
``activities.webhooks.kick_dispatcher``)."""

from __future__ import annotations

from temporalio.client import Client

from contracts.webhooks import DISPATCHER_WORKFLOW, KICK, DispatcherInput, Kick, dispatcher_id


async def kick_dispatcher(client: Client, task_queue: str, by: str) -> None:
    await client.start_workflow(
        DISPATCHER_WORKFLOW,
        DispatcherInput(),
        id=dispatcher_id(task_queue),
        task_queue=task_queue,
        start_signal=KICK,
        start_signal_args=[Kick(by=by)],
    )

"""The webhook dispatcher's contract (docs/webhooks.md): its workflow and signal names,
its input, and its activities' inputs and results. Pure models, safe in workflow code.

One dispatcher workflow runs per task queue, ``webhook-dispatcher-<queue>``; whoever has
new deliveries (the ``record_snapshot`` activity, the API's redeliver, a starting worker)
wakes it with signal-with-start (:data:`KICK`). It ends when nothing is pending, and is
started again by the next kick.
"""

from __future__ import annotations

from datetime import datetime

from pydantic import BaseModel, Field

DISPATCHER_WORKFLOW = "WebhookDispatcher"
KICK = "kick"
CLAIM_DELIVERIES = "claim_webhook_deliveries"
SEND_DELIVERY = "send_webhook_delivery"


def dispatcher_id(task_queue: str) -> str:
    return f"webhook-dispatcher-{task_queue}"


class DispatcherInput(BaseModel):
    rounds_per_run: int = Field(default=100, ge=1, description="claims before it continues as new")


class Kick(BaseModel):
    by: str = Field(default="", description="who woke it (for the record)")


class ClaimInput(BaseModel):
    by: str = ""
    limit: int | None = Field(
        default=None,
        ge=0,
        description="at most this many (None: the worker's PLANSMITH_WEBHOOK_CONCURRENCY)",
    )


class Claimed(BaseModel):
    ids: list[str] = Field(default_factory=list, description="deliveries to send now")
    next_due: datetime | None = Field(
        default=None, description="when the next other pending delivery falls due (None: none)"
    )
    concurrency: int = Field(
        default=16, description="PLANSMITH_WEBHOOK_CONCURRENCY: attempts in flight at most"
    )
    send_timeout_s: float = Field(
        default=10.0, description="PLANSMITH_WEBHOOK_TIMEOUT_S: how long one attempt may take"
    )


class SendInput(BaseModel):
    delivery_id: str


class SendResult(BaseModel):
    delivery_id: str
    status: str = Field(description="pending (tried again later), delivered, failed or gone")
    status_code: int | None = None

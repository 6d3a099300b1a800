"""Names and messages shared by the plan limiter's workflow, its activities, the plans
and the API (the rules are in :mod:`plans.limits`)."""

from __future__ import annotations

from pydantic import BaseModel, Field

from plans.limits import LimiterState, SlotRequest

LIMITER_WORKFLOW = "PlanLimiter"
ACQUIRE_SIGNAL = "acquire"  # SlotRequest, plan -> limiter (signal-with-start)
RELEASE_SIGNAL = "release"  # SlotRelease, plan -> limiter
GRANTED_SIGNAL = "plan_slot_granted"  # SlotGrant, limiter -> plan
QUEUE_QUERY = "queue"  # -> LimiterView
REQUEST_PLAN_SLOT = "request_plan_slot"  # activity: signal-with-start the limiter
CHECK_PLAN_SLOTS = "check_plan_slots"  # activity: which holders no longer run


def limiter_workflow_id(task_queue: str) -> str:
    """One limiter per namespace and task queue: the plans of a queue share its limits."""
    return f"plansmith-limiter-{task_queue}"


class LimiterInput(BaseModel):
    state: LimiterState | None = Field(
        default=None, description="carried by continue-as-new (None: a new limiter)"
    )
    max_history_events: int | None = Field(
        default=None,
        ge=50,
        description="continue as new past this many history events (default: when Temporal "
        "suggests it)",
    )


class SlotAsk(BaseModel):
    """The ``request_plan_slot`` activity's input: the request and the limiter's queue."""

    request: SlotRequest
    task_queue: str


class HolderCheck(BaseModel):
    """The ``check_plan_slots`` activity's input: the holders to look at."""

    holders: list[SlotRequest]

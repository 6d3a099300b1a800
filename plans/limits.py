"""Concurrency limits on executing plans: the pure rules of the plan limiter.

``PLANSMITH_MAX_CONCURRENT_PLANS`` caps the plans executing at once on a task queue,
``PLANSMITH_MAX_CONCURRENT_PLANS_PER_AGENT`` the plans of one ``agent_id``. A plan over
a limit waits ``queued`` until a slot frees. The slots are kept by one limiter workflow
per task queue (:mod:`workflows.limiter_workflow`); this module decides, without
Temporal, who gets a slot and in which order:

* first in, first out: a slot goes to the oldest request that fits;
* a request blocked only by its agent's limit is passed over (the next request, of
  another agent, may take the free slot), so one busy agent does not hold everyone up;
  the requests of one agent still start in their order;
* a plan without ``agent_id`` counts against the global limit only.

A plan asks for a slot once it is approved, right before its first step, and holds it
until it ends (pauses and step gates included: it is executing). A plan waiting for its
plan approval holds none.
"""

from __future__ import annotations

from datetime import datetime
from typing import Literal

from pydantic import BaseModel, Field

# How often, while plans wait in the queue, the limiter asks Temporal whether each
# holder's workflow still runs: a plan terminated in Temporal cannot release its slot.
DEFAULT_CHECK_EVERY_S = 30.0


class ConcurrencyLimits(BaseModel):
    """The limits a plan was started under (from the starter's settings; 0 = none)."""

    max_plans: int = Field(default=0, ge=0, description="plans executing at once (0: no limit)")
    max_per_agent: int = Field(
        default=0, ge=0, description="plans of one agent_id executing at once (0: no limit)"
    )
    check_every_s: float = Field(
        default=DEFAULT_CHECK_EVERY_S,
        gt=0,
        description="while plans are queued, how often the limiter checks that the holders "
        "of slots still run (a terminated plan's slot is taken back)",
    )

    @property
    def active(self) -> bool:
        return self.max_plans > 0 or self.max_per_agent > 0


def limits_of(
    max_plans: int, max_per_agent: int, check_every_s: float | None = None
) -> ConcurrencyLimits | None:
    """The limits the settings describe, or None when there are none (the fast path)."""
    limits = ConcurrencyLimits(
        max_plans=max_plans,
        max_per_agent=max_per_agent,
        check_every_s=check_every_s or DEFAULT_CHECK_EVERY_S,
    )
    return limits if limits.active else None


class SlotRequest(BaseModel):
    """A plan asking for a slot (signal ``acquire``); ``key`` names the plan's run chain."""

    key: str
    workflow_id: str
    first_run_id: str
    plan_id: str
    agent_id: str | None = None
    limits: ConcurrencyLimits
    asked_at: datetime


class SlotRelease(BaseModel):
    """A plan giving its slot back, or leaving the queue (signal ``release``)."""

    key: str
    why: str = "ended"


class SlotGrant(BaseModel):
    """The limiter's answer to a plan (signal ``plan_slot_granted``)."""

    key: str
    granted_at: datetime


class SlotHolder(BaseModel):
    request: SlotRequest
    granted_at: datetime


class LimiterState(BaseModel):
    """Everything the limiter knows; continue-as-new carries it whole."""

    limits: ConcurrencyLimits = Field(default_factory=ConcurrencyLimits)
    queue: list[SlotRequest] = Field(default_factory=list)
    holders: dict[str, SlotHolder] = Field(default_factory=dict)
    granted_total: int = 0
    released_total: int = 0
    reclaimed_total: int = 0  # slots taken back from plans that no longer run
    last_check: datetime | None = None


def key_of(workflow_id: str, first_run_id: str) -> str:
    """A plan's key: its workflow id and the first run of its chain (continue-as-new
    keeps it; a resume from failure is a new chain and asks again)."""
    return f"{workflow_id}/{first_run_id}"


def enqueue(state: LimiterState, req: SlotRequest) -> Literal["queued", "waiting", "held"]:
    """Take a request: ``queued`` (new), ``waiting`` (already in the queue: a retried
    request) or ``held`` (already granted: the grant should be sent again). The request's
    limits become the limiter's (the newest settings win)."""
    state.limits = req.limits
    if req.key in state.holders:
        return "held"
    if any(q.key == req.key for q in state.queue):
        return "waiting"
    state.queue.append(req)
    return "queued"


def release(state: LimiterState, key: str, reclaimed: bool = False) -> bool:
    """Free the slot of ``key`` or take it out of the queue; False if it had neither."""
    if state.holders.pop(key, None) is not None:
        if reclaimed:
            state.reclaimed_total += 1
        else:
            state.released_total += 1
        return True
    before = len(state.queue)
    state.queue = [q for q in state.queue if q.key != key]
    return len(state.queue) != before


def _per_agent(state: LimiterState) -> dict[str, int]:
    counts: dict[str, int] = {}
    for h in state.holders.values():
        agent = h.request.agent_id
        if agent:
            counts[agent] = counts.get(agent, 0) + 1
    return counts


def grant_next(state: LimiterState, now: datetime) -> list[SlotRequest]:
    """Give free slots to the queue, oldest first; returns the requests granted now."""
    limits = state.limits
    per_agent = _per_agent(state)
    granted: list[SlotRequest] = []
    kept: list[SlotRequest] = []
    for req in state.queue:
        full = bool(limits.max_plans) and len(state.holders) >= limits.max_plans
        agent = req.agent_id
        agent_full = (
            bool(limits.max_per_agent and agent)
            and per_agent.get(agent or "", 0) >= limits.max_per_agent
        )
        if full or agent_full:
            kept.append(req)
            continue
        state.holders[req.key] = SlotHolder(request=req, granted_at=now)
        state.granted_total += 1
        if agent:
            per_agent[agent] = per_agent.get(agent, 0) + 1
        granted.append(req)
    state.queue = kept
    return granted


def check_due(state: LimiterState) -> bool:
    """Whether holders should be checked at all: someone waits and someone holds."""
    return bool(state.queue and state.holders)


# --- what the limiter's ``queue`` query answers ------------------------------------------


class HolderView(BaseModel):
    plan_id: str
    agent_id: str | None
    since: datetime


class QueuedView(BaseModel):
    position: int = Field(description="1 = the next to start (when its agent has room)")
    plan_id: str
    agent_id: str | None
    since: datetime


class LimiterView(BaseModel):
    max_plans: int
    max_per_agent: int
    executing: list[HolderView]
    queued: list[QueuedView]
    granted_total: int
    released_total: int
    reclaimed_total: int


def limiter_view(state: LimiterState) -> LimiterView:
    return LimiterView(
        max_plans=state.limits.max_plans,
        max_per_agent=state.limits.max_per_agent,
        executing=[
            HolderView(plan_id=h.request.plan_id, agent_id=h.request.agent_id, since=h.granted_at)
            for h in sorted(state.holders.values(), key=lambda h: h.granted_at)
        ],
        queued=[
            QueuedView(position=i, plan_id=q.plan_id, agent_id=q.agent_id, since=q.asked_at)
            for i, q in enumerate(state.queue, start=1)
        ],
        granted_total=state.granted_total,
        released_total=state.released_total,
        reclaimed_total=state.reclaimed_total,
    )

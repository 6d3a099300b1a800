"""The limiter's rules (plans.limits), without Temporal: who gets a slot, in which order."""

from __future__ import annotations

from datetime import timedelta

from plans.limits import (
    ConcurrencyLimits,
    LimiterState,
    SlotRequest,
    enqueue,
    grant_next,
    limiter_view,
    limits_of,
    release,
)
from tests.helpers import T0


def ask(state: LimiterState, n: int, agent: str | None = None, **limits: int) -> SlotRequest:
    req = SlotRequest(
        key=f"plan-p{n}/run",
        workflow_id=f"plan-p{n}",
        first_run_id="run",
        plan_id=f"p{n}",
        agent_id=agent,
        limits=ConcurrencyLimits(**limits),
        asked_at=T0 + timedelta(seconds=n),
    )
    enqueue(state, req)
    return req


def ids(reqs: list[SlotRequest]) -> list[str]:
    return [r.plan_id for r in reqs]


def test_no_limit_set_means_no_limiter_at_all() -> None:
    assert limits_of(0, 0) is None
    limits = limits_of(2, 0)
    assert limits is not None and limits.max_plans == 2 and limits.check_every_s == 30


def test_slots_go_first_in_first_out_as_they_free() -> None:
    state = LimiterState()
    for n in range(5):
        ask(state, n, max_plans=2)
    assert ids(grant_next(state, T0)) == ["p0", "p1"]
    assert ids(grant_next(state, T0)) == []
    assert release(state, "plan-p1/run")
    assert ids(grant_next(state, T0)) == ["p2"]
    view = limiter_view(state)
    assert [h.plan_id for h in view.executing] == ["p0", "p2"]
    assert [(q.position, q.plan_id) for q in view.queued] == [(1, "p3"), (2, "p4")]


def test_a_request_sent_again_is_not_queued_twice_and_a_holder_is_told_again() -> None:
    state = LimiterState()
    first = ask(state, 0, max_plans=1)
    ask(state, 1, max_plans=1)
    grant_next(state, T0)
    assert enqueue(state, first) == "held"
    assert enqueue(state, state.queue[0]) == "waiting"
    assert ids(state.queue) == ["p1"]


def test_leaving_the_queue_and_releasing_unknown_keys() -> None:
    state = LimiterState()
    ask(state, 0, max_plans=1)
    ask(state, 1, max_plans=1)
    grant_next(state, T0)
    assert release(state, "plan-p1/run")  # a cancelled plan leaves the queue
    assert not release(state, "plan-p1/run")
    assert state.queue == [] and list(state.holders) == ["plan-p0/run"]


def test_per_agent_limit_passes_over_a_busy_agent_and_keeps_each_agents_order() -> None:
    state = LimiterState()
    ask(state, 0, "alice", max_per_agent=1)
    ask(state, 1, "alice", max_per_agent=1)
    ask(state, 2, "bob", max_per_agent=1)
    ask(state, 3, None, max_per_agent=1)  # no agent: only the global limit counts
    ask(state, 4, None, max_per_agent=1)
    assert ids(grant_next(state, T0)) == ["p0", "p2", "p3", "p4"]
    release(state, "plan-p0/run")
    assert ids(grant_next(state, T0)) == ["p1"]


def test_both_limits_together() -> None:
    state = LimiterState()
    ask(state, 0, "alice", max_plans=2, max_per_agent=1)
    ask(state, 1, "alice", max_plans=2, max_per_agent=1)
    ask(state, 2, "bob", max_plans=2, max_per_agent=1)
    ask(state, 3, "carol", max_plans=2, max_per_agent=1)
    assert ids(grant_next(state, T0)) == ["p0", "p2"]
    release(state, "plan-p0/run")
    # alice's second plan is older than carol's: it goes first
    assert ids(grant_next(state, T0)) == ["p1"]


def test_the_newest_request_sets_the_limits_and_a_reclaimed_slot_is_counted() -> None:
    state = LimiterState()
    ask(state, 0, max_plans=1)
    ask(state, 1, max_plans=1)
    grant_next(state, T0)
    ask(state, 2, max_plans=3)  # an API restarted with a higher limit
    assert ids(grant_next(state, T0)) == ["p1", "p2"]
    release(state, "plan-p0/run", reclaimed=True)
    view = limiter_view(state)
    assert (view.max_plans, view.granted_total, view.reclaimed_total) == (3, 3, 1)

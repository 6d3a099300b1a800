"""The audit trail under a flood: refused controls are rate-limited per actor (counted,
summarised), accepted ones are always recorded, and the workflow's list only drops
entries the store already has (``audit_stored``)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from contracts.snapshots import SnapshotCursor
from plans.models import Plan, ToolSpec
from plans.run_state import (
    MAX_AUDIT_ENTRIES,
    MAX_AUDIT_UNSTORED,
    REFUSED_PER_ACTOR_PER_MINUTE,
    REFUSED_PER_MINUTE,
    PlanRun,
    Refused,
    audit,
    new_run,
    settle_refused,
    trim_audit,
)
from plans.steering import apply_control, parse_control
from plans.views import status_view

CATALOG = {"noop": ToolSpec(name="noop", description="does nothing", params_schema={})}
T0 = datetime(2026, 1, 1, tzinfo=UTC)


def fresh(limits: bool = True) -> PlanRun:
    plan = Plan.model_validate(
        {
            "id": "p-audit",
            "options": {"require_approval": True},
            "steps": [{"id": "a", "tool": "noop"}],
        }
    )
    run = new_run(plan, T0)
    run.approval_required = True
    run.audit_limits = limits
    return run


def control(run: PlanRun, name: str, now: datetime, **payload: object) -> str:
    return apply_control(run, name, parse_control(name, payload), now, CATALOG)


def refuse(run: PlanRun, now: datetime, by: str) -> None:
    # a second approval of an approved plan is refused
    with pytest.raises(Refused):
        control(run, "approve", now, by=by)


def test_a_flood_of_refused_controls_keeps_the_approval_and_says_what_was_dropped() -> None:
    run = fresh()
    control(run, "approve", T0, by="alice")
    for i in range(5000):  # 5,000 refused controls over 50 s, from one actor
        refuse(run, T0 + timedelta(milliseconds=10 * i), "mallory")
    entries = run.audit
    assert entries[0].action == "approve" and entries[0].accepted and entries[0].by == "alice"
    recorded = [e for e in entries if e.by == "mallory"]
    assert len(recorded) == REFUSED_PER_ACTOR_PER_MINUTE
    assert run.audit_unrecorded == 5000 - REFUSED_PER_ACTOR_PER_MINUTE
    # the refused ones beyond the limit left no log line either (the log is bounded too)
    assert sum("mallory" in e.message for e in run.logs) == REFUSED_PER_ACTOR_PER_MINUTE
    st = status_view(run)
    assert st.audit_unrecorded == 4980
    assert st.audit_note is not None and "4980 refused control(s)" in st.audit_note

    # the minute ends: one summary entry says how many, from whom, when
    control(run, "pause", T0 + timedelta(seconds=61), by="bob")
    summaries = [e for e in run.audit if e.action == "refused_controls_not_recorded"]
    assert len(summaries) == 1
    assert summaries[0].by == "mallory"
    assert summaries[0].detail.startswith("4980 refused control(s) from mallory between ")
    assert run.audit[-1].action == "pause" and run.audit[-1].accepted
    assert run.refused == {}  # nothing kept once the minute is summarised
    # the next minute records refused controls of the same actor again
    refuse(run, T0 + timedelta(seconds=62), "mallory")
    assert run.audit[-1].by == "mallory" and run.audit[-1].action == "approve"


def test_many_actors_are_limited_in_all_and_the_end_of_the_run_settles_the_counts() -> None:
    run = fresh()
    control(run, "approve", T0, by="alice")
    for i in range(1000):
        refuse(run, T0 + timedelta(milliseconds=i), f"bot-{i}")
    refused = [e for e in run.audit if not e.accepted]
    assert len(refused) == REFUSED_PER_MINUTE
    assert run.audit_unrecorded == 1000 - REFUSED_PER_MINUTE
    assert len(run.refused) <= REFUSED_PER_MINUTE + 1  # bounded, whatever the names
    settle_refused(run, T0 + timedelta(seconds=2), final=True)
    last = run.audit[-1]
    assert last.action == "refused_controls_not_recorded" and last.by == "*"
    assert last.detail.startswith("800 refused control(s) from all actors")


def test_accepted_controls_are_never_rate_limited() -> None:
    run = fresh()
    control(run, "approve", T0, by="alice")
    for i in range(200):
        refuse(run, T0 + timedelta(milliseconds=i), "alice")
        now = T0 + timedelta(milliseconds=i, microseconds=500)
        control(run, "pause" if i % 2 == 0 else "resume", now, by="alice")
    accepted = [e for e in run.audit if e.accepted and e.by == "alice"]
    assert len(accepted) == 201  # the approval and every pause and resume


def test_the_list_drops_only_what_the_store_has() -> None:
    run = fresh()
    control(run, "approve", T0, by="alice")
    cursor = SnapshotCursor()
    # the store is down: nothing was handed to it, so nothing is trimmed
    for i in range(MAX_AUDIT_ENTRIES + 500):
        audit(run, T0 + timedelta(seconds=i), "system", "tick", True)
    assert len(run.audit) == MAX_AUDIT_ENTRIES + 501
    assert run.audit[0].action == "approve"
    # a snapshot takes them all (the activity retries until the store has them)
    snap = cursor.take(run, "r1", at=T0 + timedelta(hours=1))
    assert snap is not None and snap.audit_lost == 0
    assert snap.audit_start == 0 and len(snap.audit) == MAX_AUDIT_ENTRIES + 501
    run.audit_stored = cursor.audit
    trim_audit(run)
    assert len(run.audit) == MAX_AUDIT_ENTRIES
    audit(run, T0 + timedelta(hours=2), "system", "tick", True)
    snap = cursor.take(run, "r1", at=T0 + timedelta(hours=2))
    assert snap is not None and snap.audit_lost == 0
    assert snap.audit_start == MAX_AUDIT_ENTRIES + 501 and len(snap.audit) == 1


def test_with_the_store_gone_for_long_refused_controls_stop_being_recorded_first() -> None:
    run = fresh()
    control(run, "approve", T0, by="alice")
    n = MAX_AUDIT_UNSTORED + 10
    for i in range(n):
        audit(run, T0 + timedelta(seconds=i), "system", "tick", True)
    refuse(run, T0 + timedelta(seconds=n), "carol")
    assert run.audit[-1].action == "tick"  # not recorded: counted
    assert run.audit_unrecorded == 1
    audit(run, T0 + timedelta(seconds=n + 1), "system", "tick", True)
    assert run.audit[-1].action == "tick" and len(run.audit) == n + 2  # accepted: kept


def test_an_older_run_keeps_the_old_rule() -> None:
    run = fresh(limits=False)
    control(run, "approve", T0, by="alice")
    for i in range(MAX_AUDIT_ENTRIES + 10):
        refuse(run, T0 + timedelta(milliseconds=i), "mallory")
    assert len(run.audit) == MAX_AUDIT_ENTRIES
    assert run.audit[0].action == "approve" and not run.audit[0].accepted
    assert run.audit_unrecorded == 0

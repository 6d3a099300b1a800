"""The run index (plans/run_index.py) against a recomputation from scratch, on random DAGs.

A random plan (dependencies, conditions, gates, clarification questions, decisions with
branches, on_error of every kind) is driven by random events: steps complete, fail or
are cancelled, and people send random controls (approve or reject a gate, answer,
retry, skip, correct, pause, resume, cancel), refused ones included. After every event:

- the index kept up to date step by step equals an index built from the run alone;
- ``advance`` (which visits only ready steps) starts the same steps and leaves the same
  state as the full scan it replaces (every step, in plan order, until nothing changes);
- waits, derive_status, progress and is_finished agree with a full scan.
"""

from __future__ import annotations

import contextlib
from datetime import UTC, datetime, timedelta
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from plans import scheduler
from plans.models import Plan, PlanStatus, StepStatus, ToolSpec
from plans.run_index import of, recompute
from plans.run_state import PlanRun, Refused, new_run
from plans.scheduler import advance, is_finished, record_cancelled, record_failure
from plans.steering import apply_control, parse_control
from plans.views import (
    ChangesQuery,
    StepsQuery,
    changes_view,
    progress,
    status_view,
    steps_page,
    waits,
)

CATALOG = {"noop": ToolSpec(name="noop", description="nothing", params_schema={"type": "object"})}
WHENS = [None, None, None, "true", "false", "inputs.go"]
MAX_EVENTS = 120


@st.composite
def plans(draw: st.DrawFn) -> Plan:
    n = draw(st.integers(1, 10))
    ids = [f"s{i}" for i in range(n)]
    steps: list[dict[str, Any]] = []
    for i, sid in enumerate(ids):
        deps = sorted(draw(st.sets(st.integers(0, i - 1), max_size=3))) if i else []
        step: dict[str, Any] = {"id": sid, "tool": "noop", "depends_on": [ids[j] for j in deps]}
        when = draw(st.sampled_from(WHENS))
        if when is not None:
            step["when"] = when
        extra = draw(st.sampled_from(["", "", "", "", "gate", "ask", "decision"]))
        if extra == "gate":
            step["requires_approval"] = True
        elif extra == "ask":
            step["requires_clarification"] = True
            step["clarification_question"] = "which?"
        elif extra == "decision" and i < n - 1:
            later = ids[i + 1 :]
            a = draw(st.lists(st.sampled_from(later), max_size=2, unique=True))
            b = draw(st.lists(st.sampled_from(later), max_size=2, unique=True))
            step.update(
                kind="decision",
                tool=None,
                params={"question": "which way?", "branches": {"a": a, "b": b}},
            )
        steps.append(step)
    order = draw(st.permutations(range(n)))
    options = {
        "on_error": draw(st.sampled_from(["stop", "continue", "ask"])),
        "max_parallel_steps": draw(st.integers(1, 4)),
        "allow_parallel": draw(st.booleans()),
    }
    return Plan.model_validate(
        {
            "id": "idx",
            "inputs": {"go": draw(st.booleans())},
            "options": options,
            "steps": [steps[k] for k in order],
        }
    )


def full_advance(run: PlanRun, now: datetime) -> list[str]:
    """The scheduler's decisions by a full scan, as before the index: every step, in plan
    order, pass after pass until nothing changes; then every step for a start."""
    if run.final_status is not None or run.approval is None:
        return []
    if run.started_at is None:
        run.started_at = now
        scheduler.log(run, now, "plan execution started")
    changed = True
    while changed:
        changed = False
        for step in run.plan.steps:
            changed = scheduler._visit(run, step, now) or changed
    if run.stopping or run.pause is not None:
        return []
    running = [sid for sid, s in run.steps.items() if s.status == StepStatus.RUNNING]
    capacity = run.plan.options.parallel_limit - len(running)
    started: list[str] = []
    for step in run.plan.steps:
        if capacity <= 0:
            break
        s = run.steps[step.id]
        if s.status != StepStatus.PENDING or scheduler.dependency_state(run, step)[0] != "ok":
            continue
        if step.requires_clarification and not s.answered:
            continue
        if scheduler._gated(step, s):
            continue
        s.status = StepStatus.RUNNING
        s.started_at, s.completed_at, s.error, s.calls = now, None, None, []
        s.runs += 1
        started.append(step.id)
        capacity -= 1
        scheduler.log(run, now, f"step {step.id} started", "info", step.id)
    return started


def check_index(run: PlanRun) -> None:
    idx, fresh = of(run), recompute(run)
    assert idx.by_status == fresh.by_status
    assert idx.awaiting == fresh.awaiting
    assert idx.ready == fresh.ready
    assert idx.counts() == {
        k.value: n for k in StepStatus if (n := sum(1 for s in run.steps.values() if s.status == k))
    }
    # what reads the index agrees with a full scan
    done = sum(1 for s in run.steps.values() if s.status.terminal)
    assert progress(run) == (round(done / len(run.steps), 4) if run.steps else 1.0)
    assert is_finished(run) == (
        run.final_status is not None
        or (
            run.approval is not None
            and all(s.status.terminal and not s.awaiting_decision for s in run.steps.values())
        )
    )
    waiting = {
        sid
        for sid, s in run.steps.items()
        if s.awaiting_decision
        or s.status in (StepStatus.WAITING_APPROVAL, StepStatus.WAITING_CLARIFICATION)
    }
    step_waits = {w.step_id for w in waits(run) if w.kind != "resume" and w.step_id}
    if run.final_status is None and run.pause is None:
        assert step_waits == waiting
    view = status_view(run)
    assert view.counts == idx.counts()
    assert view.total_steps == len(run.steps)
    assert view.running == [
        s.id for s in run.plan.steps if run.steps[s.id].status == StepStatus.RUNNING
    ]
    assert view.seq == run.change_seq
    everything = steps_page(run, StepsQuery(limit=1000))
    assert [s.id for s in everything.steps] == [s.id for s in run.plan.steps]
    for status in StepStatus:
        page = steps_page(run, StepsQuery(status=status, limit=1000))
        assert [s.id for s in page.steps] == [
            s.id for s in run.plan.steps if run.steps[s.id].status == status
        ]


def advance_both(run: PlanRun, now: datetime) -> list[str]:
    twin = run.model_copy(deep=True)
    of(twin)  # a copy is indexed on first use; before its first change here
    started = advance(run, now)
    assert full_advance(twin, now) == started
    assert twin.model_dump() == run.model_dump()
    return started


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(plan=plans(), data=st.data())
def test_index_and_scheduler_equal_a_full_recomputation(plan: Plan, data: st.DataObject) -> None:
    clock = [datetime(2024, 1, 1, tzinfo=UTC)]

    def now() -> datetime:
        clock[0] += timedelta(seconds=1)
        return clock[0]

    def control(name: str, **payload: Any) -> None:
        with contextlib.suppress(Refused):
            apply_control(run, name, parse_control(name, {"by": "prop", **payload}), now(), CATALOG)

    run = new_run(plan, now())
    check_index(run)
    control("approve")
    seen_seq = 0
    for _ in range(MAX_EVENTS):
        advance_both(run, now())
        check_index(run)
        # every status change is numbered once, in order, and the journal holds them
        changes = changes_view(run, ChangesQuery(since=seen_seq))
        assert changes.complete
        assert [c.seq for c in changes.changes] == list(range(seen_seq + 1, run.change_seq + 1))
        for c in changes.changes:
            assert c.step_id in run.steps
        seen_seq = run.change_seq
        if is_finished(run):
            if run.final_status is None:
                scheduler.finish(run, now())
                check_index(run)
            assert run.final_status in set(PlanStatus)
            break
        ids = [s.id for s in run.plan.steps]
        running = [sid for sid in ids if run.steps[sid].status == StepStatus.RUNNING]
        event = data.draw(
            st.sampled_from(
                (["succeed", "fail", "cancelled"] if running else [])
                + ["control"] * (3 if not running else 1)
            ),
            label="event",
        )
        if event == "succeed":
            sid = data.draw(st.sampled_from(running), label="step")
            out = (
                {"choice": data.draw(st.sampled_from(["a", "b", "c"]), label="choice")}
                if run.plan.step(sid).kind.value == "decision"
                else {"ok": True}
            )
            scheduler.record_success(run, sid, out, 1, now())
        elif event == "fail":
            record_failure(run, data.draw(st.sampled_from(running), label="step"), "boom", 1, now())
        elif event == "cancelled":
            sid = data.draw(st.sampled_from(running), label="step")
            record_cancelled(run, sid, now(), "activity cancelled")
        else:
            name = data.draw(
                st.sampled_from(
                    [
                        "approve_step",
                        "reject_step",
                        "answer_clarification",
                        "retry_step",
                        "skip_step",
                        "apply_correction",
                        "pause",
                        "resume",
                        "resume",
                        "cancel",
                    ]
                ),
                label="control",
            )
            sid = data.draw(st.sampled_from(ids), label="target")
            if name == "approve_step":
                control(name, step_id=sid)
            elif name == "reject_step":
                control(name, step_id=sid, reason="no")
            elif name == "answer_clarification":
                control(name, step_id=sid, answer="this")
            elif name == "retry_step":
                control(name, step_id=sid)
            elif name == "skip_step":
                control(name, step_id=sid, reason="not needed")
            elif name == "apply_correction":
                control(
                    name,
                    step_id=sid,
                    correction={"updated_step": {"description": "corrected"}},
                    approve=True,
                )
            elif name == "pause" or name == "resume":
                control(name)
            else:
                if data.draw(st.integers(0, 5), label="really cancel") == 0:
                    control("cancel", reason="enough")
        check_index(run)


def chain(n: int) -> Plan:
    return Plan.model_validate(
        {
            "id": "chain",
            "options": {"require_approval": False},
            "steps": [
                {"id": f"c{i}", "tool": "noop", "depends_on": [f"c{i - 1}"] if i else []}
                for i in range(n)
            ],
        }
    )


def run_chain(n: int, done: int) -> PlanRun:
    t = datetime(2024, 1, 1, tzinfo=UTC)
    run = new_run(chain(n), t)
    apply_control(run, "approve", parse_control("approve", {"by": "me"}), t, CATALOG)
    for i in range(done):
        (sid,) = advance(run, t)
        scheduler.record_success(run, sid, {"i": i}, 1, t)
    advance(run, t)
    return run


def test_a_small_plan_lists_every_step_and_a_big_one_its_active_steps_with_counts() -> None:
    small = status_view(run_chain(200, 3))
    assert small.steps_complete and [s.id for s in small.steps] == [f"c{i}" for i in range(200)]
    assert small.counts == {"completed": 3, "running": 1, "pending": 196}

    run = run_chain(250, 5)
    record_failure(run, "c5", "boom", 2, datetime(2024, 1, 2, tzinfo=UTC))
    big = status_view(run)
    assert not big.steps_complete and big.total_steps == 250
    assert [s.id for s in big.steps] == ["c5"] and big.failed == ["c5"]
    assert big.counts == {"completed": 5, "failed": 1, "pending": 244}
    assert [(c.step_id, c.status) for c in big.recent[-2:]] == [
        ("c5", StepStatus.RUNNING),
        ("c5", StepStatus.FAILED),
    ]
    assert big.recent[-1].error == "boom" and big.recent[-1].attempts == 2
    page = steps_page(run, StepsQuery(status=StepStatus.PENDING, offset=10, limit=5))
    assert page.total == 244 and [s.id for s in page.steps] == [f"c{i}" for i in range(16, 21)]


def test_change_numbers_go_on_over_a_continued_run_whose_journal_starts_empty() -> None:
    run = run_chain(10, 4)
    seq = run.change_seq
    assert seq == 9  # four steps ran and completed, the fifth runs
    assert [c.seq for c in changes_view(run, ChangesQuery(since=7)).changes] == [8, 9]
    continued = PlanRun.model_validate(run.model_dump(mode="json"))
    assert continued.change_seq == seq
    assert not changes_view(continued, ChangesQuery(since=3)).complete
    scheduler.record_success(continued, "c4", {}, 1, datetime(2024, 1, 2, tzinfo=UTC))
    later = changes_view(continued, ChangesQuery(since=seq))
    assert later.complete and [(c.seq, c.step_id) for c in later.changes] == [(seq + 1, "c4")]


def test_a_run_keeps_one_index_alive_and_none_once_it_is_gone() -> None:
    """An index rebuilt for the same run (new_run indexes the run, then again with its
    steps) frees the one it replaces: a worker holds one index per waiting plan, not two."""
    import gc

    from plans.run_index import RunIndex

    def alive() -> int:
        gc.collect()
        return sum(isinstance(o, RunIndex) for o in gc.get_objects())

    before = alive()
    run = run_chain(20, 2)
    assert alive() == before + 1
    del run
    assert alive() == before

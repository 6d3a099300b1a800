"""The plan run state machine (plans/run_state.py, scheduler.py, steering.py, deadlines.py,
approval_gate.py), driven by hand with a fake clock."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from plans.approval_gate import needs_approval
from plans.deadlines import expire_waits
from plans.models import Plan, PlanStatus, StepStatus, ToolSpec
from plans.run_state import PlanRun, Refused, SkipReason, StepRun, derive_status, new_run
from plans.scheduler import (
    advance,
    finish,
    is_finished,
    record_cancelled,
    record_failure,
    record_success,
    record_unassessed,
    running_steps,
    stop,
)
from plans.steering import apply_control, check_control, parse_control
from plans.validation import validate_plan
from plans.views import execution_state, progress, status_view, waits

CATALOG: dict[str, ToolSpec] = {
    "noop": ToolSpec(
        name="noop",
        description="does nothing",
        params_schema={
            "type": "object",
            "properties": {"n": {"type": "integer"}},
            "additionalProperties": False,
        },
    ),
    "danger": ToolSpec(
        name="danger", description="risky", params_schema={"type": "object"}, risk="high"
    ),
}


class Clock:
    def __init__(self) -> None:
        self.now = datetime(2024, 1, 1, tzinfo=UTC)

    def tick(self, seconds: float = 1) -> datetime:
        self.now += timedelta(seconds=seconds)
        return self.now


def S(sid: str, *deps: str, **kw: Any) -> dict[str, Any]:
    return {"id": sid, "tool": "noop", "depends_on": list(deps), **kw}


def make_plan(
    steps: list[dict[str, Any]], inputs: dict[str, Any] | None = None, **options: Any
) -> Plan:
    return Plan.model_validate(
        {"id": "p1", "inputs": inputs or {}, "options": options, "steps": steps}
    )


class Driver:
    """A tiny hand-cranked workflow: approve, advance, report outcomes, send controls."""

    def __init__(
        self,
        steps: list[dict[str, Any]],
        approve: bool = True,
        inputs: dict[str, Any] | None = None,
        **options: Any,
    ):
        self.clock = Clock()
        self.run: PlanRun = new_run(make_plan(steps, inputs, **options), self.clock.now)
        self.run.approval_required = True
        if approve:
            self.control("approve", by="alice")

    def control(self, name: str, **payload: Any) -> str:
        payload.setdefault("by", "op")
        msg = parse_control(name, payload)
        return apply_control(self.run, name, msg, self.clock.tick(), CATALOG)

    def refused(self, name: str, **payload: Any) -> str:
        payload.setdefault("by", "op")
        msg = parse_control(name, payload)
        with pytest.raises(Refused) as e:
            apply_control(self.run, name, msg, self.clock.tick(), CATALOG)
        return str(e.value)

    def advance(self) -> list[str]:
        return advance(self.run, self.clock.tick())

    def ok(self, sid: str, output: Any = None) -> None:
        assert self.run.steps[sid].status == StepStatus.RUNNING, (sid, self.run.steps[sid].status)
        record_success(
            self.run, sid, output if output is not None else {"step": sid}, 1, self.clock.tick()
        )

    def fail(self, sid: str, error: str = "boom") -> None:
        assert self.run.steps[sid].status == StepStatus.RUNNING, (sid, self.run.steps[sid].status)
        record_failure(self.run, sid, error, 1, self.clock.tick())

    def status(self, sid: str) -> StepStatus:
        return self.run.steps[sid].status

    def statuses(self) -> dict[str, str]:
        return {sid: s.status.value for sid, s in self.run.steps.items()}

    def drain(self, outcomes: dict[str, bool] | None = None) -> PlanStatus:
        """Run to the end: every started step succeeds unless ``outcomes`` says False."""
        outcomes = outcomes or {}
        for _ in range(100):
            self.advance()
            running = running_steps(self.run)
            if not running:
                break
            for sid in running:
                if outcomes.get(sid, True):
                    self.ok(sid)
                else:
                    self.fail(sid)
        assert is_finished(self.run), self.statuses()
        return finish(self.run, self.clock.tick())


# --- approval and the start ----------------------------------------------------------


def test_nothing_runs_before_approval() -> None:
    d = Driver([S("a")], approve=False)
    assert derive_status(d.run) == PlanStatus.PENDING_APPROVAL
    assert d.advance() == []
    assert d.status("a") == StepStatus.PENDING
    assert not is_finished(d.run)
    assert [w.kind for w in waits(d.run)] == ["plan_approval"]
    d.control("approve", by="alice", comment="lgtm")
    assert derive_status(d.run) == PlanStatus.APPROVED
    assert d.advance() == ["a"]
    assert derive_status(d.run) == PlanStatus.EXECUTING
    assert d.run.approval is not None and d.run.approval.by == "alice"


def test_needs_approval_policy() -> None:
    clock = Clock()
    auto_low = new_run(make_plan([S("a")], require_approval="auto"), clock.now)
    assert needs_approval(auto_low, CATALOG)[0] is False
    auto_high = new_run(make_plan([S("a", tool="danger")], require_approval="auto"), clock.now)
    required, why = needs_approval(auto_high, CATALOG)
    assert required and "high-risk" in why
    not_idem = new_run(make_plan([S("a", idempotent=False)], require_approval="auto"), clock.now)
    assert needs_approval(not_idem, CATALOG)[0] is True
    assert needs_approval(new_run(make_plan([S("a")]), clock.now), CATALOG)[0] is True
    assert (
        needs_approval(new_run(make_plan([S("a")], require_approval=False), clock.now), CATALOG)[0]
        is False
    )
    assert (
        needs_approval(
            new_run(make_plan([S("a", tool="danger")], auto_approve=True), clock.now), CATALOG
        )[0]
        is False
    )


def test_stale_approval_version_is_refused_and_audited() -> None:
    d = Driver([S("a", params={"n": 1}), S("b", "a")], approve=False)
    d.control("apply_correction", step_id="a", correction={"updated_step": {"params": {"n": 2}}})
    assert d.run.version == 2
    reason = d.refused("approve", by="bob", version=1)
    assert "stale" in reason and "version 2" in reason
    assert d.run.approval is None
    last = d.run.audit[-1]
    assert (last.action, last.accepted, last.by) == ("approve", False, "bob")
    assert "stale" in last.detail
    d.control("approve", by="bob", version=2)
    assert d.run.approval is not None and d.run.approval.version == 2


def test_approve_with_wrong_digest_is_refused() -> None:
    d = Driver([S("a")], approve=False)
    assert "digest" in d.refused("approve", digest="0000")
    d.control("approve", digest=d.run.plan.digest())
    assert d.run.approval is not None


def test_approve_twice_is_refused() -> None:
    d = Driver([S("a")])
    assert "already approved" in d.refused("approve", by="bob")


def test_reject_ends_rejected_and_nothing_runs() -> None:
    d = Driver([S("a"), S("b", "a")], approve=False)
    d.control("reject", by="bob", reason="too risky")
    assert derive_status(d.run) == PlanStatus.REJECTED
    assert d.advance() == []
    assert all(s.status == StepStatus.SKIPPED for s in d.run.steps.values())
    assert "too risky" in (d.run.outcome or "")
    assert is_finished(d.run)
    assert finish(d.run, d.clock.tick()) == PlanStatus.REJECTED
    assert "already ended rejected" in d.refused("approve")


def test_reject_after_approval_is_refused() -> None:
    d = Driver([S("a")])
    assert "cancel it instead" in d.refused("reject", reason="no")


# --- scheduling ----------------------------------------------------------------------


def test_ready_set_and_advance_diamond() -> None:
    d = Driver([S("a"), S("b", "a"), S("c", "a"), S("d", "b", "c")])
    assert d.advance() == ["a"]
    assert d.advance() == []  # a still running
    d.ok("a")
    assert sorted(d.advance()) == ["b", "c"]
    d.ok("b")
    assert d.advance() == []  # d still waits for c
    assert d.status("d") == StepStatus.PENDING
    d.ok("c")
    assert d.advance() == ["d"]
    d.ok("d", {"done": True})
    assert d.advance() == []
    assert is_finished(d.run)
    assert progress(d.run) == 1.0
    assert finish(d.run, d.clock.tick()) == PlanStatus.COMPLETED
    assert d.run.steps["d"].output == {"done": True}


def test_started_step_records_time_and_runs() -> None:
    d = Driver([S("a")])
    d.advance()
    s = d.run.steps["a"]
    assert s.status == StepStatus.RUNNING
    assert s.started_at == d.clock.now
    assert s.runs == 1
    record_success(d.run, "a", 42, 3, d.clock.tick())
    assert (s.status, s.output, s.attempts, s.completed_at) == (
        StepStatus.COMPLETED,
        42,
        3,
        d.clock.now,
    )


def test_allow_parallel_false_runs_one_at_a_time() -> None:
    d = Driver([S("a"), S("b"), S("c")], allow_parallel=False)
    assert d.advance() == ["a"]
    assert d.advance() == []
    d.ok("a")
    assert d.advance() == ["b"]
    d.ok("b")
    assert d.advance() == ["c"]
    d.ok("c")
    assert d.drain() == PlanStatus.COMPLETED


def test_max_parallel_steps_caps_running_steps() -> None:
    d = Driver([S(f"s{i}") for i in range(7)], max_parallel_steps=3)
    first = d.advance()
    assert first == ["s0", "s1", "s2"]
    assert d.advance() == []
    d.ok("s1")
    assert d.advance() == ["s3"]
    assert len(running_steps(d.run)) == 3
    d.ok("s0")
    d.ok("s2")
    assert d.advance() == ["s4", "s5"]
    assert d.drain() == PlanStatus.COMPLETED


def test_no_batch_barrier_a_step_starts_when_its_own_deps_finish() -> None:
    # a -> b and slow -> c: b must start while slow still runs
    d = Driver([S("a"), S("slow"), S("b", "a"), S("c", "slow")])
    assert d.advance() == ["a", "slow"]
    d.ok("a")
    assert d.advance() == ["b"]
    assert d.status("slow") == StepStatus.RUNNING
    d.ok("b")
    assert d.advance() == []
    assert d.status("c") == StepStatus.PENDING
    d.ok("slow")
    assert d.advance() == ["c"]


def test_dependencies_listed_later_in_the_document() -> None:
    d = Driver([S("z", "y"), S("y", "x"), S("x")])
    assert d.advance() == ["x"]
    d.ok("x")
    assert d.advance() == ["y"]
    d.ok("y")
    assert d.advance() == ["z"]


# --- failures ------------------------------------------------------------------------


def test_failure_skips_exactly_the_transitive_dependents() -> None:
    steps = [
        S("a"),
        S("b", "a"),
        S("c", "b"),
        S("d", "c", "x"),
        S("x"),
        S("y", "x"),
        S("z", "y"),
    ]
    d = Driver(steps, on_error="continue")
    assert d.advance() == ["a", "x"]
    d.fail("a", "disk full")
    d.advance()
    for sid in ("b", "c", "d"):
        s = d.run.steps[sid]
        assert s.status == StepStatus.SKIPPED
        assert s.skip_reason == SkipReason.UPSTREAM
    assert d.run.steps["b"].skip_detail == "dependency a ended failed"
    assert d.run.steps["c"].skip_detail == "dependency b ended skipped"
    for sid in ("x", "y", "z"):
        assert d.status(sid) in (StepStatus.RUNNING, StepStatus.PENDING)
    assert d.drain() == PlanStatus.PARTIAL
    assert d.statuses() == {
        "a": "failed",
        "b": "skipped",
        "c": "skipped",
        "d": "skipped",
        "x": "completed",
        "y": "completed",
        "z": "completed",
    }
    assert "not done" in (d.run.outcome or "")
    assert d.run.steps["a"].error == "disk full"


def test_on_error_continue_with_nothing_completed_is_failed() -> None:
    d = Driver([S("a"), S("b", "a")], on_error="continue")
    assert d.drain({"a": False}) == PlanStatus.FAILED


def test_on_error_stop_lets_running_finish_then_skips_the_rest() -> None:
    d = Driver([S("a"), S("b"), S("c"), S("d", "b"), S("e")], on_error="stop", max_parallel_steps=3)
    assert d.advance() == ["a", "b", "c"]
    d.fail("a")
    assert d.run.stopping is not None and "step a failed" in d.run.stopping
    assert d.advance() == []  # nothing new while b and c run
    assert d.status("e") == StepStatus.PENDING
    d.ok("b")
    assert d.advance() == []  # d would be ready, but the plan is stopping
    assert d.status("d") == StepStatus.PENDING
    assert not is_finished(d.run)
    d.ok("c")
    assert d.advance() == []
    assert d.status("d") == StepStatus.SKIPPED
    assert d.run.steps["d"].skip_reason == SkipReason.STOPPED
    assert d.run.steps["e"].skip_reason == SkipReason.STOPPED
    assert is_finished(d.run)
    assert finish(d.run, d.clock.tick()) == PlanStatus.FAILED
    assert d.statuses() == {
        "a": "failed",
        "b": "completed",
        "c": "completed",
        "d": "skipped",
        "e": "skipped",
    }


def test_stopping_plan_asks_no_one_new_and_skips_gated_steps_after_running_ones() -> None:
    q = {"requires_clarification": True, "clarification_question": "?"}
    steps = [S("a"), S("b"), S("gate", "b", requires_approval=True), S("ask", "b", **q)]
    d = Driver(steps, on_error="stop", max_parallel_steps=2)
    assert d.advance() == ["a", "b"]
    d.fail("a")
    d.advance()
    assert d.status("gate") == StepStatus.PENDING
    assert d.status("ask") == StepStatus.PENDING
    assert waits(d.run) == []
    d.ok("b")
    d.advance()
    for sid in ("gate", "ask"):
        assert (d.status(sid), d.run.steps[sid].skip_reason) == (
            StepStatus.SKIPPED,
            SkipReason.STOPPED,
        )
    assert is_finished(d.run)
    assert finish(d.run, d.clock.tick()) == PlanStatus.FAILED


def test_on_error_stop_with_a_running_step_that_also_fails() -> None:
    d = Driver([S("a"), S("b"), S("c")], on_error="stop")
    d.advance()
    d.fail("a")
    d.fail("b")
    d.fail("c")
    assert d.drain() == PlanStatus.FAILED
    assert "step a failed" in (d.run.outcome or "")


def test_on_error_ask_waits_for_a_person() -> None:
    d = Driver([S("a"), S("b", "a"), S("c")], on_error="ask")
    assert d.advance() == ["a", "c"]
    d.fail("a", "bad input")
    d.advance()
    assert d.run.steps["a"].awaiting_decision is True
    assert d.status("b") == StepStatus.PENDING  # neither skipped nor started
    assert derive_status(d.run) == PlanStatus.WAITING_CORRECTION
    w = waits(d.run)
    assert [(x.kind, x.step_id, x.question) for x in w] == [("correction", "a", "bad input")]
    d.ok("c")  # an independent branch keeps running
    assert d.advance() == []
    assert not is_finished(d.run)
    assert execution_state(d.run).state == "waiting_correction"


def test_on_error_ask_retry_step_runs_it_again() -> None:
    d = Driver([S("a"), S("b", "a")], on_error="ask")
    d.advance()
    d.fail("a")
    d.advance()
    detail = d.control("retry_step", step_id="a")
    assert "will run again" in detail
    s = d.run.steps["a"]
    assert (s.status, s.awaiting_decision, s.error) == (StepStatus.PENDING, False, None)
    assert derive_status(d.run) == PlanStatus.EXECUTING
    assert d.advance() == ["a"]
    assert s.runs == 2
    d.ok("a")
    assert d.advance() == ["b"]
    assert d.drain() == PlanStatus.COMPLETED


def test_on_error_ask_skip_step_lets_dependents_go_on_and_ends_partial() -> None:
    d = Driver([S("a"), S("b", "a")], on_error="ask")
    d.advance()
    d.fail("a")
    d.advance()
    detail = d.control("skip_step", step_id="a", reason="not needed")
    assert "dependents go on" in detail
    s = d.run.steps["a"]
    assert s.status == StepStatus.SKIPPED
    assert s.skip_reason == SkipReason.OPERATOR
    assert s.failed_before_skip is True
    assert d.advance() == ["b"]
    d.ok("b")
    assert d.drain() == PlanStatus.PARTIAL


def test_on_error_ask_cancel_while_waiting_ends_cancelled() -> None:
    d = Driver([S("a"), S("b", "a")], on_error="ask")
    d.advance()
    d.fail("a")
    d.advance()
    d.control("cancel", reason="give up")
    assert derive_status(d.run) == PlanStatus.CANCELLED
    assert d.status("b") == StepStatus.CANCELLED


def test_retry_step_on_continue_resets_skipped_dependents() -> None:
    d = Driver(
        [S("a"), S("b", "a"), S("c", "b"), S("x")], on_error="continue", allow_parallel=False
    )
    assert d.advance() == ["a"]
    d.fail("a")
    assert d.advance() == ["x"]
    assert d.status("c") == StepStatus.SKIPPED
    detail = d.control("retry_step", step_id="a")
    assert "2 dependent(s)" in detail
    assert [d.status(s) for s in ("a", "b", "c")] == [StepStatus.PENDING] * 3
    d.ok("x")
    assert d.drain() == PlanStatus.COMPLETED


def test_retry_step_is_refused_while_a_total_timeout_stops_the_plan() -> None:
    """The total timeout fired: one cancelled step is recorded while another is still
    being cancelled. Retrying the cancelled one is refused, so nothing starts after the
    timeout."""
    d = Driver([S("a"), S("b"), S("c", "a"), S("d", "b")], on_error="continue")
    assert d.advance() == ["a", "b"]
    # what PlanWorkflow does when the total timeout fires:
    stop(d.run, "total timeout of 10s exceeded", d.clock.tick())
    d.run.outcome = "total timeout of 10s exceeded"
    record_cancelled(d.run, "a", d.clock.tick(), d.run.stopping or "")  # a's cancellation done
    d.advance()  # b still being cancelled
    assert "the plan is stopping" in d.refused("retry_step", step_id="a")
    started = d.advance()
    assert started == [], f"steps started after the total timeout fired: {started}"


def test_on_error_stop_holds_after_retrying_one_of_two_failed_steps() -> None:
    """on_error=stop: a and b failed while r runs. Retrying a does not lift the stop while
    b is still failed: the independent step y does not start."""
    d = Driver([S("a"), S("b"), S("r"), S("y")], on_error="stop", max_parallel_steps=3)
    assert d.advance() == ["a", "b", "r"]
    d.fail("a")
    d.fail("b")
    d.advance()
    assert d.status("y") == StepStatus.PENDING  # waits for r, then is skipped (stopped)
    d.control("retry_step", step_id="a")
    started = d.advance()
    assert "y" not in started, "on_error=stop: b is still failed, no new step may start"


def test_skip_step_on_continue_lets_the_skipped_dependents_go_on() -> None:
    """Under on_error=continue the dependents of a failed step are skipped (upstream);
    skip_step says they go on, and they do."""
    d = Driver([S("a"), S("b", "a"), S("slow")], on_error="continue")
    assert d.advance() == ["a", "slow"]
    d.fail("a")
    d.advance()
    assert d.status("b") == StepStatus.SKIPPED  # upstream
    detail = d.control("skip_step", step_id="a", reason="not needed")
    assert "dependents go on" in detail
    started = d.advance()
    assert started == ["b"], f"b is {d.status('b')}"


def test_when_false_skips_and_counts_as_done() -> None:
    d = Driver(
        [S("a"), S("b", "a", when="steps.a.output.go"), S("c", "a", when="not steps.a.output.go")]
    )
    d.advance()
    d.ok("a", {"go": True})
    assert d.advance() == ["b"]
    c = d.run.steps["c"]
    assert c.status == StepStatus.SKIPPED
    assert c.skip_reason == SkipReason.CONDITION
    assert "condition is false" in (c.skip_detail or "")
    d.ok("b")
    assert d.drain() == PlanStatus.COMPLETED


def test_when_reads_inputs() -> None:
    d = Driver(
        [S("prod", when="inputs.env == 'prod'"), S("dev", when="inputs.env == 'dev'")],
        inputs={"env": "dev"},
    )
    assert d.advance() == ["dev"]
    assert d.run.steps["prod"].skip_reason == SkipReason.CONDITION


def test_branch_not_taken_and_join_with_one_live_branch() -> None:
    steps = [
        {
            "id": "choose",
            "kind": "decision",
            "params": {"question": "which?", "options": ["left", "right"]},
        },
        S("left", "choose", when="steps.choose.output.choice == 'left'"),
        S("right", "choose", when="steps.choose.output.choice == 'right'"),
        S("left-2", "left"),
        S("right-2", "right"),
        S("join", "left-2", "right-2"),
    ]
    d = Driver(steps)
    assert d.advance() == ["choose"]
    d.ok("choose", {"choice": "left", "reason": "shorter"})
    assert d.advance() == ["left"]
    assert d.run.steps["right"].skip_reason == SkipReason.CONDITION
    r2 = d.run.steps["right-2"]
    assert r2.status == StepStatus.SKIPPED
    assert r2.skip_reason == SkipReason.CONDITION
    assert "branch not taken" in (r2.skip_detail or "")
    assert d.status("join") == StepStatus.PENDING
    d.ok("left")
    assert d.advance() == ["left-2"]
    d.ok("left-2")
    assert d.advance() == ["join"]
    d.ok("join")
    assert d.drain() == PlanStatus.COMPLETED


def test_join_whose_branches_were_all_not_taken_is_skipped() -> None:
    steps = [S("a"), S("b", "a", when="false"), S("c", "a", when="false"), S("join", "b", "c")]
    d = Driver(steps)
    d.advance()
    d.ok("a")
    assert d.advance() == []
    assert d.run.steps["join"].skip_reason == SkipReason.CONDITION
    assert d.drain() == PlanStatus.COMPLETED


def test_condition_that_cannot_be_evaluated_fails_the_step() -> None:
    d = Driver(
        [S("a"), S("b", "a", when="steps.a.output.missing == 1"), S("c", "b")], on_error="continue"
    )
    d.advance()
    d.ok("a", {"x": 1})
    assert d.advance() == []
    b = d.run.steps["b"]
    assert b.status == StepStatus.FAILED
    assert "condition could not be evaluated" in (b.error or "")
    assert d.run.steps["c"].skip_reason == SkipReason.UPSTREAM
    assert d.drain() == PlanStatus.PARTIAL


@pytest.mark.parametrize("expr", ["int(1e400) > 0", "round(1e400) > 0", "2.0 ** 5000 > 1"])
def test_a_condition_that_overflows_fails_the_step_and_advance_goes_on(expr: str) -> None:
    """A `when` that validates but overflows fails its step like any other bad condition;
    an exception escaping advance() would fail the workflow task forever."""
    d = Driver([S("a", when=expr)])
    assert validate_plan(d.run.plan, CATALOG) == []  # accepted up front
    d.advance()
    assert d.status("a") == StepStatus.FAILED
    assert "condition could not be evaluated" in (d.run.steps["a"].error or "")


# --- pause, resume, clarification ----------------------------------------------------


def test_pause_stops_scheduling_running_steps_finish_and_resume_continues() -> None:
    d = Driver([S("a"), S("b", "a"), S("c")], max_parallel_steps=1)
    assert d.advance() == ["a"]
    d.control("pause", by="carol", reason="lunch")
    assert derive_status(d.run) == PlanStatus.PAUSED
    d.ok("a")  # running steps finish
    assert d.advance() == []
    assert d.status("b") == StepStatus.PENDING
    assert [w.kind for w in waits(d.run)] == ["resume"]
    assert execution_state(d.run).paused_at is not None
    assert "already paused" in d.refused("pause")
    d.control("resume", by="carol", feedback="use the eu region")
    assert d.run.feedback == ["use the eu region"]
    assert derive_status(d.run) == PlanStatus.EXECUTING
    assert d.advance() == ["b"]
    assert "not paused" in d.refused("resume")


def test_pause_before_approval_is_refused() -> None:
    d = Driver([S("a")], approve=False)
    assert "not been approved" in d.refused("pause")


def test_pause_with_a_question_waits_for_an_answer() -> None:
    d = Driver([S("a"), S("b", "a")])
    d.advance()
    d.control("pause", by="carol", step_id="b", question="Which region?")
    assert derive_status(d.run) == PlanStatus.WAITING_CLARIFICATION
    st = execution_state(d.run)
    assert (st.state, st.step_id, st.question) == ("waiting_clarification", "b", "Which region?")
    d.control("answer_clarification", by="dave", answer="eu")
    assert derive_status(d.run) == PlanStatus.PAUSED  # answered; resume to continue
    assert d.run.steps["b"].answer == "eu"
    d.control("resume")
    d.ok("a")
    assert d.advance() == ["b"]


def test_step_clarification_question_and_answer() -> None:
    d = Driver([S("a", requires_clarification=True, clarification_question="Which env?"), S("b")])
    assert d.advance() == ["b"]
    a = d.run.steps["a"]
    assert a.status == StepStatus.WAITING_CLARIFICATION
    assert derive_status(d.run) == PlanStatus.WAITING_CLARIFICATION
    assert [(w.kind, w.step_id, w.question) for w in waits(d.run)] == [
        ("clarification", "a", "Which env?")
    ]
    assert "not waiting for an answer" in d.refused("answer_clarification", step_id="b", answer="x")
    d.control("answer_clarification", by="erin", step_id="a", answer={"env": "staging"})
    assert (a.status, a.answer, a.answered) == (StepStatus.PENDING, {"env": "staging"}, True)
    assert d.advance() == ["a"]


def test_answer_without_a_question_is_refused() -> None:
    d = Driver([S("a")])
    d.advance()
    assert "no question is waiting" in d.refused("answer_clarification", answer="x")


def test_answer_needs_a_step_id_when_several_steps_ask() -> None:
    q = {"requires_clarification": True, "clarification_question": "?"}
    d = Driver([S("a", **q), S("b", **q)])
    d.advance()
    assert "name step_id" in d.refused("answer_clarification", answer="x")
    d.control("answer_clarification", step_id="b", answer="y")
    assert d.advance() == ["b"]


def test_resume_from_failure_keeps_a_clarification_answer() -> None:
    """A step answered in the failed run is not asked again in the resumed one."""
    plan = make_plan([S("a", requires_clarification=True, clarification_question="Which region?")])
    now = datetime(2024, 1, 1, tzinfo=UTC)
    earlier = {
        "a": StepRun(id="a", status=StepStatus.FAILED, answered=True, answer="eu-west-1", error="x")
    }
    run = new_run(plan, now, earlier)
    run.approval_required = False
    apply_control(run, "approve", parse_control("approve", {"by": "alice"}), now, CATALOG)
    advance(run, now)
    s = run.steps["a"]
    assert s.status == StepStatus.RUNNING, f"the person is asked again: {s.status}"
    assert s.answer == "eu-west-1"


# --- step gates ----------------------------------------------------------------------


def test_approve_step_opens_the_gate() -> None:
    d = Driver([S("a", requires_approval=True, description="deploy to prod"), S("b")])
    assert d.advance() == ["b"]
    a = d.run.steps["a"]
    assert a.status == StepStatus.WAITING_APPROVAL
    assert derive_status(d.run) == PlanStatus.WAITING_APPROVAL
    assert [(w.kind, w.step_id, w.question) for w in waits(d.run)] == [
        ("step_approval", "a", "deploy to prod")
    ]
    assert "not waiting for approval" in d.refused("approve_step", step_id="b")
    assert "stale decision" in d.refused("approve_step", step_id="a", version=2)
    assert "no step 'zz'" in d.refused("approve_step", step_id="zz")
    d.control("approve_step", by="frank", step_id="a", version=1)
    assert a.gate_approved_by == "frank"
    assert d.advance() == ["a"]


def test_reject_step_skips_it_and_its_dependents() -> None:
    d = Driver([S("gate-me", requires_approval=True), S("after", "gate-me"), S("other")])
    assert d.advance() == ["other"]
    d.control("reject_step", by="frank", step_id="gate-me", reason="not today")
    g = d.run.steps["gate-me"]
    assert (g.status, g.skip_reason) == (StepStatus.SKIPPED, SkipReason.REJECTED)
    d.advance()
    assert d.run.steps["after"].skip_reason == SkipReason.UPSTREAM
    d.ok("other")
    assert d.drain() == PlanStatus.PARTIAL


def test_approval_kind_step_completes_when_approved() -> None:
    d = Driver([{"id": "gate", "kind": "approval"}, S("ship", "gate")])
    assert d.advance() == []
    assert d.status("gate") == StepStatus.WAITING_APPROVAL
    d.control("approve_step", by="grace", step_id="gate")
    assert d.advance() == ["ship"]
    gate = d.run.steps["gate"]
    assert gate.status == StepStatus.COMPLETED
    assert gate.output == {"approved_by": "grace"}


def test_skip_step_on_a_waiting_gate() -> None:
    d = Driver([S("a", requires_approval=True), S("b", "a")])
    d.advance()
    d.control("skip_step", step_id="a", reason="manual")
    assert d.advance() == ["b"]
    d.ok("b")
    assert d.drain() == PlanStatus.PARTIAL


def test_skip_step_refused_for_running_or_completed() -> None:
    d = Driver([S("a"), S("b", "a")])
    d.advance()
    assert "only failed, waiting or pending" in d.refused("skip_step", step_id="a", reason="x")
    d.ok("a")
    assert "only failed, waiting or pending" in d.refused("skip_step", step_id="a", reason="x")


def test_retry_step_refusals() -> None:
    d = Driver([S("a"), S("b", when="false")])
    d.advance()
    assert "only failed, skipped or cancelled" in d.refused("retry_step", step_id="a")
    assert "skipped by its condition" in d.refused("retry_step", step_id="b")
    assert "no step 'nope'" in d.refused("retry_step", step_id="nope")


# --- cancel --------------------------------------------------------------------------


def test_cancel_before_start_ends_cancelled_at_once() -> None:
    d = Driver([S("a"), S("b", "a")], approve=False)
    assert d.control("cancel", by="henry", reason="obsolete") == "plan cancelled"
    assert derive_status(d.run) == PlanStatus.CANCELLED
    assert all(s.status == StepStatus.CANCELLED for s in d.run.steps.values())
    assert "already ended cancelled" in d.refused("cancel", reason="again")


def test_cancel_with_running_steps_waits_for_them_then_ends_cancelled() -> None:
    d = Driver([S("a"), S("b", "a"), S("c")])
    assert d.advance() == ["a", "c"]
    assert "being cancelled" in d.control("cancel", by="henry", reason="stop it")
    assert "already being cancelled" in d.refused("cancel", reason="again")
    record_cancelled(d.run, "a", d.clock.tick(), "cancelled")
    assert "being cancelled" in d.refused("retry_step", step_id="a")
    d.ok("c")
    assert d.advance() == []
    assert d.status("b") == StepStatus.CANCELLED
    assert is_finished(d.run)
    assert finish(d.run, d.clock.tick()) == PlanStatus.CANCELLED
    assert "stop it" in (d.run.outcome or "")


# --- corrections ---------------------------------------------------------------------


def test_apply_correction_bumps_the_version_and_changes_the_step() -> None:
    d = Driver([S("a"), S("b", "a", params={"n": 1})])
    d.advance()
    detail = d.control(
        "apply_correction",
        by="ivy",
        step_id="b",
        correction={"updated_step": {"params": {"n": 5}, "max_retries": 2}},
    )
    assert "plan version 2" in detail
    assert d.run.version == 2
    assert d.run.plan.step("b").params == {"n": 5}
    assert d.run.plan.step("b").max_retries == 2
    assert d.run.steps["b"].version == 2
    assert [v.version for v in d.run.versions] == [1, 2]
    assert d.run.versions[-1].by == "ivy"
    assert d.run.versions[-1].step_id == "b"
    assert status_view(d.run).version == 2


def test_apply_correction_is_validated_like_a_new_plan() -> None:
    d = Driver([S("a"), S("b", "a")])
    reason = d.refused(
        "apply_correction", step_id="b", correction={"updated_step": {"params": {"n": "five"}}}
    )
    assert "steps[1].params.n" in reason
    reason = d.refused(
        "apply_correction", step_id="b", correction={"updated_step": {"tool": "nosuch"}}
    )
    assert "unknown tool 'nosuch'" in reason
    reason = d.refused(
        "apply_correction", step_id="a", correction={"updated_step": {"depends_on": ["b"]}}
    )
    assert "dependency cycle" in reason
    reason = d.refused("apply_correction", step_id="b", correction={"updated_step": {"retries": 3}})
    assert "unknown field" in reason
    reason = d.refused(
        "apply_correction", step_id="b", correction={"updated_step": {"id": "other"}}
    )
    assert "cannot change a step's id" in reason
    assert d.run.version == 1
    assert d.run.plan.step("b").tool == "noop"
    refusals = [e for e in d.run.audit if e.action == "apply_correction"]
    assert len(refusals) == 5 and not any(e.accepted for e in refusals)


def test_apply_correction_refused_for_completed_or_running_steps() -> None:
    d = Driver([S("a"), S("b", "a")])
    d.advance()
    upd = {"updated_step": {"params": {"n": 2}}}
    assert "is running" in d.refused("apply_correction", step_id="a", correction=upd)
    d.ok("a")
    assert "is completed" in d.refused("apply_correction", step_id="a", correction=upd)
    assert "no step 'zz'" in d.refused("apply_correction", step_id="zz", correction=upd)
    assert d.run.version == 1


def test_apply_correction_then_retry_on_ask() -> None:
    d = Driver([S("a", params={"n": 1}), S("b", "a")], on_error="ask")
    d.advance()
    d.fail("a")
    d.advance()
    d.control("apply_correction", step_id="a", correction={"updated_step": {"params": {"n": 2}}})
    assert derive_status(d.run) == PlanStatus.WAITING_CORRECTION  # still needs retry or skip
    d.control("retry_step", step_id="a")
    assert d.advance() == ["a"]
    assert d.run.plan.step("a").params == {"n": 2}
    d.ok("a")
    assert d.drain() == PlanStatus.COMPLETED


def test_correction_lapses_a_step_approval() -> None:
    d = Driver([S("a", requires_approval=True, params={"n": 1})])
    d.control("pause")  # so the approved step does not start yet
    d.advance()
    assert d.status("a") == StepStatus.WAITING_APPROVAL
    d.control("approve_step", by="jack", step_id="a", version=1)
    assert d.run.steps["a"].gate_approved_by == "jack"
    d.control("apply_correction", step_id="a", correction={"updated_step": {"params": {"n": 99}}})
    assert d.run.steps["a"].gate_approved_by is None
    d.control("resume")
    assert d.advance() == []
    assert d.status("a") == StepStatus.WAITING_APPROVAL
    assert "stale decision" in d.refused("approve_step", step_id="a", version=1)
    d.control("approve_step", by="jack", step_id="a", version=2)
    assert d.advance() == ["a"]


def test_correction_before_approval_is_allowed() -> None:
    d = Driver([S("a")], approve=False)
    d.control(
        "apply_correction", step_id="a", correction={"updated_step": {"description": "better"}}
    )
    assert d.run.plan.step("a").description == "better"
    assert derive_status(d.run) == PlanStatus.PENDING_APPROVAL


# --- audit trail ---------------------------------------------------------------------


def test_accepted_and_refused_controls_are_audited() -> None:
    d = Driver([S("a"), S("b", "a")])
    d.advance()
    d.refused("resume", by="mallory")
    d.control("pause", by="carol")
    d.refused("approve_step", by="mallory", step_id="a")
    entries = [(e.action, e.by, e.accepted) for e in d.run.audit]
    assert entries == [
        ("approve", "alice", True),
        ("resume", "mallory", False),
        ("pause", "carol", True),
        ("approve_step", "mallory", False),
    ]
    refused = d.run.audit[-1]
    assert refused.step_id == "a"
    assert "not waiting for approval" in refused.detail
    assert refused.version == 1
    assert refused.at == d.clock.now
    assert refused.via == "update"
    assert any("refused" in entry.message for entry in d.run.logs)


def test_check_control_does_not_change_anything() -> None:
    d = Driver([S("a")], approve=False)
    before = d.run.model_dump()
    check_control(d.run, "approve", parse_control("approve", {"by": "x"}), CATALOG)
    with pytest.raises(Refused):
        check_control(d.run, "resume", parse_control("resume", {"by": "x"}), CATALOG)
    assert d.run.model_dump() == before


def test_parse_control_refuses_bad_arguments() -> None:
    with pytest.raises(Refused, match="unknown control"):
        parse_control("explode", {"by": "x"})
    with pytest.raises(Refused, match="by"):
        parse_control("approve", {})
    with pytest.raises(Refused, match="reason"):
        parse_control("reject", {"by": "x"})
    with pytest.raises(Refused, match="invalid cancel argument"):
        parse_control("cancel", {"by": "x", "reason": "r", "extra": 1})


def test_controls_after_the_end_are_refused() -> None:
    d = Driver([S("a")])
    d.drain()
    assert "already ended completed" in d.refused("pause")
    assert "already ended completed" in d.refused("retry_step", step_id="a")
    assert d.run.audit[-1].accepted is False


def test_status_view_reports_steps_and_progress() -> None:
    d = Driver([S("a"), S("b", "a")])
    d.advance()
    d.ok("a", {"big": "x" * 5000})
    view = status_view(d.run)
    assert view.plan_id == "p1"
    assert view.progress == 0.5
    assert [s.id for s in view.steps] == ["a", "b"]
    assert isinstance(view.steps[0].output, str) and "truncated" in view.steps[0].output
    assert view.approved_by == "alice"


def test_on_error_stop_skips_a_step_already_waiting_at_its_gate() -> None:
    d = Driver([S("a"), S("b", requires_approval=True)], on_error="stop")
    assert d.advance() == ["a"]
    assert d.status("b") == StepStatus.WAITING_APPROVAL
    d.fail("a")
    d.advance()
    assert (d.status("b"), d.run.steps["b"].skip_reason) == (StepStatus.SKIPPED, SkipReason.STOPPED)
    assert waits(d.run) == []
    assert is_finished(d.run)
    assert finish(d.run, d.clock.tick()) == PlanStatus.FAILED


def test_cancel_ends_a_plan_with_a_step_waiting_at_its_gate() -> None:
    d = Driver([S("a"), S("b", requires_approval=True)])
    assert d.advance() == ["a"]
    assert d.status("b") == StepStatus.WAITING_APPROVAL
    d.control("cancel", reason="stop it")
    record_cancelled(d.run, "a", d.clock.tick(), "cancelled")
    d.advance()
    assert d.status("b") == StepStatus.CANCELLED
    assert is_finished(d.run)
    assert finish(d.run, d.clock.tick()) == PlanStatus.CANCELLED


# --- a validation step whose judge criteria no model assessed (on_unassessed: ask) ------


def judged(d: Driver) -> None:
    """``v`` ran; its judge left 'is tidy' unassessed: it waits for a person."""
    assert d.advance() == ["v"]
    out = {"passed": False, "unassessed": ["is tidy"]}
    record_unassessed(d.run, "v", out, ["is tidy"], 1, d.clock.tick())


def judge_driver(**options: Any) -> Driver:
    return Driver([S("v", requires_approval=False), S("after", "v")], **options)


def test_an_unassessed_judgement_waits_and_approve_step_passes_it() -> None:
    d = judge_driver()
    judged(d)
    assert d.status("v") == StepStatus.WAITING_APPROVAL
    assert derive_status(d.run) == PlanStatus.WAITING_APPROVAL
    (wait,) = waits(d.run)
    assert wait.kind == "step_approval" and "no model assessed judge criteria 'is tidy'" in (
        wait.question or ""
    )
    assert d.advance() == []  # nothing runs after it meanwhile
    d.control("approve_step", step_id="v", by="judy")
    assert d.advance() == ["after"]  # passed, not run again
    s = d.run.steps["v"]
    assert s.status == StepStatus.COMPLETED and s.runs == 1
    assert s.output == {"passed": True, "passed_by": "judy", "unassessed": ["is tidy"]}
    d.ok("after")
    assert d.drain() == PlanStatus.COMPLETED


def test_an_unassessed_judgement_rejected_is_skipped_and_a_retry_judges_again() -> None:
    d = judge_driver(on_error="continue")
    judged(d)
    d.control("reject_step", step_id="v", reason="not tidy")
    d.advance()
    assert d.statuses() == {"v": "skipped", "after": "skipped"}
    d.control("retry_step", step_id="v")
    assert d.advance() == ["v"]  # the stale judgement is dropped: the judge runs again
    assert d.run.steps["v"].judge_gate is None and d.run.steps["v"].runs == 2


def test_a_corrected_unassessed_step_runs_again_once_approved() -> None:
    d = judge_driver()
    judged(d)
    d.control("apply_correction", step_id="v", correction={"updated_step": {"params": {"n": 2}}})
    d.control("approve_step", step_id="v")
    assert d.advance() == ["v"]  # the approval is not a pass of a judgement on other params


def test_a_step_approval_timeout_never_passes_an_unassessed_judgement() -> None:
    d = judge_driver(step_approval_timeout_s=5, on_step_approval_timeout="approve")
    judged(d)
    expire_waits(d.run, d.clock.tick(10))
    s = d.run.steps["v"]
    assert s.status == StepStatus.SKIPPED and s.skip_reason == SkipReason.REJECTED
    assert "no model assessed" in (s.timed_out or "")

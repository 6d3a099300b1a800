"""``on_error: replan`` in pure code (plans/replan.py): the planner's proposal is hostile
input -- it cannot touch completed steps, change their ids, add tools the catalog does
not have, smuggle an expression bomb or grow the plan past its limits -- and a valid one
is applied unattended or waits for a person, by its risk and the approval options."""

from __future__ import annotations

from typing import Any

import pytest

from plans import replan
from plans.models import PlanStatus, StepStatus
from plans.policy import ApprovalDecision
from plans.run_state import derive_status
from plans.views import status_view, waits
from tests.plans.test_run_engine import CATALOG, Driver, S

TRANSIENT = "HTTP 503 from the server"


def failed_run(**options: Any) -> Driver:
    """a (completed) -> b (failed for good) -> c (pending); on_error: replan."""
    options.setdefault("on_error", "replan")
    d = Driver([S("a"), S("b", "a", params={"n": 1}), S("c", "b")], **options)
    assert d.advance() == ["a"]
    d.ok("a", {"rows": 3})
    assert d.advance() == ["b"]
    d.fail("b", TRANSIENT)
    return d


def receive(d: Driver, proposal: Any, n: int | None = None) -> Any:
    due = replan.due(d.run)
    if n is None:
        assert due == ["b"]
        n = replan.ask(d.run, "b", d.clock.tick()).n
    answer = {"proposal": proposal, "model": "fake", "offline": True}
    return replan.receive(d.run, n, answer, CATALOG, d.clock.tick())


def problems_of(d: Driver, proposal: Any) -> list[str]:
    p = receive(d, proposal)
    assert p.state == "refused", p
    # nothing changed: same plan, same version, the failed step still waits for a person
    assert d.run.version == 1
    assert d.status("a") == StepStatus.COMPLETED and d.status("b") == StepStatus.FAILED
    assert d.run.steps["b"].awaiting_decision
    assert derive_status(d.run) == PlanStatus.WAITING_CORRECTION
    assert [w.kind for w in waits(d.run)] == ["correction"]
    return p.problems


def test_a_failure_asks_the_planner_and_the_step_waits_meanwhile() -> None:
    d = failed_run()
    assert replan.due(d.run) == ["b"]
    assert d.status("c") == StepStatus.PENDING  # waits: neither skipped nor started
    p = replan.ask(d.run, "b", d.clock.tick())
    assert (p.n, p.state, p.error) == (1, "asking", TRANSIENT)
    req = replan.request_for(d.run, "b", CATALOG)
    assert req["steps"]["a"] == {"status": "completed", "output": {"rows": 3}}
    assert req["replaceable"] == ["b", "c"]
    w = waits(d.run)
    assert [(x.kind, x.who) for x in w] == [("replan", "the planner")]
    assert replan.due(d.run) == []  # asked once


def test_a_proposal_touching_a_completed_step_is_refused() -> None:
    d = failed_run()
    problems = problems_of(
        d, {"kind": "replacement", "replaces": ["a"], "steps": [S("a"), S("b", "a")]}
    )
    assert any("step a is completed" in p for p in problems), problems


def test_a_correction_cannot_rename_the_failed_step_or_reach_another() -> None:
    d = failed_run()
    problems = problems_of(d, {"kind": "correction", "updated_step": {"id": "a"}})
    assert problems == ["updated_step.id cannot change: the step is b"]


def test_a_replacement_cannot_reuse_the_id_of_a_completed_step() -> None:
    d = failed_run()
    problems = problems_of(d, {"kind": "replacement", "steps": [S("a"), S("b", "a"), S("c", "b")]})
    assert any("'a' is a step the replacement does not replace" in p for p in problems)


def test_a_tool_not_in_the_catalog_is_refused() -> None:
    d = failed_run()
    problems = problems_of(d, {"kind": "correction", "updated_step": {"tool": "rm_rf"}})
    assert problems == ["steps[1].tool: unknown tool 'rm_rf'; known tools: danger, noop"]


def test_an_expression_bomb_is_refused() -> None:
    d = failed_run()
    bomb = "steps.a.output.rows > 9 ** 9 ** 9 ** 9"
    problems = problems_of(d, {"kind": "correction", "updated_step": {"when": bomb}})
    assert problems == [
        "steps[1].when: bad expression in step 'b': '9 ** 9 ** 9 ** 9': the power would "
        "have more than 64000 bits"
    ]
    long = "steps.a.output.rows " + "* 9 " * 600
    problems = problems_of(failed_run(), {"kind": "correction", "updated_step": {"when": long}})
    assert problems == ["steps[1].when: bad expression: expression longer than 2000 characters"]


def test_too_many_steps_are_refused() -> None:
    d = failed_run()
    steps = [S("b", "a"), S("c", "b")] + [S(f"x{i}", "b") for i in range(replan.MAX_NEW_STEPS + 1)]
    problems = problems_of(d, {"kind": "replacement", "replaces": ["b", "c"], "steps": steps})
    assert any("at most 12" in p for p in problems), problems


def test_a_huge_or_shapeless_answer_is_refused_unread() -> None:
    assert problems_of(failed_run(), "x" * 70_000)[0].startswith("the proposal is 70002")
    assert problems_of(failed_run(), {"kind": "delete_everything"})[0].startswith("kind must")
    assert problems_of(failed_run(), ["correction"]) == ["the proposal is not an object"]


def test_a_proposal_cannot_remove_a_persons_gate() -> None:
    d = Driver([S("a"), S("b", "a", requires_approval=True), S("c", "b")], on_error="replan")
    d.advance()
    d.ok("a")
    d.advance()
    d.control("approve_step", step_id="b")
    assert d.advance() == ["b"]
    d.fail("b", TRANSIENT)
    p = receive(d, {"kind": "correction", "updated_step": {"requires_approval": False}})
    assert p.problems == ["step b: a proposal cannot remove a person's gate"]


def test_nothing_to_propose_leaves_the_step_to_a_person() -> None:
    d = failed_run()
    p = receive(d, {"kind": "none", "reason": "no idea"})
    assert p.state == "nothing"
    assert [w.kind for w in waits(d.run)] == ["correction"]
    assert d.run.audit[-1].action == "replan_none"


def test_with_require_approval_a_person_accepts_and_only_the_failed_step_runs_again() -> None:
    d = failed_run()  # require_approval defaults to true
    p = receive(d, {"kind": "correction", "reason": "5xx", "updated_step": {"max_retries": 3}})
    assert (p.state, p.needs_person) == ("proposed", True)
    w = waits(d.run)[0]
    assert (w.kind, w.step_id, w.proposal and w.proposal.n) == ("replan", "b", 1)
    assert status_view(d.run).replans[0].diff == {"b": {"max_retries": {"old": None, "new": 3}}}
    d.control("accept_replan", by="alice", step_id="b")
    assert d.run.version == 2 and d.run.plan.step("b").max_retries == 3
    assert d.run.versions[-1].by == "alice" and "replan #1" in d.run.versions[-1].change
    assert d.advance() == ["b"]  # a (completed) is not started again
    d.ok("b")
    assert d.drain() == PlanStatus.COMPLETED
    accepted = [e for e in d.run.audit if e.action == "accept_replan"]
    assert accepted[0].by == "alice" and "replan #1 accepted" in accepted[0].detail
    assert d.run.replans[0].state == "accepted"


def test_reject_keeps_the_failure_and_a_second_decision_is_refused() -> None:
    d = failed_run()
    receive(d, {"kind": "correction", "updated_step": {"max_retries": 3}})
    d.control("reject_replan", by="bob", reason="not like this")
    assert d.status("b") == StepStatus.FAILED and d.run.steps["b"].awaiting_decision
    assert [w.kind for w in waits(d.run)] == ["correction"]
    assert "no replan proposal waits" in d.refused("accept_replan", by="bob")


def test_a_persons_own_correction_supersedes_the_proposal() -> None:
    d = failed_run()
    receive(d, {"kind": "correction", "updated_step": {"max_retries": 3}})
    d.control("apply_correction", step_id="b", correction={"updated_step": {"params": {"n": 2}}})
    assert d.run.replans[0].state == "superseded"
    assert "no replan proposal waits" in d.refused("accept_replan")


def test_require_approval_false_applies_a_low_risk_proposal_unattended() -> None:
    d = failed_run(require_approval=False)
    p = receive(d, {"kind": "correction", "updated_step": {"max_retries": 3}})
    assert (p.state, p.decided_by, p.risk_level) == ("applied", "policy", "low")
    assert d.status("b") == StepStatus.PENDING and d.run.version == 2
    assert d.advance() == ["b"]


def test_a_high_risk_proposal_waits_for_a_person_even_when_unattended_is_allowed() -> None:
    d = failed_run(require_approval=False)
    p = receive(d, {"kind": "correction", "updated_step": {"tool": "danger", "params": {}}})
    assert (p.state, p.risk_level, p.needs_person) == ("proposed", "high", True)


def test_a_replacement_takes_the_place_of_the_failed_step_and_its_dependents() -> None:
    d = failed_run(require_approval=False)
    p = receive(
        d,
        {
            "kind": "replacement",
            "replaces": ["b", "c"],
            "steps": [S("b2", "a"), S("c", "b2")],
        },
    )
    assert p.state == "applied", p.problems
    assert [s.id for s in d.run.plan.steps] == ["a", "b2", "c"]
    assert set(d.run.steps) == {"a", "b2", "c"}
    assert d.status("a") == StepStatus.COMPLETED
    assert d.advance() == ["b2"]
    d.ok("b2")
    assert d.drain() == PlanStatus.COMPLETED


def test_rounds_are_bounded_by_max_replans() -> None:
    d = failed_run(require_approval=False, max_replans=1)
    receive(d, {"kind": "correction", "updated_step": {"max_retries": 1}})
    assert d.advance() == ["b"]
    d.fail("b", TRANSIENT)
    assert replan.due(d.run) == []  # no round left: a person decides
    assert [w.kind for w in waits(d.run)] == ["correction"]


def test_a_per_step_on_error_replan_in_a_stop_plan() -> None:
    d = Driver([S("a", on_error="replan"), S("b")], on_error="stop", require_approval=False)
    d.advance()
    d.fail("a", TRANSIENT)
    assert replan.due(d.run) == ["a"] and not d.run.stopping


def test_an_answer_for_a_plan_that_moved_on_is_superseded() -> None:
    d = failed_run()
    n = replan.ask(d.run, "b", d.clock.tick()).n
    d.control("skip_step", step_id="b", reason="not needed")
    p = receive(d, {"kind": "correction", "updated_step": {"max_retries": 3}}, n=n)
    assert p.state == "superseded" and d.run.version == 1


@pytest.mark.parametrize("name", ["accept_replan", "reject_replan"])
def test_deciding_without_a_proposal_is_refused(name: str) -> None:
    d = failed_run()
    extra = {"reason": "no"} if name == "reject_replan" else {}
    assert "no replan proposal waits" in d.refused(name, **extra)


def test_under_auto_the_adaptive_policys_decision_for_the_run_decides() -> None:
    trusted = ApprovalDecision(
        required=False, max_unattended_risk="medium", trust_level="high", gate_level="critical"
    )
    d = failed_run(require_approval="auto")
    d.run.policy_decision = trusted
    p = receive(d, {"kind": "correction", "updated_step": {"max_retries": 3}})
    assert (p.state, p.decided_by) == ("applied", "policy")
    assert "high trust runs up to medium risk" in p.why

    d = failed_run(require_approval="auto")
    d.run.policy_decision = trusted
    p = receive(d, {"kind": "correction", "updated_step": {"tool": "danger", "params": {}}})
    assert (p.state, p.risk_level) == ("proposed", "high")

    for untrusted in (
        trusted.model_copy(update={"max_unattended_risk": None, "trust_level": "low"}),
        trusted.model_copy(update={"trust_unread": "the store is down"}),
        None,
    ):
        d = failed_run(require_approval="auto")
        d.run.policy_decision = untrusted
        p = receive(d, {"kind": "correction", "updated_step": {"max_retries": 3}})
        assert p.state == "proposed", untrusted


def test_a_large_plan_travels_to_the_planner_as_the_part_it_may_touch() -> None:
    chain = [S("s0")] + [S(f"s{i}", f"s{i - 1}") for i in range(1, 400)]
    d = Driver(chain, on_error="replan")
    for i in range(150):
        assert d.advance() == [f"s{i}"]
        d.ok(f"s{i}", {"i": i, "pad": "x" * 500})
    assert d.advance() == ["s150"]
    d.fail("s150", TRANSIENT)
    req = replan.request_for(d.run, "s150", CATALOG)
    ids = [st.id for st in req["plan"].steps]
    assert ids[0] == "s149" and ids[1] == "s150" and len(ids) == replan.MAX_STEPS_LISTED
    assert len(req["replaceable"]) == replan.MAX_STEPS_LISTED
    size = sum(len(str(v.get("output", ""))) for v in req["steps"].values())
    assert size <= replan.OUTPUTS_BUDGET_CHARS + 1000


def test_a_proposal_cannot_bring_in_a_secret_and_one_using_a_secret_needs_a_person() -> None:
    d = failed_run(require_approval=False)
    steal = {"tool": "danger", "params": {"token": "{{ secrets.API_KEY }}"}}
    problems = problems_of(d, {"kind": "correction", "updated_step": steal})
    assert problems == ["a proposal cannot bring in a secret the plan does not use: API_KEY"]

    d = Driver(
        [S("a"), S("b", "a", tool="danger", params={"token": "{{ secrets.API_KEY }}"})],
        on_error="replan",
        require_approval=False,
    )
    d.advance()
    d.ok("a")
    d.advance()
    d.fail("b", TRANSIENT)
    p = receive(d, {"kind": "correction", "updated_step": {"max_retries": 3}})
    assert (p.state, p.why) == ("proposed", "the proposal's steps use secrets (API_KEY)")

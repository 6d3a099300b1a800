"""An agent's history read from the store (``store/trust.py``), on SQLite and PostgreSQL.

Runs are made by the pure engine and written with ``record_snapshot``, as the worker
does; the trust history must see who approved each run, who rejected it, the rejected
steps and the corrections, and only the agent's finished runs.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from sqlalchemy.engine import Engine
from sqlmodel import Session

from contracts.snapshots import snapshot_of
from plans import run_state, scheduler, steering
from plans.models import Plan, PlanStatus, ToolSpec
from plans.policy import compute_trust
from store import db, recording
from store.trust import trust_history

T0 = datetime(2025, 5, 1, 9, 0, tzinfo=UTC)
CATALOG = {
    "noop": ToolSpec(
        name="noop",
        description="does nothing",
        params_schema={"type": "object", "properties": {"n": {"type": "integer"}}},
    )
}


class Run:
    """One plan run driven by hand, then written to the store."""

    def __init__(self, plan_id: str, agent_id: str | None, start: datetime, **options: Any):
        self.now = start
        plan = Plan.model_validate(
            {
                "id": plan_id,
                "agent_id": agent_id,
                "options": {"require_approval": True, **options},
                "steps": [
                    {"id": "a", "tool": "noop"},
                    {"id": "b", "tool": "noop", "depends_on": ["a"]},
                ],
            }
        )
        self.run = run_state.new_run(plan, self.now)
        self.run.approval_required = True

    def tick(self) -> datetime:
        self.now += timedelta(seconds=1)
        return self.now

    def control(self, name: str, **payload: Any) -> Run:
        payload.setdefault("by", "alice")
        steering.apply_control(
            self.run,
            name,
            steering.parse_control(name, payload),
            self.tick(),
            CATALOG,
            via="update",
        )
        return self

    def approve_by_policy(self) -> Run:
        self.run.approval_required = False
        self.run.approval = run_state.Approval(by="policy", at=self.tick(), version=1)
        run_state.audit(self.run, self.now, "policy", "approve", True, "no person needed")
        return self

    def step(self, sid: str, ok: bool = True) -> Run:
        assert sid in scheduler.advance(self.run, self.tick())
        if ok:
            scheduler.record_success(self.run, sid, {"ok": True}, 1, self.tick())
        else:
            scheduler.record_failure(self.run, sid, "boom", 1, self.tick())
        return self

    def finish(self) -> Run:
        scheduler.advance(self.run, self.tick())
        scheduler.finish(self.run, self.tick())
        return self

    def write(self, target: Engine, run_id: str = "run-1") -> None:
        snap = snapshot_of(self.run, run_id, 0, 0, seq=1, at=self.tick())
        with db.session_scope(target, write=True) as s:
            recording.record_snapshot(s, snap)


def test_trust_history_reads_the_agents_finished_runs(engine: Engine) -> None:
    day = timedelta(days=1)
    # completed, approved by a person, with a correction before it ran
    r = Run("good", "bot", T0).control(
        "apply_correction", step_id="b", correction={"updated_step": {"params": {"n": 2}}}
    )
    r.control("approve").step("a").step("b").finish().write(engine)
    # failed, approved by the policy
    Run("bad", "bot", T0 + day).approve_by_policy().step("a", ok=False).finish().write(engine)
    # rejected by a person; a refused control is not counted
    r = Run("nope", "bot", T0 + 2 * day).control("reject", by="bob", reason="wrong target")
    with pytest.raises(run_state.Refused):
        r.control("reject", by="carol", reason="again")
    r.write(engine)
    # rejected because nobody answered in time
    r = Run("late", "bot", T0 + 3 * day)
    run_state.audit(r.run, r.tick(), "system:timeout", "approval_timeout", True, "timed out")
    scheduler.end(r.run, PlanStatus.REJECTED, "approval timed out", r.now)
    r.write(engine)
    # a person rejected a gated step: partial
    r = Run("gated", "bot", T0 + 4 * day, on_error="continue")
    r.run.plan.steps[1].requires_approval = True
    r.control("approve").step("a")
    scheduler.advance(r.run, r.tick())
    r.control("reject_step", step_id="b", reason="too risky").finish().write(engine)
    # two runs of one plan: the first failed, the resumed one completed
    Run("twice", "bot", T0 + 5 * day).control("approve").step("a", ok=False).finish().write(
        engine, "run-1"
    )
    Run("twice", "bot", T0 + 6 * day).control("approve").step("a").step("b").finish().write(
        engine, "run-2"
    )
    # still waiting: not finished, not counted; another agent's run; a plan with no agent
    Run("waiting", "bot", T0 + 7 * day).write(engine)
    Run("theirs", "other", T0).control("approve").step("a").step("b").finish().write(engine)
    Run("nobody", None, T0).control("approve").step("a").step("b").finish().write(engine)

    with Session(engine) as s:
        history = trust_history(s, "bot")
        assert trust_history(s, "ghost").runs == []
        newest_two = trust_history(s, "bot", limit=2)
    got = {(r.plan_id, r.run_id): r for r in history.runs}
    assert list(got) == [
        ("twice", "run-2"),
        ("twice", "run-1"),
        ("gated", "run-1"),
        ("late", "run-1"),
        ("nope", "run-1"),
        ("bad", "run-1"),
        ("good", "run-1"),
    ]
    assert [(r.plan_id, r.run_id) for r in newest_two.runs] == list(got)[:2]
    good, bad, nope = got[("good", "run-1")], got[("bad", "run-1")], got[("nope", "run-1")]
    assert (good.status, good.approved_by, good.corrections) == ("completed", "alice", 1)
    assert (bad.status, bad.approved_by) == ("failed", "policy")
    assert (nope.status, nope.rejected_by, nope.approved_by) == ("rejected", "bob", None)
    late = got[("late", "run-1")]
    assert (late.status, late.rejected_by) == ("rejected", None)
    gated = got[("gated", "run-1")]
    assert (gated.status, gated.step_rejections) == ("partial", 1)
    assert all(r.ended_at.tzinfo is not None for r in history.runs)
    assert good.ended_at < bad.ended_at < nope.ended_at

    t = compute_trust(history, T0 + 8 * day)
    assert t.inputs["runs_considered"] == 6
    assert t.inputs["left_out"] == {"cancelled": 0, "rejected_unanswered": 1}
    assert (t.inputs["completed"], t.inputs["failed"], t.inputs["partial"]) == (2, 2, 1)
    assert t.inputs["approved_by_person"] == 4 and t.inputs["approved_by_policy_or_timeout"] == 1
    assert t.inputs["corrections"] == 1 and t.inputs["step_rejections"] == 1
    assert t.level == "low"  # two failures and a rejection among six runs

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
from store.trust import plan_submitter, trust_history

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

    def write(
        self, target: Engine, run_id: str = "run-1", submitted_by: str | None = None, seq: int = 1
    ) -> None:
        snap = snapshot_of(
            self.run, run_id, 0, 0, seq=seq, at=self.tick(), submitted_by=submitted_by
        )
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


def test_the_submitter_is_kept_and_self_approvals_earn_no_trust(engine: Engine) -> None:
    """An agent (and its key) approving its own plans: the approvals stand for the run,
    and the store says who approved and who submitted, so trust does not grow."""
    for i in range(4):  # approved by the agent itself
        Run(f"self-{i}", "farmer", T0).control("approve", by="farmer").step("a").step(
            "b"
        ).finish().write(engine, submitted_by="farm-key")
    for i in range(4):  # approved by the key that submitted them
        Run(f"key-{i}", "farmer", T0).control("approve", by="farm-key").step("a").step(
            "b"
        ).finish().write(engine, submitted_by="farm-key")
    r = Run("vouched", "honest", T0).control("approve", by="alice").step("a").step("b")
    r.finish().write(engine, submitted_by="farm-key")
    # a later snapshot naming nobody (a resumed run) or someone else keeps the first one
    r.write(engine, seq=2)
    r.write(engine, seq=3, submitted_by="someone-else")
    with Session(engine) as s:
        farmed = trust_history(s, "farmer")
        honest = trust_history(s, "honest")
        assert plan_submitter(s, "vouched") == "farm-key"
        assert plan_submitter(s, "nope") is None and plan_submitter(s, None) is None
    assert {(x.approved_by, x.submitted_by, x.agent_id) for x in farmed.runs} == {
        ("farmer", "farm-key", "farmer"),
        ("farm-key", "farm-key", "farmer"),
    }
    t = compute_trust(farmed, T0 + timedelta(days=1))
    assert t.inputs["approved_by_self"] == 8 and t.inputs["approved_by_person"] == 0
    assert (t.score, t.level) == (0.3, "low")
    assert compute_trust(honest, T0).inputs["approved_by_person"] == 1


def test_a_new_agent_id_starts_from_its_submitters_record(engine: Engine) -> None:
    for i in range(3):  # a bad record: three plans a person rejected
        Run(f"bad-{i}", "old-name", T0).control("reject", by="alice", reason="no").write(
            engine, submitted_by="k"
        )
    Run("good", "other", T0).control("approve").step("a").step("b").finish().write(
        engine, submitted_by="someone"
    )
    now = T0 + timedelta(days=1)
    with Session(engine) as s:
        renamed = trust_history(s, "new-name", submitted_by="k")
        nameless = trust_history(s, None, submitted_by="k")
        elsewhere = trust_history(s, "new-name", submitted_by="someone-new")
        plain = trust_history(s, "new-name")
    assert renamed.from_submitter and renamed.own_runs == 0
    assert sorted(x.plan_id for x in renamed.runs) == ["bad-0", "bad-1", "bad-2"]
    t = compute_trust(renamed, now)
    assert t.level == "untrusted" and t.inputs["from_submitter"] == "k"
    assert "so its trust starts from the record of its submitter k" in t.explanation
    assert compute_trust(nameless, now).level == "untrusted"
    for fresh in (elsewhere, plain):
        assert fresh.runs == [] and compute_trust(fresh, now).score == 0.3

    # One good run under the new name does not wash the record: with fewer than min_runs
    # runs of its own, the agent's runs and its submitter's count together.
    Run("one-good", "new-name", T0 + timedelta(hours=1)).control("approve").step("a").step(
        "b"
    ).finish().write(engine, submitted_by="k")
    with Session(engine) as s:
        mixed = trust_history(s, "new-name", submitted_by="k", min_own_runs=3)
        own = trust_history(s, "new-name", submitted_by="k", min_own_runs=1)
    assert mixed.from_submitter and mixed.own_runs == 1 and len(mixed.runs) == 4
    # below a newcomer's 0.30, where the one run alone would give 0.50
    assert compute_trust(mixed, now).score < 0.3 < 0.45 < compute_trust(own, now).score
    assert not own.from_submitter and [x.plan_id for x in own.runs] == ["one-good"]

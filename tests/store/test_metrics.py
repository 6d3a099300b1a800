"""Planning metrics (:mod:`store.metrics`, :mod:`plans.quality`) on SQLite and
PostgreSQL, with every figure asserted exactly.

The store is filled through its own writers: plan runs driven by the pure engine on a
fake clock and written with ``recording.record_snapshot``, planner runs with
``knowledge.record_generation``. :func:`fill_store` is shared with the API and dashboard
tests.

PostgreSQL is expected on 127.0.0.1:5432 (``PLANSMITH_TEST_POSTGRES_URL`` to point
elsewhere); without it the PostgreSQL cases fail, they are not skipped.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from sqlalchemy.engine import Engine

from contracts.snapshots import snapshot_of
from plans.models import Plan, ToolSpec
from plans.policy import PolicyThresholds, compute_trust
from plans.quality import critical_path, parse_step_map
from plans.run_state import PlanRun, new_run
from plans.scheduler import advance, finish, record_failure, record_success
from plans.steering import apply_control, parse_control
from store import db, knowledge, recording
from store.metrics.counts import store_counts
from store.metrics.planner import planner_stats
from store.metrics.scores import plan_quality, recent_qualities, version_diffs
from store.metrics.success import agents, success_by
from store.metrics.trends import buckets, trends
from store.metrics.waiting import waiting_plans
from store.trust import trust_history

NOW = datetime(2025, 3, 10, 18, 0, tzinfo=UTC)
DAY = timedelta(days=1)
CATALOG = {
    name: ToolSpec(
        name=name,
        description=name,
        params_schema={"type": "object", "properties": {"n": {"type": "integer"}}},
    )
    for name in ("fetch", "store", "notify")
}


# --- databases ------------------------------------------------------------------------


# --- building plan runs on a fake clock ----------------------------------------------


class Sim:
    """Drives the pure engine like the workflow does, with exact step durations."""

    def __init__(
        self,
        plan_id: str,
        steps: list[dict[str, Any]],
        at: datetime,
        agent_id: str | None = None,
        **options: Any,
    ):
        self.now = at
        plan = Plan.model_validate(
            {
                "id": plan_id,
                "title": f"plan {plan_id}",
                "agent_id": agent_id,
                "options": options,
                "steps": steps,
            }
        )
        self.run: PlanRun = new_run(plan, at)
        self.run.approval_required = True
        self.seq = 0

    def control(self, name: str, **payload: Any) -> None:
        payload.setdefault("by", "alice")
        apply_control(self.run, name, parse_control(name, payload), self.now, CATALOG)

    def execute(
        self, durations: dict[str, float], fail: frozenset[str] = frozenset(), end: bool = True
    ) -> None:
        """Run every step that can start; each takes its duration (seconds)."""
        running: dict[str, datetime] = {}
        while True:
            for sid in advance(self.run, self.now):
                running[sid] = self.now + timedelta(seconds=durations.get(sid, 1.0))
            if not running:
                break
            sid = min(running, key=lambda k: (running[k], k))
            self.now = running.pop(sid)
            if sid in fail:
                record_failure(self.run, sid, "boom", 2, self.now)
            else:
                record_success(self.run, sid, {"done": sid}, 1, self.now)
        if end:
            finish(self.run, self.now)

    def save(self, engine: Engine) -> None:
        self.seq += 1
        snap = snapshot_of(self.run, f"run-{self.run.plan.id}", 0, 0, seq=self.seq, at=self.now)
        with db.session_scope(engine, write=True) as s:
            recording.record_snapshot(s, snap)


def chain(*tools: str) -> list[dict[str, Any]]:
    ids = "abcdefgh"
    return [
        {"id": ids[i], "tool": t, **({"depends_on": [ids[i - 1]]} if i else {})}
        for i, t in enumerate(tools)
    ]


@dataclass
class FilledStore:
    now: datetime
    finished: list[str]
    waiting: list[str]


def fill_store(engine: Engine, now: datetime = NOW) -> FilledStore:
    """Four finished plans over three days, two plans waiting for a person, and three
    planner runs. The figures below follow from these numbers by hand."""
    d8, d9, d10 = now - 2 * DAY, now - DAY, now - timedelta(hours=1)

    alpha = Sim("alpha", chain("fetch", "store"), d8, agent_id="bot-a")
    alpha.control("approve")
    alpha.execute({"a": 10, "b": 20})
    alpha.save(engine)

    beta = Sim("beta", chain("fetch", "store"), d8 + timedelta(hours=1), agent_id="bot-a")
    beta.control("approve")
    beta.control(
        "apply_correction", step_id="b", correction={"updated_step": {"description": "twice"}}
    )
    beta.execute({"a": 30, "b": 20})
    beta.save(engine)

    gamma = Sim("gamma", chain("fetch", "store"), d9, agent_id="bot-b")
    gamma.control("approve")
    gamma.execute({"a": 5}, fail=frozenset({"a"}))
    gamma.save(engine)

    zeta = Sim(
        "zeta",
        [
            {"id": "a", "tool": "fetch"},
            {"id": "b", "tool": "store"},
            {"id": "c", "tool": "fetch"},
        ],
        d10 - timedelta(minutes=1),
        on_error="continue",
    )
    zeta.control("approve")
    zeta.execute({"a": 10, "b": 5, "c": 10}, fail=frozenset({"b"}))
    zeta.save(engine)

    # waiting for people: a plan approval (oldest) and a step gate
    delta = Sim("delta", chain("fetch"), now - timedelta(hours=3), agent_id="bot-b")
    delta.save(engine)
    eps = Sim(
        "eps",
        [
            {"id": "a", "tool": "notify"},
            {"id": "gate", "kind": "approval", "depends_on": ["a"], "description": "ship it?"},
        ],
        now - timedelta(hours=2),
        agent_id="bot-b",
    )
    eps.control("approve")
    eps.execute({"a": 60}, end=False)
    eps.save(engine)

    with db.session_scope(engine, write=True) as s:
        knowledge.record_generation(
            s,
            id="gen-alpha",
            plan_id="alpha",
            created_at=d8 - timedelta(minutes=5),
            rounds=2,
            problems=2,
            lessons_applied=[1, 2],
            input_tokens=1000,
            output_tokens=200,
            latency_ms=300.0,
        )
        knowledge.record_generation(
            s,
            id="gen-gamma",
            plan_id="gamma",
            created_at=d9 - timedelta(minutes=5),
            rounds=1,
            problems=0,
            offline=True,
            input_tokens=500,
            output_tokens=100,
            latency_ms=100.0,
        )
        knowledge.record_generation(
            s,
            id="gen-failed",
            created_at=d9 - timedelta(minutes=1),
            ok=False,
            rounds=3,
            problems=5,
            input_tokens=1500,
            output_tokens=300,
            latency_ms=500.0,
        )
    return FilledStore(
        now=now, finished=["alpha", "beta", "gamma", "zeta"], waiting=["delta", "eps"]
    )


# --- plan quality ---------------------------------------------------------------------


def test_quality_components_and_scores(engine: Engine) -> None:
    fill_store(engine)
    with db.session_scope(engine) as s:
        q = {p: plan_quality(s, p) for p in ("alpha", "beta", "gamma", "zeta", "delta")}
        assert plan_quality(s, "nope") is None
    alpha, beta, gamma, zeta, delta = (q[p] for p in ("alpha", "beta", "gamma", "zeta", "delta"))
    assert alpha is not None and beta is not None and gamma is not None
    assert zeta is not None and delta is not None

    # alpha: completed, no correction, 2 validation problems, on time:
    # 0.4*1 + 0.25*1 + 0.15*0.5 + 0.2*1
    values = {k: c.value for k, c in alpha.components.items()}
    assert values == {
        "success": 1.0,
        "corrections": 1.0,
        "validation_problems": 0.5,
        "duration_vs_estimate": 1.0,
    }
    assert alpha.score == 0.925
    assert alpha.components["duration_vs_estimate"].detail == {
        "actual_s": 30.0,
        "estimate_s": 30.0,  # fetch: median of beta 30, zeta 10, 10; store: beta 20
        "ratio": 1.0,
        "estimated_from": {"history": 2, "timeout": 0},
    }
    assert alpha.explanation.startswith("0.93 = 0.40 x success 1.00 (run completed)")

    # beta: one correction, hand-written (no validation component), 50s against 30s:
    # (0.4*1 + 0.25*2/3 + 0.2*0.6) / 0.85
    values = {k: c.value for k, c in beta.components.items()}
    assert values == {
        "success": 1.0,
        "corrections": 0.6667,
        "validation_problems": None,
        "duration_vs_estimate": 0.6,
    }
    assert beta.score == 0.8078 and beta.version == 2
    assert beta.components["duration_vs_estimate"].detail["actual_s"] == 50.0
    assert beta.components["duration_vs_estimate"].detail["estimate_s"] == 30.0
    assert "not applicable: validation_problems" in beta.explanation

    # gamma: failed (0), planner had no problem (1), failed fast (5s against 10s)
    assert gamma.components["success"].value == 0.0
    assert gamma.components["validation_problems"].value == 1.0
    assert gamma.components["duration_vs_estimate"].detail["estimate_s"] == 10.0
    assert gamma.score == 0.6

    # zeta: partial, 2 of 3 steps; parallel steps: the critical path is the longest one
    assert zeta.status == "partial" and zeta.components["success"].value == 0.6667
    assert zeta.components["success"].detail == {
        "status": "partial",
        "steps_completed": 2,
        "steps_counted": 3,
    }
    assert zeta.components["duration_vs_estimate"].detail["actual_s"] == 10.0
    assert zeta.components["duration_vs_estimate"].detail["estimate_s"] == 20.0
    assert zeta.score == 0.8431

    # delta waits for approval: no score yet
    assert delta.score is None and delta.status == "pending_approval"
    assert delta.components["success"].value is None
    assert delta.explanation.startswith("no score yet")


def test_duration_falls_back_to_timeouts_without_history(engine: Engine) -> None:
    solo = Sim("solo", chain("fetch", "store"), NOW - DAY, step_timeout_s=60)
    solo.control("approve")
    solo.execute({"a": 90, "b": 10})
    solo.save(engine)
    with db.session_scope(engine) as s:
        q = plan_quality(s, "solo")
    assert q is not None
    assert q.components["duration_vs_estimate"].detail == {
        "actual_s": 100.0,
        "estimate_s": 120.0,
        "ratio": 0.8333,
        "estimated_from": {"history": 0, "timeout": 2},
    }
    assert q.components["duration_vs_estimate"].value == 1.0


def test_recent_qualities_and_version_diffs(engine: Engine) -> None:
    fill_store(engine)
    with db.session_scope(engine) as s:
        recent = recent_qualities(s, limit=3)
        diffs = version_diffs(s, "beta")
        assert version_diffs(s, "alpha") == []
        assert version_diffs(s, "nope") is None
    # plans that have run, most recently updated first
    assert [q.plan_id for q in recent] == ["zeta", "eps", "delta"]
    assert diffs is not None and len(diffs) == 1
    d = diffs[0]
    assert (d.version, d.by, d.step_id, d.fields) == (2, "alice", "b", ["b.description"])
    assert d.diff == {"b": {"description": {"old": "", "new": "twice"}}}


# --- success rates --------------------------------------------------------------------


def test_success_by_agent_tool_and_step_kind(engine: Engine) -> None:
    fill_store(engine)
    with db.session_scope(engine) as s:
        by_agent = {r.key: r for r in success_by(s, "agent")}
        by_tool = {r.key: r for r in success_by(s, "tool")}
        by_kind = {r.key: r for r in success_by(s, "step_kind")}
        recent = {r.key: r for r in success_by(s, "agent", since=NOW - timedelta(hours=30))}
        with pytest.raises(ValueError):
            success_by(s, "colour")  # type: ignore[arg-type]

    a = by_agent["bot-a"]
    assert a.runs is not None and a.runs.model_dump() == {
        "finished": 2,
        "completed": 2,
        "partial": 0,
        "failed": 0,
        "cancelled": 0,
        "rejected": 0,
    }
    assert (a.success_rate, a.step_success_rate, a.steps.completed) == (1.0, 1.0, 4)
    b = by_agent["bot-b"]  # gamma failed; delta and eps still wait (not finished)
    assert b.runs is not None and (b.runs.finished, b.runs.failed) == (1, 1)
    assert b.steps.model_dump() == {"completed": 1, "failed": 1, "skipped": 1, "cancelled": 0}
    assert (b.success_rate, b.step_success_rate) == (0.0, 0.5)
    none = by_agent[None]
    assert none.runs is not None and none.runs.partial == 1 and none.success_rate == 0.0
    assert list(by_agent) == ["bot-a", "bot-b", None]
    assert set(recent) == {"bot-b", None}  # runs created in the last 30 hours

    fetch = by_tool["fetch"]
    assert fetch.steps.model_dump() == {"completed": 4, "failed": 1, "skipped": 0, "cancelled": 0}
    assert (fetch.success_rate, fetch.mean_duration_s, fetch.attempts) == (0.8, 15.0, 6)
    store = by_tool["store"]
    assert store.steps.model_dump() == {"completed": 2, "failed": 1, "skipped": 1, "cancelled": 0}
    assert (store.success_rate, store.mean_duration_s) == (0.6667, 20.0)
    assert by_tool["notify"].success_rate == 1.0 and by_tool["notify"].mean_duration_s == 60.0
    assert list(by_kind) == ["tool"]  # the approval gate still waits
    assert by_kind["tool"].steps.completed == 7 and by_kind["tool"].success_rate == 0.7778


# --- trends, people, planner ----------------------------------------------------------


def test_trends_by_day(engine: Engine) -> None:
    fill_store(engine)
    with db.session_scope(engine) as s:
        t = trends(s, "day", 7, now=NOW)
        hourly = trends(s, "hour", 1, now=NOW)
        weekly = trends(s, "week", 14, now=NOW)
    assert len(t.points) == 7 and t.points[0].start == datetime(2025, 3, 4, tzinfo=UTC)
    assert t.end == datetime(2025, 3, 11, tzinfo=UTC)
    by_day = {p.start.day: p for p in t.points}
    assert [by_day[d].finished for d in range(4, 11)] == [0, 0, 0, 0, 2, 1, 1]
    assert by_day[8].success_rate == 1.0 and by_day[8].mean_quality == 0.8664
    assert by_day[9].success_rate == 0.0 and by_day[9].mean_quality == 0.6
    assert by_day[10].completed == 0 and by_day[10].mean_quality == 0.8431
    assert by_day[7].success_rate is None and by_day[7].mean_quality is None
    assert by_day[8].planner_runs == 1 and by_day[8].mean_planner_rounds == 2.0
    assert by_day[9].planner_runs == 2 and by_day[9].mean_planner_rounds == 2.0
    assert len(hourly.points) == 24 and sum(p.finished for p in hourly.points) == 1
    assert [p.start.weekday() for p in weekly.points] == [0, 0]
    monday = datetime(2025, 3, 10, tzinfo=UTC)  # NOW is a Monday
    assert buckets(1, "week", NOW) == [monday]
    assert buckets(8, "week", NOW) == [monday - 7 * DAY, monday]
    assert sum(p.finished for p in weekly.points) == 4


def test_waiting_plans(engine: Engine) -> None:
    fill_store(engine)
    with db.session_scope(engine) as s:
        waiting = waiting_plans(s, now=NOW)
    assert [(w.plan_id, w.status, w.kind) for w in waiting] == [
        ("delta", "pending_approval", "plan_approval"),
        ("eps", "waiting_approval", "step_approval"),
    ]
    delta, eps = waiting
    assert delta.waiting_s == 3 * 3600 and delta.agent_id == "bot-b"
    assert eps.since == NOW - timedelta(hours=2) + timedelta(seconds=60)  # after step a
    assert eps.waiting[0].step_id == "gate" and eps.waiting[0].question == "ship it?"


def test_planner_stats(engine: Engine) -> None:
    with db.session_scope(engine) as s:
        empty = planner_stats(s)
    assert empty.runs == 0 and empty.mean_rounds is None and empty.offline_share is None
    fill_store(engine)
    with db.session_scope(engine) as s:
        p = planner_stats(s)
        recent = planner_stats(s, since=NOW - timedelta(hours=30))
    assert p.model_dump() == {
        "runs": 3,
        "ok": 2,
        "failed": 1,
        "offline": 1,
        "offline_share": 0.3333,
        "rounds": 6,
        "mean_rounds": 2.0,
        "repaired": 2,
        "problems": 7,
        "mean_problems": 2.3333,
        "lessons_applied": 2,
        "plans": 2,
        "input_tokens": 3000,
        "output_tokens": 600,
        "mean_latency_ms": 300.0,
    }
    assert recent.runs == 2 and recent.problems == 5


def test_agents_and_store_counts(engine: Engine) -> None:
    fill_store(engine)
    with db.session_scope(engine) as s:
        rows = {r.agent_id: r for r in agents(s, now=NOW)}
        counts = store_counts(s, now=NOW)
    assert rows["bot-a"].mean_quality == 0.8664 and rows["bot-a"].plans_scored == 2
    assert rows["bot-b"].mean_quality == 0.6 and rows["bot-b"].success_rate == 0.0
    assert rows[None].trust is None
    with db.session_scope(engine) as s:  # the approval policy's own trust, unchanged
        expected = compute_trust(trust_history(s, "bot-a"), NOW, PolicyThresholds())
    assert rows["bot-a"].trust == expected
    assert counts.plans_by_status == {
        "completed": 2,
        "failed": 1,
        "partial": 1,
        "pending_approval": 1,
        "waiting_approval": 1,
    }
    assert counts.waits_by_kind == {"plan_approval": 1, "step_approval": 1}
    assert counts.oldest_wait_s_by_kind == {"plan_approval": 10800.0, "step_approval": 7140.0}
    assert counts.plans_waiting == 2
    assert ("bot-a", "completed", 2) in counts.runs_by_agent_status
    assert ("tool", "fetch", "completed", 4) in counts.steps_by_kind_tool_status
    assert counts.planner.runs == 3


def test_agents_without_trust_when_it_cannot_be_computed(
    engine: Engine, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    fill_store(engine)

    def broken(*args: Any, **kwargs: Any) -> Any:
        raise RuntimeError("no trust today")

    monkeypatch.setattr("store.metrics.success.compute_trust", broken)
    with db.session_scope(engine) as s:
        rows = {r.agent_id: r for r in agents(s, now=NOW)}
    assert rows["bot-a"].trust is None and rows["bot-a"].mean_quality == 0.8664
    assert "no trust today" in caplog.text


def test_llm_step_tokens_are_summed_in_sql(engine: Engine) -> None:
    sim = Sim("talk", [{"id": "ask", "kind": "llm", "params": {"prompt": "hi"}}], NOW - DAY)
    sim.control("approve")
    advance(sim.run, sim.now)
    record_success(sim.run, "ask", {"text": "x", "input_tokens": 12, "output_tokens": 3}, 1, NOW)
    finish(sim.run, NOW)
    sim.save(engine)
    other = Sim("odd", [{"id": "a", "tool": "fetch"}], NOW - DAY)
    other.control("approve")
    advance(other.run, other.now)
    record_success(other.run, "a", {"input_tokens": "many"}, 1, NOW)  # not a number
    finish(other.run, NOW)
    other.save(engine)
    with db.session_scope(engine) as s:
        counts = store_counts(s, now=NOW)
        kinds = {r.key for r in success_by(s, "step_kind")}
    assert (counts.llm_step_input_tokens, counts.llm_step_output_tokens) == (12, 3)
    assert kinds == {"llm", "tool"}


def test_empty_store(engine: Engine) -> None:
    with db.session_scope(engine) as s:
        assert waiting_plans(s) == []
        assert recent_qualities(s) == []
        assert success_by(s, "agent") == []
        assert agents(s) == []
        t = trends(s, "day", 30)
        assert len(t.points) == 30 and all(p.finished == 0 for p in t.points)
        counts = store_counts(s)
        assert counts.plans_by_status == {} and counts.plans_waiting == 0


def test_critical_path() -> None:
    steps = parse_step_map(
        {
            "options": {"step_timeout_s": 7},
            "steps": [
                {"id": "a"},
                {"id": "b", "depends_on": ["a"], "timeout_s": 3},
                {"id": "c", "depends_on": ["a"]},
                {"id": "d", "depends_on": ["b", "c"], "kind": "llm", "tool": "ignored"},
            ],
        }
    )
    assert steps["d"].tool is None and steps["b"].timeout_s == 3 and steps["a"].timeout_s == 7
    assert critical_path(steps, {"a": 1, "b": 5, "c": 2, "d": 1}) == 7
    assert critical_path(steps, {"c": 2}) == 2
    assert critical_path({}, {}) == 0

"""store.knowledge on SQLite and PostgreSQL: model configs, lessons learnt from what people
did to a plan (through the same snapshots the worker writes), and their matching."""

from __future__ import annotations

from datetime import timedelta

from sqlalchemy.engine import Engine

from contracts.snapshots import snapshot_of
from plans.deadlines import expire_waits
from plans.models import Plan, PlanStatus
from plans.run_state import new_run
from plans.scheduler import advance, end, record_success
from plans.steering import apply_control, parse_control
from store import db, knowledge
from tests.store.test_store import CATALOG, T0, write

DOC = {
    "id": "deploy-notes",
    "title": "Publish the release notes",
    "agent_id": "writer",
    "options": {"require_approval": True},
    "steps": [
        {"id": "fetch", "tool": "noop", "params": {"n": 1}},
        {
            "id": "ask",
            "tool": "noop",
            "depends_on": ["fetch"],
            "requires_clarification": True,
            "clarification_question": "Which audience?",
        },
    ],
}


def control(run, name: str, arg: dict, minutes: int) -> None:  # type: ignore[no-untyped-def]
    apply_control(run, name, parse_control(name, arg), T0 + timedelta(minutes=minutes), CATALOG)


def lessons(engine: Engine) -> list[dict]:
    with db.session_scope(engine) as s:
        return sorted(knowledge.list_lessons(s), key=lambda x: x["source"])


def test_corrections_answers_and_rejections_become_lessons_once(engine: Engine) -> None:
    run = new_run(Plan.model_validate(DOC), T0)
    control(
        run,
        "apply_correction",
        {
            "by": "bob",
            "step_id": "fetch",
            "correction": {"updated_step": {**DOC["steps"][0], "params": {"n": 2}}},
        },
        1,
    )
    control(run, "approve", {"by": "bob"}, 2)
    advance(run, T0 + timedelta(minutes=2))
    record_success(run, "fetch", {"n": 2}, 1, T0 + timedelta(minutes=2))
    advance(run, T0 + timedelta(minutes=2))
    control(run, "answer_clarification", {"by": "bob", "step_id": "ask", "answer": "ops"}, 3)
    snap = snapshot_of(run, "r1", 0, 0, seq=1, at=T0 + timedelta(minutes=5))
    write(engine, snap)
    write(engine, snap)  # the same snapshot again: nothing more
    other = new_run(Plan.model_validate({**DOC, "id": "deploy-notes-2"}), T0)
    control(other, "reject", {"by": "carol", "reason": "not before Friday"}, 4)
    write(engine, snapshot_of(other, "r2", 0, 0, seq=1, at=T0 + timedelta(minutes=5)))
    got = lessons(engine)
    assert [x["source"] for x in got] == ["clarification", "correction", "rejection"]
    clar, corr, rej = got
    assert corr["what_wrong"] == "step fetch (noop): params.n was 1"
    assert corr["fix"] == "params.n: 2" and corr["by"] == "bob"
    assert corr["change"] == {
        "tool": "noop",
        "step_kind": "tool",
        "params": {"n": {"old": 1, "new": 2}},
        "fields": {},
    }
    assert clar["what_wrong"] == "step ask (noop) had to ask: Which audience?"
    assert '"ops"' in clar["fix"] or "ops" in clar["fix"]
    assert rej["what_wrong"] == "a person rejected the whole plan: not before Friday"
    assert rej["by"] == "carol" and rej["agent_id"] == "writer"
    assert all(x["task"] == "Publish the release notes" for x in got)
    assert rej["tools"] == ["noop"]


def test_relevant_lessons_rank_by_task_words_and_tools(engine: Engine) -> None:
    with db.session_scope(engine, write=True) as s:
        a = knowledge.add_lesson(
            s, source="correction", what_wrong="a", task="publish the release notes", tools=["x"]
        )
        b = knowledge.add_lesson(
            s, source="rejection", what_wrong="b", task="publish the notes of the release"
        )
        knowledge.add_lesson(s, source="rejection", what_wrong="c", task="rotate the keys")
    with db.session_scope(engine) as s:
        found = knowledge.relevant_lessons(s, "publishing release notes", ["x"])
    assert [x["id"] for x in found] == [a["id"], b["id"]]  # "rotate the keys" never matches
    assert found[0]["score"] > found[1]["score"] >= knowledge.MIN_LESSON_SCORE
    assert found[0]["summary"].startswith("correction [tools: x]: a")
    with db.session_scope(engine, write=True) as s:
        knowledge.mark_lessons_applied(s, [a["id"], a["id"]])
    with db.session_scope(engine) as s:
        assert (
            next(x for x in knowledge.list_lessons(s) if x["id"] == a["id"])["times_applied"] == 1
        )


def test_model_configs_round_trip(engine: Engine) -> None:
    with db.session_scope(engine, write=True) as s:
        knowledge.put_model_config(s, name="m2", capabilities=["fast", "general"], priority=5)
        knowledge.put_model_config(s, name="m1", capabilities=["planning"], enabled=False)
        knowledge.put_model_config(s, name="m2", capabilities=["fast"], priority=1)
    with db.session_scope(engine) as s:
        rows = knowledge.list_model_configs(s)
    assert [(r["name"], r["capabilities"], r["priority"], r["enabled"]) for r in rows] == [
        ("m2", ["fast"], 1, True),
        ("m1", ["planning"], 100, False),
    ]
    with db.session_scope(engine, write=True) as s:
        assert knowledge.delete_model_config(s, "m1") is True
        assert knowledge.delete_model_config(s, "m1") is False


def test_a_timeout_is_not_learnt_as_a_persons_rejection(engine: Engine) -> None:
    # the plan's approval ran out (as the workflow ends it) ...
    doc = {**DOC, "id": "timed-out", "steps": [DOC["steps"][0]]}
    run = new_run(Plan.model_validate(doc), T0)
    end(run, PlanStatus.REJECTED, "approval timed out after 60s; on_approval_timeout=reject", T0)
    write(engine, snapshot_of(run, "r3", 0, 0, seq=1, at=T0 + timedelta(minutes=5)))
    # ... and a step's gate ran out
    gated = {**DOC["steps"][0], "requires_approval": True}
    doc = {**DOC, "id": "gate-timed-out", "steps": [gated]}
    doc["options"] = {"require_approval": False, "step_approval_timeout_s": 60}
    run = new_run(Plan.model_validate(doc), T0)
    control(run, "approve", {"by": "bob"}, 0)
    advance(run, T0)
    assert expire_waits(run, T0 + timedelta(minutes=5))
    assert run.steps["fetch"].skip_reason is not None
    write(engine, snapshot_of(run, "r4", 0, 0, seq=1, at=T0 + timedelta(minutes=5)))
    assert [x for x in lessons(engine) if x["plan_id"] in ("timed-out", "gate-timed-out")] == []

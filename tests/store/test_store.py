"""The store on SQLite and on PostgreSQL: migrations, idempotent snapshots, reads, blobs.

PostgreSQL is expected on 127.0.0.1:5432 (``PLANSMITH_TEST_POSTGRES_URL`` to point
elsewhere). The tests make a fresh database for the session (one schema per test in it)
and drop it at the end. If PostgreSQL is not reachable they fail, they are not skipped.
"""

from __future__ import annotations

import os
import threading
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import sqlalchemy as sa
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy.engine import Engine
from sqlmodel import Session, SQLModel, col, func, select
from temporalio.testing import ActivityEnvironment

from activities import persist
from config import get_settings
from contracts.snapshots import (
    OutputRef,
    PlanSnapshot,
    RecordResult,
    SnapshotCursor,
    as_output_ref,
    snapshot_of,
)
from plans.models import Plan, PlanStatus, StepStatus, ToolSpec
from plans.run_state import MAX_LOG_ENTRIES, StepRun, audit, log, new_run
from plans.scheduler import advance, finish, record_failure, record_success, running_steps
from plans.steering import apply_control, parse_control
from plans.views import status_view
from store import blobs, db, drafts, reads, recording, run_closing
from store.models import (
    AuditRecord,
    BlobRecord,
    LogRecord,
    PlanRecord,
    PlanVersionRecord,
    RunRecord,
    StepResultRecord,
)
from tests.helpers import activity_deps

T0 = datetime(2025, 3, 1, 12, 0, tzinfo=UTC)
CATALOG = {
    "noop": ToolSpec(
        name="noop",
        description="does nothing",
        params_schema={"type": "object", "properties": {"n": {"type": "integer"}}},
    )
}


def count(engine: Engine, model: type[SQLModel]) -> int:
    with Session(engine) as s:
        return s.exec(select(func.count()).select_from(model)).one()


def write(engine: Engine, snap: PlanSnapshot) -> RecordResult:
    with db.session_scope(engine, write=True) as s:
        return recording.record_snapshot(s, snap)


# --- plan runs, driven by hand ---------------------------------------------------------


class Driver:
    """Drives the pure engine with a fake clock, like the workflow does."""

    def __init__(self, steps: list[dict[str, Any]], plan_id: str = "p1", **options: Any):
        self.now = T0
        plan = Plan.model_validate(
            {"id": plan_id, "title": f"plan {plan_id}", "options": options, "steps": steps}
        )
        self.run = new_run(plan, self.now)
        self.run.approval_required = True

    def tick(self) -> datetime:
        self.now += timedelta(seconds=1)
        return self.now

    def control(self, name: str, **payload: Any) -> None:
        payload.setdefault("by", "alice")
        apply_control(self.run, name, parse_control(name, payload), self.tick(), CATALOG)

    def step(self, ok: bool = True, output: Any = None) -> list[str]:
        advance(self.run, self.tick())
        started = running_steps(self.run)
        for sid in started:
            if ok:
                record_success(self.run, sid, output or {"step": sid}, 1, self.tick())
            else:
                record_failure(self.run, sid, "boom", 2, self.tick())
        return started

    def finish(self) -> None:
        while self.step():
            pass
        finish(self.run, self.tick())

    def snap(self, seq: int, logs_from: int = 0, audit_from: int = 0, **kw: Any) -> PlanSnapshot:
        return snapshot_of(
            self.run, kw.pop("run_id", "run-1"), logs_from, audit_from, seq=seq, at=self.now, **kw
        )


STEPS: list[dict[str, Any]] = [
    {"id": "a", "tool": "noop"},
    {"id": "b", "tool": "noop", "depends_on": ["a"]},
    {"id": "c", "tool": "noop", "depends_on": ["b"]},
]


def finished_driver() -> Driver:
    d = Driver(STEPS)
    d.control("approve")
    d.finish()
    return d


# --- migrations -----------------------------------------------------------------------


def test_migrations_apply_from_empty_and_match_the_models(db_url: str) -> None:
    eng = db.make_engine(db_url)
    try:
        assert db.current_revision(eng) is None
        db.migrate(eng)
        db.migrate(eng)  # at head already: nothing to do
        assert db.current_revision(eng) == db.HEAD_REVISION
        names = set(sa.inspect(eng).get_table_names())
        tables = {"plans", "plan_versions", "runs", "step_results", "logs", "audit", "blobs"}
        assert tables <= names
        with eng.connect() as conn:
            ctx = MigrationContext.configure(conn, opts={"compare_type": True})
            assert compare_metadata(ctx, SQLModel.metadata) == []
        cfg = db.alembic_config()
        with db.writer(eng).connect() as conn:
            cfg.attributes["connection"] = conn
            command.downgrade(cfg, "base")
            conn.commit()
        assert not tables & set(sa.inspect(eng).get_table_names())
        db.migrate(eng)
        assert db.current_revision(eng) == db.HEAD_REVISION
    finally:
        eng.dispose()


def test_sqlite_connections_use_wal_and_foreign_keys(tmp_path: Any) -> None:
    eng = db.make_engine(f"sqlite:///{tmp_path / 'x.db'}")
    with eng.connect() as conn:
        assert conn.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
        assert conn.exec_driver_sql("PRAGMA foreign_keys").scalar() == 1
    eng.dispose()


# --- snapshots (pure) -----------------------------------------------------------------


def test_snapshot_numbers_entries_absolutely_when_the_list_was_trimmed() -> None:
    d = Driver([{"id": "a", "tool": "noop"}])
    run = d.run.model_copy(update={"logs": [], "logs_total": 0})
    for i in range(MAX_LOG_ENTRIES + 20):
        log(run, T0, f"m{i}")  # the engine counts every entry ever appended
    assert run.logs_total == MAX_LOG_ENTRIES + 20
    snap = snapshot_of(run, "r", 0, 0, seq=1, at=T0)
    assert snap.logs_start == 20 and snap.logs_lost == 20
    assert [(n, e.message) for n, e in snap.numbered_logs()][:2] == [(20, "m20"), (21, "m21")]
    snap = snapshot_of(run, "r", MAX_LOG_ENTRIES + 15, 0, seq=2, at=T0)
    assert snap.logs_start == MAX_LOG_ENTRIES + 15 and snap.logs_lost == 0
    assert [e.message for e in snap.logs] == [f"m{i}" for i in range(515, 520)]
    assert snapshot_of(run, "r", run.logs_total, 0, seq=3, at=T0).logs == []


def test_snapshot_travels_as_json_and_cursor_sends_only_what_changed() -> None:
    d = Driver(STEPS)
    cursor = SnapshotCursor()
    first = cursor.take(d.run, "run-1", at=d.now)
    assert first is not None and first.seq == 1 and first.plan is not None
    assert {s.id for s in first.steps} == {"a", "b", "c"}
    assert PlanSnapshot.model_validate_json(first.model_dump_json()) == first
    assert cursor.take(d.run, "run-1", at=d.tick()) is None  # nothing changed
    d.control("approve")
    d.step()  # a runs and completes
    nxt = cursor.take(d.run, "run-1", at=d.now)
    assert nxt is not None and nxt.seq == 2 and nxt.plan is None
    assert [s.id for s in nxt.steps] == ["a"]
    assert nxt.logs_start == first.logs_start + len(first.logs)
    assert nxt.audit and nxt.audit_start == 0
    # continue-as-new carries the cursor's fields, not its memory of steps: all resent.
    carried = SnapshotCursor.model_validate(cursor.model_dump())
    again = carried.take(d.run, "run-1", at=d.tick(), force=True)
    assert again is not None and again.seq == 3 and len(again.steps) == 3 and not again.logs


def test_a_snapshot_that_would_only_repeat_the_last_is_skipped_when_asked() -> None:
    d = Driver(STEPS)
    asked: list[bool] = []

    def skip() -> bool:
        asked.append(True)
        return True

    cursor = SnapshotCursor()
    d.control("approve")
    d.step()
    first = cursor.take(d.run, "run-1", at=d.now, skip_repeats=skip)
    assert first is not None and first.logs  # the window moves on: the next starts later
    assert cursor.take(d.run, "run-1", at=d.tick(), skip_repeats=skip) is None
    assert asked  # asked only for such a repeat
    asked.clear()
    d.step()  # b runs and completes: news, sent without asking
    nxt = cursor.take(d.run, "run-1", at=d.now, skip_repeats=skip)
    assert nxt is not None and nxt.seq == first.seq + 1 and [s.id for s in nxt.steps] == ["b"]
    assert not asked
    # a run recorded before the patch (the answer is no) sends the repeat, as it did
    old = SnapshotCursor()
    assert old.take(d.run, "run-1", at=d.tick(), skip_repeats=lambda: False) is not None
    repeat = old.take(d.run, "run-1", at=d.tick(), skip_repeats=lambda: False)
    assert repeat is not None and not repeat.steps and not repeat.logs


# --- idempotent writes ----------------------------------------------------------------


def test_same_snapshot_twice_and_older_after_newer_change_nothing(engine: Engine) -> None:
    d = Driver(STEPS)
    old = d.snap(seq=1)
    d.control("approve")
    d.finish()
    new = d.snap(seq=2)
    first = write(engine, new)
    assert first.applied and first.steps == 3 and first.logs == len(d.run.logs)
    again = write(engine, new)
    assert again.applied and again.logs == 0 and again.audit == 0 and again.versions == 0
    late = write(engine, old)
    assert not late.applied and late.steps == 0 and late.logs == 0
    with Session(engine) as s:
        plan = s.get(PlanRecord, "p1")
        run = s.get(RunRecord, ("p1", "run-1"))
        assert plan is not None and run is not None
        assert plan.status == run.status == "completed" and run.snapshot_seq == 2
        assert run.finished_at is not None and run.finished_at == d.run.finished_at
        assert run.finished_at.tzinfo is not None
        steps = s.exec(select(StepResultRecord)).all()
        assert {r.step_id: r.status for r in steps} == dict.fromkeys("abc", "completed")
    assert count(engine, LogRecord) == len(d.run.logs)
    assert count(engine, AuditRecord) == len(d.run.audit)
    assert count(engine, PlanVersionRecord) == 1


def test_logs_and_audit_are_appended_once_across_overlapping_snapshots(engine: Engine) -> None:
    d = Driver(STEPS)
    d.control("approve")
    d.step()
    mid_logs, mid_audit = len(d.run.logs), len(d.run.audit)
    s1 = d.snap(seq=1)
    d.control("pause", reason="lunch")
    d.control("resume")
    d.finish()
    # overlaps s1 by two entries, and a third snapshot resends everything
    s2 = d.snap(seq=2, logs_from=mid_logs - 2, audit_from=max(mid_audit - 1, 0))
    s3 = d.snap(seq=3)
    added = [write(engine, s) for s in (s2, s1, s3, s2)]
    assert sum(r.logs for r in added) == len(d.run.logs)
    assert sum(r.audit for r in added) == len(d.run.audit)
    with Session(engine) as s:
        rows = s.exec(select(LogRecord).order_by(col(LogRecord.seq))).all()
        assert [r.seq for r in rows] == list(range(len(d.run.logs)))
        assert [r.message for r in rows] == [e.message for e in d.run.logs]
        actions = [a.action for a in reads.get_audit(s, "p1")]
        assert actions == [e.action for e in d.run.audit] == ["approve", "pause", "resume"]


def test_concurrent_writers_of_the_same_snapshots_do_not_duplicate_rows(engine: Engine) -> None:
    d = finished_driver()
    snaps = [d.snap(seq=n) for n in (1, 2, 3)]
    errors: list[BaseException] = []
    barrier = threading.Barrier(8)

    def writer(i: int) -> None:
        try:
            barrier.wait()
            write(engine, snaps[i % 3])
        except BaseException as e:  # pragma: no cover - reported below
            errors.append(e)

    threads = [threading.Thread(target=writer, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert count(engine, PlanRecord) == 1 and count(engine, RunRecord) == 1
    assert count(engine, StepResultRecord) == 3
    assert count(engine, LogRecord) == len(d.run.logs)
    assert count(engine, AuditRecord) == len(d.run.audit)
    with Session(engine) as s:
        run = s.get(RunRecord, ("p1", "run-1"))
        assert run is not None and run.snapshot_seq == 3


def test_a_newer_run_owns_the_plan_row_and_late_snapshots_of_the_old_one_do_not(
    engine: Engine,
) -> None:
    d = Driver(STEPS)
    d.control("approve")
    d.step(ok=False)
    d.finish()
    failed = d.snap(seq=5, run_id="run-1")
    carried = {k: v for k, v in d.run.steps.items()}
    d2 = Driver(STEPS)
    d2.now = d.tick() + timedelta(minutes=1)
    d2.run = new_run(d.run.plan, d2.now, carried)
    audit(d2.run, d2.now, "bob", "resume_from_failure", True)
    d2.control("approve")
    d2.finish()
    write(engine, d2.snap(seq=1, run_id="run-2", resumed_by="bob"))
    write(engine, failed)  # the old run's last snapshot arrives late
    with Session(engine) as s:
        plan = reads.get_plan(s, "p1")
        assert plan is not None and plan.status == "completed" and plan.last_run_id == "run-2"
        runs = reads.get_runs(s, "p1")
        assert [(r.run_id, r.status, r.resumed_by) for r in runs] == [
            ("run-1", "failed", None),
            ("run-2", "completed", "bob"),
        ]
        st = reads.get_status(s, "p1")
        assert st is not None and st.status == PlanStatus.COMPLETED
        assert reads.get_status(s, "p1", "run-1").status == PlanStatus.FAILED  # type: ignore[union-attr]
        logs = reads.get_logs(s, "p1")
        assert {r.run_id for r in logs} == {"run-1", "run-2"}
        assert logs[0].run_id == "run-1" and logs[-1].run_id == "run-2"


# --- reads ----------------------------------------------------------------------------


def test_status_from_the_store_is_the_status_query(engine: Engine) -> None:
    d = Driver(
        [
            {"id": "a", "tool": "noop", "description": "first"},
            {"id": "gate", "kind": "approval", "depends_on": ["a"], "requires_approval": True},
            {"id": "b", "tool": "noop", "depends_on": ["gate"]},
        ]
    )
    d.control("approve")
    d.step(output={"rows": list(range(1000))})  # a long output: the view shows a preview
    advance(d.run, d.tick())
    write(engine, d.snap(seq=1))
    with Session(engine) as s:
        st = reads.get_status(s, "p1")
    assert st is not None
    assert st.waiting_for is not None and st.waiting_for.kind == "step_approval"
    # the same as the workflow's status, counts and the recent changes included
    live = status_view(d.run)
    assert st.counts == live.counts == {"completed": 1, "waiting_approval": 1, "pending": 1}
    assert st.seq == live.seq > 0 and st.recent == live.recent
    assert st == live
    with Session(engine) as s:
        assert reads.get_status(s, "nope") is None


def test_list_plans_filters_by_status_and_pages(engine: Engine) -> None:
    drivers = []
    for i in range(5):
        d = Driver(STEPS, plan_id=f"p{i}")
        drivers.append(d)
        d.now += timedelta(minutes=i)
        if i % 2 == 0:
            d.control("approve")
            d.finish()
        write(engine, d.snap(seq=1))
    with Session(engine) as s:
        assert [p.id for p in reads.list_plans(s)] == ["p4", "p3", "p2", "p1", "p0"]
        done = reads.list_plans(s, status="completed")
        assert [p.id for p in done] == ["p4", "p2", "p0"]
        assert [p.id for p in reads.list_plans(s, PlanStatus.PENDING_APPROVAL)] == [
            "p3",
            "p1",
        ]
        assert [p.id for p in reads.list_plans(s, limit=2, offset=1)] == ["p3", "p2"]
        assert reads.list_plans(s, status=["completed", "pending_approval"], limit=10)
        plan = reads.get_plan(s, "p2")
        assert plan is not None and plan.document is not None
        assert Plan.model_validate(plan.document) == drivers[2].run.plan
        assert plan.created_at.tzinfo is not None
        assert reads.get_plan(s, "nope") is None


def test_logs_by_level_and_limit_and_audit_read_back(engine: Engine) -> None:
    d = Driver(STEPS)
    d.control("approve")
    log(d.run, d.tick(), "careful", "warning", "a")
    log(d.run, d.tick(), "noise", "debug")
    d.step(ok=False)  # a fails: an error log
    d.finish()
    write(engine, d.snap(seq=1))
    with Session(engine) as s:
        every = reads.get_logs(s, "p1")
        assert [e.message for e in every] == [e.message for e in d.run.logs]
        warn = reads.get_logs(s, "p1", level="warning")
        assert {e.level for e in warn} <= {"warning", "error"} and len(warn) >= 2
        assert warn[0].message == "careful"
        last2 = reads.get_logs(s, "p1", limit=2)
        assert [e.message for e in last2] == [e.message for e in d.run.logs[-2:]]
        on_a = reads.get_logs(s, "p1", step_id="a", level="warning")
        assert on_a[0].message == "careful" and {e.step_id for e in on_a} == {"a"}
        with pytest.raises(ValueError):
            reads.get_logs(s, "p1", level="loud")
        trail = reads.get_audit(s, "p1")
        assert [(a.by, a.action, a.accepted) for a in trail] == [("alice", "approve", True)]
        assert trail[0].at.tzinfo is not None


def test_versions_keep_every_document_and_diff(engine: Engine) -> None:
    d = Driver(STEPS, on_error="ask")
    d.control("approve")
    write(engine, d.snap(seq=1))
    d.step()
    patch = {"updated_step": {"params": {"n": 2}}}
    d.control("apply_correction", step_id="b", correction=patch)
    d.control("apply_correction", step_id="c", correction={"updated_step": {"description": "x"}})
    write(engine, d.snap(seq=2))
    with Session(engine) as s:
        versions = reads.get_versions(s, "p1", documents=True)
        assert [(v.version, v.by, v.step_id) for v in versions] == [
            (1, "author", None),
            (2, "alice", "b"),
            (3, "alice", "c"),
        ]
        assert versions[1].diff == {"b": {"params": {"old": {}, "new": {"n": 2}}}}
        docs = [Plan.model_validate(v.document) for v in versions]
        assert docs[0].step("b").params == {} and docs[1].step("b").params == {"n": 2}
        assert docs[1].step("c").description == "" and docs[2] == d.run.plan
        assert reads.get_versions(s, "p1")[0].document is None
        assert reads.get_plan_document(s, "p1") == d.run.plan
        assert reads.get_plan_document(s, "p1", 1) == docs[0]
        plan = reads.get_plan(s, "p1")
        assert plan is not None and plan.current_version == 3


def test_steps_read_back_as_the_engine_had_them(engine: Engine) -> None:
    d = Driver(STEPS)
    d.control("approve")
    d.step()
    d.step(ok=False)
    d.finish()
    write(engine, d.snap(seq=1))
    with Session(engine) as s:
        steps = reads.get_steps(s, "p1")
    assert steps == d.run.steps
    assert steps["b"].status == StepStatus.FAILED and steps["c"].skip_reason is not None


def test_save_plan_then_a_run_takes_over(engine: Engine) -> None:
    d = Driver(STEPS)
    with db.session_scope(engine, write=True) as s:
        row, created = drafts.save_plan(s, d.run.plan, at=T0 - timedelta(hours=1))
        assert created and row.status == "draft"
        _, again = drafts.save_plan(s, d.run.plan, at=T0)
        assert not again
    d.control("approve")
    d.finish()
    write(engine, d.snap(seq=1))
    with Session(engine) as s:
        plan = reads.get_plan(s, "p1")
        assert plan is not None and plan.status == "completed"
        assert plan.created_at == T0 - timedelta(hours=1)
        versions = reads.get_versions(s, "p1")
        assert [(v.version, v.change) for v in versions] == [(1, "created")]


def test_a_terminated_run_can_be_closed_by_the_api(engine: Engine) -> None:
    d = Driver(STEPS)
    d.control("approve")
    d.step()
    write(engine, d.snap(seq=1))
    with db.session_scope(engine, write=True) as s:
        why = "terminated in Temporal"
        assert run_closing.mark_run_ended(s, "p1", "run-1", PlanStatus.CANCELLED, why, d.tick())
        assert not run_closing.mark_run_ended(s, "p1", "run-1", PlanStatus.FAILED, why, d.now)
    write(engine, d.snap(seq=1))  # a late snapshot from before does not reopen it
    with Session(engine) as s:
        st = reads.get_status(s, "p1")
        assert st is not None and st.status == PlanStatus.CANCELLED and st.waiting == []
        assert reads.get_plan(s, "p1").status == "cancelled"  # type: ignore[union-attr]


# --- blobs and large outputs ----------------------------------------------------------


def test_blobs_round_trip_once(engine: Engine) -> None:
    data = os.urandom(300_000)
    with db.session_scope(engine, write=True) as s:
        blob = blobs.put_blob(s, data)
        assert blob.key.startswith("sha256:") and blob.size == len(data)
        assert blobs.put_blob(s, data) == blob
        with pytest.raises(blobs.BlobMismatch):
            blobs.put_blob(s, b"other", key=blob.key)
    with Session(engine) as s:
        assert blobs.get_blob(s, blob.key) == data
        assert blobs.get_blob(s, "missing") is None
    assert count(engine, BlobRecord) == 1


def test_large_outputs_go_by_reference(engine: Engine) -> None:
    big = {"rows": [{"i": i, "text": "x" * 100} for i in range(3000)]}  # ~330 KB of JSON
    small = {"ok": True}
    limit = 256 * 1024  # the default of large_output_bytes
    assert persist.offload_output("p1", "run-1", "a", small, limit, engine=engine) == small
    ref = persist.offload_output("p1", "run-1", "a", big, limit, engine=engine)
    parsed = as_output_ref(ref)
    assert parsed is not None and parsed.size > limit and len(str(ref)) < 3000
    again = persist.offload_output("p1", "run-1", "a", big, limit, engine=engine)
    assert again == ref  # idempotent
    assert persist.load_output(ref, engine=engine) == big
    assert persist.resolve_refs({"x": [ref, 1]}, engine=engine) == {"x": [big, 1]}
    d = Driver(STEPS)
    d.control("approve")
    d.step(output=ref)
    write(engine, d.snap(seq=1))
    with Session(engine) as s:
        row = s.get(StepResultRecord, ("p1", "run-1", "a"))
        assert row is not None and row.output_ref == parsed.output_ref
        st = reads.get_status(s, "p1")
        assert st is not None and OutputRef.model_validate(st.steps[0].output) == parsed
    assert count(engine, BlobRecord) == 1


# --- the activity ---------------------------------------------------------------------


async def test_record_snapshot_activity_uses_database_url(db_url: str) -> None:
    settings = get_settings().replace(store={"database_url": db_url})
    record_snapshot = persist.SnapshotActivities(activity_deps(settings=settings)).record_snapshot
    try:
        d = finished_driver()
        snap = d.snap(seq=1)
        env = ActivityEnvironment()
        first = await env.run(record_snapshot, snap)
        second = await env.run(record_snapshot, snap)
        assert first.applied and first.logs == len(d.run.logs) and second.logs == 0
        eng = db.get_engine(db_url)
        assert db.current_revision(eng) == db.HEAD_REVISION  # migrated on first use
        with Session(eng) as s:
            st = reads.get_status(s, "p1")
        assert st is not None and st.status == PlanStatus.COMPLETED
    finally:
        db.get_engine(db_url).dispose()


def test_step_rows_keep_the_whole_step_state() -> None:
    s = StepRun(id="x", status=StepStatus.COMPLETED, answer={"a": 1}, answered=True, runs=2)
    snap = PlanSnapshot(
        plan_id="p",
        run_id="r",
        workflow_id="plan-p",
        seq=1,
        at=T0,
        status=PlanStatus.EXECUTING,
        version=1,
        digest="d",
        created_at=T0,
        steps=[s],
    )
    row = recording._step_row(snap, s, T0)
    assert row["state"] == {"answer": {"a": 1}, "answered": True, "runs": 2}


def test_unfinished_runs_page_in_order(engine: Engine) -> None:
    for i in range(3):
        plan = Plan.model_validate({"id": f"open-{i}", "steps": [{"id": "a", "tool": "noop"}]})
        run = new_run(plan, T0)
        write(engine, snapshot_of(run, f"r{i}", 0, 0, seq=1, at=T0 + timedelta(seconds=i)))
    later = T0 + timedelta(hours=1)
    seen = []
    after = None
    with Session(engine) as s:
        for _ in range(5):
            page = run_closing.unfinished_runs(s, later, limit=1, after=after)
            if not page:
                break
            seen.append(page[0].plan_id)
            after = (page[0].updated_at, page[0].plan_id, page[0].run_id)
        assert run_closing.unfinished_runs(s, T0, limit=10) == []  # none quiet before T0
    assert seen == ["open-0", "open-1", "open-2"]

"""Writing a workflow's snapshot (:class:`contracts.snapshots.PlanSnapshot`) to the store.

:func:`record_snapshot` is an idempotent upsert keyed by plan, run, step and sequence
number, in one transaction that the caller commits (use
``store.db.session_scope(engine, write=True)``):

* the plan row follows the plan's newest run (``(run created_at, run id, snapshot seq)``
  only grows; its ``submitted_by`` is the first one known), the run and its step rows follow the newest snapshot of that run (``seq``
  only grows), so an older snapshot arriving late changes nothing;
* log and audit entries are inserted once, by ``(plan_id, run_id, seq)``;
* versions are inserted once, by ``(plan_id, version)``; a missing document is filled in,
  and a version kept by :func:`store.drafts.save_plan` before any run is replaced by the
  run's own.

Rows are written in one fixed order (plans, plan_versions, runs, step_results, logs,
audit; each batch sorted by key), so concurrent writers queue on the plan row rather than
deadlock. What people did to the plan also becomes lessons for the planner
(:func:`store.knowledge.learn_from_snapshot`), and the events the snapshot shows become
webhook deliveries (:func:`store.webhooks.enqueue_snapshot_events`), in the same
transaction.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlmodel import Session, SQLModel

from contracts.snapshots import PlanSnapshot, RecordResult, as_output_ref
from plans.run_state import StepRun
from store import knowledge, webhooks
from store.models import (
    AuditRecord,
    LogRecord,
    PlanRecord,
    PlanVersionRecord,
    RunRecord,
    StepResultRecord,
)
from store.reads import get_plan_document
from store.upsert import batches, cached_statement, count_rows, insert_for, utc

# StepRun fields that have columns of their own; the rest go to step_results.state.
_STEP_COLUMNS = {
    "id",
    "status",
    "attempts",
    "version",
    "started_at",
    "completed_at",
    "error",
    "output",
    "skip_reason",
    "skip_detail",
    "carried",
}


def _undo(document: dict[str, Any], diff: dict[str, Any]) -> dict[str, Any]:
    """The document as it was before a version's ``diff`` (step -> field -> {old, new}).

    A replan's replacement (:mod:`plans.replan`) also has whole steps: ``{"added": {old:
    null, new: step}}`` (not there before) and ``{"removed": {old: step, new: null}}``
    (there before, in the place of the first added one)."""
    removed = [
        c["removed"]["old"]
        for c in diff.values()
        if isinstance(c, dict) and isinstance(c.get("removed"), dict) and c["removed"].get("old")
    ]
    steps = []
    for step in document.get("steps", []):
        changes = diff.get(step.get("id"), {})
        if isinstance(changes.get("added"), dict) and changes["added"].get("old") is None:
            steps.extend(removed)  # the replaced steps stood where their replacement does
            removed = []
            continue
        if changes:
            step = dict(step)
            for field, change in changes.items():
                if isinstance(change, dict) and "old" in change:
                    step[field] = change["old"]
        steps.append(step)
    return {**document, "steps": steps + removed}


def _version_documents(snap: PlanSnapshot) -> dict[int, dict[str, Any]]:
    """Whole documents for the snapshot's versions: the current one, and earlier ones by
    undoing the later diffs, as far back as the versions are consecutive."""
    if snap.plan is None:
        return {}
    docs = {snap.version: snap.plan.model_dump(mode="json")}
    by_number = {v.version: v for v in snap.versions}
    number = snap.version
    while number in by_number and number - 1 in by_number:
        docs[number - 1] = _undo(docs[number], by_number[number].diff)
        number -= 1
    return docs


def record_snapshot(session: Session, snap: PlanSnapshot) -> RecordResult:
    """Write one snapshot (idempotent; see the module docstring). The caller commits."""
    at = utc(snap.at)
    created = utc(snap.created_at)
    result = RecordResult(plan_id=snap.plan_id, run_id=snap.run_id, seq=snap.seq, applied=False)

    # plans: follows the newest run, and its newest snapshot.
    row = {
        "id": snap.plan_id,
        "title": snap.title,
        "agent_id": snap.agent_id,
        "current_version": snap.version,
        "status": snap.status.value,
        "outcome": snap.outcome,
        "last_run_id": snap.run_id,
        "last_run_created_at": created,
        "last_snapshot_seq": snap.seq,
        "created_at": created,
        "updated_at": at,
        "submitted_by": snap.submitted_by,
    }
    session.execute(cached_statement(session, ("plans", tuple(row)), _plan_upsert(tuple(row))), row)

    # plan_versions: inserted once; a document missing so far is filled in.
    docs = _version_documents(snap)
    versions = [
        {
            "plan_id": snap.plan_id,
            "version": v.version,
            "by": v.by,
            "at": utc(v.at),
            "step_id": v.step_id,
            "change": v.change,
            "diff": v.diff,
            "run_id": snap.run_id,
            "document": docs.get(v.version),
        }
        for v in sorted(snap.versions, key=lambda v: v.version)
    ]
    if snap.plan is not None and snap.version not in {v.version for v in snap.versions}:
        versions.append(
            {
                "plan_id": snap.plan_id,
                "version": snap.version,
                "by": snap.agent_id or "author",
                "at": created,
                "step_id": None,
                "change": "",
                "diff": {},
                "run_id": snap.run_id,
                "document": docs[snap.version],
            }
        )
    if versions:
        stmt = cached_statement(session, "plan_versions", _version_upsert)
        for chunk in batches(versions):
            result.versions += count_rows(session, stmt, chunk)

    # runs: the newest snapshot wins.
    run_row = {
        "plan_id": snap.plan_id,
        "run_id": snap.run_id,
        "workflow_id": snap.workflow_id,
        "execution_run_id": snap.execution_run_id,
        "status": snap.status.value,
        "outcome": snap.outcome,
        "version": snap.version,
        "digest": snap.digest,
        "progress": snap.progress,
        "waiting": [w.model_dump(mode="json") for w in snap.waiting],
        "approved_by": snap.approved_by,
        "approved_version": snap.approved_version,
        "approved_digest": snap.approved_digest,
        "approval_note": snap.approval_note,
        "approval_decision": snap.approval_decision,
        "stopping": snap.stopping,
        "paused_by": snap.paused_by,
        "paused_reason": snap.paused_reason,
        "feedback": list(snap.feedback),
        "resumed_by": snap.resumed_by,
        "created_at": created,
        "started_at": snap.started_at and utc(snap.started_at),
        "finished_at": snap.finished_at and utc(snap.finished_at),
        "updated_at": at,
        "logs_total": snap.logs_total,
        "audit_total": snap.audit_total,
        "change_seq": snap.change_seq,
        "recent": [c.model_dump(mode="json") for c in snap.recent],
        "replans": [r.model_dump(mode="json") for r in snap.replans] or None,
        "snapshot_seq": snap.seq,
    }
    # a later snapshot need not repeat who resumed the run
    keep_resumed_by = snap.resumed_by is None
    stmt = cached_statement(
        session,
        ("runs", tuple(run_row), keep_resumed_by),
        _run_upsert(tuple(run_row), keep_resumed_by),
    )
    result.applied = count_rows(session, stmt, [run_row]) > 0

    # step_results: each row follows the newest snapshot that carried it.
    steps = [_step_row(snap, s, at) for s in sorted(snap.steps, key=lambda s: s.id)]
    if steps:
        stmt = cached_statement(session, ("steps", tuple(steps[0])), _step_upsert(tuple(steps[0])))
        for chunk in batches(steps):
            result.steps += count_rows(session, stmt, chunk)

    # logs and audit: append-only, each entry once.
    logs = [
        {
            "plan_id": snap.plan_id,
            "run_id": snap.run_id,
            "seq": seq,
            "at": utc(e.at),
            "level": e.level,
            "step_id": e.step_id,
            "message": e.message,
        }
        for seq, e in snap.numbered_logs()
    ]
    result.logs = _append(session, LogRecord, logs)
    audit = [
        {
            "plan_id": snap.plan_id,
            "run_id": snap.run_id,
            "seq": seq,
            "at": utc(e.at),
            "by": e.by,
            "action": e.action,
            "accepted": e.accepted,
            "version": e.version,
            "step_id": e.step_id,
            "detail": e.detail,
            "via": e.via,
        }
        for seq, e in snap.numbered_audit()
    ]
    result.audit = _append(session, AuditRecord, audit)

    # what people did to the plan becomes lessons for the planner (store.knowledge)
    document = snap.plan or get_plan_document(session, snap.plan_id, snap.version)
    knowledge.learn_from_snapshot(session, snap, document)

    # the events it shows become webhook deliveries, in this same transaction (the outbox)
    result.deliveries = webhooks.enqueue_snapshot_events(session, snap)
    return result


def _step_row(snap: PlanSnapshot, s: StepRun, at: datetime) -> dict[str, Any]:
    ref = as_output_ref(s.output)
    data = s.model_dump(mode="json")
    return {
        "plan_id": snap.plan_id,
        "run_id": snap.run_id,
        "step_id": s.id,
        "status": s.status.value,
        "attempts": s.attempts,
        "version": s.version,
        "started_at": s.started_at and utc(s.started_at),
        "completed_at": s.completed_at and utc(s.completed_at),
        "error": s.error,
        "output": data.get("output"),
        "output_ref": ref.output_ref if ref else None,
        "skip_reason": s.skip_reason.value if s.skip_reason else None,
        "skip_detail": s.skip_detail,
        "carried": s.carried,
        "state": {k: v for k, v in data.items() if k not in _STEP_COLUMNS},
        "snapshot_seq": snap.seq,
        "updated_at": at,
    }


def _append(session: Session, model: type[SQLModel], rows: list[dict[str, Any]]) -> int:
    if not rows:
        return 0

    def build(dialect: str) -> Any:
        seq = model.__table__.c.seq  # type: ignore[attr-defined]
        ins = insert_for(dialect, model)
        return ins.on_conflict_do_nothing(index_elements=["plan_id", "run_id", "seq"]).returning(
            seq
        )

    stmt = cached_statement(session, ("append", model.__tablename__), build)
    return sum(count_rows(session, stmt, chunk) for chunk in batches(rows))


# --- the statements (built once per database kind, rows given as parameters) ----------


def _plan_upsert(keys: tuple[str, ...]) -> Any:
    def build(dialect: str) -> Any:
        ins = insert_for(dialect, PlanRecord)
        plan = PlanRecord.__table__.c  # type: ignore[attr-defined]
        newer = sa.or_(
            plan.last_run_created_at.is_(None),
            sa.tuple_(plan.last_run_created_at, plan.last_run_id, plan.last_snapshot_seq)
            <= sa.tuple_(
                ins.excluded.last_run_created_at,
                ins.excluded.last_run_id,
                ins.excluded.last_snapshot_seq,
            ),
        )
        updates = {
            k: ins.excluded[k] for k in keys if k not in ("id", "created_at", "submitted_by")
        }
        # the first submitter known stays (a resumed run is started by whoever resumed it)
        updates["submitted_by"] = sa.func.coalesce(plan.submitted_by, ins.excluded.submitted_by)
        return ins.on_conflict_do_update(index_elements=["id"], set_=updates, where=newer)

    return build


def _version_upsert(dialect: str) -> Any:
    ins = insert_for(dialect, PlanVersionRecord)
    pv = PlanVersionRecord.__table__.c  # type: ignore[attr-defined]
    return ins.on_conflict_do_update(
        index_elements=["plan_id", "version"],
        set_={
            "document": sa.func.coalesce(pv.document, ins.excluded.document),
            # a version kept by save_plan (no run yet) becomes the run's own
            **{
                k: sa.case((pv.run_id.is_(None), ins.excluded[k]), else_=pv[k])
                for k in ("by", "at", "step_id", "change", "diff", "run_id")
            },
        },
        where=sa.or_(
            pv.run_id.is_(None),
            sa.and_(pv.document.is_(None), ins.excluded.document.is_not(None)),
        ),
    ).returning(pv.version)


def _run_upsert(keys: tuple[str, ...], keep_resumed_by: bool) -> Any:
    def build(dialect: str) -> Any:
        ins = insert_for(dialect, RunRecord)
        runs = RunRecord.__table__.c  # type: ignore[attr-defined]
        updates = {k: ins.excluded[k] for k in keys if k not in ("plan_id", "run_id", "created_at")}
        if keep_resumed_by:
            updates["resumed_by"] = sa.func.coalesce(ins.excluded.resumed_by, runs.resumed_by)
        return ins.on_conflict_do_update(
            index_elements=["plan_id", "run_id"],
            set_=updates,
            where=runs.snapshot_seq <= ins.excluded.snapshot_seq,
        ).returning(runs.snapshot_seq)

    return build


def _step_upsert(keys: tuple[str, ...]) -> Any:
    def build(dialect: str) -> Any:
        ins = insert_for(dialect, StepResultRecord)
        sr = StepResultRecord.__table__.c  # type: ignore[attr-defined]
        index = ("plan_id", "run_id", "step_id")
        return ins.on_conflict_do_update(
            index_elements=list(index),
            set_={k: ins.excluded[k] for k in keys if k not in index},
            where=sr.snapshot_seq <= ins.excluded.snapshot_seq,
        ).returning(sr.step_id)

    return build

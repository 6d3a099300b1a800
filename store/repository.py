"""The store's small API: written by activities, read by the API.

Every write is an idempotent upsert keyed by plan, run, step and sequence number, in one
transaction that the caller commits (use ``store.db.session_scope(engine, write=True)``):

* the plan row follows the plan's newest run (``(run created_at, run id, snapshot seq)``
  only grows), the run and its step rows follow the newest snapshot of that run (``seq``
  only grows), so an older snapshot arriving late changes nothing;
* log and audit entries are inserted once, by ``(plan_id, run_id, seq)``;
* versions are inserted once, by ``(plan_id, version)``; a missing document is filled in,
  and a version kept by :func:`save_plan` before any run is replaced by the run's own;
* blobs are inserted once, by key.

Rows are written in one fixed order (plans, plan_versions, runs, step_results, logs,
audit; each batch sorted by key), so concurrent writers queue on the plan row rather than
deadlock.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Sequence
from datetime import UTC, datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite
from sqlmodel import Session, SQLModel, col, select

from contracts.snapshots import PlanSnapshot, RecordResult, as_output_ref
from plans.models import Plan, PlanStatus, StepStatus
from plans.policy import ApprovalDecision
from plans.run_state import StepRun, WaitingFor, preview
from plans.views import LOG_LEVELS, StatusView, StepView
from store.models import (
    AuditRecord,
    AuditRecordPublic,
    BlobRecord,
    BlobRecordPublic,
    LogRecord,
    LogRecordPublic,
    PlanDetailPublic,
    PlanRecord,
    PlanRecordPublic,
    PlanVersionRecord,
    PlanVersionRecordPublic,
    RunRecord,
    RunRecordPublic,
    StepResultRecord,
    UTCDateTime,
)

BATCH = 500  # rows per INSERT: well under SQLite's and PostgreSQL's bound-parameter limits

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


class BlobMismatch(ValueError):
    """A blob key already holds different bytes (keys are immutable)."""


# --- helpers --------------------------------------------------------------------------


def _insert(session: Session, model: type[SQLModel]) -> Any:
    """An INSERT with ON CONFLICT support for the session's database."""
    table = model.__table__  # type: ignore[attr-defined]
    dialect = session.get_bind().dialect.name
    if dialect == "postgresql":
        return postgresql.insert(table)
    if dialect == "sqlite":
        return sqlite.insert(table)
    raise NotImplementedError(f"the store supports SQLite and PostgreSQL, not {dialect}")


def _chunks(rows: Sequence[dict[str, Any]]) -> Iterable[Sequence[dict[str, Any]]]:
    for i in range(0, len(rows), BATCH):
        yield rows[i : i + BATCH]


def _count(session: Session, stmt: Any) -> int:
    return len(session.execute(stmt).all())


def _utc(at: datetime) -> datetime:
    return at.replace(tzinfo=UTC) if at.tzinfo is None else at.astimezone(UTC)


def _undo(document: dict[str, Any], diff: dict[str, Any]) -> dict[str, Any]:
    """The document as it was before a version's ``diff`` (step -> field -> {old, new})."""
    steps = []
    for step in document.get("steps", []):
        changes = diff.get(step.get("id"), {})
        if changes:
            step = dict(step)
            for field, change in changes.items():
                if isinstance(change, dict) and "old" in change:
                    step[field] = change["old"]
        steps.append(step)
    return {**document, "steps": steps}


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


# --- writes ---------------------------------------------------------------------------


def record_snapshot(session: Session, snap: PlanSnapshot) -> RecordResult:
    """Write one snapshot (idempotent; see the module docstring). The caller commits."""
    at = _utc(snap.at)
    created = _utc(snap.created_at)
    result = RecordResult(plan_id=snap.plan_id, run_id=snap.run_id, seq=snap.seq, applied=False)

    # plans: follows the newest run, and its newest snapshot.
    ins = _insert(session, PlanRecord)
    plan = PlanRecord.__table__.c  # type: ignore[attr-defined]
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
    }
    newer = sa.or_(
        plan.last_run_created_at.is_(None),
        sa.tuple_(plan.last_run_created_at, plan.last_run_id, plan.last_snapshot_seq)
        <= sa.tuple_(
            ins.excluded.last_run_created_at,
            ins.excluded.last_run_id,
            ins.excluded.last_snapshot_seq,
        ),
    )
    updates = {k: ins.excluded[k] for k in row if k not in ("id", "created_at")}
    session.execute(
        ins.values(row).on_conflict_do_update(index_elements=["id"], set_=updates, where=newer)
    )

    # plan_versions: inserted once; a document missing so far is filled in.
    docs = _version_documents(snap)
    versions = [
        {
            "plan_id": snap.plan_id,
            "version": v.version,
            "by": v.by,
            "at": _utc(v.at),
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
    pv = PlanVersionRecord.__table__.c  # type: ignore[attr-defined]
    for chunk in _chunks(versions):
        ins = _insert(session, PlanVersionRecord)
        stmt = (
            ins.values(list(chunk))
            .on_conflict_do_update(
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
            )
            .returning(pv.version)
        )
        result.versions += _count(session, stmt)

    # runs: the newest snapshot wins.
    ins = _insert(session, RunRecord)
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
        "approval_note": snap.approval_note,
        "approval_decision": snap.approval_decision,
        "stopping": snap.stopping,
        "paused_by": snap.paused_by,
        "paused_reason": snap.paused_reason,
        "feedback": list(snap.feedback),
        "resumed_by": snap.resumed_by,
        "created_at": created,
        "started_at": snap.started_at and _utc(snap.started_at),
        "finished_at": snap.finished_at and _utc(snap.finished_at),
        "updated_at": at,
        "logs_total": snap.logs_total,
        "audit_total": snap.audit_total,
        "snapshot_seq": snap.seq,
    }
    runs = RunRecord.__table__.c  # type: ignore[attr-defined]
    updates = {k: ins.excluded[k] for k in run_row if k not in ("plan_id", "run_id", "created_at")}
    if snap.resumed_by is None:  # a later snapshot need not repeat who resumed the run
        updates["resumed_by"] = sa.func.coalesce(ins.excluded.resumed_by, runs.resumed_by)
    stmt = (
        ins.values(run_row)
        .on_conflict_do_update(
            index_elements=["plan_id", "run_id"],
            set_=updates,
            where=runs.snapshot_seq <= ins.excluded.snapshot_seq,
        )
        .returning(runs.snapshot_seq)
    )
    result.applied = _count(session, stmt) > 0

    # step_results: each row follows the newest snapshot that carried it.
    steps = [_step_row(snap, s, at) for s in sorted(snap.steps, key=lambda s: s.id)]
    sr = StepResultRecord.__table__.c  # type: ignore[attr-defined]
    for chunk in _chunks(steps):
        ins = _insert(session, StepResultRecord)
        keys = ("plan_id", "run_id", "step_id")
        stmt = (
            ins.values(list(chunk))
            .on_conflict_do_update(
                index_elements=list(keys),
                set_={k: ins.excluded[k] for k in chunk[0] if k not in keys},
                where=sr.snapshot_seq <= ins.excluded.snapshot_seq,
            )
            .returning(sr.step_id)
        )
        result.steps += _count(session, stmt)

    # logs and audit: append-only, each entry once.
    logs = [
        {
            "plan_id": snap.plan_id,
            "run_id": snap.run_id,
            "seq": seq,
            "at": _utc(e.at),
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
            "at": _utc(e.at),
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
    from store import knowledge

    document = snap.plan or get_plan_document(session, snap.plan_id, snap.version)
    knowledge.learn_from_snapshot(session, snap, document)
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
        "started_at": s.started_at and _utc(s.started_at),
        "completed_at": s.completed_at and _utc(s.completed_at),
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
    seq = model.__table__.c.seq  # type: ignore[attr-defined]
    added = 0
    for chunk in _chunks(rows):
        ins = _insert(session, model)
        stmt = (
            ins.values(list(chunk))
            .on_conflict_do_nothing(index_elements=["plan_id", "run_id", "seq"])
            .returning(seq)
        )
        added += _count(session, stmt)
    return added


def save_plan(
    session: Session, plan: Plan, *, at: datetime, by: str | None = None
) -> tuple[PlanRecordPublic, bool]:
    """Keep a plan document before it runs (status ``draft``, version 1).

    Returns the plan's row and whether it was created; an existing plan is left as it is.
    """
    if plan.id is None:
        raise ValueError("the plan has no id")
    at = _utc(at)
    ins = _insert(session, PlanRecord)
    created = (
        _count(
            session,
            ins.values(
                id=plan.id,
                title=plan.title,
                agent_id=plan.agent_id,
                current_version=1,
                status=PlanStatus.DRAFT.value,
                created_at=at,
                updated_at=at,
                last_snapshot_seq=0,
            )
            .on_conflict_do_nothing(index_elements=["id"])
            .returning(PlanRecord.__table__.c.id),  # type: ignore[attr-defined]
        )
        > 0
    )
    if created:
        session.execute(
            _insert(session, PlanVersionRecord)
            .values(
                plan_id=plan.id,
                version=1,
                by=by or plan.agent_id or "author",
                at=at,
                change="created",
                diff={},
                document=plan.model_dump(mode="json"),
            )
            .on_conflict_do_nothing(index_elements=["plan_id", "version"])
        )
    record = session.get(PlanRecord, plan.id)
    assert record is not None
    return PlanRecordPublic.model_validate(record), created


def unfinished_runs(
    session: Session,
    updated_before: datetime,
    limit: int = 100,
    after: tuple[datetime, str, str] | None = None,
) -> list[RunRecord]:
    """Runs the store shows as not finished that have not changed since ``updated_before``,
    in ``(updated_at, plan_id, run_id)`` order, after ``after`` (to page through them):
    candidates for :func:`mark_run_ended`."""
    open_states = [s.value for s in PlanStatus if not s.terminal]
    runs = RunRecord.__table__.c  # type: ignore[attr-defined]
    stmt = select(RunRecord).where(
        col(RunRecord.status).in_(open_states), col(RunRecord.updated_at) < _utc(updated_before)
    )
    if after is not None:
        stmt = stmt.where(
            sa.tuple_(runs.updated_at, runs.plan_id, runs.run_id)
            > sa.tuple_(sa.literal(_utc(after[0]), UTCDateTime()), after[1], after[2])
        )
    order = (col(RunRecord.updated_at), col(RunRecord.plan_id), col(RunRecord.run_id))
    return list(session.exec(stmt.order_by(*order).limit(limit)).all())


def mark_run_ended(
    session: Session,
    plan_id: str,
    run_id: str,
    status: PlanStatus,
    outcome: str,
    at: datetime,
) -> bool:
    """Close a run the workflow could not close itself (e.g. ``temporal workflow
    terminate``): only a run the store still shows as unfinished changes. True if it did."""
    if not status.terminal:
        raise ValueError(f"{status.value} is not a final status")
    at = _utc(at)
    open_states = [s.value for s in PlanStatus if not s.terminal]
    runs = RunRecord.__table__.c  # type: ignore[attr-defined]
    changed = session.execute(
        sa.update(RunRecord)
        .where(runs.plan_id == plan_id, runs.run_id == run_id, runs.status.in_(open_states))
        .values(
            status=status.value,
            outcome=outcome,
            finished_at=at,
            updated_at=at,
            waiting=[],
            snapshot_seq=runs.snapshot_seq + 1,
        )
        .returning(runs.snapshot_seq)
    ).all()
    if not changed:
        return False
    plans = PlanRecord.__table__.c  # type: ignore[attr-defined]
    session.execute(
        sa.update(PlanRecord)
        .where(plans.id == plan_id, plans.last_run_id == run_id)
        .values(
            status=status.value,
            outcome=outcome,
            updated_at=at,
            last_snapshot_seq=changed[0][0],
        )
    )
    return True


def put_blob(
    session: Session, data: bytes, key: str | None = None, media_type: str = "application/json"
) -> BlobRecordPublic:
    """Keep ``data`` under ``key`` (default ``sha256:<hex>``), once; the same bytes again
    are a no-op, other bytes under an existing key raise :class:`BlobMismatch`."""
    digest = hashlib.sha256(data).hexdigest()
    key = key or f"sha256:{digest}"
    now = datetime.now(UTC)
    session.execute(
        _insert(session, BlobRecord)
        .values(
            key=key, size=len(data), sha256=digest, media_type=media_type, created_at=now, data=data
        )
        .on_conflict_do_nothing(index_elements=["key"])
    )
    blobs = BlobRecord.__table__.c  # type: ignore[attr-defined]
    row = session.execute(
        sa.select(blobs.key, blobs.size, blobs.sha256, blobs.media_type, blobs.created_at).where(
            blobs.key == key
        )
    ).one()
    if row.sha256 != digest:
        raise BlobMismatch(f"blob {key!r} already holds other data")
    return BlobRecordPublic.model_validate(row._mapping)


def get_blob(session: Session, key: str) -> bytes | None:
    """The bytes kept under ``key``, checked against their digest; None if unknown."""
    blob = session.get(BlobRecord, key)
    if blob is None:
        return None
    if hashlib.sha256(blob.data).hexdigest() != blob.sha256:
        raise BlobMismatch(f"blob {key!r} is corrupt (sha256 differs)")
    return bytes(blob.data)


# --- reads ----------------------------------------------------------------------------


def get_plan(session: Session, plan_id: str) -> PlanDetailPublic | None:
    """The plan's row with its current document (None: unknown plan)."""
    record = session.get(PlanRecord, plan_id)
    if record is None:
        return None
    version = session.get(PlanVersionRecord, (plan_id, record.current_version))
    run = _run(session, plan_id, record.last_run_id) if record.last_run_id else None
    return PlanDetailPublic.model_validate(
        {
            **PlanRecordPublic.model_validate(record).model_dump(),
            "digest": run.digest if run else None,
            "document": version.document if version else None,
        }
    )


def get_plan_document(session: Session, plan_id: str, version: int | None = None) -> Plan | None:
    """A version of the plan document (default: the current one), when the store has it."""
    if version is None:
        record = session.get(PlanRecord, plan_id)
        if record is None:
            return None
        version = record.current_version
    row = session.get(PlanVersionRecord, (plan_id, version))
    if row is None or row.document is None:
        return None
    return Plan.model_validate(row.document)


def list_plans(
    session: Session,
    status: str | PlanStatus | Sequence[str | PlanStatus] | None = None,
    limit: int = 50,
    offset: int = 0,
) -> list[PlanRecordPublic]:
    """Plans, most recently updated first, optionally with one of the given statuses."""
    query = select(PlanRecord)
    if status is not None:
        wanted = [status] if isinstance(status, str) else list(status)
        query = query.where(col(PlanRecord.status).in_([str(s) for s in wanted]))
    query = (
        query.order_by(col(PlanRecord.updated_at).desc(), col(PlanRecord.id))
        .offset(offset)
        .limit(limit)
    )
    return [PlanRecordPublic.model_validate(p) for p in session.exec(query)]


def get_runs(session: Session, plan_id: str) -> list[RunRecordPublic]:
    """The plan's runs, oldest first."""
    query = (
        select(RunRecord)
        .where(RunRecord.plan_id == plan_id)
        .order_by(col(RunRecord.created_at), col(RunRecord.run_id))
    )
    return [RunRecordPublic.model_validate(r) for r in session.exec(query)]


def _run(session: Session, plan_id: str, run_id: str | None = None) -> RunRecord | None:
    if run_id is not None:
        return session.get(RunRecord, (plan_id, run_id))
    query = (
        select(RunRecord)
        .where(RunRecord.plan_id == plan_id)
        .order_by(col(RunRecord.created_at).desc(), col(RunRecord.run_id).desc())
        .limit(1)
    )
    return session.exec(query).first()


def _step_records(session: Session, plan_id: str, run_id: str) -> list[StepResultRecord]:
    query = select(StepResultRecord).where(
        StepResultRecord.plan_id == plan_id, StepResultRecord.run_id == run_id
    )
    return list(session.exec(query))


def get_steps(session: Session, plan_id: str, run_id: str | None = None) -> dict[str, StepRun]:
    """The steps of a run (default: the newest) as the engine's ``StepRun``: enough to
    resume a plan from failure once its workflow is gone from Temporal."""
    run = _run(session, plan_id, run_id)
    if run is None:
        return {}
    out = {}
    for r in _step_records(session, plan_id, run.run_id):
        out[r.step_id] = StepRun.model_validate(
            {
                **r.state,
                "id": r.step_id,
                "status": r.status,
                "attempts": r.attempts,
                "version": r.version,
                "started_at": r.started_at,
                "completed_at": r.completed_at,
                "error": r.error,
                "output": r.output,
                "skip_reason": r.skip_reason,
                "skip_detail": r.skip_detail,
                "carried": r.carried,
            }
        )
    return out


def get_status(session: Session, plan_id: str, run_id: str | None = None) -> StatusView | None:
    """The status of a run (default: the plan's newest) in the shape of the workflow's
    ``status`` query, from the store alone. None when the store has no run of the plan."""
    plan = session.get(PlanRecord, plan_id)
    run = _run(
        session, plan_id, run_id if run_id is not None else (plan.last_run_id if plan else None)
    )
    if plan is None or run is None:
        return None
    document = get_plan_document(session, plan_id, run.version)
    records = {r.step_id: r for r in _step_records(session, plan_id, run.run_id)}
    order = [s.id for s in document.steps] if document else []
    order += sorted(set(records) - set(order))
    by_id = document.step_map() if document else {}
    steps = []
    for sid in order:
        step, r = by_id.get(sid), records.get(sid)
        steps.append(
            StepView(
                id=sid,
                kind=step.kind.value if step else "",
                description=step.description if step else "",
                depends_on=list(step.depends_on) if step else [],
                status=StepStatus(r.status) if r else StepStatus.PENDING,
                attempts=r.attempts if r else 0,
                version=r.version if r else 1,
                started_at=r.started_at if r else None,
                completed_at=r.completed_at if r else None,
                error=r.error if r else None,
                output=preview(r.output) if r else None,
                skip_reason=r.skip_reason if r else None,
                skip_detail=r.skip_detail if r else None,
                calls=list(r.state.get("calls", [])) if r else [],
            )
        )
    waiting = [WaitingFor.model_validate(w) for w in run.waiting]
    return StatusView(
        plan_id=plan_id,
        title=plan.title,
        status=PlanStatus(run.status),
        progress=run.progress,
        version=run.version,
        digest=run.digest,
        waiting_for=waiting[0] if waiting else None,
        waiting=waiting,
        outcome=run.outcome,
        approved_by=run.approved_by,
        approval_note=run.approval_note,
        approval_policy=(
            ApprovalDecision.model_validate(run.approval_decision)
            if run.approval_decision
            else None
        ),
        stopping=run.stopping,
        paused_by=run.paused_by,
        paused_reason=run.paused_reason,
        feedback=list(run.feedback),
        created_at=run.created_at,
        started_at=run.started_at,
        finished_at=run.finished_at,
        steps=steps,
    )


def get_logs(
    session: Session,
    plan_id: str,
    level: str | None = None,
    limit: int | None = None,
    *,
    step_id: str | None = None,
    run_id: str | None = None,
) -> list[LogRecordPublic]:
    """The plan's log (every run, or one), oldest first: entries at ``level`` or above,
    the newest ``limit`` of them — the workflow's ``logs`` query, from the store."""
    query = select(LogRecord).where(LogRecord.plan_id == plan_id)
    if level is not None:
        if level not in LOG_LEVELS:
            raise ValueError(f"unknown log level {level!r}")
        floor = LOG_LEVELS[level]
        query = query.where(
            col(LogRecord.level).in_([k for k, v in LOG_LEVELS.items() if v >= floor])
        )
    if step_id is not None:
        query = query.where(LogRecord.step_id == step_id)
    if run_id is not None:
        query = query.where(LogRecord.run_id == run_id)
    query = query.order_by(
        col(LogRecord.at).desc(), col(LogRecord.run_id).desc(), col(LogRecord.seq).desc()
    )
    if limit is not None:
        query = query.limit(limit)
    rows = list(session.exec(query))
    rows.reverse()
    return [LogRecordPublic.model_validate(r) for r in rows]


def get_audit(session: Session, plan_id: str, run_id: str | None = None) -> list[AuditRecordPublic]:
    """The plan's audit trail (every run, or one), oldest first."""
    query = select(AuditRecord).where(AuditRecord.plan_id == plan_id)
    if run_id is not None:
        query = query.where(AuditRecord.run_id == run_id)
    query = query.order_by(col(AuditRecord.at), col(AuditRecord.run_id), col(AuditRecord.seq))
    return [AuditRecordPublic.model_validate(r) for r in session.exec(query)]


def get_versions(
    session: Session, plan_id: str, documents: bool = False
) -> list[PlanVersionRecordPublic]:
    """The plan's versions, oldest first: who changed what (``diff``), and with
    ``documents`` the whole document of each version when the store has it."""
    query = (
        select(PlanVersionRecord)
        .where(PlanVersionRecord.plan_id == plan_id)
        .order_by(col(PlanVersionRecord.version))
    )
    out = []
    for v in session.exec(query):
        public = PlanVersionRecordPublic.model_validate(v)
        if not documents:
            public.document = None
        out.append(public)
    return out

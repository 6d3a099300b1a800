"""Reading the store: plans, their versions, runs, steps, logs and audit, and a run's
status in the shape of the workflow's ``status`` query. The API reads a plan from here
once its workflow is gone from Temporal."""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence

import sqlalchemy as sa
from sqlmodel import Session, col, select

from plans.models import Plan, PlanStatus, StepStatus
from plans.policy import ApprovalDecision
from plans.run_state import ReplanProposal, StepRun, WaitingFor, preview
from plans.views import LOG_LEVELS, StatusView, StepChange, StepView
from store.models import (
    AuditRecord,
    AuditRecordPublic,
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
)


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


def get_run_status(session: Session, plan_id: str) -> PlanStatus | None:
    """The recorded status of the plan's newest run (one row, no step read); None when
    the store has no run of the plan."""
    plan = session.get(PlanRecord, plan_id)
    run = _run(session, plan_id, plan.last_run_id if plan else None)
    if plan is None or run is None:
        return None
    return PlanStatus(run.status)


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
    if document is None:
        order += sorted(records)
    # (with the document, a record of a step it no longer has -- one a replan replaced --
    # is not listed: the status shows the plan as it is)
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
                code=r.state.get("code") if r else None,
                code_attempts=list(r.state.get("code_attempts", [])) if r else [],
            )
        )
    waiting = [WaitingFor.model_validate(w) for w in run.waiting]
    running = [s.id for s in steps if s.status == StepStatus.RUNNING]
    approved_at = None
    if run.approved_by is not None:
        audit = AuditRecord.__table__.c  # type: ignore[attr-defined]
        approved_at = session.execute(
            sa.select(sa.func.max(audit.at)).where(
                audit.plan_id == plan_id,
                audit.run_id == run.run_id,
                audit.action == "approve",
                audit.accepted.is_(True),
            )
        ).scalar()
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
        approved_version=run.approved_version,
        approved_digest=run.approved_digest,
        approved_at=approved_at,
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
        # every step is listed (steps_complete); the counts follow from them
        total_steps=len(steps),
        counts=dict(Counter(s.status.value for s in steps)),
        current_step=next(iter(running), None) or (waiting[0].step_id if waiting else None),
        running=running,
        failed=[s.id for s in steps if s.status == StepStatus.FAILED],
        recent=[StepChange.model_validate(c) for c in run.recent or []],
        replans=[ReplanProposal.model_validate(r) for r in run.replans or []],
        seq=run.change_seq,
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

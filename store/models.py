"""The store's tables (sqlmodel). A table the API reads back comes as ``XBase`` (the columns
both share), ``X(table=True)`` and ``XPublic`` (what a read returns); the others are one
``X(table=True)``.

Every row is keyed by what the workflow already knows (plan id, run id, step id, an
absolute sequence number), so activities can write with idempotent upserts: the same
snapshot written twice, or an older one after a newer one, changes nothing.

``run_id`` is the *logical* run: the Temporal run id of the first execution of a chain of
continue-as-new (``workflow.info().first_execution_run_id``). A resume-from-failure is a
new chain, hence a new run of the same plan.

Timestamps are timezone-aware UTC on the way in and on the way out, on SQLite too
(:class:`UTCDateTime`). JSON columns are JSONB on PostgreSQL; a Python ``None`` is SQL
``NULL`` in them.

There is no ``XCreate`` model: nothing is created field by field from outside. Activities
write whole :class:`contracts.snapshots.PlanSnapshot` objects and the API saves plan documents
(:class:`plans.models.Plan`) through :mod:`store.recording` and :mod:`store.drafts`.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql
from sqlalchemy.engine import Dialect
from sqlmodel import Field, SQLModel

# Stable constraint names, so migrations can refer to them on every database.
SQLModel.metadata.naming_convention = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


class UTCDateTime(sa.types.TypeDecorator[datetime]):
    """A timestamp stored in UTC and always read back timezone-aware.

    PostgreSQL keeps ``timestamptz``; SQLite has no time zones, so the value is stored as
    naive UTC text (fixed width, so text order is time order) and UTC is put back on read.
    A naive value on the way in is taken to be UTC already.
    """

    impl = sa.DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        value = value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


JSONType = sa.JSON(none_as_null=True).with_variant(
    postgresql.JSONB(none_as_null=True), "postgresql"
)
ID = 64  # plan and step ids are [a-z0-9][a-z0-9_-]{0,63}
NAME = 200  # actors, workflow ids
STATUS = 32


def _ts(**kw: Any) -> Any:
    return Field(sa_type=UTCDateTime, **kw)


# --- plans ----------------------------------------------------------------------------


class PlanRecordBase(SQLModel):
    id: str = Field(primary_key=True, max_length=ID)
    title: str = Field(default="", sa_type=sa.Text)
    agent_id: str | None = Field(default=None, max_length=NAME, index=True)
    current_version: int = 1
    status: str = Field(max_length=STATUS, index=True)
    outcome: str | None = Field(default=None, sa_type=sa.Text)
    last_run_id: str | None = Field(default=None, max_length=ID)
    created_at: datetime = _ts()
    updated_at: datetime = _ts(index=True)


class PlanRecord(PlanRecordBase, table=True):
    """One plan: its newest run decides the status and the current version."""

    __tablename__ = "plans"

    # Which snapshot last wrote the row: (run created at, run id, snapshot seq) only grows.
    last_run_created_at: datetime | None = _ts(default=None)
    last_snapshot_seq: int = 0
    # The API key owner that submitted the plan (None with keys off); the first one known
    # stays. Never from the plan document. The approval policy's trust reads it.
    submitted_by: str | None = Field(default=None, max_length=NAME, index=True)
    # a person's approval of the draft before it was executed: by, at, comment, version,
    # digest (plans.run_state.Approval); the run counts it only for that digest
    draft_approval: dict[str, Any] | None = Field(default=None, sa_type=JSONType, nullable=True)


class PlanRecordPublic(PlanRecordBase):
    pass


class PlanDetailPublic(PlanRecordPublic):
    digest: str | None = None
    document: dict[str, Any] | None = None


# --- plan versions --------------------------------------------------------------------


class PlanVersionRecordBase(SQLModel):
    plan_id: str = Field(
        primary_key=True, max_length=ID, foreign_key="plans.id", ondelete="CASCADE"
    )
    version: int = Field(primary_key=True)
    by: str = Field(max_length=NAME)
    at: datetime = _ts()
    step_id: str | None = Field(default=None, max_length=ID)
    change: str = Field(default="", sa_type=sa.Text)
    diff: dict[str, Any] = Field(default_factory=dict, sa_type=JSONType)
    run_id: str | None = Field(default=None, max_length=ID)


class PlanVersionRecord(PlanVersionRecordBase, table=True):
    """A version of a plan document: the change that made it and, when known, the whole
    document (reconstructed from the current one by undoing later diffs)."""

    __tablename__ = "plan_versions"

    document: dict[str, Any] | None = Field(default=None, sa_type=JSONType)


class PlanVersionRecordPublic(PlanVersionRecordBase):
    document: dict[str, Any] | None = None


# --- runs -----------------------------------------------------------------------------


class RunRecordBase(SQLModel):
    plan_id: str = Field(
        primary_key=True, max_length=ID, foreign_key="plans.id", ondelete="CASCADE"
    )
    run_id: str = Field(primary_key=True, max_length=ID)
    workflow_id: str = Field(max_length=NAME)
    execution_run_id: str | None = Field(default=None, max_length=ID)
    status: str = Field(max_length=STATUS, index=True)
    outcome: str | None = Field(default=None, sa_type=sa.Text)
    version: int = 1
    digest: str = Field(default="", max_length=ID)
    progress: float = 0.0
    waiting: list[dict[str, Any]] = Field(default_factory=list, sa_type=JSONType)
    approved_by: str | None = Field(default=None, max_length=NAME)
    approved_version: int | None = None  # the plan version the approval saw
    approved_digest: str | None = Field(default=None, max_length=ID)  # and its digest
    approval_note: str | None = Field(default=None, sa_type=sa.Text)
    # the adaptive policy's decision for require_approval auto: risk, trust, reasons
    approval_decision: dict[str, Any] | None = Field(default=None, sa_type=JSONType, nullable=True)
    stopping: str | None = Field(default=None, sa_type=sa.Text)
    paused_by: str | None = Field(default=None, max_length=NAME)
    paused_reason: str | None = Field(default=None, sa_type=sa.Text)
    feedback: list[str] = Field(default_factory=list, sa_type=JSONType)
    resumed_by: str | None = Field(default=None, max_length=NAME)
    created_at: datetime = _ts()
    started_at: datetime | None = _ts(default=None)
    finished_at: datetime | None = _ts(default=None)
    updated_at: datetime = _ts()
    logs_total: int = 0
    audit_total: int = 0
    change_seq: int = 0  # the run's newest step change number (the status's seq)
    # its most recent step changes (the status's recent), oldest first
    recent: list[dict[str, Any]] | None = Field(default=None, sa_type=JSONType, nullable=True)
    # on_error: replan -- every round of the run (the status's replans)
    replans: list[dict[str, Any]] | None = Field(default=None, sa_type=JSONType, nullable=True)


class RunRecord(RunRecordBase, table=True):
    """One run of a plan (a chain of continue-as-new), as of its newest snapshot."""

    __tablename__ = "runs"

    snapshot_seq: int = 0


class RunRecordPublic(RunRecordBase):
    snapshot_seq: int = 0


# --- step results ---------------------------------------------------------------------


class StepResultRecord(SQLModel, table=True):
    """One step of one run. ``output`` is the step's JSON output, or the reference to a
    large output kept in ``blobs`` (then ``output_ref`` is the blob's key). ``state`` holds
    the rest of the run's :class:`plans.run_state.StepRun`, so a later run can be resumed
    from the store alone."""

    __tablename__ = "step_results"
    __table_args__ = (
        sa.ForeignKeyConstraint(
            ["plan_id", "run_id"], ["runs.plan_id", "runs.run_id"], ondelete="CASCADE"
        ),
    )

    plan_id: str = Field(primary_key=True, max_length=ID)
    run_id: str = Field(primary_key=True, max_length=ID)
    step_id: str = Field(primary_key=True, max_length=ID)
    status: str = Field(max_length=STATUS)
    attempts: int = 0
    version: int = 1
    started_at: datetime | None = _ts(default=None)
    completed_at: datetime | None = _ts(default=None)
    error: str | None = Field(default=None, sa_type=sa.Text)
    output: Any = Field(default=None, sa_type=JSONType, nullable=True)
    output_ref: str | None = Field(default=None, max_length=400, index=True)
    skip_reason: str | None = Field(default=None, max_length=STATUS)
    skip_detail: str | None = Field(default=None, sa_type=sa.Text)
    carried: bool = False
    state: dict[str, Any] = Field(default_factory=dict, sa_type=JSONType)
    snapshot_seq: int = 0
    updated_at: datetime = _ts()


# --- logs and audit -------------------------------------------------------------------


class LogRecordBase(SQLModel):
    plan_id: str = Field(primary_key=True, max_length=ID)
    run_id: str = Field(primary_key=True, max_length=ID)
    seq: int = Field(primary_key=True)  # absolute, 0-based, per run
    at: datetime = _ts()
    level: str = Field(max_length=16)
    step_id: str | None = Field(default=None, max_length=ID)
    message: str = Field(sa_type=sa.Text)


class LogRecord(LogRecordBase, table=True):
    __tablename__ = "logs"
    __table_args__ = (
        sa.ForeignKeyConstraint(
            ["plan_id", "run_id"], ["runs.plan_id", "runs.run_id"], ondelete="CASCADE"
        ),
        sa.Index("ix_logs_plan_id_at", "plan_id", "at"),
    )


class LogRecordPublic(LogRecordBase):
    pass


class AuditRecordBase(SQLModel):
    plan_id: str = Field(primary_key=True, max_length=ID)
    run_id: str = Field(primary_key=True, max_length=ID)
    seq: int = Field(primary_key=True)  # absolute, 0-based, per run
    at: datetime = _ts()
    by: str = Field(max_length=NAME)
    action: str = Field(max_length=64)
    accepted: bool
    version: int
    step_id: str | None = Field(default=None, max_length=ID)
    detail: str = Field(default="", sa_type=sa.Text)
    via: str = Field(default="system", max_length=16)


class AuditRecord(AuditRecordBase, table=True):
    __tablename__ = "audit"
    __table_args__ = (
        sa.ForeignKeyConstraint(
            ["plan_id", "run_id"], ["runs.plan_id", "runs.run_id"], ondelete="CASCADE"
        ),
        sa.Index("ix_audit_plan_id_at", "plan_id", "at"),
    )


class AuditRecordPublic(AuditRecordBase):
    pass


# --- blobs ----------------------------------------------------------------------------


class BlobRecordBase(SQLModel):
    key: str = Field(primary_key=True, max_length=400)
    size: int = Field(sa_type=sa.BigInteger)
    sha256: str = Field(max_length=64)
    media_type: str = Field(default="application/json", max_length=100)
    created_at: datetime = _ts()


class BlobRecord(BlobRecordBase, table=True):
    """Large step outputs, passed through workflow history by reference only."""

    __tablename__ = "blobs"

    data: bytes = Field(sa_type=sa.LargeBinary)


class BlobRecordPublic(BlobRecordBase):
    pass


# --- models, lessons, planner runs (the LLM layer) ------------------------------------


class ModelConfigRecord(SQLModel, table=True):
    """A model the selector may pick, configured at run time (settings hold the rest)."""

    __tablename__ = "model_configs"

    name: str = Field(primary_key=True, max_length=NAME)
    capabilities: list[str] = Field(default_factory=list, sa_type=JSONType)
    max_tokens: int = 4096
    priority: int = 100
    enabled: bool = True
    # anthropic or ollama (added by migration 0007; older rows are anthropic)
    provider: str = Field(default="anthropic", max_length=32)
    updated_at: datetime = _ts()


class LessonRecord(SQLModel, table=True):
    """What people taught a plan: a rejection, a correction or an answer, with what was
    wrong and what fixed it, for the planner to use next time."""

    __tablename__ = "lessons"

    id: int | None = Field(default=None, primary_key=True)
    created_at: datetime = _ts(index=True)
    source: str = Field(max_length=STATUS)  # rejection | correction | clarification
    plan_id: str | None = Field(default=None, max_length=ID, index=True)
    step_id: str | None = Field(default=None, max_length=ID)
    agent_id: str | None = Field(default=None, max_length=NAME, index=True)
    by: str | None = Field(default=None, max_length=NAME)
    task: str = Field(default="", sa_type=sa.Text)  # the plan's title and description
    tools: list[str] = Field(default_factory=list, sa_type=JSONType)
    step_kind: str | None = Field(default=None, max_length=STATUS)
    what_wrong: str = Field(default="", sa_type=sa.Text)
    fix: str = Field(default="", sa_type=sa.Text)
    # what a correction changed, for planners to apply: {tool, step_kind, params: {key:
    # {old, new}}, fields: {field: {old, new}}}; {} for lessons in words only
    change: dict[str, Any] = Field(default_factory=dict, sa_type=JSONType)
    times_applied: int = 0


class PlanGenerationRecord(SQLModel, table=True):
    """One run of the planner: how many rounds and problems it took, what it used."""

    __tablename__ = "plan_generations"

    id: str = Field(primary_key=True, max_length=NAME)  # the GeneratePlan workflow id
    created_at: datetime = _ts(index=True)
    agent_id: str | None = Field(default=None, max_length=NAME, index=True)
    task: str = Field(default="", sa_type=sa.Text)
    model: str = Field(default="", max_length=NAME)
    offline: bool = False
    ok: bool = True
    rounds: int = 1
    problems: int = 0  # validation problems fed back to the model, over every round
    repairs: list[list[str]] = Field(default_factory=list, sa_type=JSONType)
    lessons_applied: list[int] = Field(default_factory=list, sa_type=JSONType)
    plan_id: str | None = Field(default=None, max_length=ID, index=True)
    input_tokens: int = 0
    output_tokens: int = 0
    latency_ms: float = 0.0


# --- webhooks (docs/webhooks.md) -------------------------------------------------------


class WebhookRecord(SQLModel, table=True):
    """A subscription: made by ``POST /api/webhooks`` (``plan_id`` NULL: every plan's
    events), or named by a plan in its options (``plan_id`` set: that plan's only).
    ``secret`` is the value that signs deliveries (API subscriptions); ``secret_ref`` the
    name of a worker secret (a plan's webhooks). Neither is ever shown."""

    __tablename__ = "webhooks"

    id: str = Field(primary_key=True, max_length=ID)
    url: str = Field(sa_type=sa.Text)
    events: list[str] = Field(default_factory=list, sa_type=JSONType)
    secret: str | None = Field(default=None, sa_type=sa.Text)
    secret_ref: str | None = Field(default=None, max_length=NAME)
    plan_id: str | None = Field(default=None, max_length=ID, index=True)
    active: bool = True
    created_by: str | None = Field(default=None, max_length=NAME)
    created_at: datetime = _ts()


class WebhookDeliveryRecord(SQLModel, table=True):
    """One event for one subscription: the exact body sent (signed as is), and where its
    delivery stands. ``id`` is the delivery id, derived from the subscription and the
    event, so recording the same snapshot twice makes no second delivery."""

    __tablename__ = "webhook_deliveries"
    __table_args__ = (
        sa.ForeignKeyConstraint(["webhook_id"], ["webhooks.id"], ondelete="CASCADE"),
        sa.Index("ix_webhook_deliveries_due", "status", "next_attempt_at"),
        sa.Index("ix_webhook_deliveries_webhook_id_created_at", "webhook_id", "created_at"),
    )

    id: str = Field(primary_key=True, max_length=ID)
    webhook_id: str = Field(max_length=ID)
    event: str = Field(max_length=STATUS)
    plan_id: str = Field(max_length=ID)
    run_id: str = Field(max_length=ID)
    body: str = Field(sa_type=sa.Text)
    status: str = Field(default="pending", max_length=STATUS)  # pending|delivered|failed
    attempts: int = 0
    round_attempts: int = 0  # attempts since it was (re)queued
    created_at: datetime = _ts()
    round_started_at: datetime = _ts()
    next_attempt_at: datetime = _ts()
    lease_until: datetime | None = _ts(default=None)
    lease_owner: str | None = Field(default=None, max_length=NAME)  # the claim that took it
    delivered_at: datetime | None = _ts(default=None)
    last_status_code: int | None = None
    last_error: str | None = Field(default=None, sa_type=sa.Text)
    redeliveries: int = 0


class WebhookAttemptRecord(SQLModel, table=True):
    """One attempt to deliver: when, how long, what came back."""

    __tablename__ = "webhook_attempts"
    __table_args__ = (
        sa.ForeignKeyConstraint(["delivery_id"], ["webhook_deliveries.id"], ondelete="CASCADE"),
    )

    delivery_id: str = Field(primary_key=True, max_length=ID)
    number: int = Field(primary_key=True)
    at: datetime = _ts()
    duration_ms: float = 0.0
    ok: bool = False
    status_code: int | None = None
    error: str | None = Field(default=None, sa_type=sa.Text)
    response: str | None = Field(default=None, sa_type=sa.Text)  # the start of the body

"""What a workflow sends to the store: a :class:`PlanSnapshot` of one plan run.

Pure and deterministic (pydantic and ``plans/`` only, no I/O, no clock): the workflow
builds snapshots in workflow code and hands them to the ``record_snapshot`` activity
(:mod:`activities.persist`), which writes them with idempotent upserts.

A snapshot carries the run's state as of one moment, ordered by ``seq`` (the store never
lets a lower ``seq`` overwrite a higher one), plus the log and audit entries that are new
since the previous snapshot, each with its absolute sequence number in the run. Resending
a snapshot, or sending an older one late, is harmless.

To keep workflow history small, a snapshot can leave out what did not change: the plan
document (sent when the version changes) and steps whose state did not change.
:class:`SnapshotCursor` does that bookkeeping.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Collection, Iterator
from datetime import datetime
from typing import Any

from pydantic import BaseModel, Field, PrivateAttr

from plans.models import Plan, PlanStatus
from plans.run_state import (
    AuditEntry,
    LogEntry,
    PlanRun,
    PlanVersion,
    ReplanProposal,
    StepRun,
    WaitingFor,
    derive_status,
)
from plans.views import StepChange, progress, recent_changes, waits

RECORD_SNAPSHOT = "record_snapshot"  # the activity's name (activities.persist)
OUTPUT_REF_KEY = "output_ref"
PREVIEW_CHARS = 500  # keeps a reference well under the status preview bound


class OutputRef(BaseModel):
    """Stands in for a large step output kept in the store's ``blobs`` table.

    This (as a plain dict) is what a step's ``output`` holds in the workflow's state and
    history; :func:`activities.persist.load_output` turns it back into the output.
    """

    output_ref: str = Field(description="the blob's key")
    size: int = Field(description="bytes of the output's JSON")
    sha256: str
    preview: str = Field(default="", description="the start of the output's JSON")


def as_output_ref(value: Any) -> OutputRef | None:
    """The :class:`OutputRef` that ``value`` is (as a model or its dict), else None."""
    if isinstance(value, OutputRef):
        return value
    if (
        isinstance(value, dict)
        and isinstance(value.get(OUTPUT_REF_KEY), str)
        and set(value) <= set(OutputRef.model_fields)
    ):
        try:
            return OutputRef.model_validate(value)
        except ValueError:
            return None
    return None


class PlanSnapshot(BaseModel):
    """The state of one plan run, for the store (input of the ``record_snapshot`` activity).

    ``run_id`` names the logical run (first execution run id of a continue-as-new chain);
    ``seq`` orders the snapshots of one run. ``logs`` holds entries ``logs_start``,
    ``logs_start + 1``, ... of the run's log (absolute, 0-based); ``audit`` likewise.
    """

    plan_id: str
    run_id: str
    workflow_id: str
    execution_run_id: str | None = Field(
        default=None, description="Temporal run id of the execution that sent it"
    )
    seq: int = Field(ge=0)
    at: datetime = Field(description="when the snapshot was taken (workflow time)")
    status: PlanStatus
    outcome: str | None = None
    version: int
    digest: str
    title: str = ""
    agent_id: str | None = None
    plan: Plan | None = Field(
        default=None, description="the current document; None = unchanged, not sent again"
    )
    versions: list[PlanVersion] = Field(default_factory=list)
    steps: list[StepRun] = Field(
        default_factory=list, description="steps whose state is sent (all or the changed ones)"
    )
    progress: float = 0.0
    waiting: list[WaitingFor] = Field(default_factory=list)
    approved_by: str | None = None
    approved_version: int | None = None
    approved_digest: str | None = None
    approval_note: str | None = None
    approval_decision: dict[str, Any] | None = Field(
        default=None, description="the adaptive policy's decision (require_approval auto)"
    )
    stopping: str | None = None
    paused_by: str | None = None
    paused_reason: str | None = None
    feedback: list[str] = Field(default_factory=list)
    resumed_by: str | None = None
    submitted_by: str | None = Field(
        default=None, description="the API key owner that submitted the plan (PlanInput)"
    )
    created_at: datetime
    started_at: datetime | None = None
    finished_at: datetime | None = None
    logs_start: int = Field(default=0, ge=0)
    logs: list[LogEntry] = Field(default_factory=list)
    logs_total: int = Field(default=0, ge=0)
    logs_lost: int = Field(
        default=0, ge=0, description="entries dropped from the workflow's bounded list unsent"
    )
    audit_start: int = Field(default=0, ge=0)
    audit: list[AuditEntry] = Field(default_factory=list)
    audit_total: int = Field(default=0, ge=0)
    audit_lost: int = Field(default=0, ge=0)
    change_seq: int = Field(default=0, ge=0, description="the run's newest step change number")
    recent: list[StepChange] = Field(
        default_factory=list, description="the run's most recent step changes (status)"
    )
    replans: list[ReplanProposal] = Field(
        default_factory=list, description="on_error: replan -- every round (status.replans)"
    )

    def numbered_logs(self) -> Iterator[tuple[int, LogEntry]]:
        return enumerate(self.logs, start=self.logs_start)

    def numbered_audit(self) -> Iterator[tuple[int, AuditEntry]]:
        return enumerate(self.audit, start=self.audit_start)


class RecordResult(BaseModel):
    """What writing one snapshot changed (the ``record_snapshot`` activity's result)."""

    plan_id: str
    run_id: str
    seq: int
    applied: bool = Field(
        description="the run's state was written (False: the store had a newer snapshot)"
    )
    steps: int = 0  # step rows written
    versions: int = 0  # version rows inserted or completed with their document
    logs: int = 0  # log entries inserted (not there yet)
    audit: int = 0
    deliveries: int = Field(
        default=0, description="webhook deliveries of this snapshot's events still to send"
    )


def _window(total: int, kept: int, sent_from: int) -> tuple[int, int, int]:
    """(absolute seq of the first entry to send, index into the kept list, entries lost).

    ``total`` entries were ever appended, the last ``kept`` of them are still held.
    """
    total = max(total, kept)  # a state from before the counter existed holds them all
    first_kept = total - kept
    start = max(sent_from, first_kept)
    return start, start - first_kept, max(0, first_kept - sent_from)


def _latest_time(run: PlanRun) -> datetime:
    times = [run.created_at, run.started_at, run.finished_at]
    times += [run.logs[-1].at if run.logs else None, run.audit[-1].at if run.audit else None]
    times += [v.at for v in run.versions[-1:]]
    known = [t for t in times if t is not None]
    if not known:
        raise ValueError("the run has no timestamp yet: pass at=")
    return max(known)


def snapshot_of(
    run: PlanRun,
    run_id: str,
    logs_from: int,
    audit_from: int,
    *,
    seq: int,
    at: datetime | None = None,
    workflow_id: str | None = None,
    execution_run_id: str | None = None,
    resumed_by: str | None = None,
    steps: Collection[str] | None = None,
    include_plan: bool = True,
    submitted_by: str | None = None,
) -> PlanSnapshot:
    """Build the snapshot of ``run`` (pure).

    Args:
        run: the engine's state.
        run_id: the logical run id (``workflow.info().first_execution_run_id``).
        logs_from: absolute number of the first log entry not sent yet (0 at first).
        audit_from: the same for audit entries.
        seq: this snapshot's number in the run; must grow from one snapshot to the next
            (across continue-as-new too).
        at: when it is taken (``workflow.now()``); default: the latest time in the run.
        workflow_id: default ``plan-<plan id>``.
        execution_run_id: ``workflow.info().run_id``, for the record.
        resumed_by: who resumed the plan from failure, when this run is such a resume.
        steps: ids of the steps to include; None = all of them.
        include_plan: send the current plan document (needed when its version changed).
        submitted_by: the API key owner that submitted the plan (``PlanInput.submitted_by``).

    The run counts every log and audit entry it ever appended in ``run.logs_total`` and
    ``run.audit_total`` (the lists themselves are bounded); without those counters the
    lists are taken to hold every entry since the start.
    """
    if run.plan.id is None:
        raise ValueError("the plan has no id")
    logs_total = max(int(getattr(run, "logs_total", 0) or 0), len(run.logs))
    audit_total = max(int(getattr(run, "audit_total", 0) or 0), len(run.audit))
    log_start, log_index, logs_lost = _window(logs_total, len(run.logs), logs_from)
    audit_start, audit_index, audit_lost = _window(audit_total, len(run.audit), audit_from)
    wanted = None if steps is None else set(steps)
    created = run.created_at or _latest_time(run)
    return PlanSnapshot(
        plan_id=run.plan.id,
        run_id=run_id,
        workflow_id=workflow_id or run.plan.workflow_id,
        execution_run_id=execution_run_id,
        seq=seq,
        at=at or _latest_time(run),
        status=derive_status(run),
        outcome=run.outcome,
        version=run.version,
        digest=run.plan.digest(),
        title=run.plan.title,
        agent_id=run.plan.agent_id,
        plan=run.plan if include_plan else None,
        versions=list(run.versions),
        steps=[s for sid, s in run.steps.items() if wanted is None or sid in wanted],
        progress=progress(run),
        waiting=waits(run),
        approved_by=run.approval.by if run.approval else None,
        approved_version=run.approval.version if run.approval else None,
        approved_digest=run.approval.digest if run.approval else None,
        approval_note=run.approval_policy or None,
        approval_decision=(
            run.policy_decision.model_dump(mode="json") if run.policy_decision else None
        ),
        stopping=run.stopping,
        paused_by=run.pause.by if run.pause else None,
        paused_reason=run.pause.reason if run.pause else None,
        feedback=list(run.feedback),
        resumed_by=resumed_by,
        submitted_by=submitted_by,
        created_at=created,
        started_at=run.started_at,
        finished_at=run.finished_at,
        logs_start=log_start,
        logs=run.logs[log_index:],
        logs_total=logs_total,
        logs_lost=logs_lost,
        audit_start=audit_start,
        audit=run.audit[audit_index:],
        audit_total=audit_total,
        audit_lost=audit_lost,
        change_seq=run.change_seq,
        recent=recent_changes(run),
        replans=list(run.replans),
    )


def _step_fingerprint(s: StepRun) -> tuple[Any, ...]:
    # Every field but the output, which only changes together with status/completed_at.
    return (*(v for k, v in s.__dict__.items() if k != "output"), s.output is None)


# Where the snapshot's log and audit windows start (and what fell out of them before
# they were sent): they follow from the cursor, so they differ from the last snapshot's
# whenever it sent entries, though the run did not change.
_CURSOR_FIELDS = ("logs_start", "logs_lost", "audit_start", "audit_lost")


def _head_fingerprints(snap: PlanSnapshot) -> tuple[str, str]:
    """The snapshot's head (all but its lists and its seq/at) as text: whole, and without
    :data:`_CURSOR_FIELDS`."""
    head = snap.model_dump(
        mode="json", exclude={"seq", "at", "plan", "steps", "logs", "audit", "execution_run_id"}
    )
    whole = json.dumps(head, sort_keys=True)
    for key in _CURSOR_FIELDS:
        head.pop(key, None)
    return whole, json.dumps(head, sort_keys=True)


class SnapshotCursor(BaseModel):
    """What the workflow has sent to the store so far, to send only what is new.

    Keep one per run in state that continue-as-new carries (e.g. on ``PlanInput``): its
    fields must survive it, since ``seq`` must keep growing. What it remembers of step
    states is private and not carried: the first snapshot after continue-as-new simply
    sends every step again, which the store takes in its stride.

    Deterministic: on replay the same calls give the same snapshots.
    """

    seq: int = 0  # the last seq sent (0: none yet)
    logs: int = 0  # absolute number of the next log entry to send
    audit: int = 0
    version: int = 0  # plan version whose document was last sent (0: none)

    _steps: dict[str, tuple[Any, ...]] = PrivateAttr(default_factory=dict)
    _head: str | None = PrivateAttr(default=None)
    _core: str | None = PrivateAttr(default=None)  # _head without the cursor's fields

    def take(
        self,
        run: PlanRun,
        run_id: str,
        *,
        at: datetime,
        workflow_id: str | None = None,
        execution_run_id: str | None = None,
        resumed_by: str | None = None,
        force: bool = False,
        submitted_by: str | None = None,
        skip_repeats: Callable[[], bool] | None = None,
    ) -> PlanSnapshot | None:
        """The next snapshot, or None when nothing changed since the last one (unless
        ``force``). Advances the cursor: the caller must send what it gets.

        A snapshot whose only news is where its log and audit windows start (the last one
        sent entries) repeats the last one: it is skipped when ``skip_repeats()`` says so
        (asked only then: a workflow answers with its patch, so runs recorded before,
        which sent it, replay)."""
        prints = {sid: _step_fingerprint(s) for sid, s in run.steps.items()}
        changed = [sid for sid, fp in prints.items() if self._steps.get(sid) != fp]
        snap = snapshot_of(
            run,
            run_id,
            self.logs,
            self.audit,
            seq=self.seq + 1,
            at=at,
            workflow_id=workflow_id,
            execution_run_id=execution_run_id,
            resumed_by=resumed_by,
            submitted_by=submitted_by,
            steps=changed,
            include_plan=run.version != self.version,
        )
        head, core = _head_fingerprints(snap)
        new = bool(changed or snap.logs or snap.audit or snap.plan is not None)
        if not (new or force or head != self._head):
            return None
        if not (new or force or core != self._core) and skip_repeats and skip_repeats():
            return None
        self.seq = snap.seq
        self.logs = snap.logs_start + len(snap.logs)
        self.audit = snap.audit_start + len(snap.audit)
        self.version = run.version
        self._steps = prints
        self._head, self._core = head, core
        return snap

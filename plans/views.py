"""What the queries answer: read-only projections of a :class:`PlanRun`."""

from __future__ import annotations

from datetime import UTC, datetime
from itertools import islice
from typing import Any, Literal

from pydantic import BaseModel, Field, computed_field

from plans.models import Plan, PlanStatus, Step, StepStatus
from plans.policy import ApprovalDecision
from plans.run_index import Change, of
from plans.run_state import (
    AuditEntry,
    LogEntry,
    PlanRun,
    ReplanProposal,
    WaitingFor,
    audit_note,
    derive_status,
    describe_replan,
    open_replan,
    preview,
)

LOG_LEVELS = {"debug": 10, "info": 20, "warning": 30, "error": 40}


class StepView(BaseModel):
    id: str
    kind: str
    description: str = ""
    depends_on: list[str] = Field(default_factory=list)
    status: StepStatus
    attempts: int
    version: int
    started_at: datetime | None
    completed_at: datetime | None
    error: str | None
    output: Any = None
    skip_reason: str | None = None
    skip_detail: str | None = None
    calls: list[dict[str, Any]] = Field(
        default_factory=list, description="an llm step's tool calls, each run as a child step"
    )
    code: str | None = Field(
        default=None, description="a code step: the code its model wrote (the last one)"
    )
    code_attempts: list[dict[str, Any]] = Field(
        default_factory=list,
        description="a code step: every code written and how its run ended "
        "(failed attempts with their error)",
    )

    @computed_field(description="milliseconds from its start to its end (None until it ended)")
    def duration_ms(self) -> int | None:
        if self.started_at is None or self.completed_at is None:
            return None
        return max(0, round((self.completed_at - self.started_at).total_seconds() * 1000))


class StepChange(BaseModel):
    """One numbered change of a step's status (the ``changes`` query, ``recent`` in status,
    the SSE stream and ``--watch``)."""

    seq: int = Field(description="the run's change number, counting from 1")
    step_id: str
    status: StepStatus
    at: datetime | None = None
    attempts: int = 0
    error: str | None = None


class StepsQuery(BaseModel):
    """The ``steps`` query's argument: one page of the plan's steps, in plan order."""

    status: StepStatus | None = None
    offset: int = Field(default=0, ge=0)
    limit: int = Field(default=100, ge=1, le=1000)


class StepsPage(BaseModel):
    plan_id: str
    total: int = Field(description="the steps matching the filter, on all pages")
    offset: int
    limit: int
    steps: list[StepView]


class ChangesQuery(BaseModel):
    """The ``changes`` query's argument: the step changes numbered after ``since``."""

    since: int = Field(default=0, ge=0)
    limit: int = Field(default=1000, ge=1, le=10000)


class ChangesView(BaseModel):
    plan_id: str
    status: PlanStatus
    seq: int = Field(description="the newest change number")
    complete: bool = Field(
        description="false when changes after `since` were dropped from the run's journal: "
        "read status and the steps pages again"
    )
    changes: list[StepChange]


class StatusView(BaseModel):
    plan_id: str
    title: str = ""
    status: PlanStatus
    progress: float
    version: int
    digest: str
    waiting_for: WaitingFor | None
    waiting: list[WaitingFor]
    outcome: str | None
    approved_by: str | None
    approved_version: int | None = Field(
        default=None, description="the plan version the approval saw"
    )
    approved_digest: str | None = Field(
        default=None, description="the digest of the plan document the approval saw"
    )
    approved_at: datetime | None = Field(default=None, description="when it was approved")
    approval_note: str | None = None
    approval_policy: ApprovalDecision | None = Field(
        default=None,
        description='require_approval "auto": what the adaptive policy decided and why '
        "(required, reasons, risk with every non-low step, trust with its inputs, step gates)",
    )
    replans: list[ReplanProposal] = Field(
        default_factory=list,
        description="on_error: replan -- every round: the proposal, its checks, risk and "
        "decision (state asking, proposed, applied, accepted, rejected, refused, nothing...)",
    )
    stopping: str | None = None
    paused_by: str | None = None
    paused_reason: str | None = None
    feedback: list[str] = Field(default_factory=list)
    created_at: datetime | None
    queued_at: datetime | None = Field(
        default=None,
        description="status `queued`: since when the plan waits for a slot under the "
        "concurrency limits (PLANSMITH_MAX_CONCURRENT_PLANS...)",
    )
    started_at: datetime | None
    finished_at: datetime | None
    steps: list[StepView]
    total_steps: int = 0
    counts: dict[str, int] = Field(
        default_factory=dict, description="the number of steps in each status"
    )
    current_step: str | None = Field(
        default=None,
        description="the step the plan is at: the first running step in plan order, else "
        "the first one waiting for a person",
    )
    running: list[str] = Field(default_factory=list, description="ids of the running steps")
    failed: list[str] = Field(default_factory=list, description="ids of the failed steps")
    recent: list[StepChange] = Field(
        default_factory=list, description="the most recent step changes, oldest first"
    )
    seq: int = Field(default=0, description="the newest change number (see the changes query)")
    steps_complete: bool = Field(
        default=True,
        description="false for big plans (over 200 steps): `steps` lists only the steps "
        "that are not pending or done; page through them all with the steps query",
    )
    audit_unrecorded: int = Field(
        default=0,
        description="refused controls counted but not recorded in the audit trail (a flood "
        "beyond the per-minute limits); 0: the trail holds every control",
    )
    audit_note: str | None = Field(
        default=None, description="why the audit trail does not hold every control"
    )


# The interactive-execution routes' seven state words for each plan status: a person's
# wait that is not a question or a correction (a plan approval, a step gate, a pause, a
# draft not executed yet) is ``paused``; an end other than ``completed`` is ``failed``
# (``status`` tells which). ``resumed`` is ``running`` right after a resume.
INTERACTIVE_STATES: dict[PlanStatus, str] = {
    PlanStatus.DRAFT: "paused",
    PlanStatus.PENDING_APPROVAL: "paused",
    PlanStatus.APPROVED: "running",
    PlanStatus.QUEUED: "paused",  # waits for a slot (PLANSMITH_MAX_CONCURRENT_PLANS)
    PlanStatus.EXECUTING: "running",
    PlanStatus.PAUSED: "paused",
    PlanStatus.WAITING_APPROVAL: "paused",
    PlanStatus.WAITING_CLARIFICATION: "waiting_clarification",
    PlanStatus.WAITING_CORRECTION: "waiting_correction",
    PlanStatus.COMPLETED: "completed",
    PlanStatus.PARTIAL: "failed",
    PlanStatus.FAILED: "failed",
    PlanStatus.CANCELLED: "failed",
    PlanStatus.REJECTED: "failed",
}
InteractiveState = Literal[
    "running",
    "paused",
    "waiting_clarification",
    "waiting_correction",
    "resumed",
    "completed",
    "failed",
]


class ExecutionState(BaseModel):
    """The ``execution_state`` query: the plan's state and, while it waits, the first wait
    (its step, the clarification question) and since when it is paused."""

    plan_id: str
    state: InteractiveState = Field(
        description="in the interactive-execution routes' words: running, paused, "
        "waiting_clarification, waiting_correction, resumed (running, right after a "
        "resume, until a step starts or ends), completed, failed"
    )
    status: PlanStatus | None = Field(
        default=None, description="the plan's status in Plansmith's words (see the status)"
    )
    step_id: str | None = None
    question: str | None = None
    paused_at: datetime | None = None
    waiting_for: WaitingFor | None = None


class LogsQuery(BaseModel):
    level: Literal["debug", "info", "warning", "error"] | None = None
    limit: int | None = Field(default=None, ge=1, le=10000)
    step_id: str | None = None


class PlanView(BaseModel):
    version: int
    digest: str
    plan: Plan
    versions: list[dict[str, Any]]


def waits(run: PlanRun) -> list[WaitingFor]:
    """Everything the run is waiting on a person for.

    In the order the plan status reads them (plan approval, a pause, corrections,
    clarifications, step approvals), oldest first within each kind: the first one is what
    the status says the plan waits for.
    """
    if run.final_status is not None:
        return []
    ranked: list[tuple[int, WaitingFor]] = []
    if run.approval is None and run.approval_required:
        ranked.append(
            (0, WaitingFor(kind="plan_approval", since=run.created_at, who="an approver"))
        )
    pause = run.pause
    if pause is not None:
        asking = bool(pause.question and not pause.answered)
        ranked.append(
            (
                1,
                WaitingFor(
                    kind="clarification" if asking else "resume",
                    step_id=pause.step_id,
                    question=pause.question if asking else pause.reason,
                    since=pause.since,
                    who=f"an answer to {pause.by}"
                    if asking
                    else f"a resume (paused by {pause.by})",
                ),
            )
        )
    for sid in of(run).waiting():
        s = run.steps[sid]
        step = run.plan.step(sid)
        open_round = open_replan(run, sid) if s.awaiting_decision else None
        if open_round is not None or (s.awaiting_decision and s.replan_due):
            asking = open_round is None or open_round.state == "asking"
            ranked.append(
                (
                    2,
                    WaitingFor(
                        kind="replan",
                        step_id=sid,
                        question=(
                            f"the planner is proposing a fix for: {s.error}"
                            if asking
                            else f"replan #{open_round.n}: {describe_replan(open_round)}"
                            if open_round is not None
                            else s.error
                        ),
                        since=open_round.asked_at if open_round is not None else s.completed_at,
                        who=(
                            "the planner"
                            if asking
                            else "a person: accept_replan, reject_replan, or "
                            "apply_correction + retry_step"
                        ),
                        proposal=open_round,
                    ),
                )
            )
        elif s.awaiting_decision:
            who = "an operator: apply_correction + retry_step, skip_step or cancel"
            ranked.append(
                (
                    2,
                    WaitingFor(
                        kind="correction",
                        step_id=sid,
                        question=s.error,
                        since=s.completed_at,
                        who=who,
                    ),
                )
            )
        elif s.status == StepStatus.WAITING_CLARIFICATION:
            question = step.clarification_question
            ranked.append(
                (
                    3,
                    WaitingFor(
                        kind="clarification",
                        step_id=sid,
                        question=question,
                        since=s.waiting_since,
                        who="an answer",
                    ),
                )
            )
        elif s.status == StepStatus.WAITING_APPROVAL:
            question = step.description or None
            for gate in (s.change_gate, s.policy_gate, s.judge_gate, s.code_gate):
                if gate:
                    question = f"{question}: {gate}" if question else gate
            ranked.append(
                (
                    4,
                    WaitingFor(
                        kind="step_approval",
                        step_id=sid,
                        question=question,
                        change=s.change_diff if s.change_gate else None,
                        code=s.code if s.code_gate else None,
                        since=s.waiting_since,
                        who="an approver",
                    ),
                )
            )
    far = datetime.max.replace(tzinfo=UTC)
    return [w for _, w in sorted(ranked, key=lambda rw: (rw[0], rw[1].since or far))]


def progress(run: PlanRun) -> float:
    if not run.steps:
        return 1.0
    return round(of(run).terminal() / len(run.steps), 4)


FULL_STATUS_STEPS = 200  # plans up to this size list every step in status
RECENT_CHANGES = 20  # the step changes status shows


def step_view(run: PlanRun, step: Step) -> StepView:
    s = run.steps[step.id]
    return StepView(
        id=step.id,
        kind=step.kind.value,
        description=step.description,
        depends_on=step.depends_on,
        status=s.status,
        attempts=s.attempts,
        version=s.version,
        started_at=s.started_at,
        completed_at=s.completed_at,
        error=s.error,
        output=preview(s.output),
        skip_reason=s.skip_reason.value if s.skip_reason else None,
        skip_detail=s.skip_detail,
        calls=s.calls,
        code=s.code,
        code_attempts=s.code_attempts,
    )


def _change(run: PlanRun, c: Change) -> StepChange:
    """A journal entry as the queries show it; the step's time, attempts and error are
    its current ones while it still is in that status."""
    s = run.steps.get(c.step_id)
    current = s is not None and s.status == c.status
    at = None
    if s is not None and current:
        if c.status == StepStatus.RUNNING:
            at = s.started_at
        elif c.status in (StepStatus.WAITING_APPROVAL, StepStatus.WAITING_CLARIFICATION):
            at = s.waiting_since
        elif c.status.terminal:
            at = s.completed_at
    return StepChange(
        seq=c.seq,
        step_id=c.step_id,
        status=c.status,
        at=at,
        attempts=s.attempts if s is not None and current else 0,
        error=s.error if s is not None and current else None,
    )


def recent_changes(run: PlanRun, n: int = RECENT_CHANGES) -> list[StepChange]:
    journal = of(run).journal
    return [_change(run, c) for c in islice(journal, max(0, len(journal) - n), None)]


def status_view(run: PlanRun) -> StatusView:
    """The plan's status: O(active steps), except plans of up to FULL_STATUS_STEPS steps,
    which list every step (as they always did)."""
    pending = waits(run)
    idx = of(run)
    running = idx.in_order(idx.by_status[StepStatus.RUNNING])
    complete = len(run.plan.steps) <= FULL_STATUS_STEPS
    if complete:
        steps = [step_view(run, step) for step in run.plan.steps]
    else:
        steps = [step_view(run, run.plan.step(sid)) for sid in idx.active()]
    return StatusView(
        plan_id=run.plan.id or "",
        title=run.plan.title,
        status=derive_status(run),
        progress=progress(run),
        version=run.version,
        digest=run.plan.digest(),
        waiting_for=pending[0] if pending else None,
        waiting=pending,
        outcome=run.outcome,
        approved_by=run.approval.by if run.approval else None,
        approved_version=run.approval.version if run.approval else None,
        approved_digest=run.approval.digest if run.approval else None,
        approved_at=run.approval.at if run.approval else None,
        approval_note=run.approval_policy or None,
        approval_policy=run.policy_decision,
        replans=run.replans,
        stopping=run.stopping,
        paused_by=run.pause.by if run.pause else None,
        paused_reason=run.pause.reason if run.pause else None,
        feedback=run.feedback,
        created_at=run.created_at,
        queued_at=run.queued_at,
        started_at=run.started_at,
        finished_at=run.finished_at,
        steps=steps,
        total_steps=len(run.plan.steps),
        counts=idx.counts(),
        current_step=next(iter(running), None) or (pending[0].step_id if pending else None),
        running=running,
        failed=idx.in_order(idx.by_status[StepStatus.FAILED]),
        recent=recent_changes(run),
        seq=run.change_seq,
        steps_complete=complete,
        audit_unrecorded=run.audit_unrecorded,
        audit_note=audit_note(run),
    )


def steps_page(run: PlanRun, query: StepsQuery) -> StepsPage:
    """One page of the steps in plan order (those in ``query.status`` only, if given)."""
    end = query.offset + query.limit
    if query.status is None:
        chosen = run.plan.steps[query.offset : end]
        total = len(run.plan.steps)
    else:
        idx = of(run)
        matching = idx.by_status[query.status]
        total = len(matching)
        if total * 4 > len(run.plan.steps):  # most steps: walk the plan, no sort
            ids = [s.id for s in run.plan.steps if s.id in matching][query.offset : end]
        else:
            ids = idx.in_order(matching)[query.offset : end]
        chosen = [run.plan.step(sid) for sid in ids]
    return StepsPage(
        plan_id=run.plan.id or "",
        total=total,
        offset=query.offset,
        limit=query.limit,
        steps=[step_view(run, step) for step in chosen],
    )


def changes_view(run: PlanRun, query: ChangesQuery) -> ChangesView:
    """The step changes numbered after ``query.since`` (up to ``query.limit``); not
    complete when the journal no longer holds the first of them (it keeps the newest
    MAX_JOURNAL, and starts empty in a run continued as new)."""
    journal = of(run).journal
    first = journal[0].seq if journal else run.change_seq + 1
    complete = query.since >= first - 1
    skip = max(0, query.since + 1 - first)
    return ChangesView(
        plan_id=run.plan.id or "",
        status=derive_status(run),
        seq=run.change_seq,
        complete=complete,
        changes=[_change(run, c) for c in islice(journal, skip, skip + query.limit)],
    )


def interactive_state(run: PlanRun, status: PlanStatus) -> str:
    """``status`` in the interactive-execution routes' words; ``resumed`` while the
    newest accepted control is a resume and no step has ended since it (the steps it
    let start are running)."""
    state = INTERACTIVE_STATES[status]
    if state != "running":
        return state
    last = next((a for a in reversed(run.audit) if a.accepted), None)
    if last is None or last.action != "resume":
        return state
    ended = any(c.status.terminal and (c.at is None or c.at > last.at) for c in recent_changes(run))
    return state if ended else "resumed"


def execution_state(run: PlanRun) -> ExecutionState:
    pending = waits(run)
    first = pending[0] if pending else None
    status = derive_status(run)
    return ExecutionState(
        plan_id=run.plan.id or "",
        state=interactive_state(run, status),  # type: ignore[arg-type]
        status=status,
        step_id=first.step_id if first else None,
        question=first.question if first and first.kind == "clarification" else None,
        paused_at=run.pause.since if run.pause else None,
        waiting_for=first,
    )


def logs_view(run: PlanRun, query: LogsQuery) -> list[LogEntry]:
    entries = run.logs
    if query.level:
        floor = LOG_LEVELS[query.level]
        entries = [e for e in entries if LOG_LEVELS[e.level] >= floor]
    if query.step_id:
        entries = [e for e in entries if e.step_id == query.step_id]
    if query.limit:
        entries = entries[-query.limit :]
    return entries


def audit_view(run: PlanRun) -> list[AuditEntry]:
    return run.audit


def plan_view(run: PlanRun) -> PlanView:
    return PlanView(
        version=run.version,
        digest=run.plan.digest(),
        plan=run.plan,
        versions=[
            {
                "version": v.version,
                "by": v.by,
                "at": v.at,
                "step_id": v.step_id,
                "change": v.change,
                "diff": v.diff,
            }
            for v in run.versions
        ],
    )


def summary_line(run: PlanRun) -> str:
    """One line for the Web UI's current details."""
    counts = of(run).counts()
    parts = ", ".join(f"{n} {k}" for k, n in sorted(counts.items()))
    pending = waits(run)
    wait = (
        f" — waiting for {pending[0].kind}"
        + (f" on {pending[0].step_id}" if pending[0].step_id else "")
        if pending
        else ""
    )
    return f"**{derive_status(run).value}** v{run.version}: {parts}{wait}"

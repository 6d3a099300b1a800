"""The state of one plan run, as data: steps, approvals, pauses, versions, logs, audit.

``PlanRun`` is the whole state of one run; the workflow keeps one instance and hands it
to the scheduler (:mod:`plans.scheduler`), the controls (:mod:`plans.steering`) and the
timeouts (:mod:`plans.deadlines`). Nothing here does I/O or reads a clock: ``now`` is
always passed in, so the same calls give the same state on replay.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from datetime import datetime, timedelta
from enum import StrEnum
from typing import Any, ClassVar, Literal

from pydantic import BaseModel, Field, SerializerFunctionWrapHandler, model_serializer

from plans.models import Plan, PlanStatus, StepStatus
from plans.policy import ApprovalDecision

MAX_LOG_ENTRIES = 500  # kept in the workflow's state (the newest ones)
MAX_AUDIT_ENTRIES = 2000  # kept when they are in the store (see ``audit``)
# refused controls recorded per actor (and from all actors) per minute of workflow time;
# the rest are counted, and one summary entry per actor and minute says how many
REFUSED_PER_ACTOR_PER_MINUTE = 20
REFUSED_PER_MINUTE = 200
REFUSED_WINDOW = timedelta(minutes=1)
ALL_ACTORS = "*"
# entries not handed to the store yet that the workflow keeps at most (the store is
# down); past it, refused controls are counted, not recorded (accepted ones always are)
MAX_AUDIT_UNSTORED = 4 * MAX_AUDIT_ENTRIES
PREVIEW_CHARS = 2000


class Refused(ValueError):
    """A control that is not allowed in the current state; the message says why."""


class SkipReason(StrEnum):
    CONDITION = "condition"  # its `when` was false, or its whole branch was not taken
    UPSTREAM = "upstream"  # a dependency failed or was rejected
    REJECTED = "rejected"  # a person rejected its gate
    STOPPED = "stopped"  # on_error=stop or a total timeout stopped the plan
    OPERATOR = "operator"  # skip_step: dependents go on


class _Compact(BaseModel):
    """Serialised without fields that hold their default: the state of a 2,000-step plan
    travels through continue-as-new and must stay well under Temporal's payload limit."""

    _always: ClassVar[frozenset[str]] = frozenset()

    @model_serializer(mode="wrap")
    def _compact(self, handler: SerializerFunctionWrapHandler) -> dict[str, Any]:
        data = handler(self)
        defaults = _defaults_of(type(self))
        return {
            k: v
            for k, v in data.items()
            if k in self._always or k not in defaults or v != defaults[k]
        }


# Each _Compact model's optional fields and their defaults, worked out once per class:
# pydantic's get_default inspects the factory's signature on every call, which made
# serialising a 10,000-step run take 1.4 s (a workflow task may take 2 s at most).
_DEFAULTS: dict[type, dict[str, Any]] = {}


def _defaults_of(cls: type[BaseModel]) -> dict[str, Any]:
    found = _DEFAULTS.get(cls)
    if found is None:
        found = {
            name: f.get_default(call_default_factory=True)
            for name, f in cls.model_fields.items()
            if not f.is_required()
        }
        _DEFAULTS[cls] = found
    return found


# The fields of a step that its run's index (:mod:`plans.run_index`) follows, and who
# follows each step: id(step) -> a callback (step, field, old value). Set by the index.
WATCHED_STEP_FIELDS = frozenset({"status", "awaiting_decision", "skip_reason", "judge_gate"})
STEP_WATCHERS: dict[int, Callable[[StepRun, str, Any], None]] = {}


class StepRun(_Compact):
    _always: ClassVar[frozenset[str]] = frozenset({"status"})

    def __setattr__(self, name: str, value: Any) -> None:
        if name not in WATCHED_STEP_FIELDS:
            super().__setattr__(name, value)
            return
        old = self.__dict__.get(name)
        super().__setattr__(name, value)
        if old != value:
            watcher = STEP_WATCHERS.get(id(self))
            if watcher is not None:
                watcher(self, name, old)

    id: str
    status: StepStatus = StepStatus.PENDING
    attempts: int = 0
    version: int = 1
    started_at: datetime | None = None
    completed_at: datetime | None = None
    waiting_since: datetime | None = None
    error: str | None = None
    output: Any = None
    skip_reason: SkipReason | None = None
    skip_detail: str | None = None
    failed_before_skip: bool = False
    gate_approved_by: str | None = None
    answer: Any = None
    answered: bool = False
    awaiting_decision: bool = False  # on_error=ask: failed, a person decides what next
    carried: bool = False  # completed in an earlier run; resume-from-failure never re-runs it
    timed_out: str | None = None  # which wait for a person ran out, and what was done then
    runs: int = 0  # how many times an activity was started for this step in this run
    # the adaptive approval policy gates this step (it is critical): why; a person approves
    # it before it runs, through the same approve_step / reject_step as requires_approval
    policy_gate: str | None = None
    # the step's executable content changed after the plan was approved: why (who changed
    # what, at which version); a person approves the change (approve_step) before it runs
    change_gate: str | None = None
    # what the change gate asks a person to approve: field -> {old, new}
    change_diff: dict[str, Any] | None = None
    # the step version a person's approve_step saw (an approval is bound to what it saw)
    gate_approved_version: int | None = None
    # a validation step with on_unassessed: ask whose judge criteria no model assessed:
    # why it waits for a person (approve_step passes it with the output it had, reject_step
    # skips it), and the step version that output belongs to (a correction re-runs it)
    judge_gate: str | None = None
    judge_gate_version: int = 0
    # an llm step's tool calls, each a child activity: {n, tool, params, status, ...}
    calls: list[dict[str, Any]] = Field(default_factory=list)
    # on_error: replan -- the step failed for good and the planner is to be asked for a fix
    # (the workflow clears it when it asks; the step awaits a decision meanwhile)
    replan_due: bool = False
    # a code step (kind: code): the code its model wrote last, for which step version, and
    # whether it waits to run (written before a gate: never written again after approval)
    code: str | None = None
    code_version: int = 0
    code_unrun: bool = False
    code_round: int = 0  # a retry or reset starts a new round of code_max_repairs repairs
    # a code step that waits for a person to approve its code before it runs: why
    code_gate: str | None = None
    # every code written for the step in this run of it: {n, version, sha256, chars, code,
    # status (written|waiting|running|failed|completed|not run), error, model, at}
    code_attempts: list[dict[str, Any]] = Field(default_factory=list)


class RefusedCount(BaseModel):
    """Refused controls of one actor (or all, ``*``) in one minute of workflow time."""

    since: datetime
    recorded: int = 0
    dropped: int = 0
    first_dropped: datetime | None = None
    last_dropped: datetime | None = None


class AuditEntry(BaseModel):
    at: datetime
    by: str
    action: str
    accepted: bool
    version: int
    step_id: str | None = None
    detail: str = ""
    via: Literal["signal", "update", "system"] = "system"


class LogEntry(_Compact):
    _always: ClassVar[frozenset[str]] = frozenset({"level"})

    at: datetime
    level: Literal["debug", "info", "warning", "error"] = "info"
    message: str
    step_id: str | None = None


class Approval(BaseModel):
    by: str
    at: datetime
    comment: str | None = None
    version: int
    # the digest of the plan document the approval saw (None: recorded before digests)
    digest: str | None = None
    timed_out: bool = False


class Pause(BaseModel):
    by: str
    since: datetime
    reason: str | None = None
    step_id: str | None = None
    question: str | None = None
    answer: Any = None
    answered: bool = False
    answered_by: str | None = None


ReplanState = Literal[
    "asking",  # the planner is working on it
    "proposed",  # a valid proposal waits for a person: accept_replan / reject_replan
    "applied",  # the policy applied it unattended
    "accepted",  # a person accepted it
    "rejected",  # a person rejected it (the failure stands: the step waits as on_error: ask)
    "refused",  # it failed validation (hostile or wrong): nothing changed
    "nothing",  # the planner had nothing to propose
    "failed",  # the planner could not be asked (its activity failed)
    "superseded",  # the plan changed (a correction, a retry, a cancel) before a decision
]


class ReplanProposal(BaseModel):
    """One round of ``on_error: replan``: what failed, what the planner proposed, what was
    decided and by whom. Kept in the run (``replans``), shown by ``status``."""

    n: int  # the round, 1-based, over the whole run
    step_id: str
    state: ReplanState = "asking"
    asked_at: datetime
    base_version: int  # the plan version the proposal was made against
    error: str = ""
    kind: Literal["correction", "replacement", "none"] | None = None
    reason: str = ""
    # correction: the failed step's new fields (as apply_correction's updated_step)
    updated_step: dict[str, Any] | None = None
    # replacement: the steps that take the place of ``replaces`` (the failed step and
    # not-yet-run dependents of it)
    steps: list[dict[str, Any]] | None = None
    replaces: list[str] = Field(default_factory=list)
    # what the proposal changes, step -> field -> {old, new} (new steps: {"added": ...})
    diff: dict[str, dict[str, Any]] = Field(default_factory=dict)
    problems: list[str] = Field(default_factory=list)
    risk_level: str | None = None
    needs_person: bool = True
    why: str = ""  # why it was applied unattended, or why a person decides
    model: str = ""
    offline: bool = False
    lessons_applied: list[str] = Field(default_factory=list)
    decided_by: str | None = None
    decided_at: datetime | None = None
    decision_note: str | None = None


def open_replan(run: PlanRun, step_id: str | None = None) -> ReplanProposal | None:
    """The newest round for ``step_id`` (any step when None) still open: asking or
    proposed."""
    for p in reversed(run.replans):
        if p.state in ("asking", "proposed") and step_id in (None, p.step_id):
            return p
    return None


def describe_replan(p: ReplanProposal) -> str:
    if p.kind == "correction":
        fields = ", ".join(sorted(p.diff.get(p.step_id, {}))) or "nothing"
        text = f"correct step {p.step_id} ({fields})"
    elif p.kind == "replacement":
        new = ", ".join(str(s.get("id")) for s in p.steps or [])
        text = f"replace {', '.join(p.replaces)} with {new}"
    else:
        text = "nothing to propose"
    return text + (f" -- {p.reason[:300]}" if p.reason else "")


class WaitingFor(BaseModel):
    kind: Literal[
        "plan_approval", "step_approval", "clarification", "correction", "resume", "replan"
    ]
    step_id: str | None = None
    question: str | None = None
    change: dict[str, Any] | None = Field(
        default=None,
        description="a step changed after approval: what changed, field -> {old, new}; "
        "the person approves this change",
    )
    since: datetime | None = None
    who: str = "an operator"
    code: str | None = Field(
        default=None,
        description="kind step_approval of a code step: the generated code the person "
        "approves before it runs",
    )
    proposal: ReplanProposal | None = Field(
        default=None,
        description="kind replan: the planner's proposal a person accepts or rejects "
        "(state asking: the planner is still working on it)",
    )


class PlanVersion(BaseModel):
    """One version of the plan: what changed (field by field) and who changed it.

    Only the current document is kept whole; earlier versions follow from the diffs.
    """

    version: int
    by: str
    at: datetime
    step_id: str | None = None
    change: str = ""
    diff: dict[str, dict[str, Any]] = Field(default_factory=dict)  # step -> field -> {old, new}


class PlanRun(BaseModel):
    plan: Plan
    version: int = 1
    versions: list[PlanVersion] = Field(default_factory=list)
    steps: dict[str, StepRun] = Field(default_factory=dict)
    approval: Approval | None = None
    final_status: PlanStatus | None = None
    outcome: str | None = None
    stopping: str | None = None  # why no new step may start
    stopped_by_failure: bool = False  # the stop came from on_error=stop (a retry may lift it)
    cancel_requested: str | None = None
    pause: Pause | None = None
    feedback: list[str] = Field(default_factory=list)
    audit: list[AuditEntry] = Field(default_factory=list)
    logs: list[LogEntry] = Field(default_factory=list)
    created_at: datetime | None = None
    started_at: datetime | None = None
    finished_at: datetime | None = None
    logs_total: int = 0  # entries ever appended to `logs` (the list keeps the newest)
    audit_total: int = 0  # likewise for `audit`: absolute numbers for the store
    approval_required: bool = False
    approval_policy: str = ""  # why the plan did or did not wait for a person
    # approvals are bound to content: a step whose executable content changes after the
    # plan was approved waits for a person again (set when the workflow first corrects)
    bind_approvals: bool = False
    # require_approval "auto": what the adaptive policy decided, with risk and trust
    policy_decision: ApprovalDecision | None = None
    # the audit trail's limits are on (the workflow sets it; an older run keeps the old
    # rule: the newest MAX_AUDIT_ENTRIES, sent to the store or not)
    audit_limits: bool = False
    audit_stored: int = 0  # absolute number of entries handed to the store so far
    audit_unrecorded: int = 0  # refused controls counted, not recorded (rate limit, cap)
    refused: dict[str, RefusedCount] = Field(default_factory=dict)  # this minute's counts
    # step status changes numbered so far (the changes query; kept over continue-as-new)
    change_seq: int = 0
    # the newest numbered changes (seq, step id, status), set only for continue-as-new: the
    # next run's journal starts from them, so a watcher loses nothing at the switch
    carried_changes: list[tuple[int, str, StepStatus]] = Field(default_factory=list)
    # on_error: replan -- every round: the proposal, its validation and its decision
    replans: list[ReplanProposal] = Field(default_factory=list)
    # concurrency limits (plans.limits): since when the plan waits for a slot (status
    # `queued`), and the slot it holds once granted (kept over continue-as-new)
    queued_at: datetime | None = None
    slot: str | None = None

    def model_post_init(self, context: Any, /) -> None:
        # Its index follows every step change from now on (copies build theirs on use).
        _run_index.of(self)

    @property
    def status(self) -> PlanStatus:
        return derive_status(self)


# --- construction --------------------------------------------------------------------


def new_run(
    plan: Plan,
    now: datetime,
    carried: Mapping[str, StepRun] | None = None,
    keep_change_gates: bool = False,
) -> PlanRun:
    """A fresh run; ``carried`` holds the steps of an earlier run (resume from failure).

    Completed steps are kept as they are and never run again. Every other step starts
    over as a new version of itself (approvals bound to the old run lapse). Its
    idempotency key does not follow the version: it is derived from the plan id and the
    step's request (:func:`contracts.steps.request_key`), so an unchanged step sends the
    key of its earlier attempts again and a server that saw it does not repeat the effect.

    With ``keep_change_gates`` a step changed after approval whose change no person
    approved keeps its ``change_gate`` (and diff): resuming is not approving the change;
    a person approves it with ``approve_step``, or with the plan when the new run's
    plan approval is a person's (:mod:`plans.steering`).
    """
    run = PlanRun(plan=plan, created_at=now)
    run.versions.append(
        PlanVersion(version=1, by=plan.agent_id or "author", at=now, change="created")
    )
    for step in plan.steps:
        prev = (carried or {}).get(step.id)
        if prev is not None and prev.status == StepStatus.COMPLETED:
            run.steps[step.id] = prev.model_copy(update={"carried": True})
        elif prev is not None:
            # A person's answer is kept (the question is not asked again); approvals of a
            # step are bound to the run that asked for them and lapse.
            run.steps[step.id] = StepRun(
                id=step.id, version=prev.version + 1, answer=prev.answer, answered=prev.answered
            )
            if keep_change_gates and prev.change_gate is not None and prev.gate_approved_by is None:
                run.steps[step.id].change_gate = prev.change_gate
                run.steps[step.id].change_diff = prev.change_diff
        else:
            run.steps[step.id] = StepRun(id=step.id)
    _run_index.of(run)  # indexed with its steps: every change from here on is numbered
    return run


# --- logs and audit ------------------------------------------------------------------


def log(
    run: PlanRun, now: datetime, message: str, level: str = "info", step_id: str | None = None
) -> None:
    run.logs.append(LogEntry(at=now, level=level, message=message, step_id=step_id))  # type: ignore[arg-type]
    run.logs_total = max(run.logs_total, len(run.logs) - 1) + 1
    if len(run.logs) > MAX_LOG_ENTRIES:
        del run.logs[: len(run.logs) - MAX_LOG_ENTRIES]


def audit(
    run: PlanRun,
    now: datetime,
    by: str,
    action: str,
    accepted: bool,
    detail: str = "",
    step_id: str | None = None,
    via: Literal["signal", "update", "system"] = "system",
) -> bool:
    """Record a control (or what the system did) in the audit trail; False when a refused
    control was only counted (see :func:`admit_refused`). An accepted one always is."""
    if run.audit_limits:
        settle_refused(run, now)
        if not accepted and not admit_refused(run, now, by):
            return False
    _append_audit(run, now, by, action, accepted, detail, step_id, via)
    return True


def _append_audit(
    run: PlanRun,
    now: datetime,
    by: str,
    action: str,
    accepted: bool,
    detail: str = "",
    step_id: str | None = None,
    via: Literal["signal", "update", "system"] = "system",
) -> None:
    run.audit_total = max(run.audit_total, len(run.audit)) + 1
    run.audit.append(
        AuditEntry(
            at=now,
            by=by,
            action=action,
            accepted=accepted,
            version=run.version,
            step_id=step_id,
            detail=detail,
            via=via,
        )
    )
    trim_audit(run)


def trim_audit(run: PlanRun) -> None:
    """Keep the newest :data:`MAX_AUDIT_ENTRIES`, dropping only entries already handed to
    the store (``audit_stored``): while the store is down, the list grows instead."""
    excess = len(run.audit) - MAX_AUDIT_ENTRIES
    if excess <= 0:
        return
    if run.audit_limits:
        first_kept = max(run.audit_total, len(run.audit)) - len(run.audit)
        excess = min(excess, max(0, run.audit_stored - first_kept))
    if excess > 0:
        del run.audit[:excess]


def unstored_audit(run: PlanRun) -> int:
    """Entries in the workflow's list that were not handed to the store yet."""
    return max(0, max(run.audit_total, len(run.audit)) - max(run.audit_stored, 0))


def admit_refused(run: PlanRun, now: datetime, by: str) -> bool:
    """Whether a refused control of ``by`` is recorded: at most
    :data:`REFUSED_PER_ACTOR_PER_MINUTE` per actor and :data:`REFUSED_PER_MINUTE` in all
    per minute of workflow time, and none while :data:`MAX_AUDIT_UNSTORED` entries wait
    for the store. The others are counted (``audit_unrecorded``, and a summary entry per
    actor and minute). Deterministic: only ``now`` and the state decide."""
    everyone = run.refused.get(ALL_ACTORS)
    if everyone is None:
        everyone = run.refused[ALL_ACTORS] = RefusedCount(since=now)
    mine = run.refused.get(by)
    full = everyone.recorded >= REFUSED_PER_MINUTE or unstored_audit(run) >= MAX_AUDIT_UNSTORED
    if not full and mine is None:
        mine = run.refused[by] = RefusedCount(since=now)
    if full or mine is None or mine.recorded >= REFUSED_PER_ACTOR_PER_MINUTE:
        counted = everyone if full or mine is None else mine
        counted.dropped += 1
        counted.first_dropped = counted.first_dropped or now
        counted.last_dropped = now
        run.audit_unrecorded += 1
        return False
    mine.recorded += 1
    everyone.recorded += 1
    return True


def settle_refused(run: PlanRun, now: datetime, *, final: bool = False) -> None:
    """Close the minutes that ended by ``now`` (every one with ``final``): one summary
    entry for each actor whose refused controls were counted, not recorded."""
    for actor in sorted(run.refused, key=lambda a: (a == ALL_ACTORS, a)):
        c = run.refused[actor]
        if not final and now < c.since + REFUSED_WINDOW:
            continue
        del run.refused[actor]
        if not c.dropped:
            continue
        who = "all actors" if actor == ALL_ACTORS else actor
        limit = (
            f"{REFUSED_PER_MINUTE} per minute from all actors, or {MAX_AUDIT_UNSTORED} "
            "entries waiting for the store"
            if actor == ALL_ACTORS
            else f"{REFUSED_PER_ACTOR_PER_MINUTE} per actor per minute"
        )
        _append_audit(
            run,
            now,
            actor,
            "refused_controls_not_recorded",
            False,
            f"{c.dropped} refused control(s) from {who} between "
            f"{(c.first_dropped or c.since).isoformat()} and "
            f"{(c.last_dropped or now).isoformat()} were counted, not recorded "
            f"(limit: {limit})",
        )


def audit_note(run: PlanRun) -> str | None:
    """What the status says when the audit trail does not hold every control."""
    if not run.audit_unrecorded:
        return None
    return (
        f"{run.audit_unrecorded} refused control(s) were counted, not recorded in the "
        f"audit trail (more than {REFUSED_PER_ACTOR_PER_MINUTE} per actor or "
        f"{REFUSED_PER_MINUTE} in all per minute); summary entries "
        "(refused_controls_not_recorded) say from whom and when"
    )


# --- status --------------------------------------------------------------------------


def derive_status(run: PlanRun) -> PlanStatus:
    """The plan status the state reads now (what :attr:`PlanRun.status` answers)."""
    if run.final_status is not None:
        return run.final_status
    if run.approval is None:
        return PlanStatus.PENDING_APPROVAL if run.approval_required else PlanStatus.DRAFT
    if run.started_at is None:
        return PlanStatus.QUEUED if run.queued_at is not None else PlanStatus.APPROVED
    if run.pause is not None:
        if run.pause.question and not run.pause.answered:
            return PlanStatus.WAITING_CLARIFICATION
        return PlanStatus.PAUSED
    idx = _run_index.of(run)
    if idx.awaiting:
        return PlanStatus.WAITING_CORRECTION
    if idx.by_status[StepStatus.WAITING_CLARIFICATION]:
        return PlanStatus.WAITING_CLARIFICATION
    if idx.by_status[StepStatus.WAITING_APPROVAL]:
        return PlanStatus.WAITING_APPROVAL
    return PlanStatus.EXECUTING


# --- outputs kept in the state --------------------------------------------------------


def preview(value: Any, limit: int = PREVIEW_CHARS) -> Any:
    """A bounded preview of an output: small values as they are, large ones as text."""
    if value is None:
        return None
    text = json.dumps(value, default=str, sort_keys=True)
    if len(text) <= limit:
        return value
    return text[:limit] + f"... [truncated, {len(text)} chars]"


# The index of a run (counts, waits, ready steps) imports this module; imported here, at
# the end, so that either module may be imported first (and never inside a function: the
# workflow sandbox would load a second copy of it with a second table of indexes).
import plans.run_index as _run_index  # noqa: E402

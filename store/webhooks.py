"""Webhooks in the store: subscriptions, the delivery outbox and the attempt log.

* :func:`enqueue_snapshot_events` is called by :func:`store.recording.record_snapshot`,
  in the snapshot's own transaction: the events a snapshot shows become deliveries
  (one per subscription that wants the event) in the same commit as the state they
  describe, so an event is never lost and never made up. Events are derived from the
  snapshot's *state*, not from its changes: a step that started and ended between two
  snapshots (snapshots are batched) is ``completed`` with a ``started_at`` and one
  ``runs`` count, which gives both its ``step.started`` and its ``step.completed``. Each
  event has a key (plan, run, event, step, the step's run number...), and the delivery id
  is derived from the subscription and that key: recording a snapshot twice, or an older
  one late, adds nothing.
* The dispatcher (``workflows.webhook_dispatcher``) asks :func:`claim_due` for work, and the
  delivery activity reads :func:`delivery_to_send` and writes :func:`record_attempt`.

The caller commits (``store.db.session_scope(engine, write=True)``).
"""

from __future__ import annotations

import json
import secrets as secrets_module
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import sqlalchemy as sa
from sqlmodel import Session, col, select

from contracts.snapshots import PlanSnapshot
from plans.models import PlanStatus, StepStatus
from plans.run_state import StepRun, preview
from plans.webhooks import secret_name
from store.models import WebhookAttemptRecord, WebhookDeliveryRecord, WebhookRecord
from store.upsert import batches, count_rows, insert, utc

DELIVERY_NAMESPACE = uuid.UUID("1f0d6c58-2f7e-4c53-9d33-6b8c3a1e7a10")
FAILED_PLAN = frozenset(
    {PlanStatus.FAILED, PlanStatus.PARTIAL, PlanStatus.CANCELLED, PlanStatus.REJECTED}
)
RESPONSE_CHARS = 500  # of a receiver's answer, kept in the attempt log


def _now() -> datetime:
    return datetime.now(UTC)


# --- subscriptions ---------------------------------------------------------------------


def create_webhook(
    session: Session,
    *,
    url: str,
    events: list[str],
    secret: str | None,
    created_by: str | None,
) -> WebhookRecord:
    row = WebhookRecord(
        id="wh_" + secrets_module.token_hex(8),
        url=url,
        events=list(events),
        secret=secret,
        created_by=created_by,
        created_at=_now(),
    )
    session.add(row)
    session.flush()
    return row


def list_webhooks(session: Session) -> list[WebhookRecord]:
    return list(session.exec(select(WebhookRecord).order_by(col(WebhookRecord.created_at))).all())


def get_webhook(session: Session, webhook_id: str) -> WebhookRecord | None:
    return session.get(WebhookRecord, webhook_id)


def delete_webhook(session: Session, webhook_id: str) -> str | None:
    """Remove a subscription made through the API (its deliveries and log go with it):
    ``"deleted"``. A plan's own webhook is switched off instead (``active`` false; a later
    snapshot of the plan would otherwise make it anew): ``"switched_off"``. None when there
    is no such webhook."""
    row = session.get(WebhookRecord, webhook_id)
    if row is None:
        return None
    if row.plan_id is None:
        session.execute(sa.delete(WebhookRecord).where(col(WebhookRecord.id) == webhook_id))
        return "deleted"
    else:
        row.active = False
        session.add(row)
        session.execute(
            sa.update(WebhookDeliveryRecord)
            .where(col(WebhookDeliveryRecord.webhook_id) == webhook_id)
            .where(col(WebhookDeliveryRecord.status) == "pending")
            .values(status="failed", last_error="the webhook was deleted")
        )
    return "switched_off"


def _plan_webhooks(session: Session, snap: PlanSnapshot) -> None:
    """The webhooks the plan names in its options, as subscriptions of this plan only
    (created once; ids follow from the plan and the webhook)."""
    if snap.plan is None or not snap.plan.options.webhooks:
        return
    rows = []
    for i, hook in enumerate(snap.plan.options.webhooks):
        key = json.dumps([snap.plan_id, i, hook.url, list(hook.events), hook.secret])
        rows.append(
            {
                "id": "whp_" + uuid.uuid5(DELIVERY_NAMESPACE, key).hex[:20],
                "url": hook.url,
                "events": list(hook.events),
                "secret": None,
                "secret_ref": secret_name(hook.secret),
                "plan_id": snap.plan_id,
                "active": True,
                "created_by": snap.submitted_by or snap.agent_id,
                "created_at": _now(),
            }
        )
    stmt = insert(session, WebhookRecord).on_conflict_do_nothing(index_elements=["id"])
    session.execute(stmt, rows)


# --- events from a snapshot -----------------------------------------------------------


@dataclass(frozen=True)
class Event:
    name: str
    key: str  # unique within the run
    at: datetime
    rank: int  # orders events of one instant: started before ended
    data: dict[str, Any]


def _iso(at: datetime | None) -> str | None:
    return utc(at).isoformat() if at is not None else None


def _step_data(s: StepRun, with_output: bool) -> dict[str, Any]:
    data: dict[str, Any] = {
        "id": s.id,
        "status": s.status.value,
        "attempts": s.attempts,
        "version": s.version,
        "started_at": _iso(s.started_at),
        "completed_at": _iso(s.completed_at),
    }
    if s.error:
        data["error"] = s.error
    if with_output:
        data["output"] = preview(s.output)
    return data


def events_of(snap: PlanSnapshot) -> list[Event]:
    """The events ``snap`` shows (see the module doc), oldest first."""
    run = snap.run_id
    found: list[Event] = []
    if snap.started_at is not None:
        found.append(Event("plan.started", f"{run}/plan.started", snap.started_at, 0, {}))
    for s in snap.steps:
        if s.carried or s.started_at is None:
            continue  # carried: completed in an earlier run, which told of it
        n = getattr(s, "runs", 0) or 1
        started = _step_data(s, False) | {"status": StepStatus.RUNNING.value}
        found.append(
            Event("step.started", f"{run}/step.started/{s.id}/{n}", s.started_at, 1, started)
        )
        ended = s.completed_at or snap.at
        if s.status == StepStatus.COMPLETED:
            data = _step_data(s, True)
            found.append(Event("step.completed", f"{run}/step.ended/{s.id}/{n}", ended, 2, data))
        elif s.status == StepStatus.FAILED:
            data = _step_data(s, False)
            found.append(Event("step.failed", f"{run}/step.ended/{s.id}/{n}", ended, 2, data))
    for w in snap.waiting:
        # a wait is one event however many snapshots show it (its start is its key)
        key = f"{run}/plan.waiting/{w.kind}/{w.step_id or '-'}/{_iso(w.since) or '-'}"
        data = {"waiting": w.model_dump(mode="json")}
        found.append(Event("plan.waiting", key, w.since or snap.at, 3, data))
    if snap.status == PlanStatus.COMPLETED:
        at = snap.finished_at or snap.at
        found.append(Event("plan.completed", f"{run}/plan.ended", at, 4, {}))
    elif snap.status in FAILED_PLAN:
        at = snap.finished_at or snap.at
        found.append(Event("plan.failed", f"{run}/plan.ended", at, 4, {}))
    found.sort(key=lambda e: (utc(e.at), e.rank))
    return found


def delivery_id(webhook_id: str, plan_id: str, event_key: str) -> str:
    return str(uuid.uuid5(DELIVERY_NAMESPACE, f"{webhook_id}|{plan_id}|{event_key}"))


def _body(snap: PlanSnapshot, event: Event, did: str) -> str:
    plan = {
        "id": snap.plan_id,
        "title": snap.title,
        "run_id": snap.run_id,
        "status": snap.status.value,
        "version": snap.version,
        "agent_id": snap.agent_id,
    }
    if snap.outcome:
        plan["outcome"] = snap.outcome
    payload: dict[str, Any] = {
        "id": did,
        "event": event.name,
        "at": _iso(event.at),
        "plan": plan,
    }
    if "id" in event.data:
        payload["step"] = event.data
    else:
        payload.update(event.data)
    return json.dumps(payload, separators=(",", ":"), ensure_ascii=False, default=str)


def enqueue_snapshot_events(session: Session, snap: PlanSnapshot) -> int:
    """The snapshot's events as deliveries to each subscription that wants them (inserted
    once). Returns how many of this snapshot's deliveries are still to send: the caller
    wakes the dispatcher when there are any."""
    _plan_webhooks(session, snap)
    hooks = session.exec(
        select(WebhookRecord)
        .where(col(WebhookRecord.active))
        .where(
            sa.or_(col(WebhookRecord.plan_id).is_(None), col(WebhookRecord.plan_id) == snap.plan_id)
        )
    ).all()
    if not hooks:
        return 0
    events = events_of(snap)
    now = _now()
    rows = []
    for event in events:
        for hook in hooks:
            if event.name not in hook.events:
                continue
            did = delivery_id(hook.id, snap.plan_id, event.key)
            rows.append(
                {
                    "id": did,
                    "webhook_id": hook.id,
                    "event": event.name,
                    "plan_id": snap.plan_id,
                    "run_id": snap.run_id,
                    "body": _body(snap, event, did),
                    "status": "pending",
                    "attempts": 0,
                    "round_attempts": 0,
                    "created_at": now,
                    "round_started_at": now,
                    "next_attempt_at": now,
                    "redeliveries": 0,
                }
            )
            now += timedelta(microseconds=1)  # keeps the events' order in created_at
    if not rows:
        return 0
    stmt = insert(session, WebhookDeliveryRecord).on_conflict_do_nothing(index_elements=["id"])
    pending = 0
    for chunk in batches(rows):  # (a big plan's snapshot can carry thousands of events)
        session.execute(stmt, list(chunk))
        pending += session.execute(
            sa.select(sa.func.count())
            .select_from(WebhookDeliveryRecord)
            .where(col(WebhookDeliveryRecord.id).in_([r["id"] for r in chunk]))
            .where(col(WebhookDeliveryRecord.status) == "pending")
        ).scalar_one()
    return int(pending)


# --- the dispatcher's side --------------------------------------------------------------


def claim_due(
    session: Session, *, limit: int, lease_s: float, owner: str = ""
) -> tuple[list[str], datetime | None]:
    """Up to ``limit`` pending deliveries whose time has come, leased for ``lease_s`` to
    ``owner`` (a dispatcher elsewhere does not take them meanwhile; the same ``owner`` --
    a claim tried again after its answer was lost -- takes them again); and when the next
    pending one not taken falls due (None: nothing pending at all)."""
    now = _now()
    d = WebhookDeliveryRecord
    free = sa.or_(
        col(d.lease_until).is_(None),
        col(d.lease_until) < now,
        sa.and_(col(d.lease_owner).is_not(None), col(d.lease_owner) == owner),
    )
    due = session.exec(
        select(d.id)
        .where(col(d.status) == "pending")
        .where(col(d.next_attempt_at) <= now)
        .where(free)
        .order_by(col(d.next_attempt_at), col(d.created_at))
        .limit(limit)
    ).all()
    taken = []
    until = now + timedelta(seconds=lease_s)
    for did in due:
        done = session.execute(
            sa.update(d)
            .where(col(d.id) == did)
            .where(col(d.status) == "pending")
            .where(free)
            .values(lease_until=until, lease_owner=owner or None)
        )
        if done.rowcount:  # type: ignore[attr-defined]
            taken.append(did)
    pending = col(d.status) == "pending"
    not_taken = col(d.id).not_in(taken) if taken else sa.true()
    waiting = session.execute(
        sa.select(sa.func.min(d.next_attempt_at)).where(pending, not_taken, free)
    ).scalar_one_or_none()
    leased = session.execute(
        sa.select(sa.func.min(d.lease_until)).where(pending, not_taken, sa.not_(free))
    ).scalar_one_or_none()
    times = [utc(t) for t in (waiting, leased) if isinstance(t, datetime)]
    nxt = max(min(times), now) if times else None
    return taken, nxt


@dataclass(frozen=True)
class ToSend:
    id: str
    url: str
    event: str
    body: str
    secret: str | None
    secret_ref: str | None
    attempt: int  # this attempt's number


def delivery_to_send(session: Session, did: str) -> ToSend | None:
    """What to send for delivery ``did``, or None when it is no longer pending."""
    row = session.get(WebhookDeliveryRecord, did)
    if row is None or row.status != "pending":
        return None
    hook = session.get(WebhookRecord, row.webhook_id)
    if hook is None or not hook.active:
        return None
    return ToSend(
        id=row.id,
        url=hook.url,
        event=row.event,
        body=row.body,
        secret=hook.secret,
        secret_ref=hook.secret_ref,
        attempt=row.attempts + 1,
    )


@dataclass(frozen=True)
class Outcome:
    ok: bool
    status_code: int | None = None
    error: str | None = None
    response: str | None = None
    duration_ms: float = 0.0
    final: bool = False  # no point trying again (refused by the URL policy, no secret)


@dataclass(frozen=True)
class RetryRule:
    max_attempts: int
    max_age_s: float
    first_delay_s: float
    max_delay_s: float

    def delay(self, attempts: int) -> float:
        """The wait after the ``attempts``-th failed attempt of a round."""
        return min(self.first_delay_s * 2 ** max(attempts - 1, 0), self.max_delay_s)


def record_attempt(
    session: Session, did: str, number: int, outcome: Outcome, rule: RetryRule
) -> str:
    """Log attempt ``number`` of delivery ``did`` and move the delivery on: delivered,
    due again after a backoff, or given up (after ``max_attempts`` attempts in this round,
    or ``max_age_s`` after it was queued, or at once when retrying cannot help). Returns
    the delivery's status. Recording the same attempt twice changes nothing."""
    now = _now()
    row = session.get(WebhookDeliveryRecord, did)
    if row is None:
        return "gone"
    stmt = (
        insert(session, WebhookAttemptRecord)
        .on_conflict_do_nothing(index_elements=["delivery_id", "number"])
        .returning(col(WebhookAttemptRecord.number))
    )
    written = count_rows(
        session,
        stmt,
        [
            {
                "delivery_id": did,
                "number": number,
                "at": now,
                "duration_ms": outcome.duration_ms,
                "ok": outcome.ok,
                "status_code": outcome.status_code,
                "error": outcome.error,
                "response": (outcome.response or "")[:RESPONSE_CHARS] or None,
            }
        ],
    )
    if not written or row.status != "pending":
        return row.status
    row.attempts = max(row.attempts, number)
    row.round_attempts += 1
    row.last_status_code = outcome.status_code
    row.last_error = outcome.error
    row.lease_until = None
    row.lease_owner = None
    if outcome.ok:
        row.status = "delivered"
        row.delivered_at = now
    else:
        age = (now - utc(row.round_started_at)).total_seconds()
        delay = rule.delay(row.round_attempts)
        why = None
        if outcome.final:
            why = "not retried"
        elif row.round_attempts >= rule.max_attempts:
            why = f"given up after {row.round_attempts} attempts (PLANSMITH_WEBHOOK_MAX_ATTEMPTS)"
        elif age + delay > rule.max_age_s:
            why = f"given up after {age:.0f}s (PLANSMITH_WEBHOOK_MAX_AGE_S)"
        if why:
            row.status = "failed"
            row.last_error = f"{outcome.error or 'failed'}; {why}"
        else:
            row.next_attempt_at = now + timedelta(seconds=delay)
    session.add(row)
    return row.status


# --- reads and redelivery (the API) -----------------------------------------------------


def list_deliveries(
    session: Session, webhook_id: str, limit: int = 100
) -> list[tuple[WebhookDeliveryRecord, list[WebhookAttemptRecord]]]:
    """The webhook's newest deliveries (newest first), each with its attempts."""
    d = WebhookDeliveryRecord
    rows = session.exec(
        select(d)
        .where(col(d.webhook_id) == webhook_id)
        .order_by(col(d.created_at).desc())
        .limit(limit)
    ).all()
    if not rows:
        return []
    a = WebhookAttemptRecord
    attempts = session.exec(
        select(a).where(col(a.delivery_id).in_([r.id for r in rows])).order_by(col(a.number))
    ).all()
    by: dict[str, list[WebhookAttemptRecord]] = {}
    for att in attempts:
        by.setdefault(att.delivery_id, []).append(att)
    return [(r, by.get(r.id, [])) for r in rows]


def redeliver(session: Session, webhook_id: str, did: str) -> WebhookDeliveryRecord | None:
    """Queue delivery ``did`` again, at once, with a fresh round of attempts (same id and
    body: a receiver that deduplicates by delivery id drops it if it had it). None when
    the webhook has no such delivery."""
    row = session.get(WebhookDeliveryRecord, did)
    if row is None or row.webhook_id != webhook_id:
        return None
    now = _now()
    row.status = "pending"
    row.round_attempts = 0
    row.round_started_at = now
    row.next_attempt_at = now
    row.lease_until = None
    row.lease_owner = None
    row.redeliveries += 1
    session.add(row)
    return row

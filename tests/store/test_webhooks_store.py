"""Webhook deliveries in the store, on SQLite and PostgreSQL: the events a snapshot shows
become deliveries in its own transaction, once, however snapshots are batched, repeated or
reordered; claiming leases them; attempts move them on (store.webhooks)."""

from __future__ import annotations

import dataclasses
import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from sqlalchemy.engine import Engine
from sqlmodel import Session, col, select
from temporalio.testing import ActivityEnvironment

from activities import persist
from config import get_settings
from store import db, webhooks
from store.models import WebhookAttemptRecord, WebhookDeliveryRecord
from tests.helpers import activity_deps
from tests.store.test_store import STEPS, Driver, write

ALL = ["plan.started", "plan.waiting", "plan.completed", "plan.failed"]
ALL += ["step.started", "step.completed", "step.failed"]
RULE = webhooks.RetryRule(max_attempts=3, max_age_s=3600, first_delay_s=1, max_delay_s=4)


def subscribe(engine: Engine, events: list[str] = ALL) -> str:
    with db.session_scope(engine, write=True) as s:
        return webhooks.create_webhook(
            s, url="http://127.0.0.1:9/x", events=events, secret=None, created_by="t"
        ).id


def deliveries(engine: Engine) -> list[tuple[str, str | None]]:
    with Session(engine) as s:
        rows = s.exec(
            select(WebhookDeliveryRecord).order_by(col(WebhookDeliveryRecord.created_at))
        ).all()
    return [(r.event, json.loads(r.body).get("step", {}).get("id")) for r in rows]


def test_a_snapshot_after_fast_steps_still_tells_each_start_and_end_once(engine: Engine) -> None:
    subscribe(engine)
    d = Driver(STEPS)
    first = d.snap(1).model_copy(deep=True)  # waiting for approval (a copy: steps move on)
    d.control("approve")
    d.finish()  # every step started and ended between two snapshots
    last = d.snap(2)
    assert write(engine, first).deliveries == 1
    assert deliveries(engine) == [("plan.waiting", None)]
    result = write(engine, last)
    assert result.deliveries == 8
    assert deliveries(engine)[1:] == [
        ("plan.started", None),
        ("step.started", "a"),
        ("step.completed", "a"),
        ("step.started", "b"),
        ("step.completed", "b"),
        ("step.started", "c"),
        ("step.completed", "c"),
        ("plan.completed", None),
    ]
    # the same snapshots again, or an older one late: nothing new
    write(engine, last)
    write(engine, first)
    assert len(deliveries(engine)) == 9


def test_only_the_events_subscribed_and_failures_as_failed(engine: Engine) -> None:
    subscribe(engine, ["step.failed", "plan.failed"])
    d = Driver(STEPS)
    d.control("approve")
    d.step(ok=False)
    d.finish()
    write(engine, d.snap(1))
    assert deliveries(engine) == [("step.failed", "a"), ("plan.failed", None)]
    with Session(engine) as s:
        body = json.loads(s.exec(select(WebhookDeliveryRecord.body)).first() or "{}")
    assert body["step"]["error"] == "boom" and body["plan"]["status"] == "failed"


def test_claims_lease_and_attempts_back_off_then_give_up(engine: Engine) -> None:
    subscribe(engine, ["plan.completed"])
    d = Driver(STEPS)
    d.control("approve")
    d.finish()
    write(engine, d.snap(1))
    with db.session_scope(engine, write=True) as s:
        ids, nxt = webhooks.claim_due(s, limit=10, lease_s=60, owner="run-1/7")
    assert len(ids) == 1 and nxt is None
    with db.session_scope(engine, write=True) as s:
        again, nxt = webhooks.claim_due(s, limit=10, lease_s=60, owner="run-1/8")
    assert again == [] and nxt is not None  # leased: not claimed twice, due at the lease end
    with db.session_scope(engine, write=True) as s:  # the same claim tried again
        assert webhooks.claim_due(s, limit=10, lease_s=60, owner="run-1/7")[0] == ids
    did = ids[0]
    fail = webhooks.Outcome(ok=False, status_code=500, error="the receiver answered 500")
    for number in (1, 2):
        with db.session_scope(engine, write=True) as s:
            assert webhooks.record_attempt(s, did, number, fail, RULE) == "pending"
            row = s.get(WebhookDeliveryRecord, did)
            assert row is not None
            wait = row.next_attempt_at - datetime.now(UTC)
            assert timedelta(0) < wait <= timedelta(seconds=RULE.delay(number))
    with db.session_scope(engine, write=True) as s:  # the same attempt recorded twice
        assert webhooks.record_attempt(s, did, 2, fail, RULE) == "pending"
    with db.session_scope(engine, write=True) as s:
        assert webhooks.record_attempt(s, did, 3, fail, RULE) == "failed"
    with Session(engine) as s:
        row = s.get(WebhookDeliveryRecord, did)
        assert row is not None and row.attempts == 3
        assert "given up after 3 attempts" in (row.last_error or "")
        assert len(s.exec(select(WebhookAttemptRecord)).all()) == 3
    with db.session_scope(engine, write=True) as s:
        assert webhooks.redeliver(s, "wh_other", did) is None
        assert webhooks.redeliver(s, row.webhook_id, did) is not None
    with db.session_scope(engine, write=True) as s:
        ids, _ = webhooks.claim_due(s, limit=10, lease_s=60)
        assert ids == [did]
        ok = webhooks.Outcome(ok=True, status_code=204)
        assert webhooks.record_attempt(s, did, 4, ok, RULE) == "delivered"


async def test_record_snapshot_never_holds_a_plan_for_a_dispatcher_it_cannot_wake(
    tmp_path: Path,
) -> None:
    """The wake-up call fails (no Temporal here): the activity is tried again a few times
    (the snapshot is written once), then gives the wake-up up and answers; the deliveries
    wait in the store."""
    url = f"sqlite:///{tmp_path / 'store.db'}"
    settings = get_settings().replace(store={"database_url": url})
    record = persist.SnapshotActivities(activity_deps(settings=settings)).record_snapshot
    engine = db.ensure_migrated(db.get_engine(url))
    subscribe(engine, ["plan.completed"])
    d = Driver(STEPS)
    d.control("approve")
    d.finish()
    env = ActivityEnvironment()
    with pytest.raises(RuntimeError):  # no client to wake the dispatcher with: retried
        await env.run(record, d.snap(1))
    env.info = dataclasses.replace(env.info, attempt=persist.KICK_TRIES)
    result = await env.run(record, d.snap(1))
    assert result.deliveries == 1
    assert deliveries(engine) == [("plan.completed", None)]
    engine.dispose()

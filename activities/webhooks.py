"""Webhook deliveries: the dispatcher's activities and the wake-up call (docs/webhooks.md).

* ``claim_webhook_deliveries``: the pending deliveries whose time has come, leased to
  this dispatcher for a while (:func:`store.webhooks.claim_due`).
* ``send_webhook_delivery``: one attempt to deliver one delivery -- a signed JSON POST
  through the ``http_request`` tool's guard (:mod:`activities.http_guard`: the URL policy
  of ``PLANSMITH_HTTP_*`` checked on every resolved address, the connection pinned to a
  checked address, no proxies, the answer read up to a cap, the whole bounded by
  ``PLANSMITH_WEBHOOK_TIMEOUT_S``). Redirects are not followed (a 3xx is a failed
  attempt): a receiver is a fixed address. The attempt and its outcome are logged in the
  store, and the delivery is moved on: delivered, due again after a backoff, or given up
  (:func:`store.webhooks.record_attempt`). A failing receiver never makes the activity
  fail; only the store can (Temporal then tries the activity again: the same attempt
  number, so the log keeps one row, and the receiver may see the delivery twice --
  at-least-once, with a stable ``X-Plansmith-Delivery`` id).
* :func:`kick_dispatcher`: signal-with-start of the queue's dispatcher.

Secrets (a subscription's own, or a plan webhook's ``{{ secrets.NAME }}`` read from the
worker's secrets) only sign; they are never logged nor sent.
"""

from __future__ import annotations

import hashlib
import hmac
import time

import httpx
from temporalio import activity
from temporalio.client import Client

from activities.deps import ActivityDeps
from activities.http_guard import GuardedTransport, TooManyRedirects, exchange
from activities.persist import in_store_thread
from activities.secrets import load_secrets
from config.http import HostDenied
from contracts.webhooks import (
    CLAIM_DELIVERIES,
    DISPATCHER_WORKFLOW,
    KICK,
    SEND_DELIVERY,
    Claimed,
    ClaimInput,
    DispatcherInput,
    Kick,
    SendInput,
    SendResult,
    dispatcher_id,
)
from store import webhooks
from store.db import ensure_migrated, session_scope

SIGNATURE_HEADER = "X-Plansmith-Signature"
RESPONSE_CAP = 64 * 1024  # of a receiver's answer, read at most


def sign(secret: str, body: bytes) -> str:
    """The ``X-Plansmith-Signature`` value: ``sha256=<hex HMAC-SHA256 of the body>``."""
    return "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


async def kick_dispatcher(client: Client, task_queue: str, by: str) -> None:
    """Wake the dispatcher of ``task_queue`` (start it if it is not running)."""
    await client.start_workflow(
        DISPATCHER_WORKFLOW,
        DispatcherInput(),
        id=dispatcher_id(task_queue),
        task_queue=task_queue,
        start_signal=KICK,
        start_signal_args=[Kick(by=by)],
    )


class WebhookActivities:
    """The dispatcher's activities, working with the store and settings of ``deps``."""

    def __init__(self, deps: ActivityDeps):
        self.deps = deps
        cfg = deps.settings.webhooks
        self.rule = webhooks.RetryRule(
            max_attempts=cfg.max_attempts,
            max_age_s=cfg.max_age_s,
            first_delay_s=cfg.retry_delay_s,
            max_delay_s=cfg.max_retry_delay_s,
        )

    def _claim(self, limit: int | None, owner: str) -> Claimed:
        cfg = self.deps.settings.webhooks
        take = cfg.concurrency if limit is None else min(limit, cfg.concurrency)
        with session_scope(ensure_migrated(self.deps.engine), write=True) as session:
            ids, nxt = webhooks.claim_due(
                session, limit=take, lease_s=cfg.timeout_s + 60, owner=owner
            )
        return Claimed(
            ids=ids, next_due=nxt, concurrency=cfg.concurrency, send_timeout_s=cfg.timeout_s
        )

    @activity.defn(name=CLAIM_DELIVERIES)
    async def claim_deliveries(self, inp: ClaimInput) -> Claimed:
        """The deliveries to send now (leased), and when the next one falls due."""
        # the claim's own name: tried again (its answer lost, a worker stopping), it takes
        # again what it leased the first time instead of waiting for the leases to end
        info = activity.info()
        owner = f"{info.workflow_run_id}/{info.activity_id}"
        return await in_store_thread(self._claim, inp.limit, owner)

    def _read(self, did: str) -> webhooks.ToSend | None:
        with session_scope(ensure_migrated(self.deps.engine)) as session:
            return webhooks.delivery_to_send(session, did)

    def _record(self, did: str, number: int, outcome: webhooks.Outcome) -> str:
        with session_scope(ensure_migrated(self.deps.engine), write=True) as session:
            return webhooks.record_attempt(session, did, number, outcome, self.rule)

    @activity.defn(name=SEND_DELIVERY)
    async def send_delivery(self, inp: SendInput) -> SendResult:
        """One attempt to deliver (see the module doc)."""
        found = await in_store_thread(self._read, inp.delivery_id)
        if found is None:
            return SendResult(delivery_id=inp.delivery_id, status="gone")
        outcome = await self._post(found)
        status = await in_store_thread(self._record, found.id, found.attempt, outcome)
        if not outcome.ok:
            activity.logger.info(
                "webhook delivery %s (%s) attempt %d failed: %s",
                found.id,
                found.event,
                found.attempt,
                outcome.error,
            )
        return SendResult(delivery_id=found.id, status=status, status_code=outcome.status_code)

    async def _post(self, d: webhooks.ToSend) -> webhooks.Outcome:
        secret = d.secret
        if d.secret_ref is not None:
            secret = load_secrets(self.deps.settings).get(d.secret_ref)
            if secret is None:
                return webhooks.Outcome(
                    ok=False,
                    error=f"the worker has no secret {d.secret_ref} to sign with "
                    "(PLANSMITH_SECRET_<NAME> or PLANSMITH_SECRETS_FILE)",
                    final=True,
                )
        data = d.body.encode()
        headers = {
            "Content-Type": "application/json",
            "User-Agent": "Plansmith-Webhooks/1",
            "X-Plansmith-Event": d.event,
            "X-Plansmith-Delivery": d.id,
            "X-Plansmith-Attempt": str(d.attempt),
            "Idempotency-Key": d.id,
        }
        if secret:
            headers[SIGNATURE_HEADER] = sign(secret, data)
        http = self.deps.settings.http
        started = time.monotonic()

        def took() -> float:
            return round((time.monotonic() - started) * 1000, 1)

        try:
            got = await exchange(
                "POST",
                d.url,
                headers=headers,
                query=None,
                body={"content": data},
                timeout_s=self.deps.settings.webhooks.timeout_s,
                max_redirects=0,
                max_response_bytes=min(http.max_response_bytes, RESPONSE_CAP),
                transport=GuardedTransport(http.policy()),
            )
        except HostDenied as e:
            return webhooks.Outcome(ok=False, error=str(e), duration_ms=took(), final=True)
        except TooManyRedirects:
            return webhooks.Outcome(
                ok=False,
                error="the receiver answered with a redirect (not followed)",
                duration_ms=took(),
            )
        except TimeoutError:
            return webhooks.Outcome(
                ok=False,
                error=f"no answer within {self.deps.settings.webhooks.timeout_s:g}s "
                "(PLANSMITH_WEBHOOK_TIMEOUT_S)",
                duration_ms=took(),
            )
        except (httpx.HTTPError, OSError) as e:
            return webhooks.Outcome(
                ok=False,
                error=f"{type(e).__name__}: {e}",
                duration_ms=took(),
            )
        ok = 200 <= got.status < 300
        return webhooks.Outcome(
            ok=ok,
            status_code=got.status,
            error=None if ok else f"the receiver answered {got.status}",
            response=got.text(),
            duration_ms=took(),
        )

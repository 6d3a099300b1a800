"""``/api/webhooks``: subscriptions to plan and step events, their delivery log and
redelivery (docs/webhooks.md).

Webhooks are configuration, and a webhook's URL sends plan data out of the house (its
URL may itself be a credential, as chat webhooks' are): with API keys, every route here
needs an admin key -- operators and agents get 403, reading included. A subscription's
secret is written once and never shown again (``has_secret`` says whether there is one),
nor logged.
"""

from __future__ import annotations

import json
import logging
from datetime import datetime
from typing import Annotated, Any, Literal
from urllib.parse import urlsplit

from fastapi import APIRouter, Body, Depends, Path, Query
from pydantic import BaseModel, ConfigDict, Field
from sqlmodel import Session

from api.deps import (
    ActorDep,
    ApiServices,
    ServicesDep,
    get_principal,
    reject_unknown_query,
    require_admin,
)
from api.errors import ErrorBody, conflict, invalid, not_found, responses
from config.http import HostDenied, literal_address
from plans.plan_loading import Problem
from plans.webhooks import EVENTS, EventName, WebhookTarget
from store import webhooks as store_webhooks
from store.models import WebhookAttemptRecord, WebhookDeliveryRecord, WebhookRecord
from workflows.webhook_kick import kick_dispatcher

log = logging.getLogger("plansmith.api")

router = APIRouter(
    prefix="/webhooks",
    tags=["webhooks"],
    dependencies=[Depends(get_principal), Depends(reject_unknown_query), Depends(require_admin)],
)

WEBHOOK_ID = r"^[A-Za-z0-9_-]{1,64}$"
DELIVERY_ID = r"^[A-Za-z0-9-]{1,64}$"
MAX_SECRET = 500


class WebhookCreate(WebhookTarget):
    """A subscription: every plan's events of the kinds named go to ``url``."""

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [
                {
                    "url": "http://127.0.0.1:9000/plansmith-events",
                    "events": ["plan.completed", "plan.failed", "step.failed"],
                    "secret": "a long random string",
                }
            ]
        },
    )

    url: str = Field(description="http(s) URL; the URL policy of PLANSMITH_HTTP_* applies")
    events: list[EventName] = Field(description="at least one of: " + ", ".join(EVENTS))
    secret: str | None = Field(
        default=None,
        min_length=1,
        max_length=MAX_SECRET,
        description="signs every delivery (X-Plansmith-Signature: sha256=<hex HMAC-SHA256 "
        "of the body>); left out: deliveries are unsigned. Never shown again",
    )


class WebhookView(BaseModel):
    id: str
    url: str
    events: list[str]
    has_secret: bool = Field(description="deliveries are signed (the secret is never shown)")
    plan_id: str | None = Field(
        default=None, description="set for a webhook a plan named in its options: its events only"
    )
    active: bool
    created_by: str | None
    created_at: datetime


class WebhookList(BaseModel):
    webhooks: list[WebhookView]


class AttemptView(BaseModel):
    number: int
    at: datetime
    duration_ms: float
    ok: bool
    status_code: int | None
    error: str | None
    response: str | None = Field(description="the start of the receiver's answer")


class DeliveryView(BaseModel):
    id: str = Field(description="the delivery id (X-Plansmith-Delivery, and `id` in the body)")
    event: str
    plan_id: str
    run_id: str
    status: str = Field(description="pending, delivered or failed (given up)")
    attempts: int
    created_at: datetime
    next_attempt_at: datetime | None = Field(description="when it is tried next (pending)")
    delivered_at: datetime | None
    last_status_code: int | None
    last_error: str | None
    redeliveries: int
    payload: dict[str, Any] = Field(description="the JSON body sent")
    attempt_log: list[AttemptView]


class DeliveryList(BaseModel):
    webhook_id: str
    deliveries: list[DeliveryView] = Field(description="newest first")


class Redelivered(BaseModel):
    delivery: DeliveryView
    dispatcher_woken: bool = Field(
        description="false when Temporal could not be reached: the delivery waits in the "
        "store and goes out when the dispatcher next runs (a plan's next snapshot, a "
        "worker's start)"
    )


IdDep = Annotated[str, Path(pattern=WEBHOOK_ID, description="the webhook id")]


def _view(row: WebhookRecord) -> WebhookView:
    return WebhookView(
        id=row.id,
        url=row.url,
        events=list(row.events),
        has_secret=bool(row.secret or row.secret_ref),
        plan_id=row.plan_id,
        active=row.active,
        created_by=row.created_by,
        created_at=row.created_at,
    )


def _delivery(row: WebhookDeliveryRecord, attempts: list[WebhookAttemptRecord]) -> DeliveryView:
    return DeliveryView(
        id=row.id,
        event=row.event,
        plan_id=row.plan_id,
        run_id=row.run_id,
        status=row.status,
        attempts=row.attempts,
        created_at=row.created_at,
        next_attempt_at=row.next_attempt_at if row.status == "pending" else None,
        delivered_at=row.delivered_at,
        last_status_code=row.last_status_code,
        last_error=row.last_error,
        redeliveries=row.redeliveries,
        payload=json.loads(row.body),
        attempt_log=[
            AttemptView(
                number=a.number,
                at=a.at,
                duration_ms=a.duration_ms,
                ok=a.ok,
                status_code=a.status_code,
                error=a.error,
                response=a.response,
            )
            for a in attempts
        ],
    )


def _policy_problem(services: ApiServices, url: str) -> str | None:
    """What the URL policy (PLANSMITH_HTTP_*) says now about the URL's host, as far as
    can be told without resolving a name (every delivery checks again, after resolving)."""
    policy = services.settings.http.policy()
    host = urlsplit(url).hostname or ""
    try:
        address = literal_address(host)
        if address is None:
            policy.check_name(host)
        else:
            policy.check(host, [address])
    except HostDenied as e:
        return str(e)
    return None


def _unknown(webhook_id: str) -> Exception:
    return not_found(f"no webhook {webhook_id!r}")


@router.post(
    "",
    response_model=WebhookView,
    status_code=201,
    summary="Subscribe a URL to plan and step events",
    description="Needs an admin key when PLANSMITH_API_KEYS is set (403 for operator and "
    "agent keys). The secret is never shown again. 422 with located problems for a URL "
    "that is not http(s), carries credentials or is refused by the URL policy "
    "(PLANSMITH_HTTP_ALLOW/DENY...), and for unknown or repeated events.",
    responses=responses(401, 403, 422, 503),
)
async def create_webhook(
    body: Annotated[WebhookCreate, Body()], services: ServicesDep, principal: ActorDep
) -> WebhookView:
    problem = _policy_problem(services, body.url)
    if problem:
        raise invalid("the webhook's URL is refused", [Problem(location="url", message=problem)])
    row = await services.store.run(
        lambda s: store_webhooks.create_webhook(
            s,
            url=body.url,
            events=list(body.events),
            secret=body.secret,
            created_by=principal.owner or "api",
        ),
        write=True,
    )
    log.info(
        "webhook %s created by %s for %s (%s)",
        row.id,
        principal.owner or "api",
        ", ".join(row.events),
        "signed" if row.secret else "unsigned",
    )
    return _view(row)


@router.get(
    "",
    response_model=WebhookList,
    summary="The webhooks: subscriptions, and those plans named in their options",
    responses=responses(401, 403, 422, 503),
)
async def list_webhooks(services: ServicesDep) -> WebhookList:
    rows = await services.store.run(store_webhooks.list_webhooks)
    return WebhookList(webhooks=[_view(r) for r in rows])


@router.get(
    "/{webhook_id}",
    response_model=WebhookView,
    summary="One webhook (its secret is never shown)",
    responses={**responses(401, 403, 422, 503), 404: {"model": ErrorBody}},
)
async def get_webhook(webhook_id: IdDep, services: ServicesDep) -> WebhookView:
    row = await services.store.run(lambda s: store_webhooks.get_webhook(s, webhook_id))
    if row is None:
        raise _unknown(webhook_id)
    return _view(row)


class WebhookDeleted(BaseModel):
    id: str
    outcome: Literal["deleted", "switched_off"] = Field(
        description="deleted: a subscription, with its delivery log; switched_off: a "
        "webhook a plan named in its options (it stays listed, inactive)"
    )


@router.delete(
    "/{webhook_id}",
    response_model=WebhookDeleted,
    summary="Delete a webhook",
    description="A subscription is deleted with its delivery log; a webhook a plan named "
    "in its options is switched off (active: false) and its pending deliveries dropped.",
    responses={**responses(401, 403, 422, 503), 404: {"model": ErrorBody}},
)
async def delete_webhook(
    webhook_id: IdDep, services: ServicesDep, principal: ActorDep
) -> WebhookDeleted:
    done = await services.store.run(
        lambda s: store_webhooks.delete_webhook(s, webhook_id), write=True
    )
    if done is None:
        raise _unknown(webhook_id)
    log.info("webhook %s %s by %s", webhook_id, done.replace("_", " "), principal.owner or "api")
    return WebhookDeleted(id=webhook_id, outcome="deleted" if done == "deleted" else "switched_off")


@router.get(
    "/{webhook_id}/deliveries",
    response_model=DeliveryList,
    summary="The webhook's deliveries, newest first, each with every attempt",
    responses={**responses(401, 403, 422, 503), 404: {"model": ErrorBody}},
)
async def list_deliveries(
    webhook_id: IdDep,
    services: ServicesDep,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
) -> DeliveryList:
    def read(s: Session) -> list[DeliveryView] | None:
        if store_webhooks.get_webhook(s, webhook_id) is None:
            return None
        return [_delivery(r, a) for r, a in store_webhooks.list_deliveries(s, webhook_id, limit)]

    found = await services.store.run(read)
    if found is None:
        raise _unknown(webhook_id)
    return DeliveryList(webhook_id=webhook_id, deliveries=found)


@router.post(
    "/{webhook_id}/deliveries/{delivery_id}/redeliver",
    response_model=Redelivered,
    status_code=202,
    summary="Send a delivery again (same id and body, a fresh round of attempts)",
    responses={
        **responses(401, 403, 422, 503),
        404: {"model": ErrorBody},
        409: {"model": ErrorBody, "description": "the webhook is switched off"},
    },
)
async def redeliver(
    webhook_id: IdDep,
    delivery_id: Annotated[str, Path(pattern=DELIVERY_ID, description="the delivery id")],
    services: ServicesDep,
    principal: ActorDep,
) -> Redelivered:
    def requeue(s: Session) -> DeliveryView | str:
        hook = store_webhooks.get_webhook(s, webhook_id)
        if hook is None:
            return "unknown"
        if not hook.active:
            return "inactive"
        row = store_webhooks.redeliver(s, webhook_id, delivery_id)
        if row is None:
            return "unknown"
        s.flush()
        return _delivery(row, [])

    view = await services.store.run(requeue, write=True)
    if view == "inactive":
        raise conflict(f"webhook {webhook_id!r} is switched off: nothing is sent to it")
    if not isinstance(view, DeliveryView):
        raise not_found(f"webhook {webhook_id!r} has no delivery {delivery_id!r}")
    woken = True
    try:
        client = await services.temporal.client()
        await kick_dispatcher(
            client,
            services.settings.temporal.task_queue,
            f"redeliver by {principal.owner or 'api'}",
        )
    except Exception as e:  # Temporal down: the delivery waits in the store
        log.warning("redeliver %s: could not wake the webhook dispatcher: %s", delivery_id, e)
        woken = False
    log.info(
        "delivery %s of webhook %s queued again by %s",
        delivery_id,
        webhook_id,
        principal.owner or "api",
    )
    return Redelivered(delivery=view, dispatcher_woken=woken)

"""``GET /api/plans/{plan_id}/ws``: a plan's events over a WebSocket.

The same events as ``GET /api/plans/{plan_id}/events`` (:mod:`api.sse`), from the same
shared feed of the plan, one JSON text message each: ``{"id": "<feed>:<n>", "event":
"plan" | "step" | "resync" | "end" | "error", "data": {...}}`` (``EventsDoc`` of the
OpenAPI document). A new watcher first gets the snapshot; one that comes back with the
id of the last event it got (``?last_event_id=`` or the ``Last-Event-ID`` header) gets
exactly the events after it while the feed still holds them, as an SSE client does.
After ``end`` (or ``error``) the server closes the socket (1000); a watcher that comes
back after ``end`` is closed at once (1000, "the plan ended"). Messages the client sends
are read and dropped; the server's WebSocket pings keep the connection open.

Authentication is the API's: ``Authorization: Bearer <key>`` or ``X-API-Key`` on the
handshake. A refused handshake (401, 404, 409 for a draft, 422, 503) is answered with
the same JSON error body as the HTTP routes, or closed with 1008 by a server that cannot
send one. The guard refuses a handshake from another site's page (``Origin``; see
:mod:`api.guard`).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import re

from fastapi import APIRouter, WebSocket

from api.deps import ApiServices, principal_for
from api.errors import ApiError, api_error_of, error_response, invalid
from api.routes_plan_reads import open_plan_feed
from plans.models import ID_PATTERN
from plans.validation import Problem

router = APIRouter(prefix="/plans", tags=["plans"])
QUERY = frozenset({"last_event_id"})
MAX_EVENT_ID = 200


def _bearer(ws: WebSocket) -> str | None:
    scheme, _, credentials = ws.headers.get("authorization", "").partition(" ")
    if scheme.lower() == "bearer" and credentials.strip():
        return credentials.strip()
    return ws.headers.get("x-api-key")


def _last_event_id(ws: WebSocket) -> str | None:
    unknown = sorted(set(ws.query_params) - QUERY)
    if unknown:
        raise invalid(
            f"unknown query parameter(s) {', '.join(unknown)}; known: last_event_id",
            [Problem(location=f"query.{k}", message="unknown parameter") for k in unknown],
        )
    last = ws.query_params.get("last_event_id") or ws.headers.get("last-event-id")
    if last is not None and len(last) > MAX_EVENT_ID:
        raise invalid(
            f"last_event_id is longer than {MAX_EVENT_ID} characters",
            [Problem(location="query.last_event_id", message="too long")],
        )
    return last


async def _deny(ws: WebSocket, error: ApiError) -> None:
    if "websocket.http.response" in ws.scope.get("extensions", {}):
        await ws.send_denial_response(error_response(ws, error))
    else:
        await ws.close(code=1008, reason=error.detail[:120])


@router.websocket("/{plan_id}/ws", name="plan_events_ws")
async def plan_events_ws(websocket: WebSocket, plan_id: str) -> None:
    services: ApiServices = websocket.app.state.services
    try:
        if not re.fullmatch(ID_PATTERN, plan_id):
            raise invalid(
                f"plan id {plan_id[:100]!r} is not a valid id",
                [Problem(location="path.plan_id", message=f"must match {ID_PATTERN}")],
            )
        last = _last_event_id(websocket)
        principal_for(services, _bearer(websocket))
        feed = await open_plan_feed(services, services.drafts, services.hub, plan_id)
    except Exception as e:
        await _deny(websocket, api_error_of(e))
        return
    await websocket.accept()
    if feed.finished_for(last):
        await websocket.close(code=1000, reason="the plan ended; nothing more will come")
        return

    async def send_all() -> None:
        async with contextlib.aclosing(feed.events(last)) as events:
            async for batch in events:
                for event_id, kind, data in batch:
                    text = json.dumps(
                        {"id": event_id, "event": kind, "data": data},
                        separators=(",", ":"),
                        default=str,
                    )
                    await websocket.send_text(text)
        await websocket.close(code=1001 if services.hub.closing else 1000)

    async def until_gone() -> None:
        while (await websocket.receive())["type"] != "websocket.disconnect":
            pass  # what a client sends is not read

    sender = asyncio.create_task(send_all())
    listener = asyncio.create_task(until_gone())
    try:
        await asyncio.wait({sender, listener}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for task in (sender, listener):
            task.cancel()
        for task in (sender, listener):
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task

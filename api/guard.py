"""Two checks on every request, before any route runs (:class:`RequestGuard`):

* **Host.** The ``Host`` header must name this API: the loopback names (``localhost``,
  ``127.0.0.1``, ``[::1]``), the host ``plansmith api`` is bound to, and the names in
  ``PLANSMITH_API_ALLOWED_HOSTS`` (``*.example.com`` matches its subdomains, ``*`` any
  host). Any other host gets **400**: a web page whose name was re-pointed at this
  machine (DNS rebinding) cannot talk to a local API. ``/healthz`` and ``/readyz`` are
  exempt (probes address containers by IP; they tell nothing to an anonymous caller).
* **Origin** (WebSockets only; they have no CORS): a handshake whose ``Origin`` is
  neither one of the hosts above nor one of ``PLANSMITH_CORS_ORIGINS`` gets **403**
  (another site's page cannot read a plan's events with the cookies of this host or
  from a local API without keys).
* **JSON.** A state-changing request under ``/api`` (``POST``, ``PUT``, ``PATCH``,
  ``DELETE``) must say ``Content-Type: application/json``, with a body or without one;
  anything else (none, a form, ``text/plain``) gets **415**. A browser sends such a
  request cross-site only after a CORS preflight, which this API answers only for
  ``PLANSMITH_CORS_ORIGINS``, so a web page cannot approve or cancel a plan behind a
  person's back.

A request that sends ``Host`` or ``Content-Type`` twice gets **400** (``bad_request``):
the checks read one copy, the routes could read the other.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable

from fastapi import APIRouter
from fastapi.routing import APIRoute
from fastapi.utils import create_model_field
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from api.errors import ErrorBody, send_error
from config.settings import LOOPBACK_HOSTS

STATE_CHANGING = frozenset({"POST", "PUT", "PATCH", "DELETE"})
HOST_EXEMPT = ("/healthz", "/readyz")
WILDCARD_BINDS = frozenset({"", "0.0.0.0", "[::]", "*"})
# Headers the checks read: a request sending one of them twice is refused (400), so the
# guard and the routes never read different copies.
SINGLE_HEADERS = ("host", "content-type")


def normalize_host(value: str) -> str | None:
    """The host of a ``Host`` header or a configured name, lower case, without port or
    trailing dot: ``Example.COM:8000`` → ``example.com``, ``[::1]:8000`` and ``::1`` →
    ``[::1]``. None when it is malformed."""
    v = value.strip().lower()
    if v.startswith("["):
        end = v.find("]")
        rest = v[end + 1 :]
        if end < 0 or (rest and not (rest.startswith(":") and rest[1:].isdigit())):
            return None
        return v[: end + 1]
    if v.count(":") > 1:  # a bare IPv6 address (a configured name, a bind address)
        try:
            return f"[{ipaddress.IPv6Address(v).compressed}]"
        except ValueError:
            return None
    host, sep, port = v.partition(":")
    if sep and not port.isdigit():
        return None
    host = host.rstrip(".")
    if not host or any(c in host for c in " /\\@?#"):
        return None
    return host


def allowed_hosts(configured: Iterable[str], bind_host: str | None = None) -> tuple[str, ...]:
    """The hosts the API answers to: loopback names, the bound host (unless a wildcard
    address) and the configured names."""
    names: list[str] = [*LOOPBACK_HOSTS]
    if bind_host is not None:
        bound = normalize_host(bind_host)
        if bound and bound not in WILDCARD_BINDS:
            names.append(bound)
    for name in configured:
        name = name.strip().lower()
        if name == "*" or name.startswith("*."):
            names.append(name)
        elif (host := normalize_host(name)) is not None:
            names.append(host)
    return tuple(dict.fromkeys(names))


def host_allowed(host: str | None, allowed: Iterable[str]) -> bool:
    if host is None:
        return False
    for pattern in allowed:
        if pattern == "*" or pattern == host:
            return True
        if pattern.startswith("*.") and host.endswith(pattern[1:]):
            return True
    return False


def media_type(content_type: str) -> str:
    return content_type.split(";", 1)[0].strip().lower()


class RequestGuard:
    """ASGI middleware: the Host and the JSON checks of the module docstring."""

    def __init__(self, app: ASGIApp, allowed: tuple[str, ...], origins: tuple[str, ...] = ()):
        self.app = app
        self.allowed = allowed
        self.origins = frozenset(o.rstrip("/").lower() for o in origins)

    def _origin_allowed(self, origin: str | None) -> bool:
        """A WebSocket's ``Origin``: none (not a browser), a configured CORS origin, or
        an ``http(s)`` origin whose host this API answers to."""
        if origin is None:
            return True
        if origin.rstrip("/").lower() in self.origins:
            return True
        scheme, sep, rest = origin.partition("://")
        if not sep or scheme.lower() not in ("http", "https") or "/" in rest:
            return False
        return host_allowed(normalize_host(rest), self.allowed)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return
        asked_send = send
        if scope["type"] == "websocket":
            send = websocket_denial(scope, asked_send)
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
        path: str = scope.get("path", "")
        twice = [
            name
            for name in SINGLE_HEADERS
            if sum(1 for k, _ in scope["headers"] if k.decode("latin-1").lower() == name) > 1
        ]
        if twice:
            # The checks below would read one copy and the routes another.
            await send_error(
                send,
                400,
                "bad_request",
                f"the request has more than one {', '.join(twice)} header; send each once",
            )
            return
        if path not in HOST_EXEMPT:
            raw = headers.get("host")
            host = normalize_host(raw) if raw is not None else None
            if not host_allowed(host, self.allowed):
                shown = (raw or "")[:100]
                await send_error(
                    send,
                    400,
                    "bad_host",
                    f"this API does not answer to the host {shown!r} (Host header); "
                    "allowed are the loopback names, the host it is bound to and "
                    "PLANSMITH_API_ALLOWED_HOSTS",
                )
                return
        if scope["type"] == "websocket" and not self._origin_allowed(headers.get("origin")):
            # No CORS for WebSockets: a browser opens one from any page, with the cookies
            # of this host. Only this API's own pages (and PLANSMITH_CORS_ORIGINS) may.
            await send_error(
                send,
                403,
                "bad_origin",
                f"this API does not take WebSockets from the origin "
                f"{headers.get('origin', '')[:100]!r} (Origin header); allowed are the "
                "API's own hosts and PLANSMITH_CORS_ORIGINS",
            )
            return
        send = asked_send
        method = scope.get("method", "")
        if (
            scope["type"] == "http"
            and method in STATE_CHANGING
            and (path == "/api" or path.startswith("/api/"))
        ):
            given = headers.get("content-type")
            if given is None or media_type(given) != "application/json":
                got = "none" if given is None else repr(given[:100])
                await send_error(
                    send,
                    415,
                    "unsupported_media_type",
                    f"{method} {path} needs Content-Type: application/json (got {got}); "
                    "a request without arguments sends it with an empty body or {}",
                )
                return
        await self.app(scope, receive, send)


def websocket_denial(scope: Scope, send: Send) -> Send:
    """``send`` for an HTTP answer to a WebSocket handshake: sent as the denial response
    where the server supports it, else as a close before accepting (HTTP 403)."""
    if "websocket.http.response" in scope.get("extensions", {}):

        async def deny(message: Message) -> None:
            await send({**message, "type": "websocket." + message["type"]})

    else:

        async def deny(message: Message) -> None:
            if message["type"] == "http.response.start":
                await send({"type": "websocket.close", "code": 1008})

    return deny


def document(*routers: APIRouter) -> None:
    """Add the guard's answers to the OpenAPI document of the routers mounted under
    ``/api`` (before they are included): 400 (a Host that is not this API) on every
    route, 415 on every state-changing one. Idempotent."""
    for router in routers:
        for route in router.routes:
            if not isinstance(route, APIRoute):
                continue
            _add(route, 400, "the Host header names another host than this API")
            if (route.methods or set()) & STATE_CHANGING:
                _add(route, 415, "Content-Type is not application/json")


def _add(route: APIRoute, status: int, description: str) -> None:
    if status in route.responses:
        return
    route.responses = {**route.responses, status: {"model": ErrorBody, "description": description}}
    route.response_fields = {
        **route.response_fields,
        status: create_model_field(
            name=f"Response_{status}_{route.unique_id}", type_=ErrorBody, mode="serialization"
        ),
    }

"""Structured logs of the API: one JSON object per line, with the plan and step ids.

``{"ts": "...", "level": "info", "logger": "plansmith.api", "message": "POST /api/plans/p1/approve 200",
"request_id": "...", "plan_id": "p1", "step_id": null, "method": "POST", "path": "...",
"status": 200, "duration_ms": 12.3, "actor": "alice"}``

The plan and step ids of the request being served are kept in context variables (set by
the routes' path dependencies), so any log line written while serving it carries them.
``PLANSMITH_LOG_FORMAT=text`` writes plain lines instead.
"""

from __future__ import annotations

import json
import logging
import time
import uuid
from contextvars import ContextVar
from datetime import UTC, datetime
from typing import Any

from starlette.types import ASGIApp, Message, Receive, Scope, Send

LOGGER_NAME = "plansmith.api"
log = logging.getLogger(LOGGER_NAME)

plan_id_var: ContextVar[str | None] = ContextVar("plan_id", default=None)
step_id_var: ContextVar[str | None] = ContextVar("step_id", default=None)
request_id_var: ContextVar[str | None] = ContextVar("request_id", default=None)
actor_var: ContextVar[str | None] = ContextVar("actor", default=None)

_STANDARD = set(logging.LogRecord("", 0, "", 0, "", (), None).__dict__) | {"message", "asctime"}


class ContextFilter(logging.Filter):
    """Puts the request's plan id, step id, request id and actor on every record."""

    def filter(self, record: logging.LogRecord) -> bool:
        for name, var in (
            ("plan_id", plan_id_var),
            ("step_id", step_id_var),
            ("request_id", request_id_var),
            ("actor", actor_var),
        ):
            if getattr(record, name, None) is None:
                setattr(record, name, var.get())
        return True


class JsonFormatter(logging.Formatter):
    """One JSON object per record; ``extra={...}`` keys are included as they are."""

    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
            "plan_id": getattr(record, "plan_id", None),
            "step_id": getattr(record, "step_id", None),
            "request_id": getattr(record, "request_id", None),
            "actor": getattr(record, "actor", None),
        }
        for key, value in record.__dict__.items():
            if key not in _STANDARD and key not in out:
                out[key] = value
        if record.exc_info:
            out["exception"] = self.formatException(record.exc_info)
        return json.dumps(out, default=str, ensure_ascii=False)


def configure_logging(json_logs: bool = True, level: str = "INFO") -> logging.Handler:
    """Give the API's logger one handler (idempotent): JSON lines or plain text on stderr."""
    for h in log.handlers:
        if getattr(h, "_plansmith", False):
            return h
    handler = logging.StreamHandler()
    handler._plansmith = True  # type: ignore[attr-defined]
    handler.addFilter(ContextFilter())
    handler.setFormatter(
        JsonFormatter()
        if json_logs
        else logging.Formatter("%(asctime)s %(levelname)s %(name)s %(message)s plan=%(plan_id)s")
    )
    log.addHandler(handler)
    log.setLevel(level)
    log.propagate = False
    return handler


class RequestLogMiddleware:
    """Logs one line per request (after it ends) and sets the request id."""

    def __init__(self, app: ASGIApp):
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
        rid = headers.get("x-request-id") or uuid.uuid4().hex[:16]
        tokens = [
            request_id_var.set(rid),
            plan_id_var.set(None),
            step_id_var.set(None),
            actor_var.set(None),
        ]
        start = time.perf_counter()
        status = 500

        async def send_wrapper(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                message.setdefault("headers", [])
                message["headers"] = [*message["headers"], (b"x-request-id", rid.encode())]
            await send(message)

        try:
            await self.app(scope, receive, send_wrapper)
        finally:
            params = scope.get("path_params") or {}
            path = scope.get("path", "")
            if path not in ("/healthz", "/readyz"):
                log.info(
                    "%s %s %s",
                    scope.get("method"),
                    path,
                    status,
                    extra={
                        "plan_id": plan_id_var.get() or params.get("plan_id"),
                        "step_id": step_id_var.get() or params.get("step_id"),
                        "actor": actor_var.get(),
                        "method": scope.get("method"),
                        "path": path,
                        "status": status,
                        "duration_ms": round((time.perf_counter() - start) * 1000, 1),
                    },
                )
            for var, token in zip(
                (request_id_var, plan_id_var, step_id_var, actor_var), tokens, strict=True
            ):
                var.reset(token)

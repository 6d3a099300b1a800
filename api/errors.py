"""One error shape for every non-2xx answer, and the handlers that produce it.

``{"detail": "...", "code": "...", "problems": [{"location", "message"}]}``: ``detail``
is for people, ``code`` for programs, ``problems`` lists every located reason of a 422
(the same ``location: message`` pairs ``plansmith validate`` prints).

The errors of the plan client (:mod:`workflows.errors`) and of the planner become HTTP
answers here (:func:`api_error_of`): unknown plan → 404, refused transition → 409,
malformed control → 422, unreachable Temporal or no worker → 503, anything else
Temporal says → 502.

No answer carries a secret, the database URL or an internal address: the reason Temporal
is unreachable is logged, not answered, and every error detail has the API keys, the
model API key, the database URL (its password, its host) and Temporal's address
replaced by ``[redacted]`` (:func:`redact`).
"""

from __future__ import annotations

import contextlib
import json
import logging
from collections.abc import Mapping, Sequence
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field
from sqlalchemy.engine import make_url
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import HTTPConnection
from starlette.types import Send

from config.settings import parse_api_keys
from contracts.errors import LLMError, NoModelFits
from contracts.planning import PlanningFailed
from plans.validation import Problem
from workflows.errors import (
    ControlRefused,
    InvalidControl,
    NoWorker,
    PlanAlreadyRan,
    PlanClientError,
    PlanNotFound,
    ResumeRefused,
    TemporalUnavailable,
    TooLargeForTemporal,
)

log = logging.getLogger("plansmith.api")

TEMPORAL_UNAVAILABLE = "Temporal is unreachable or did not answer in time (the API's log says why)"
REDACTED = "[redacted]"


class ErrorBody(BaseModel):
    detail: str = Field(description="what went wrong, for a person")
    code: str = Field(description="what went wrong, for a program", examples=["not_found"])
    problems: list[Problem] = Field(
        default_factory=list, description="every located problem (422 only)"
    )


class ApiError(Exception):
    """An answer other than 2xx; the exception handler turns it into :class:`ErrorBody`."""

    def __init__(
        self,
        status: int,
        code: str,
        detail: str,
        problems: Sequence[Problem] = (),
        headers: Mapping[str, str] | None = None,
    ):
        super().__init__(detail)
        self.status, self.code, self.detail = status, code, detail
        self.problems = list(problems)
        self.headers = dict(headers or {})


def not_found(detail: str) -> ApiError:
    return ApiError(404, "not_found", detail)


def conflict(detail: str, code: str = "conflict") -> ApiError:
    return ApiError(409, code, detail)


def invalid(detail: str, problems: Sequence[Problem], code: str = "invalid") -> ApiError:
    return ApiError(422, code, detail, problems)


def unavailable(detail: str) -> ApiError:
    return ApiError(503, "unavailable", detail, headers={"Retry-After": "5"})


def bad_gateway(detail: str) -> ApiError:
    return ApiError(502, "temporal_error", detail)


def unauthorized(detail: str) -> ApiError:
    return ApiError(401, "unauthorized", detail, headers={"WWW-Authenticate": "Bearer"})


def forbidden(detail: str) -> ApiError:
    return ApiError(403, "forbidden", detail)


def api_error_of(e: Exception) -> ApiError:
    """The HTTP answer to an error of the plan client or of the planner."""
    if isinstance(e, ApiError):
        return e
    if isinstance(e, PlanNotFound):
        return not_found(str(e))
    if isinstance(e, NoWorker):  # PlannerUnavailable too: says which task queue to serve
        return unavailable(str(e))
    if isinstance(e, TemporalUnavailable):  # the reason may name internal addresses: logged
        return unavailable(TEMPORAL_UNAVAILABLE)
    if isinstance(e, ControlRefused):
        return conflict(str(e), code="transition_refused")
    if isinstance(e, InvalidControl):
        return invalid(str(e), [Problem(location="body", message=str(e))])
    if isinstance(e, PlanAlreadyRan):
        if e.ended is None:
            return conflict(f"{e}; resume it with resume-from-failure", code="already_ran")
        return conflict(
            f"{e}; resume it with POST /api/plans/{e.plan_id}/resume-from-failure, "
            "or create it under a new id",
            code="already_ran",
        )
    if isinstance(e, TooLargeForTemporal):
        return ApiError(413, "too_large", str(e))
    if isinstance(e, ResumeRefused):
        return conflict(f"resume-from-failure refused: {e}", code="resume_refused")
    if isinstance(e, PlanningFailed):
        return invalid(
            f"the planner could not make a valid plan in {e.rounds} round(s): "
            f"{len(e.problems)} problem(s) remain",
            e.problems,
            code="planning_failed",
        )
    if isinstance(e, NoModelFits):
        return invalid(str(e), [Problem(location="model", message=str(e))])
    if isinstance(e, LLMError):
        if e.retryable:
            return unavailable(f"the language model is unavailable: {e}")
        return ApiError(502, "llm_error", f"the language model refused: {e}")
    return bad_gateway(str(e))  # TemporalError, or what Temporal said unexpectedly


def _body(status: int, code: str, detail: str, problems: Sequence[Problem] = ()) -> dict[str, Any]:
    return ErrorBody(detail=detail, code=code, problems=list(problems)).model_dump(mode="json")


def _location(loc: Sequence[Any]) -> str:
    """``("body", "steps", 0, "id")`` -> ``steps[0].id``; query/path/header keep their part."""
    parts = list(loc)
    prefix = ""
    if parts and parts[0] == "body":
        parts = parts[1:]
    elif parts and parts[0] in ("query", "path", "header", "cookie"):
        prefix = f"{parts[0]}."
        parts = parts[1:]
    out = ""
    for p in parts:
        if isinstance(p, int):
            out += f"[{p}]"
        else:
            out += f".{p}" if out else str(p)
    return prefix + out if out else (prefix.rstrip(".") or "body")


def _message(err: Mapping[str, Any]) -> str:
    kind = err.get("type")
    if kind == "extra_forbidden":
        return "unknown field"
    if kind == "missing":
        return "required field is missing"
    return str(err.get("msg", "invalid")).removeprefix("Value error, ")


def problems_from_errors(errors: Sequence[Mapping[str, Any]]) -> list[Problem]:
    return [Problem(location=_location(e.get("loc", ())), message=_message(e)) for e in errors]


def _confidential(request: HTTPConnection) -> list[str]:
    """What no answer may carry: the API keys, the model API key, the payload encryption
    keys, the database URL (and its password and address) and Temporal's address, longest
    first."""
    services = getattr(request.app.state, "services", None)
    settings = getattr(services, "settings", None)
    if settings is None:
        return []
    found: list[str] = [settings.temporal.address]
    found += [key for key, _, _ in parse_api_keys(settings.api.keys)]
    if settings.models.anthropic_api_key:
        found.append(settings.models.anthropic_api_key)
    if settings.temporal.payload_key:  # the payload encryption key, and older ones
        found.append(settings.temporal.payload_key)
    found += [k.rpartition(":")[2] for k in (settings.temporal.payload_old_keys or "").split(",")]
    raw_url = settings.store.database_url
    found.append(raw_url)
    with contextlib.suppress(Exception):
        url = make_url(raw_url)
        found.append(url.render_as_string(hide_password=True))
        if url.password:
            found.append(str(url.password))
        if url.host:
            found.append(f"{url.host}:{url.port}" if url.port else f"@{url.host}")
    return sorted({x for x in found if x and len(x) >= 4}, key=len, reverse=True)


def redact(text: str, confidential: Sequence[str]) -> str:
    for secret in confidential:
        text = text.replace(secret, REDACTED)
    return text


def error_response(conn: HTTPConnection, exc: ApiError) -> JSONResponse:
    """The answer to ``exc``: its :class:`ErrorBody`, with nothing confidential in it."""
    confidential = _confidential(conn)
    problems = [
        Problem(location=p.location, message=redact(p.message, confidential)) for p in exc.problems
    ]
    return JSONResponse(
        _body(exc.status, exc.code, redact(exc.detail, confidential), problems),
        status_code=exc.status,
        headers=exc.headers,
    )


def install_handlers(app: FastAPI) -> None:
    @app.exception_handler(ApiError)
    async def _api_error(request: Request, exc: ApiError) -> JSONResponse:
        return error_response(request, exc)

    @app.exception_handler(PlanClientError)
    @app.exception_handler(PlanningFailed)
    @app.exception_handler(NoModelFits)
    @app.exception_handler(LLMError)
    async def _temporal_error(request: Request, exc: Exception) -> JSONResponse:
        if isinstance(exc, TemporalUnavailable) and not isinstance(exc, NoWorker):
            log.warning("%s %s: %s", request.method, request.url.path, exc)
        return await _api_error(request, api_error_of(exc))

    @app.exception_handler(RequestValidationError)
    async def _validation(request: Request, exc: RequestValidationError) -> JSONResponse:
        problems = problems_from_errors(exc.errors())
        detail = f"request is invalid ({len(problems)} problem(s)): " + "; ".join(
            map(str, problems[:5])
        )
        return JSONResponse(_body(422, "invalid", detail, problems), status_code=422)

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        if exc.status_code == 400:  # a body that is not JSON (not even UTF-8): invalid input
            problems = [Problem(location="body", message=str(exc.detail))]
            return JSONResponse(
                _body(422, "invalid", f"request is invalid: {exc.detail}", problems),
                status_code=422,
            )
        code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, "http_error")
        return JSONResponse(
            _body(exc.status_code, code, str(exc.detail)),
            status_code=exc.status_code,
            headers=getattr(exc, "headers", None),
        )

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
        log.exception("unexpected error on %s %s", request.method, request.url.path)
        return JSONResponse(
            _body(500, "internal_error", f"internal error: {type(exc).__name__}"),
            status_code=500,
        )


def responses(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """OpenAPI ``responses`` entries for the error statuses a route can answer."""
    text = {
        401: "missing or unknown API key (only when PLANSMITH_API_KEYS is set)",
        403: "the API key's role does not allow it (an agent key acts only on its own "
        "plans and never approves; configuration needs an admin key), or the body's `by` "
        "or `agent_id` names someone else than the API key's owner",
        404: "no such plan",
        409: "refused: the transition is not allowed now (the reason says why), or the plan "
        "is in the wrong state for this route",
        422: "invalid request: every problem, located",
        501: "not implemented yet",
        502: "Temporal answered with an unexpected error",
        503: "Temporal is unreachable, or no worker answered in time",
    }
    return {s: {"model": ErrorBody, "description": text[s]} for s in statuses}


async def send_error(
    send: Send,
    status: int,
    code: str,
    detail: str,
    location: str | None = None,
    close: bool = False,
) -> None:
    """Answer an ASGI request with an :class:`ErrorBody` straight from a middleware
    (before any route runs). ``location``: the one problem's place; ``close``: the rest of
    the body was not read, so the connection cannot be reused."""
    problems = [Problem(location=location, message=detail)] if location else []
    error = ErrorBody(detail=detail, code=code, problems=problems)
    body = json.dumps(error.model_dump(mode="json")).encode()
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(body)).encode()),
                *([(b"connection", b"close")] if close else []),
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})

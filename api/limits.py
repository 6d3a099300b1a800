"""Big or deep documents must not hurt the API.

* :class:`BodyLimit` (ASGI middleware, beside :class:`api.guard.RequestGuard`): a request
  body is counted as it arrives; past ``PLANSMITH_API_MAX_BODY_BYTES`` the API stops
  reading and answers **413** naming the limit, whether the client sent a
  ``Content-Length`` (refused before a byte is read) or streamed it in chunks. A body
  whose arrays and objects nest deeper than ``PLANSMITH_API_MAX_JSON_DEPTH`` gets **422**
  before any JSON parser (which recurses once per level) sees it.
* :func:`off_loop`: the work whose cost grows with a plan (validation, digests) runs in a
  small pool of threads, so the event loop keeps answering (``/healthz``, other
  requests) while a big plan is checked.
"""

from __future__ import annotations

import asyncio
import functools
import re
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from itertools import accumulate
from typing import ParamSpec, TypeVar

from fastapi import APIRouter
from fastapi.routing import APIRoute
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from api.errors import send_error
from api.guard import STATE_CHANGING
from api.guard import _add as add_response

P = ParamSpec("P")
T = TypeVar("T")

# Plan-sized work in threads: few, so a flood of big documents queues here instead of
# taking every thread of the default executor (which other work of the process uses).
_POOL = ThreadPoolExecutor(max_workers=2, thread_name_prefix="plansmith-validate")
# Bodies bigger than this are scanned for their depth in the pool too.
_SCAN_IN_THREAD_BYTES = 256 * 1024


async def off_loop(fn: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> T:
    """``fn(*args, **kwargs)`` in the validation threads, awaited."""
    loop = asyncio.get_running_loop()
    return await loop.run_in_executor(_POOL, functools.partial(fn, *args, **kwargs))


_ESCAPE = re.compile(rb"\\.", re.S)
_STRING = re.compile(rb'"[^"]*"')
_NOT_BRACKET = re.compile(rb"[^\[\]{}]+")
_DELTA = {ord("["): 1, ord("{"): 1, ord("]"): -1, ord("}"): -1}


def json_depth(body: bytes, limit: int) -> int:
    """How deep the arrays and objects of the JSON text ``body`` nest (brackets inside
    strings do not count), in linear time and without recursion. Returns early with a
    number at most ``limit`` when the body cannot be deeper (too few brackets)."""
    if body.count(b"[") + body.count(b"{") <= limit:
        return min(limit, body.count(b"[") + body.count(b"{"))
    # escapes first (so that no quote is escaped), then whole strings, then what is no
    # bracket: each a single pass of the regular expression engine
    bare = _NOT_BRACKET.sub(b"", _STRING.sub(b"", _ESCAPE.sub(b"", body)))
    return max(accumulate(map(_DELTA.__getitem__, bare)), default=0)


def _content_length(scope: Scope) -> int | None:
    for k, v in scope["headers"]:
        if k == b"content-length":
            try:
                return int(v)
            except ValueError:
                return None
    return None


class BodyLimit:
    """ASGI middleware: the body size and JSON depth limits of the module docstring."""

    def __init__(self, app: ASGIApp, max_bytes: int, max_depth: int):
        self.app = app
        self.max_bytes = max_bytes
        self.max_depth = max_depth

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        length = _content_length(scope)
        if length is not None and length > self.max_bytes:
            await self._too_large(send, f"{length} bytes")
            return
        chunks: list[bytes] = []
        size = 0
        while True:
            message = await receive()
            if message["type"] != "http.request":  # the client went away
                await self.app(scope, _replay([], message, receive), send)
                return
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.max_bytes:  # stop reading: the rest is never taken in
                await self._too_large(send, f"more than {self.max_bytes} bytes")
                return
            if chunk:
                chunks.append(chunk)
            if not message.get("more_body", False):
                break
        body = b"".join(chunks)
        if body:
            if len(body) > _SCAN_IN_THREAD_BYTES:
                depth = await off_loop(json_depth, body, self.max_depth)
            else:
                depth = json_depth(body, self.max_depth)
            if depth > self.max_depth:
                detail = (
                    f"the body nests arrays and objects {depth} levels deep; at most "
                    f"{self.max_depth} are allowed (PLANSMITH_API_MAX_JSON_DEPTH)"
                )
                await send_error(send, 422, "too_deep", detail, "body")
                return
        first: Message = {"type": "http.request", "body": body, "more_body": False}
        await self.app(scope, _replay([first], None, receive), send)

    async def _too_large(self, send: Send, got: str) -> None:
        detail = (
            f"the request body is too large ({got}); at most {self.max_bytes} bytes are "
            "accepted (PLANSMITH_API_MAX_BODY_BYTES)"
        )
        await send_error(send, 413, "too_large", detail, close=True)


def _replay(messages: list[Message], last: Message | None, receive: Receive) -> Receive:
    """A ``receive`` that hands out ``messages`` (the body already read), then ``last``,
    then asks the server (for the ``http.disconnect`` that ends a request)."""
    pending = [*messages, *([last] if last is not None else [])]

    async def replay() -> Message:
        if pending:
            return pending.pop(0)
        return await receive()

    return replay


def document(*routers: APIRouter) -> None:
    """Add 413 (a body over the limit) to the OpenAPI document of the state-changing
    routes of ``routers`` (before they are included). Idempotent."""
    for router in routers:
        for route in router.routes:
            if isinstance(route, APIRoute) and (route.methods or set()) & STATE_CHANGING:
                add_response(route, 413, "the body is larger than PLANSMITH_API_MAX_BODY_BYTES")

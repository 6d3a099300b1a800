"""An app served in-process for a test: its lifespan run, an httpx client on it.

The client talks to the app as a real API client does: to ``localhost`` (one of the
hosts the API answers to by default; any other Host header gets 400, api/guard.py) and
with ``Content-Type: application/json`` on every request (a state-changing request
without it gets 415), whether it has a body or not.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator

import httpx
from fastapi import FastAPI

BASE_URL = "http://localhost"
JSON = {"Content-Type": "application/json"}


def client(app: FastAPI, timeout: float = 30) -> httpx.AsyncClient:
    """An httpx client on ``app`` (no lifespan: see :func:`serve`)."""
    return httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app), base_url=BASE_URL, headers=JSON, timeout=timeout
    )


@contextlib.asynccontextmanager
async def serve(app: FastAPI) -> AsyncIterator[httpx.AsyncClient]:
    async with app.router.lifespan_context(app), client(app) as http:
        yield http

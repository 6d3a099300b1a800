"""The FastAPI façade (DESIGN.md §5). For now: health and readiness; the plan routes
come with the API issue."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import timedelta

from fastapi import FastAPI, Response
from pydantic import BaseModel
from temporalio.api.workflowservice.v1 import GetSystemInfoRequest

from plansmith.settings import get_settings
from plansmith.temporal import connect


class Health(BaseModel):
    status: str
    temporal: str | None = None


@asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    app.state.temporal = None
    try:
        app.state.temporal = await connect(get_settings())
    except Exception:  # readyz reports it; the API still serves health
        app.state.temporal = None
    yield


app = FastAPI(title="Plansmith", version="0.1.0", lifespan=lifespan)


@app.get("/healthz", response_model=Health, tags=["health"])
async def healthz() -> Health:
    return Health(status="ok")


@app.get("/readyz", response_model=Health, tags=["health"])
async def readyz(response: Response) -> Health:
    client = app.state.temporal
    if client is None:
        try:
            client = app.state.temporal = await connect(get_settings())
        except Exception as e:
            response.status_code = 503
            return Health(status="unavailable", temporal=f"unreachable: {e}")
    try:
        await client.workflow_service.get_system_info(
            GetSystemInfoRequest(), timeout=timedelta(seconds=3)
        )
    except Exception as e:
        response.status_code = 503
        return Health(status="unavailable", temporal=f"unreachable: {e}")
    return Health(status="ok", temporal="reachable")

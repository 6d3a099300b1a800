"""The FastAPI façade (DESIGN.md §5): ``create_app()`` and the ``app`` uvicorn serves.

Routes live under ``/api`` (:mod:`api.routes_plans`, :mod:`api.routes_v1`); ``/healthz``
and ``/readyz`` are outside it and never need an API key. One Temporal client per
process, made by the lifespan at start-up (when Temporal is down then, the first request
that needs it connects, bounded; until then such requests answer 503). Tests build the
app with their own client and settings: ``create_app(settings=..., client=...)``.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager

from fastapi import APIRouter, FastAPI, Response
from fastapi.middleware.cors import CORSMiddleware
from temporalio.client import Client

from api.auth import ApiKeys
from api.config import ApiConfig
from api.deps import ApiServices, ServicesDep
from api.drafts import DraftStore, MemoryDrafts
from api.errors import ApiError, install_handlers
from api.gateway import Gateway, TemporalProvider
from api.logs import RequestLogMiddleware, configure_logging
from api.routes_plans import controls as controls_router
from api.routes_plans import router as plans_router
from api.routes_v1 import router as v1_router
from api.schemas import Health
from api.sse import EventHub
from plansmith.settings import Settings, get_settings

DESCRIPTION = """\
Run AI-agent plans durably on Temporal, with people in the loop.

* **plans** — create (a draft), list, read, execute, and read the queries of a plan
  (status, execution-state, logs, audit, versions) or watch it as server-sent events.
* **controls** — steer a running plan; each is sent as a Temporal *update*, so a refused
  transition answers **409** with the workflow's reason at once.
* **seed 003 execution API** — run a `{nodes, edges}` workflow definition.

Errors share one shape, `{detail, code, problems}`: 404 unknown plan, 409 refused
transition, 422 invalid input with every located problem, 401 missing or unknown API key
(when `PLANSMITH_API_KEYS` is set), 503 Temporal unreachable or no worker.
"""

health = APIRouter(tags=["health"])


@health.get("/healthz", response_model=Health, summary="The process is up")
async def healthz() -> Health:
    return Health(status="ok")


@health.get(
    "/readyz",
    response_model=Health,
    summary="Ready: Temporal is reachable (the database is not checked yet)",
    responses={503: {"model": Health, "description": "Temporal is unreachable"}},
)
async def readyz(services: ServicesDep, response: Response) -> Health:
    try:
        await Gateway(services.temporal).ping()
    except ApiError as e:
        response.status_code = 503
        return Health(status="unavailable", temporal=e.detail, database="not checked")
    return Health(status="ok", temporal="reachable", database="not checked")


def create_app(
    *,
    settings: Settings | None = None,
    config: ApiConfig | None = None,
    client: Client | None = None,
    connect: Callable[[Settings], Awaitable[Client]] | None = None,
    drafts: DraftStore | None = None,
) -> FastAPI:
    """The API, with its Temporal client (given, or connected at start-up)."""
    settings = settings or get_settings()
    config = config or ApiConfig.from_env()
    services = ApiServices(
        settings=settings,
        config=config,
        keys=ApiKeys.parse(settings.api_keys),
        temporal=TemporalProvider(settings, config, client=client, connect=connect),
        drafts=drafts if drafts is not None else MemoryDrafts(config.max_drafts),
        hub=EventHub(config),
    )

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        configure_logging(config.json_logs, config.log_level)
        with contextlib.suppress(ApiError):  # /readyz says so; routes retry the connection
            await services.temporal.get()
        try:
            yield
        finally:
            await services.hub.close()

    app = FastAPI(
        title="Plansmith",
        version="0.1.0",
        description=DESCRIPTION,
        lifespan=lifespan,
        openapi_tags=[
            {"name": "plans", "description": "create, read, run and watch plans"},
            {"name": "controls", "description": "steer a plan (sent as Temporal updates)"},
            {"name": "seed 003 execution API", "description": "run a {nodes, edges} definition"},
            {"name": "health", "description": "liveness and readiness (no API key needed)"},
        ],
    )
    app.state.services = services
    install_handlers(app)
    app.add_middleware(RequestLogMiddleware)
    if config.cors_origins:
        app.add_middleware(
            CORSMiddleware,
            allow_origins=list(config.cors_origins),
            allow_methods=["GET", "POST", "OPTIONS"],
            allow_headers=["Authorization", "X-API-Key", "Content-Type", "Last-Event-ID"],
            expose_headers=["X-Request-ID", "Location"],
        )
    app.include_router(health)
    app.include_router(plans_router, prefix="/api")
    app.include_router(controls_router, prefix="/api")
    app.include_router(v1_router, prefix="/api")
    return app


app = create_app()

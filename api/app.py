"""The FastAPI façade: ``create_app()`` and the ``app`` uvicorn serves.

Routes live under ``/api`` (:mod:`api.routes_plans`, :mod:`api.routes_plan_reads`,
:mod:`api.routes_plan_controls`, :mod:`api.routes_executions`);
``/healthz`` and ``/readyz`` are outside it and never need an API key. Who may do what is
:mod:`api.auth`; the Host and JSON checks in front of every route are :mod:`api.guard`. One Temporal client per
process, made by the lifespan at start-up (when Temporal is down then, the first request
that needs it connects, bounded; until then such requests answer 503). Tests build the
app with their own client and settings: ``create_app(settings=..., client=...)``. The
store (``DATABASE_URL``, or ``database_url=``) is migrated by the lifespan at start-up.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Annotated

from fastapi import APIRouter, FastAPI, Response, Security
from fastapi.middleware.cors import CORSMiddleware
from fastapi.security import HTTPAuthorizationCredentials
from temporalio.client import Client

from api import prometheus, telemetry
from api.auth import ApiKeys, bearer_scheme, header_scheme
from api.console.charts import router as console_charts_router
from api.console.new_plan import router as console_new_plan_router
from api.console.routes import router as console_router
from api.dashboard import router as dashboard_router
from api.deps import ApiServices, ServicesDep
from api.drafts import DraftStore, StoreDrafts
from api.errors import install_handlers
from api.guard import RequestGuard, allowed_hosts
from api.guard import document as document_guard
from api.limits import BodyLimit
from api.limits import document as document_limits
from api.logs import RequestLogMiddleware, configure_logging
from api.reconcile import reconcile_forever
from api.routes_executions import router as executions_router
from api.routes_limits import router as limits_router
from api.routes_metrics import router as metrics_router
from api.routes_models import router as models_router
from api.routes_plan_controls import controls as controls_router
from api.routes_plan_reads import reads as plan_reads_router
from api.routes_plans import router as plans_router
from api.routes_trust import router as trust_router
from api.routes_webhooks import router as webhooks_router
from api.schemas import Health
from api.sse import EventHub
from api.store_reads import PlanStore, StorePool
from api.ws import router as ws_router
from config import Settings, get_settings
from store.db import get_engine
from workflows.client import PlanClient
from workflows.errors import PlanClientError

log = logging.getLogger("plansmith.api")

DESCRIPTION = """\
Run AI-agent plans durably on Temporal, with people in the loop.

* **plans** — create (a draft), list, read, execute, and read the queries of a plan
  (status, execution-state, logs, audit, versions) or watch it as server-sent events.
* **controls** — steer a running plan; each is sent as a Temporal *update*, so a refused
  transition answers **409** with the workflow's reason at once.
* **executions (nodes/edges)** — run a `{nodes, edges}` workflow definition.

Drafts live in the store (the database); reads of a plan ask its workflow first and fall
back to the store once Temporal no longer knows it, and `GET /api/plans` lists from the
store.

Errors share one shape, `{detail, code, problems}`: 404 unknown plan, 409 refused
transition, 422 invalid input with every located problem, 401 missing or unknown API key
(when `PLANSMITH_API_KEYS` is set), 403 a key's role does not allow it (agent keys
propose and run only their own plans and never approve; configuration changes need an
admin key), 400 a Host header that is not this API's, 415 a state-changing request
without `Content-Type: application/json`, 413 a body larger than
`PLANSMITH_API_MAX_BODY_BYTES` (422 `too_deep`: nested deeper than
`PLANSMITH_API_MAX_JSON_DEPTH`; a plan of more than `PLANSMITH_MAX_PLAN_STEPS` steps is a
422 too), 503 Temporal or the database unreachable, or
no worker.
"""

DB_PING_TIMEOUT_S = 2.0

health = APIRouter(tags=["health"])


@health.get("/healthz", response_model=Health, summary="The process is up")
async def healthz() -> Health:
    return Health(status="ok")


@health.get(
    "/readyz",
    response_model=Health,
    summary="Ready: Temporal and the database are reachable",
    description="Anyone learns whether Temporal and the database are reachable; why one "
    "is not (which may name an internal address or a driver's message) is logged, and "
    "answered only to a caller with a valid API key.",
    responses={503: {"model": Health, "description": "Temporal or the database is unreachable"}},
)
async def readyz(
    services: ServicesDep,
    response: Response,
    bearer: Annotated[HTTPAuthorizationCredentials | None, Security(bearer_scheme)],
    header_key: Annotated[str | None, Security(header_scheme)],
) -> Health:
    async def temporal() -> str | None:
        try:
            await services.temporal.ping()
        except PlanClientError as e:
            return str(e)
        return None

    async def database() -> str | None:
        try:
            await services.store.ping(DB_PING_TIMEOUT_S)
        except TimeoutError:
            return f"the database did not answer within {DB_PING_TIMEOUT_S:g}s"
        except Exception as e:
            return f"the database is unreachable: {type(e).__name__}: {e}"[:500]
        return None

    t_error, db_error = await asyncio.gather(temporal(), database())
    if t_error or db_error:
        response.status_code = 503
        log.warning("not ready: temporal: %s; database: %s", t_error or "ok", db_error or "ok")
    key = (bearer.credentials if bearer else None) or header_key
    detailed = services.keys.enabled and bool(key) and services.keys.find(key or "") is not None

    def said(error: str | None) -> str:
        if error is None:
            return "reachable"
        return error if detailed else "unreachable"

    return Health(
        status="unavailable" if t_error or db_error else "ok",
        temporal=said(t_error),
        database=said(db_error),
    )


def create_app(
    *,
    settings: Settings | None = None,
    client: Client | None = None,
    connect: Callable[[Settings], Awaitable[Client]] | None = None,
    drafts: DraftStore | None = None,
    database_url: str | None = None,
    bind_host: str | None = None,
) -> FastAPI:
    """The API, with its Temporal client (given, or connected at start-up) and the store
    at ``database_url`` (default: ``DATABASE_URL``), migrated at start-up. ``bind_host``
    (what ``plansmith api --host`` listens on) is one of the hosts it answers to
    (:mod:`api.guard`)."""
    settings = settings or get_settings()
    config = settings.api
    engine = get_engine(database_url or settings.store.database_url)
    # the store's own threads: a hung database cannot take the default executor
    pool = StorePool(settings.store.read_threads)
    services = ApiServices(
        settings=settings,
        config=config,
        keys=ApiKeys.parse(settings.api.keys),
        temporal=PlanClient(
            settings,
            client=client,
            connect=connect,
            rpc_timeout_s=config.rpc_timeout_s,
            connect_timeout_s=config.connect_timeout_s,
        ),
        drafts=drafts
        if drafts is not None
        else StoreDrafts(engine, pool=pool, timeout_s=config.rpc_timeout_s),
        hub=EventHub(config),
        store=PlanStore(engine, timeout_s=config.rpc_timeout_s, pool=pool),
    )

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        configure_logging(config.json_logs, config.log_level)
        try:  # a fresh DATABASE_URL works; when the database is down /readyz says so
            await services.store.migrate()
        except Exception as e:
            log.warning("cannot migrate the store: %s: %s", type(e).__name__, e)
        with contextlib.suppress(PlanClientError):  # /readyz says so; routes retry later
            await services.temporal.client()
        # runs Temporal ended from outside (terminate) are closed in the store too
        reconciler = asyncio.create_task(
            reconcile_forever(services.store, services.temporal.client)
        )
        try:
            yield
        finally:
            reconciler.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await reconciler
            await services.hub.close()

    app = FastAPI(
        title="Plansmith",
        version="0.1.0",
        description=DESCRIPTION,
        lifespan=lifespan,
        openapi_tags=[
            {"name": "plans", "description": "create, read, run and watch plans"},
            {"name": "controls", "description": "steer a plan (sent as Temporal updates)"},
            {"name": "executions (nodes/edges)", "description": "run a {nodes, edges} definition"},
            {"name": "models", "description": "which models the planner and steps use"},
            {"name": "trust", "description": "risk of a plan, trust of an agent"},
            {"name": "webhooks", "description": "plan and step events POSTed to your URLs"},
            {
                "name": "metrics",
                "description": "planning metrics from the store; Prometheus at /metrics",
            },
            {"name": "health", "description": "liveness and readiness (no API key needed)"},
        ],
    )
    app.state.services = services
    install_handlers(app)
    # inside the guard: a request for another host or without JSON is refused unread
    app.add_middleware(BodyLimit, max_bytes=config.max_body_bytes, max_depth=config.max_json_depth)
    app.add_middleware(
        RequestGuard,
        allowed=allowed_hosts(config.allowed_hosts, bind_host),
        origins=tuple(config.cors_origins or ()),
    )
    app.add_middleware(RequestLogMiddleware)
    if config.cors_origins:
        app.add_middleware(
            CORSMiddleware,
            allow_origins=list(config.cors_origins),
            allow_methods=["GET", "POST", "PUT", "DELETE", "OPTIONS"],
            allow_headers=["Authorization", "X-API-Key", "Content-Type", "Last-Event-ID"],
            expose_headers=["X-Request-ID", "Location"],
        )
    app.include_router(health)
    api_routers = (
        plans_router,
        plan_reads_router,
        controls_router,
        executions_router,
        models_router,
        trust_router,
        metrics_router,
        limits_router,
        webhooks_router,
    )
    document_guard(*api_routers)
    document_limits(*api_routers)
    for router in api_routers:
        app.include_router(router, prefix="/api")
    app.include_router(ws_router, prefix="/api")
    app.include_router(dashboard_router)
    app.include_router(console_router)
    app.include_router(console_new_plan_router)
    app.include_router(console_charts_router)
    prometheus.install(app)  # last, after the other middleware: it then times every request
    telemetry.install(app)  # a span per request when OTEL_* ask for traces (api/telemetry.py)
    return app


app = create_app()

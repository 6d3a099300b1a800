"""``GET /metrics``: Prometheus metrics of the store and of the API itself.

The store's figures are computed at scrape time by a custom collector
(:class:`StoreCollector`) from :func:`store.metrics.counts.store_counts`, so every API process
answers the same numbers and nothing is kept between scrapes. The API's own request
counter and latency histogram count this process only (label ``route`` is the route's
template, e.g. ``/api/plans/{plan_id}/status``, so the label set stays small).

Auth: like every route under ``/api``, ``/metrics`` needs an API key when
``PLANSMITH_API_KEYS`` is set (Prometheus: ``authorization: {credentials_file: ...}`` in
the scrape config), and none otherwise. It tells who uses the system (agent ids, tool
names, counts), which is more than ``/healthz`` says.

A store that cannot be read does not fail the scrape: ``plansmith_store_up`` is 0 and
the store's families are left out (the API's own metrics still answer).

Use :func:`install` on an app made by :func:`api.app.create_app`.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Iterator

from fastapi import APIRouter, Depends, FastAPI, Request, Response
from prometheus_client import (
    GC_COLLECTOR,
    PLATFORM_COLLECTOR,
    PROCESS_COLLECTOR,
    CollectorRegistry,
    Counter,
    Histogram,
)
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.exposition import choose_encoder
from prometheus_client.registry import Collector
from sqlalchemy.engine import Engine
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from api.deps import get_principal
from api.errors import responses, unavailable
from api.store_reads import StorePool
from plans.models import TERMINAL_PLAN_STATUSES, PlanStatus
from plans.run_state import WaitingFor
from store.db import ensure_migrated, session_scope
from store.metrics.counts import store_counts
from store.metrics.models import StoreCounts

log = logging.getLogger("plansmith.api")

WAIT_KINDS: tuple[str, ...] = WaitingFor.model_fields["kind"].annotation.__args__  # type: ignore[union-attr]
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)


def _label(value: str | None) -> str:
    return value or ""


class StoreCollector(Collector):
    """Plans, waits, runs, steps and planner runs, read from the store at each scrape."""

    def __init__(self, engine: Engine, pool: StorePool | None = None, timeout_s: float = 10.0):
        self.engine = engine
        self.pool = pool  # the API's store threads (the read waits at most timeout_s)
        self.timeout_s = timeout_s

    def _count(self) -> StoreCounts:
        ensure_migrated(self.engine)
        with session_scope(self.engine) as session:
            return store_counts(session)

    def _read(self) -> StoreCounts:
        if self.pool is None:
            return self._count()
        return self.pool.submit(self._count).result(timeout=self.timeout_s)

    def collect(self) -> Iterator[Metric]:
        started = time.perf_counter()
        try:
            counts: StoreCounts | None = self._read()
        except Exception as e:
            log.warning("the store could not be read for /metrics: %s: %s", type(e).__name__, e)
            counts = None
        elapsed = time.perf_counter() - started
        yield GaugeMetricFamily(
            "plansmith_store_up",
            "1 if the store could be read at this scrape",
            value=1 if counts is not None else 0,
        )
        yield GaugeMetricFamily(
            "plansmith_store_scrape_seconds",
            "time spent reading the store for this scrape",
            value=elapsed,
        )
        if counts is not None:
            yield from self._families(counts)

    def _families(self, c: StoreCounts) -> Iterator[Metric]:
        plans = GaugeMetricFamily("plansmith_plans", "plans by status", labels=["status"])
        for plan_status in PlanStatus:
            plans.add_metric([plan_status.value], c.plans_by_status.get(plan_status.value, 0))
        yield plans

        yield GaugeMetricFamily(
            "plansmith_plans_waiting",
            "plans whose newest run waits for a person",
            value=c.plans_waiting,
        )
        waits = GaugeMetricFamily(
            "plansmith_waits", "open waits for a person, by kind", labels=["kind"]
        )
        oldest = GaugeMetricFamily(
            "plansmith_wait_oldest_seconds",
            "age of the oldest open wait for a person, by kind (0: none)",
            labels=["kind"],
        )
        for kind in WAIT_KINDS:
            waits.add_metric([kind], c.waits_by_kind.get(kind, 0))
            oldest.add_metric([kind], c.oldest_wait_s_by_kind.get(kind, 0.0))
        yield waits
        yield oldest

        finished = CounterMetricFamily(
            "plansmith_runs_finished",
            "finished plan runs by agent and final status (agent '' = none)",
            labels=["agent", "status"],
        )
        per_agent: dict[str, list[int]] = {}
        terminal = {s.value for s in TERMINAL_PLAN_STATUSES}
        for agent, status, n in c.runs_by_agent_status:
            if status not in terminal:
                continue
            finished.add_metric([_label(agent), status], n)
            tally = per_agent.setdefault(_label(agent), [0, 0])
            tally[0] += n
            tally[1] += n if status == PlanStatus.COMPLETED.value else 0
        yield finished
        ratio = GaugeMetricFamily(
            "plansmith_agent_success_ratio",
            "completed runs / finished runs, by agent",
            labels=["agent"],
        )
        for agent, (total, completed) in sorted(per_agent.items()):
            ratio.add_metric([agent], completed / total)
        yield ratio

        steps = CounterMetricFamily(
            "plansmith_steps_finished",
            "finished steps by kind, tool ('' unless a tool step) and status",
            labels=["kind", "tool", "status"],
        )
        for kind, tool, status, n in c.steps_by_kind_tool_status:
            steps.add_metric([kind, _label(tool), status], n)
        yield steps

        p = c.planner
        planner = CounterMetricFamily(
            "plansmith_planner_runs", "planner runs by outcome", labels=["outcome"]
        )
        planner.add_metric(["ok"], p.ok)
        planner.add_metric(["failed"], p.failed)
        yield planner
        for name, doc, value in (
            ("plansmith_planner_offline_runs", "planner runs by the offline model", p.offline),
            ("plansmith_planner_rounds", "planner rounds, over every run", p.rounds),
            (
                "plansmith_planner_problems",
                "validation problems fed back to the planner",
                p.problems,
            ),
            ("plansmith_planner_lessons_applied", "lessons the planner applied", p.lessons_applied),
        ):
            yield CounterMetricFamily(name, doc, value=value)
        tokens = CounterMetricFamily(
            "plansmith_llm_tokens",
            "LLM tokens by source (planner, steps) and direction (input, output)",
            labels=["source", "direction"],
        )
        tokens.add_metric(["planner", "input"], p.input_tokens)
        tokens.add_metric(["planner", "output"], p.output_tokens)
        tokens.add_metric(["steps", "input"], c.llm_step_input_tokens)
        tokens.add_metric(["steps", "output"], c.llm_step_output_tokens)
        yield tokens


def route_template(scope: Scope) -> str:
    """The matched route as a template (``/api/plans/{plan_id}/status``): the path with
    each path parameter's value put back as ``{name}``; ``(unmatched)`` for a path that
    matched no route, so the label's values stay few."""
    if scope.get("route") is None and scope.get("endpoint") is None:
        return "(unmatched)"
    names = {str(v): k for k, v in (scope.get("path_params") or {}).items()}
    parts = str(scope.get("path", "")).split("/")
    return "/".join(f"{{{names[p]}}}" if p in names else p for p in parts)


class HttpMetricsMiddleware:
    """Counts requests and their latency by method, route template and status."""

    def __init__(self, app: ASGIApp, requests: Counter, latency: Histogram):
        self.app = app
        self.requests = requests
        self.latency = latency

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        status = 500

        async def send_wrapper(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_wrapper)
        finally:
            route = route_template(scope)
            method = scope.get("method", "")
            self.requests.labels(method, route, str(status)).inc()
            self.latency.labels(method, route).observe(time.perf_counter() - start)


def make_registry(
    engine: Engine, pool: StorePool | None = None, timeout_s: float = 10.0
) -> tuple[CollectorRegistry, Counter, Histogram]:
    """A registry of the app's own (not the process-global one: tests build many apps).
    With ``pool``, the store is read on the API's store threads, for ``timeout_s`` at most
    (``plansmith_store_up`` 0 otherwise)."""
    registry = CollectorRegistry(auto_describe=True)
    for collector in (PROCESS_COLLECTOR, PLATFORM_COLLECTOR, GC_COLLECTOR):
        registry.register(collector)
    registry.register(StoreCollector(engine, pool, timeout_s))
    requests = Counter(
        "plansmith_http_requests",
        "HTTP requests served by this API process",
        ["method", "route", "status"],
        registry=registry,
    )
    latency = Histogram(
        "plansmith_http_request_duration_seconds",
        "time to serve an HTTP request (server-sent event streams: their whole life)",
        ["method", "route"],
        buckets=LATENCY_BUCKETS,
        registry=registry,
    )
    return registry, requests, latency


router = APIRouter(tags=["metrics"], dependencies=[Depends(get_principal)])


@router.get(
    "/metrics",
    summary="Prometheus metrics (text exposition format)",
    response_class=Response,
    responses={
        200: {
            "content": {"text/plain": {}},
            "description": "the metrics, in the format the Accept header asks for",
        },
        **responses(401, 503),
    },
)
async def prometheus_metrics(request: Request) -> Response:
    registry: CollectorRegistry = request.app.state.prometheus_registry
    timeout = request.app.state.services.config.rpc_timeout_s
    encoder, content_type = choose_encoder(request.headers.get("accept", ""))
    try:
        body = await asyncio.wait_for(asyncio.to_thread(encoder, registry), timeout=timeout)
    except TimeoutError:
        raise unavailable(f"the metrics were not ready within {timeout:g}s") from None
    return Response(content=body, media_type=content_type)


def install(app: FastAPI) -> None:
    """Add ``GET /metrics`` and the request counters to an app of
    :func:`api.app.create_app` (call it after the other middleware: it is then the
    outermost and times everything)."""
    services = app.state.services
    registry, requests, latency = make_registry(
        services.store.engine, services.store.pool, services.config.rpc_timeout_s / 2
    )
    app.state.prometheus_registry = registry
    app.add_middleware(HttpMetricsMiddleware, requests=requests, latency=latency)
    app.include_router(router)

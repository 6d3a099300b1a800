"""``/api/metrics``: planning metrics from the store (``docs/metrics.md``).

Quality of a plan and the diffs of its corrections, recent plans with their quality,
success by agent / tool / step kind, trends, the plans waiting for a person, the
planner's figures and a per-agent summary with trust. Everything is read from the store
(:mod:`store.metrics`), never from Temporal, so these answer while Temporal is down; a
store that cannot be read answers 503. Same API keys as every route under ``/api``.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Annotated, Literal, TypeVar

from fastapi import APIRouter, Depends, Query
from pydantic import BaseModel, Field
from sqlmodel import Session

from api.deps import PlanIdDep, ServicesDep, get_principal, reject_unknown_query
from api.errors import invalid, not_found, responses
from plans.quality import PlanQuality
from plans.validation import Problem
from store.metrics.models import (
    AgentRow,
    PlannerStats,
    SuccessRow,
    Trends,
    VersionDiff,
    WaitingPlan,
)
from store.metrics.planner import planner_stats
from store.metrics.scores import plan_quality, recent_qualities, version_diffs
from store.metrics.sql import MAX_WAITING
from store.metrics.success import agents as agent_summaries
from store.metrics.success import success_by
from store.metrics.trends import buckets
from store.metrics.trends import trends as read_trends
from store.metrics.waiting import waiting_plans

router = APIRouter(
    prefix="/metrics",
    tags=["metrics"],
    dependencies=[Depends(get_principal), Depends(reject_unknown_query)],
)

MAX_BUCKETS = 1000
T = TypeVar("T")


async def read_store(services: ServicesDep, fn: Callable[[Session], T]) -> T:
    """Run ``fn`` in a read session of the store (503 when the store fails)."""
    return await services.store.run(fn)


def _since(days: int | None) -> datetime | None:
    return None if days is None else datetime.now(UTC) - timedelta(days=days)


# --- answers --------------------------------------------------------------------------


class PlanMetrics(BaseModel):
    quality: PlanQuality
    corrections: list[VersionDiff] = Field(
        description="each correction (plan versions after v1), oldest first"
    )


class PlanQualityList(BaseModel):
    plans: list[PlanQuality] = Field(description="most recently updated first")


class SuccessList(BaseModel):
    by: Literal["agent", "tool", "step_kind"]
    since: datetime | None = Field(description="runs created since (null: all)")
    rows: list[SuccessRow]


class WaitingList(BaseModel):
    count: int
    plans: list[WaitingPlan] = Field(description="the longest-waiting first")


class AgentList(BaseModel):
    agents: list[AgentRow] = Field(description="by agent id; agent null last")


DaysQuery = Annotated[
    int | None, Query(ge=1, le=3650, description="only runs created in the last N days")
]


# --- routes ---------------------------------------------------------------------------


@router.get(
    "/plans/{plan_id}",
    response_model=PlanMetrics,
    summary="A plan's quality score, its components, and the diffs of its corrections",
    responses=responses(401, 404, 422, 503),
)
async def plan_metrics(plan_id: PlanIdDep, services: ServicesDep) -> PlanMetrics:
    def read(s: Session) -> PlanMetrics | None:
        quality = plan_quality(s, plan_id)
        diffs = version_diffs(s, plan_id)
        if quality is None or diffs is None:
            return None
        return PlanMetrics(quality=quality, corrections=diffs)

    found = await read_store(services, read)
    if found is None:
        raise not_found(f"the store has no plan {plan_id!r}")
    return found


@router.get(
    "/plans",
    response_model=PlanQualityList,
    summary="Recent plans that have run, with their quality",
    responses=responses(401, 422, 503),
)
async def recent_plans(
    services: ServicesDep,
    limit: Annotated[int, Query(ge=1, le=500, description="at most this many plans")] = 50,
) -> PlanQualityList:
    return PlanQualityList(plans=await read_store(services, lambda s: recent_qualities(s, limit)))


@router.get(
    "/success",
    response_model=SuccessList,
    summary="Success by agent (runs and steps), tool or step kind (steps)",
    responses=responses(401, 422, 503),
)
async def success(
    services: ServicesDep,
    by: Annotated[Literal["agent", "tool", "step_kind"], Query(description="group by")] = "agent",
    days: DaysQuery = None,
) -> SuccessList:
    since = _since(days)
    rows = await read_store(services, lambda s: success_by(s, by, since))
    return SuccessList(by=by, since=since, rows=rows)


@router.get(
    "/trends",
    response_model=Trends,
    summary="Per hour, day or week: runs finished, success rate, mean quality, planner rounds",
    responses=responses(401, 422, 503),
)
async def trends(
    services: ServicesDep,
    days: Annotated[int, Query(ge=1, le=3650, description="how far back")] = 30,
    bucket: Annotated[Literal["hour", "day", "week"], Query()] = "day",
) -> Trends:
    count = len(buckets(days, bucket))
    if count > MAX_BUCKETS:
        raise invalid(
            f"{days} days by {bucket} make {count} buckets; at most {MAX_BUCKETS}",
            [Problem(location="query.days", message=f"too many {bucket} buckets ({count})")],
        )
    return await read_store(services, lambda s: read_trends(s, bucket, days))


@router.get(
    "/waiting",
    response_model=WaitingList,
    summary="Plans waiting for a person: for what, and since when",
    responses=responses(401, 422, 503),
)
async def waiting(
    services: ServicesDep,
    limit: Annotated[int, Query(ge=1, le=1000)] = 200,
) -> WaitingList:
    def read(s: Session) -> WaitingList:
        every = waiting_plans(s, limit=MAX_WAITING)
        return WaitingList(count=len(every), plans=every[:limit])

    return await read_store(services, read)


@router.get(
    "/planner",
    response_model=PlannerStats,
    summary="The planner's runs: rounds, validation problems, offline share, tokens",
    responses=responses(401, 422, 503),
)
async def planner(services: ServicesDep, days: DaysQuery = None) -> PlannerStats:
    since = _since(days)
    return await read_store(services, lambda s: planner_stats(s, since))


@router.get(
    "/agents",
    response_model=AgentList,
    summary="Per agent: runs, success rates, mean plan quality and trust",
    responses=responses(401, 422, 503),
)
async def agents(services: ServicesDep) -> AgentList:
    thresholds = services.settings.policy.thresholds()
    rows = await read_store(services, lambda s: agent_summaries(s, thresholds=thresholds))
    return AgentList(agents=rows)

"""``GET /api/limits``: the concurrency limits and the queue of plans waiting for a slot.

``PLANSMITH_MAX_CONCURRENT_PLANS`` and ``..._PER_AGENT`` (read where plans are started)
cap the plans executing at once on the task queue; the others wait ``queued``. The
slots are kept by the queue's limiter workflow (``plansmith-limiter-<queue>``,
:mod:`workflows.limiter_workflow`): this route answers its ``queue`` query, so every API
process shows the same queue.
"""

from __future__ import annotations

from fastapi import APIRouter, Depends
from pydantic import BaseModel, Field

from api.deps import GatewayDep, ServicesDep, get_principal, reject_unknown_query
from api.errors import responses
from contracts.limits import limiter_workflow_id
from plans.limits import LimiterView

router = APIRouter(
    tags=["limits"],
    dependencies=[Depends(get_principal), Depends(reject_unknown_query)],
)


class LimitsView(BaseModel):
    task_queue: str
    max_concurrent_plans: int = Field(
        description="PLANSMITH_MAX_CONCURRENT_PLANS of this API process (0: no limit)"
    )
    max_concurrent_plans_per_agent: int = Field(
        description="PLANSMITH_MAX_CONCURRENT_PLANS_PER_AGENT of this API process (0: no limit)"
    )
    limiter_workflow_id: str
    limiter: LimiterView | None = Field(
        description="the limiter's answer: the limits it applies (the newest plan's), the "
        "plans holding a slot and the queue in order; null when no plan of the queue ever "
        "asked for a slot"
    )


@router.get(
    "/limits",
    response_model=LimitsView,
    summary="Concurrency limits and the queue of plans waiting for a slot",
    responses=responses(401, 422, 502, 503),
)
async def limits(services: ServicesDep, gateway: GatewayDep) -> LimitsView:
    t = services.settings.temporal
    return LimitsView(
        task_queue=gateway.task_queue,
        max_concurrent_plans=t.max_concurrent_plans,
        max_concurrent_plans_per_agent=t.max_concurrent_plans_per_agent,
        limiter_workflow_id=limiter_workflow_id(gateway.task_queue),
        limiter=await gateway.limiter_queue(),
    )

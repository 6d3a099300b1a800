"""Trust and risk, as the adaptive approval policy sees them (docs/operating.md).

* ``GET /api/agents/{agent_id}/trust``: the agent's trust score from its history in the
  store, with the inputs that produced it and a sentence that explains it.
* ``GET /api/plans/{plan_id}/risk``: the risk of the plan's current document (a draft's,
  or the running plan's after corrections), step by step with the reasons, and what the
  policy would decide for it now given its agent's trust.

Both read what ``require_approval: "auto"`` reads when a plan starts; the decision a
running plan actually got is in its ``status`` (``approval_policy``) and audit trail.
"""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime
from typing import Annotated

from fastapi import APIRouter, Depends, Path
from pydantic import BaseModel, Field
from sqlmodel import Session

from api.deps import (
    ApiServices,
    DraftsDep,
    GatewayDep,
    PlanIdDep,
    ServicesDep,
    StoreDep,
    get_principal,
    reject_unknown_query,
)
from api.errors import ApiError, responses
from api.routes_plans import get_plan
from api.store_reads import PlanStore
from contracts.tools import catalog
from plans.models import Plan
from plans.policy import (
    ApprovalDecision,
    PolicyThresholds,
    TrustHistory,
    TrustScore,
    compute_trust,
    should_require_approval,
)
from plans.risk import PlanRisk, RiskLevel, assess_risk
from store.trust import plan_submitter, trust_history

router = APIRouter(
    tags=["trust"],
    dependencies=[Depends(get_principal), Depends(reject_unknown_query)],
)


class PlanRiskView(BaseModel):
    plan_id: str
    version: int
    digest: str
    agent_id: str | None = None
    require_approval: bool | str = Field(description="the plan's option: true, false or auto")
    level: RiskLevel
    reasons: list[str]
    risk: PlanRisk = Field(description="every step's level and reasons")
    trust: TrustScore | None = Field(
        default=None, description="the agent's trust now (null when the store cannot answer)"
    )
    decision: ApprovalDecision | None = Field(
        default=None,
        description='what require_approval "auto" would decide now (null when the store '
        "cannot answer)",
    )


async def plan_trust(
    store: PlanStore, agent_id: str | None, th: PolicyThresholds, plan_id: str | None = None
) -> TrustScore:
    """The agent's trust from the store (503 when the store cannot answer). For a plan,
    as the approval policy reads it: an agent with too few runs of its own is judged on
    the record of the key that submitted the plan."""
    now = datetime.now(UTC)

    def read(session: Session) -> TrustHistory:
        submitter = plan_submitter(session, plan_id)
        if agent_id is None and submitter is None:
            return TrustHistory()
        return trust_history(
            session,
            agent_id,
            limit=th.trust.max_runs,
            submitted_by=submitter,
            min_own_runs=th.min_runs if submitter else 1,
        )

    return compute_trust(await store._read(read), now, th)


@router.get(
    "/agents/{agent_id}/trust",
    response_model=TrustScore,
    summary="An agent's trust score, with the inputs that produced it",
    description="Computed now from the agent's finished runs in the store (plans whose "
    "`agent_id` is this agent): completed vs failed runs, approvals vs rejections, "
    "corrections, recency-weighted. An agent with no history gets the prior (low trust). "
    "`inputs` holds every count and weight; `explanation` says it in a sentence.",
    responses=responses(401, 422, 503),
)
async def get_trust(
    agent_id: Annotated[str, Path(min_length=1, max_length=200, examples=["planner-bot"])],
    services: ServicesDep,
    store: StoreDep,
) -> TrustScore:
    return await plan_trust(store, agent_id, services.settings.policy.thresholds())


@router.get(
    "/plans/{plan_id}/risk",
    response_model=PlanRiskView,
    summary="The risk of a plan's current document, step by step with the reasons",
    description="Risk levels low < medium < high < critical, from the tools' declared risk, "
    "the parameters (production targets, deletion, payments and money, external writes), "
    "steps that are not idempotent and the plan's size. `decision` is what the adaptive "
    "policy would decide for it now; a running plan's actual decision is in its status.",
    responses=responses(401, 404, 422, 502, 503),
)
async def get_risk(
    plan_id: PlanIdDep,
    services: ServicesDep,
    gateway: GatewayDep,
    drafts: DraftsDep,
    store: StoreDep,
) -> PlanRiskView:
    detail = await get_plan(plan_id, gateway, drafts, store)
    plan = detail.plan
    risk, trust, decision = await assess_plan(plan, services, store, plan_id)
    return PlanRiskView(
        plan_id=plan_id,
        version=detail.version,
        digest=detail.digest,
        agent_id=plan.agent_id,
        require_approval=plan.options.require_approval,
        level=risk.level,
        reasons=risk.reasons,
        risk=risk,
        trust=trust,
        decision=decision,
    )


async def assess_plan(
    plan: Plan, services: ApiServices, store: PlanStore, plan_id: str | None = None
) -> tuple[PlanRisk, TrustScore | None, ApprovalDecision | None]:
    """The risk of ``plan`` step by step, its agent's trust now (None when the store
    cannot answer) and what ``require_approval: "auto"`` would decide for it now (None
    without the trust). ``plan_id``: the plan's when it is stored (its submitter's record
    counts), None for a document not created yet."""
    th = services.settings.policy.thresholds()
    # Off the event loop: assessing reads the templates over inputs (evaluated under the
    # expressions' budget, which bounds the work, not the time of the others' requests).
    risk = await asyncio.to_thread(assess_risk, plan, catalog(), th.risk)
    trust: TrustScore | None
    decision: ApprovalDecision | None = None
    try:
        trust = await plan_trust(store, plan.agent_id, th, plan_id)
    except ApiError:
        trust = None
    if trust is not None:
        decision = should_require_approval(plan, trust, risk, th)
    return risk, trust, decision

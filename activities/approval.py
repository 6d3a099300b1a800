"""``assess_approval`` (:class:`ApprovalActivities`): the adaptive approval policy's
decision for one plan run.

A workflow cannot read the store, so at the start of a ``require_approval: "auto"`` plan
it runs this short activity: it reads the agent's history from the store
(:func:`store.trust.trust_history`), computes trust (:func:`plans.policy.compute_trust`)
and risk (:func:`plans.risk.assess_risk`, against the tool catalog the workflow holds),
and returns the decision. The decision is in the workflow's history, so a replay decides
the same even after the rules or the history change.

The thresholds come from the worker's settings (``PLANSMITH_POLICY``,
``PLANSMITH_TRUST_HALF_LIFE_DAYS``), the history from its store (:class:`ActivityDeps`).
``submitted_by`` (the API key owner that started the plan; for a resumed run, the plan's
row in the store) makes approvals by the submitter not count as a person's, and lets an
agent with too few runs of its own start from its submitter's record.

The policy fails closed: when the store cannot be read the trust is unknown and a person
must approve (the decision says the trust could not be read); the plan never fails for it.
"""

from __future__ import annotations

import asyncio

from sqlalchemy.engine import Engine
from temporalio import activity

from activities.deps import ActivityDeps
from contracts.approval import ASSESS_APPROVAL, AssessApprovalInput
from plans.policy import (
    ApprovalDecision,
    PolicyThresholds,
    TrustHistory,
    compute_trust,
    should_require_approval,
)
from plans.risk import assess_risk
from store.db import ensure_migrated, session_scope
from store.trust import plan_submitter, trust_history

STORE_TIMEOUT_S = 10.0


def read_history(
    engine: Engine,
    agent_id: str | None,
    limit: int,
    submitted_by: str | None = None,
    plan_id: str | None = None,
    min_own_runs: int = 1,
) -> TrustHistory:
    """The agent's history from the store (blocking); without ``submitted_by``, the
    plan's submitter recorded in the store (a resumed run)."""

    with session_scope(ensure_migrated(engine)) as session:
        submitter = submitted_by or plan_submitter(session, plan_id)
        if agent_id is None and submitter is None:
            return TrustHistory()
        return trust_history(
            session, agent_id, limit=limit, submitted_by=submitter, min_own_runs=min_own_runs
        )


async def load_history(
    engine: Engine,
    agent_id: str | None,
    limit: int,
    submitted_by: str | None = None,
    plan_id: str | None = None,
    min_own_runs: int = 1,
) -> TrustHistory:
    """The history, or an empty one saying why it could not be read."""
    if agent_id is None and submitted_by is None and plan_id is None:
        return TrustHistory()
    try:
        return await asyncio.wait_for(
            asyncio.to_thread(
                read_history, engine, agent_id, limit, submitted_by, plan_id, min_own_runs
            ),
            timeout=STORE_TIMEOUT_S,
        )
    except Exception as e:  # the store is down or slow: no trust, a person is asked
        if isinstance(e, TimeoutError):
            why = f"no answer within {STORE_TIMEOUT_S:g}s"
        else:
            why = f"{type(e).__name__}: {e}"
        return TrustHistory(
            agent_id=agent_id, submitted_by=submitted_by, error=f"store unreachable: {why}"[:300]
        )


def decide(
    inp: AssessApprovalInput, history: TrustHistory, th: PolicyThresholds
) -> ApprovalDecision:
    trust = compute_trust(history, inp.now, th)
    risk = assess_risk(inp.plan, inp.tools, th.risk)
    return should_require_approval(inp.plan, trust, risk, th)


class ApprovalActivities:
    """``assess_approval``, with the thresholds and the store of ``deps``."""

    def __init__(self, deps: ActivityDeps):
        self.deps = deps

    @activity.defn(name=ASSESS_APPROVAL)
    async def assess_approval(self, inp: AssessApprovalInput) -> ApprovalDecision:
        """Trust, risk and the decision for ``inp.plan`` (see the module docstring)."""
        th = self.deps.settings.policy.thresholds()
        history = await load_history(
            self.deps.engine,
            inp.plan.agent_id,
            th.trust.max_runs,
            submitted_by=inp.submitted_by,
            plan_id=inp.plan.id,
            min_own_runs=th.min_runs,
        )
        if history.error:
            activity.logger.warning(
                "plan %s: trust of %s not read (%s); a person must approve",
                inp.plan.id,
                inp.plan.agent_id,
                history.error,
            )
        return decide(inp, history, th)

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
When the store cannot be read the agent is treated as new (low trust): a person is asked
more often, the plan never fails for it.
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
from store.trust import trust_history

STORE_TIMEOUT_S = 10.0


def read_history(engine: Engine, agent_id: str, limit: int) -> TrustHistory:
    """The agent's history from the store (blocking)."""

    with session_scope(ensure_migrated(engine)) as session:
        return trust_history(session, agent_id, limit=limit)


async def load_history(engine: Engine, agent_id: str | None, limit: int) -> TrustHistory:
    """The history, or an empty one saying why it could not be read."""
    if agent_id is None:
        return TrustHistory()
    try:
        return await asyncio.wait_for(
            asyncio.to_thread(read_history, engine, agent_id, limit), timeout=STORE_TIMEOUT_S
        )
    except Exception as e:  # the store is down or slow: no trust, a person is asked
        if isinstance(e, TimeoutError):
            why = f"no answer within {STORE_TIMEOUT_S:g}s"
        else:
            why = f"{type(e).__name__}: {e}"
        return TrustHistory(agent_id=agent_id, error=f"store unreachable: {why}"[:300])


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
        history = await load_history(self.deps.engine, inp.plan.agent_id, th.trust.max_runs)
        if history.error:
            activity.logger.warning(
                "plan %s: trust of %s not read (%s); treated as a new agent",
                inp.plan.id,
                inp.plan.agent_id,
                history.error,
            )
        return decide(inp, history, th)

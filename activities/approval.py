"""``assess_approval``: the adaptive approval policy's decision for one plan run.

A workflow cannot read the store, so at the start of a ``require_approval: "auto"`` plan
it runs this short activity: it reads the agent's history from the store
(:func:`store.trust.trust_history`), computes trust (:func:`plans.policy.compute_trust`)
and risk (:func:`plans.risk.assess_risk`, against the tool catalog the workflow holds),
and returns the decision. The decision is in the workflow's history, so a replay decides
the same even after the rules or the history change.

The thresholds come from settings (``PLANSMITH_POLICY``, ``PLANSMITH_TRUST_HALF_LIFE_DAYS``).
When the store cannot be read the agent is treated as new (low trust): a person is asked
more often, the plan never fails for it.
"""

from __future__ import annotations

import asyncio

from temporalio import activity

from config import get_settings
from contracts.approval import ASSESS_APPROVAL, AssessApprovalInput
from plans.policy import (
    ApprovalDecision,
    PolicyThresholds,
    TrustHistory,
    compute_trust,
    should_require_approval,
)
from plans.risk import assess_risk

STORE_TIMEOUT_S = 10.0


def thresholds() -> PolicyThresholds:
    return get_settings().policy.thresholds()


def read_history(agent_id: str, limit: int) -> TrustHistory:
    """The agent's history from the store (blocking)."""
    from activities.persist import store_engine
    from store.db import session_scope
    from store.trust import trust_history

    with session_scope(store_engine()) as session:
        return trust_history(session, agent_id, limit=limit)


async def load_history(agent_id: str | None, limit: int) -> TrustHistory:
    """The history, or an empty one saying why it could not be read."""
    if agent_id is None:
        return TrustHistory()
    try:
        return await asyncio.wait_for(
            asyncio.to_thread(read_history, agent_id, limit), timeout=STORE_TIMEOUT_S
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


@activity.defn(name=ASSESS_APPROVAL)
async def assess_approval(inp: AssessApprovalInput) -> ApprovalDecision:
    """Trust, risk and the decision for ``inp.plan`` (see the module docstring)."""
    th = thresholds()
    history = await load_history(inp.plan.agent_id, th.trust.max_runs)
    if history.error:
        activity.logger.warning(
            "plan %s: trust of %s not read (%s); treated as a new agent",
            inp.plan.id,
            inp.plan.agent_id,
            history.error,
        )
    return decide(inp, history, th)

"""The console's inbox: everything waiting for a person, oldest first.

Everything comes from the store, never from Temporal (a plan whose worker is away must
not hold the inbox for the RPC timeout): which plans wait (the list the dashboard's
``/api/metrics/waiting`` reads), what each one waits for with its version and digest
(the status the workflow's newest snapshot recorded), the plan document, and its risk:
the approval policy's decision when the run has one, else the assessment
``GET /api/plans/{id}/risk`` makes. The document's facts, risk and submitter are kept per
plan digest. An action still checks the live status before it is sent.
"""

from __future__ import annotations

import asyncio
import logging
from collections import Counter, OrderedDict
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

from sqlmodel import Session

from api.deps import ApiServices
from api.errors import ApiError, api_error_of
from api.routes_trust import plan_trust
from contracts.tools import catalog
from plans.models import Plan
from plans.risk import assess_risk
from plans.run_state import ReplanProposal, WaitingFor
from plans.views import StatusView
from store.metrics.models import WaitingPlan
from store.metrics.sql import MAX_WAITING
from store.metrics.waiting import waiting_plans
from store.trust import plan_submitter
from workflows.errors import PlanClientError

log = logging.getLogger("plansmith.api.console")

MAX_PLANS = 50  # plans read for one inbox
# of them, proposed by one agent (plans without an agent_id, which no agent key can make,
# are not counted): an agent's plans always wait for a person, and many of them must not
# push every other plan's wait out of the inbox
MAX_PER_AGENT = 10
# waits of one plan listed (a plan of hundreds of gated steps would fill the inbox); the
# rest are on its page
MAX_WAITS_PER_PLAN = 10

KIND_LABELS = {
    "plan_approval": "plan approval",
    "step_approval": "step approval",
    "clarification": "question",
    "correction": "failed step (on_error: ask)",
    "resume": "paused",
    "replan": "proposed replan (on_error: replan)",
}


@dataclass
class Item:
    plan_id: str
    title: str
    kind: str
    step_id: str | None
    step_version: int | None  # what approve_step / reject_step are bound to
    question: str | None
    since: datetime | None
    waited_s: float | None
    timeout_at: datetime | None
    on_timeout: str | None
    version: int
    digest: str
    agent_id: str | None
    submitted_by: str | None
    risk_level: str | None
    risk_reasons: list[str] = field(default_factory=list)
    trust: str | None = None
    offers: set[str] = field(default_factory=set)  # the actions the viewer may send
    proposal: ReplanProposal | None = None  # a replan's: the planner's proposal
    code: str | None = None  # a code step's gate: the generated code to approve
    more: int = 0  # the plan's waits not listed after this one (MAX_WAITS_PER_PLAN)

    @property
    def label(self) -> str:
        return KIND_LABELS.get(self.kind, self.kind)


def timeout_of(plan: Plan, kind: str) -> tuple[float | None, str | None]:
    """The plan's timeout of a wait of ``kind`` (seconds) and what happens then."""
    opts = plan.options
    if kind == "plan_approval":
        return opts.approval_timeout_s, opts.on_approval_timeout
    if kind == "step_approval":
        return opts.step_approval_timeout_s, opts.on_step_approval_timeout
    if kind == "clarification":
        return opts.clarification_timeout_s, opts.on_clarification_timeout
    if kind == "correction":
        return opts.correction_timeout_s, "stop"
    return None, None


async def _risk(
    services: ApiServices, plan_id: str, plan: Plan, status: StatusView
) -> tuple[str | None, list[str], str | None]:
    """The run's approval-policy decision when it has one, else the assessment
    ``GET /api/plans/{id}/risk`` makes, of the store's copy of the document."""
    decision = status.approval_policy
    if decision is not None:
        trusted = f"{decision.trust_level} ({decision.trust_score:.2f})"
        return decision.risk.level, decision.risk.reasons or decision.reasons, trusted
    th = services.settings.policy.thresholds()
    risk = await asyncio.to_thread(assess_risk, plan, catalog(), th.risk)
    try:
        score = await plan_trust(services.store, plan.agent_id, th, plan_id)
        trust = f"{score.level} ({score.score:.2f})"
    except ApiError as e:
        log.info("no trust for %s: %s", plan_id, e.detail)
        trust = None
    return risk.level, risk.reasons, trust


@dataclass(frozen=True)
class PlanFacts:
    """What the inbox shows of one version of a plan document (it changes only with the
    digest): who proposed it, its timeouts, its risk."""

    plan: Plan
    submitted_by: str | None
    risk_level: str | None
    risk_reasons: list[str]
    trust: str | None


class FactsCache:
    """``PlanFacts`` by (plan id, digest), the newest ``size``: the inbox refreshes every
    few seconds, and only the status of each waiting plan needs reading again."""

    def __init__(self, size: int = 1000):
        self.size = size
        self._facts: OrderedDict[tuple[str, str], PlanFacts] = OrderedDict()

    def get(self, key: tuple[str, str]) -> PlanFacts | None:
        found = self._facts.get(key)
        if found is not None:
            self._facts.move_to_end(key)
        return found

    def put(self, key: tuple[str, str], facts: PlanFacts) -> None:
        self._facts[key] = facts
        while len(self._facts) > self.size:
            self._facts.popitem(last=False)


async def _facts(services: ApiServices, plan_id: str, status: StatusView) -> PlanFacts | None:
    store = services.store
    found = await store.plan(plan_id)
    if found is None:
        return None
    plan = found[1]
    level, reasons, trust = await _risk(services, plan_id, plan, status)
    try:
        submitter = await store.run(lambda s: plan_submitter(s, plan_id))
    except ApiError:
        submitter = None
    return PlanFacts(plan, submitter, level, reasons, trust)


async def _items(
    services: ApiServices, cache: FactsCache, row: WaitingPlan, now: datetime
) -> list[Item]:
    try:
        # the store's snapshot, like the list: no Temporal query (a plan whose worker is
        # away would hold the whole inbox for the RPC timeout)
        status = await services.store.status(row.plan_id)
        if status is None or not status.waiting:
            return []
        waits: list[WaitingFor] = status.waiting
        key = (row.plan_id, status.digest)
        facts = cache.get(key)
        if facts is None:
            facts = await _facts(services, row.plan_id, status)
            if facts is None:
                return []
            cache.put(key, facts)
    except (ApiError, PlanClientError) as e:
        log.info("inbox: cannot read %s: %s", row.plan_id, api_error_of(e).detail)
        return []
    step_versions = {s.id: s.version for s in status.steps}
    out = []
    for w in waits[:MAX_WAITS_PER_PLAN]:
        seconds, action = timeout_of(facts.plan, w.kind)
        since = w.since.astimezone(UTC) if w.since else None
        out.append(
            Item(
                plan_id=row.plan_id,
                title=status.title or row.title,
                kind=w.kind,
                step_id=w.step_id,
                step_version=step_versions.get(w.step_id) if w.step_id else None,
                question=w.question,
                since=since,
                waited_s=(now - since).total_seconds() if since else None,
                timeout_at=since + timedelta(seconds=seconds) if since and seconds else None,
                on_timeout=action if seconds else None,
                version=status.version,
                digest=status.digest,
                agent_id=facts.plan.agent_id,
                submitted_by=facts.submitted_by,
                risk_level=facts.risk_level,
                risk_reasons=facts.risk_reasons,
                trust=facts.trust,
                proposal=w.proposal,
                code=w.code,
            )
        )
    if out and len(waits) > MAX_WAITS_PER_PLAN:
        out[-1].more = len(waits) - MAX_WAITS_PER_PLAN
    return out


def fair(rows: list[WaitingPlan]) -> list[WaitingPlan]:
    """The longest-waiting ``MAX_PLANS`` of ``rows``, at most ``MAX_PER_AGENT`` of them
    proposed by one agent."""
    taken: list[WaitingPlan] = []
    per_agent: Counter[str] = Counter()
    for row in rows:
        if len(taken) >= MAX_PLANS:
            break
        if row.agent_id is not None:
            if per_agent[row.agent_id] >= MAX_PER_AGENT:
                continue
            per_agent[row.agent_id] += 1
        taken.append(row)
    return taken


async def inbox(services: ApiServices, cache: FactsCache) -> list[Item]:
    """Every wait of the waiting plans, the longest-waiting first (see :func:`fair`)."""

    def read(s: Session) -> list[WaitingPlan]:
        # the query reads up to MAX_WAITING runs whatever the limit; the limit only cuts
        return waiting_plans(s, limit=MAX_WAITING)

    rows = fair(await services.store.run(read))
    now = datetime.now(UTC)
    found = await asyncio.gather(*(_items(services, cache, row, now) for row in rows))
    items = [item for group in found for item in group]
    far = datetime.max.replace(tzinfo=UTC)
    items.sort(key=lambda i: (i.since or far, i.plan_id, i.step_id or ""))
    return items

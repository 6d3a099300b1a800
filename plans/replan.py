"""``on_error: replan``: the planner proposes a fix for a step that failed for good.

The round, in order (the workflow drives it; every decision is here, pure):

1. :func:`plans.scheduler.after_failure` marks the failed step
   ``awaiting_decision`` (it waits as with ``on_error: ask``) and ``replan_due`` while
   ``max_replans`` rounds are left.
2. :func:`ask` opens a round (a :class:`~plans.run_state.ReplanProposal` in
   ``run.replans``, state ``asking``) and :func:`request_for` builds what the planner gets:
   the error, the attempts, the plan, the other steps' statuses and bounded previews of
   their outputs, what it may replace. The ``propose_replan`` activity asks the model (and
   adds the relevant lessons).
3. :func:`receive` checks the model's answer as hostile input (:func:`review`): a
   *correction* changes only the failed step (as ``apply_correction``'s ``updated_step``);
   a *replacement* takes the place of the failed step and of not-yet-run dependents of it.
   It never touches another step, never changes options or inputs, never removes a
   person's gate, adds at most :data:`MAX_NEW_STEPS` steps, and the result must pass
   :func:`~plans.validation.validate_plan` like any plan. Its risk
   (:func:`plans.risk.assess_step` of every step it changes) decides with the approval
   policy (:func:`needs_person`) whether it is applied unattended (state ``applied``, by
   ``policy``) or waits for a person (state ``proposed``: ``accept_replan`` /
   ``reject_replan``; an ``apply_correction`` of their own supersedes it).
4. Applying it (:func:`apply`) makes a new plan version; the failed step (and its
   dependents) run again; completed steps never do.

A proposal that fails the checks, an answer with nothing to propose, a planner that
cannot be asked, a rejected proposal: the step stays failed and waits for a person as
with ``on_error: ask`` (correct + retry, skip, cancel). No round starts by itself after
that: only a new failure of a step opens one, while rounds are left.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from datetime import datetime
from typing import Any

from plans.models import Plan, StepKind, StepStatus, ToolSpec
from plans.risk import assess_step, at_least, highest, rank
from plans.run_state import (
    PlanRun,
    PlanVersion,
    Refused,
    ReplanProposal,
    SkipReason,
    StepRun,
    audit,
    describe_replan,
    log,
    open_replan,
    preview,
)
from plans.secrets import names_in, secret_paths
from plans.secrets import referenced as secrets_referenced
from plans.step_changes import diff_step, merge_patch, reset_dependents, retry
from plans.validation import PlanInvalid, parse_plan, validate_plan

PLANNER = "planner"  # the actor of proposals in the audit trail
MAX_NEW_STEPS = 10  # steps a replacement may add beyond those it replaces
MAX_PROPOSAL_CHARS = 64_000  # a larger answer is refused unread
OUTPUT_PREVIEW_CHARS = 1000  # each earlier step's output, as the planner sees it
OUTPUTS_BUDGET_CHARS = 20_000  # all of them together
MAX_STEPS_LISTED = 200


# --- asking ---------------------------------------------------------------------------


def due(run: PlanRun) -> list[str]:
    """The failed steps the planner is to be asked about now, in plan order."""
    if run.final_status is not None or run.stopping:
        return []
    return [
        s.id
        for s in run.steps.values()
        if s.replan_due and s.awaiting_decision and s.status == StepStatus.FAILED
    ]


def ask(run: PlanRun, sid: str, now: datetime) -> ReplanProposal:
    """Open a round for ``sid`` (state ``asking``)."""
    s = run.steps[sid]
    s.replan_due = False
    p = ReplanProposal(
        n=len(run.replans) + 1,
        step_id=sid,
        asked_at=now,
        base_version=run.version,
        error=s.error or "",
    )
    run.replans.append(p)
    audit(
        run,
        now,
        PLANNER,
        "replan_asked",
        True,
        f"replan #{p.n} of {run.plan.options.max_replans}: step {sid} failed after "
        f"{s.attempts} attempt(s): {(s.error or '')[:300]}",
        step_id=sid,
    )
    return p


def replaceable(run: PlanRun, sid: str) -> list[str]:
    """``sid`` and its transitive dependents that have not run (pending, or skipped
    because of it): what a replacement may take the place of, in plan order."""
    found = {sid}
    changed = True
    while changed:
        changed = False
        for step in run.plan.steps:
            if step.id in found or not found.intersection(step.depends_on):
                continue
            s = run.steps[step.id]
            if s.status == StepStatus.PENDING or (
                s.status == StepStatus.SKIPPED and s.skip_reason == SkipReason.UPSTREAM
            ):
                found.add(step.id)
                changed = True
    return [st.id for st in run.plan.steps if st.id in found]


def request_for(run: PlanRun, sid: str, catalog: Mapping[str, ToolSpec]) -> dict[str, Any]:
    """What the planner gets (the fields of :class:`contracts.replan.ReplanRequest`)."""
    s = run.steps[sid]
    steps: dict[str, dict[str, Any]] = {}
    budget = OUTPUTS_BUDGET_CHARS
    for other in list(run.steps.values())[:MAX_STEPS_LISTED]:
        if other.id == sid:
            continue
        entry: dict[str, Any] = {"status": other.status.value}
        if other.error:
            entry["error"] = other.error[:500]
        if other.status == StepStatus.COMPLETED and other.output is not None and budget > 0:
            shown = preview(other.output, min(OUTPUT_PREVIEW_CHARS, budget))
            budget -= len(json.dumps(shown, default=str))
            entry["output"] = shown
        steps[other.id] = entry
    plan = run.plan
    free = replaceable(run, sid)
    if len(plan.steps) > MAX_STEPS_LISTED:
        # a large plan travels as the part the proposal may touch and what it reads:
        # activity inputs have a size limit (the whole plan is still what is validated)
        near = set(free[:MAX_STEPS_LISTED]) | set(plan.step(sid).depends_on)
        plan = plan.model_copy(
            update={"steps": [st for st in plan.steps if st.id in near][:MAX_STEPS_LISTED]}
        )
    names = {st.tool for st in plan.steps if st.tool}
    return {
        "plan": plan,
        "step_id": sid,
        "error": (s.error or "")[:4000],
        "attempts": s.attempts,
        "round": len(run.replans),
        "steps": steps,
        "replaceable": free[:MAX_STEPS_LISTED],
        "max_new_steps": MAX_NEW_STEPS,
        "tools": {n: catalog[n] for n in sorted(names) if n in catalog},
    }


# --- checking what the model proposed ---------------------------------------------------


class Review:
    """A proposal checked against the run: the plan it makes (None when refused)."""

    def __init__(self) -> None:
        self.kind: str | None = None
        self.reason = ""
        self.updated_step: dict[str, Any] | None = None
        self.steps: list[dict[str, Any]] | None = None
        self.replaces: list[str] = []
        self.problems: list[str] = []
        self.plan: Plan | None = None
        self.changed: list[str] = []  # step ids of the new plan that are new or changed
        self.diff: dict[str, dict[str, Any]] = {}
        self.secrets: set[str] = set()  # the secrets the changed steps use


def _gated(step: dict[str, Any]) -> bool:
    return bool(step.get("requires_approval")) or step.get("kind") == StepKind.APPROVAL.value


def review(run: PlanRun, sid: str, proposal: Any, catalog: Mapping[str, ToolSpec]) -> Review:
    """Check the model's ``proposal`` for failed step ``sid``; never raises."""
    r = Review()
    try:
        size = len(json.dumps(proposal, default=str))
    except (TypeError, ValueError) as e:
        r.problems.append(f"the proposal is not JSON: {e}")
        return r
    if size > MAX_PROPOSAL_CHARS:
        r.problems.append(f"the proposal is {size} characters (at most {MAX_PROPOSAL_CHARS})")
        return r
    if not isinstance(proposal, dict):
        r.problems.append("the proposal is not an object")
        return r
    kind = proposal.get("kind")
    r.reason = str(proposal.get("reason") or "")[:2000]
    if kind not in ("correction", "replacement", "none"):
        r.problems.append(f"kind must be correction, replacement or none (not {kind!r})")
        return r
    r.kind = kind
    if kind == "none":
        return r
    doc = run.plan.model_dump(mode="json")
    if kind == "correction":
        updated = proposal.get("updated_step")
        if not isinstance(updated, dict) or not updated:
            r.problems.append("a correction needs updated_step (an object)")
            return r
        updated = dict(updated)
        if "parameters" in updated and "params" not in updated:
            updated["params"] = updated.pop("parameters")
        if updated.get("id", sid) != sid:
            r.problems.append(f"updated_step.id cannot change: the step is {sid}")
            return r
        r.updated_step = updated
        for i, old in enumerate(doc["steps"]):
            if old["id"] != sid:
                continue
            new = {**old, **updated, "id": sid}
            if new.get("tool") == old.get("tool") and isinstance(updated.get("params"), dict):
                new["params"] = merge_patch(old.get("params") or {}, updated["params"])
            if _gated(old) and not _gated(new):
                r.problems.append(f"step {sid}: a proposal cannot remove a person's gate")
            doc["steps"][i] = new
        r.changed = [sid]
    else:
        r.steps, r.replaces = _replacement(run, sid, proposal, doc, r.problems)
        r.changed = [str(st.get("id")) for st in r.steps or []]
    if r.problems:
        return r
    try:
        plan = parse_plan(doc)
    except PlanInvalid as e:
        r.problems.extend(map(str, e.problems))
        return r
    limit = len(run.plan.steps) + MAX_NEW_STEPS
    problems = validate_plan(plan, catalog, max_steps=limit)
    if problems:
        r.problems.extend(map(str, problems))
        return r
    used = {name for _, name in secrets_referenced(run.plan)}
    for cid in r.changed:
        for _, text in secret_paths(plan.step(cid).params):
            r.secrets.update(names_in(text))
    brought = sorted(r.secrets - used)
    if brought:
        r.problems.append(
            f"a proposal cannot bring in a secret the plan does not use: {', '.join(brought)}"
        )
        return r
    r.plan = plan
    old_steps = run.plan.step_map()
    for cid in r.changed:
        if cid in old_steps:
            r.diff[cid] = diff_step(old_steps[cid], plan.step(cid))
        else:
            r.diff[cid] = {"added": {"old": None, "new": plan.step(cid).model_dump(mode="json")}}
    for gone in r.replaces:
        if gone not in r.changed:
            r.diff[gone] = {
                "removed": {"old": old_steps[gone].model_dump(mode="json"), "new": None}
            }
    return r


def _replacement(
    run: PlanRun, sid: str, proposal: dict[str, Any], doc: dict[str, Any], problems: list[str]
) -> tuple[list[dict[str, Any]] | None, list[str]]:
    """Put a replacement's steps into ``doc`` in place of what it replaces."""
    steps, replaces = proposal.get("steps"), proposal.get("replaces", [sid])
    if not isinstance(steps, list) or not steps or not all(isinstance(x, dict) for x in steps):
        problems.append("a replacement needs steps (a list of step objects)")
        return None, []
    if not isinstance(replaces, list) or not all(isinstance(x, str) for x in replaces):
        problems.append("replaces must be a list of step ids")
        return None, []
    replaces = list(dict.fromkeys([sid, *replaces]))
    allowed = set(replaceable(run, sid))
    for x in replaces:
        if x not in run.steps:
            problems.append(f"replaces: no step {x!r} in this plan")
        elif x not in allowed:
            problems.append(
                f"replaces: step {x} is {run.steps[x].status.value}; only the failed step "
                "and its dependents that have not run can be replaced"
            )
        elif _gated(run.plan.step(x).model_dump(mode="json")):
            problems.append(f"replaces: step {x} has a person's gate; it cannot be replaced")
    if len(steps) > len(replaces) + MAX_NEW_STEPS:
        problems.append(
            f"the replacement has {len(steps)} steps; at most {len(replaces) + MAX_NEW_STEPS} "
            f"(the {len(replaces)} it replaces + {MAX_NEW_STEPS})"
        )
    kept = {st["id"] for st in doc["steps"] if st["id"] not in replaces}
    for i, st in enumerate(steps):
        if st.get("id") in kept:
            problems.append(
                f"steps[{i}].id: {st.get('id')!r} is a step the replacement does not replace"
            )
    if problems:
        return None, []
    out: list[dict[str, Any]] = []
    placed = False
    for st in doc["steps"]:
        if st["id"] in replaces:
            if not placed:
                out.extend(steps)
                placed = True
            continue
        out.append(st)
    doc["steps"] = out
    return [dict(x) for x in steps], replaces


# --- deciding ------------------------------------------------------------------------


def needs_person(
    run: PlanRun,
    plan: Plan,
    changed: list[str],
    catalog: Mapping[str, ToolSpec],
    secrets: set[str] | None = None,
) -> tuple[bool, str, str]:
    """Whether a person must accept a valid proposal, its risk level, and why."""
    levels = [assess_step(plan, plan.step(c), catalog).level for c in changed]
    level = highest(levels) if levels else "low"
    if secrets:
        return True, level, f"the proposal's steps use secrets ({', '.join(sorted(secrets))})"
    opts = run.plan.options
    decision = run.policy_decision
    if opts.auto_approve or opts.require_approval is False:
        allowed, source = "medium", "require_approval is false: up to medium risk"
    elif opts.require_approval is True:
        return True, level, "require_approval is true: a person accepts every proposal"
    elif decision is None or decision.trust_unread or decision.max_unattended_risk is None:
        return (
            True,
            level,
            "the adaptive policy lets this run do nothing unattended (or could not tell)",
        )
    else:
        allowed = decision.max_unattended_risk
        source = f"the adaptive policy: {decision.trust_level} trust runs up to {allowed} risk"
        if at_least(level, decision.gate_level):
            return True, level, f"the proposal is {level}-risk ({source}; gates at it)"
    if level == "critical" or rank(level) > rank(allowed):  # type: ignore[arg-type]
        return True, level, f"the proposal is {level}-risk, above what {source} allows"
    return False, level, f"the proposal is {level}-risk: {source} unattended"


def _still_open(run: PlanRun, p: ReplanProposal) -> str | None:
    """Why the round can no longer change the plan (None: it can)."""
    s = run.steps.get(p.step_id)
    if run.final_status is not None:
        return f"the plan ended {run.final_status.value}"
    if s is None or s.status != StepStatus.FAILED or not s.awaiting_decision:
        state = s.status.value if s is not None else "gone"
        return f"step {p.step_id} no longer waits for a decision (it is {state})"
    if run.version != p.base_version:
        return f"the plan changed since (version {p.base_version} -> {run.version})"
    if run.stopping:
        return f"the plan is stopping ({run.stopping})"
    return None


def receive(
    run: PlanRun,
    n: int,
    answer: Mapping[str, Any],
    catalog: Mapping[str, ToolSpec],
    now: datetime,
) -> ReplanProposal:
    """The planner's answer (``ReplanAnswer`` fields) for round ``n``: checked, then
    applied unattended, left for a person, or refused."""
    p = run.replans[n - 1]
    p.model = str(answer.get("model") or "")
    p.offline = bool(answer.get("offline"))
    p.lessons_applied = [str(x) for x in answer.get("lessons_applied") or []][:20]
    stale = _still_open(run, p)
    if stale:
        p.state = "superseded"
        p.decision_note = stale
        audit(run, now, PLANNER, "replan_superseded", True, f"replan #{n}: {stale}", p.step_id)
        return p
    r = review(run, p.step_id, answer.get("proposal"), catalog)
    p.kind = r.kind  # type: ignore[assignment]
    p.reason = r.reason
    p.updated_step, p.steps, p.replaces = r.updated_step, r.steps, r.replaces
    p.diff, p.problems = r.diff, r.problems
    by = f"{PLANNER} ({p.model})" if p.model else PLANNER
    if r.problems:
        p.state = "refused"
        p.why = "the proposal failed its checks: " + "; ".join(r.problems)[:2000]
        audit(run, now, by, "replan_refused", False, f"replan #{n}: {p.why}", p.step_id)
        log(run, now, f"replan #{n} refused: {p.why}; a person decides", "warning", p.step_id)
        return p
    if r.kind == "none" or r.plan is None:
        p.state = "nothing"
        p.why = f"the planner has nothing to propose: {r.reason or 'no reason given'}"
        audit(run, now, by, "replan_none", True, f"replan #{n}: {p.why}", p.step_id)
        log(run, now, f"replan #{n}: {p.why}; a person decides", "warning", p.step_id)
        return p
    person, level, why = needs_person(run, r.plan, r.changed, catalog, r.secrets)
    p.risk_level, p.needs_person, p.why = level, person, why
    audit(
        run,
        now,
        by,
        "replan_proposed",
        True,
        f"replan #{n}: {describe_replan(p)}; {why}",
        p.step_id,
    )
    if person:
        p.state = "proposed"
        log(
            run,
            now,
            f"replan #{n} proposed for step {p.step_id}: {describe_replan(p)}; waiting for a person "
            "(accept_replan, reject_replan, or their own apply_correction)",
            "warning",
            p.step_id,
        )
        return p
    detail = apply(run, p, r, "policy", now)
    p.state, p.decided_by, p.decided_at = "applied", "policy", now
    audit(run, now, "policy", "replan_applied", True, f"replan #{n}: {detail}", p.step_id)
    return p


def failed(run: PlanRun, n: int, why: str, now: datetime) -> None:
    """The planner could not be asked: a person decides, as with ``on_error: ask``."""
    p = run.replans[n - 1]
    p.state, p.why = "failed", f"the planner could not be asked: {why}"[:2000]
    audit(run, now, PLANNER, "replan_failed", False, f"replan #{n}: {p.why}", p.step_id)
    log(run, now, f"replan #{n}: {p.why}; a person decides", "warning", p.step_id)


def apply(run: PlanRun, p: ReplanProposal, r: Review, by: str, now: datetime) -> str:
    """Install the reviewed plan: a new version; the changed steps run (again)."""
    assert r.plan is not None
    plan = r.plan
    old_steps = run.steps
    if p.kind == "replacement":
        table: dict[str, StepRun] = {}
        for step in plan.steps:
            prev = old_steps.get(step.id)
            if step.id in r.changed:
                table[step.id] = StepRun(id=step.id, version=(prev.version + 1) if prev else 1)
            else:
                assert prev is not None
                table[step.id] = prev
        run.plan = plan
        run.steps = table
    else:
        run.plan = plan
        s = run.steps[p.step_id]
        s.version += 1
        s.gate_approved_by = s.gate_approved_version = None
        s.change_gate = s.change_diff = None
    run.version += 1
    run.versions.append(
        PlanVersion(
            version=run.version,
            by=by,
            at=now,
            step_id=p.step_id,
            change=f"replan #{p.n} ({'accepted by ' + by if by != 'policy' else 'applied by the policy'}): {describe_replan(p)}",
            diff=p.diff,
        )
    )
    ran = []
    for cid in r.changed:
        s = run.steps[cid]
        if s.status in (StepStatus.FAILED, StepStatus.SKIPPED, StepStatus.CANCELLED):
            retry(run, cid, now)
        ran.append(cid)
        reset_dependents(run, cid)
    for s in run.steps.values():
        if s.id in r.changed:
            s.awaiting_decision = False
            s.replan_due = False
    return f"{describe_replan(p)}; plan version {run.version}; {', '.join(ran)} run (again)"


current = open_replan
describe = describe_replan


# --- a person decides ---------------------------------------------------------------


def check_decision(run: PlanRun, name: str, step_id: str | None) -> ReplanProposal:
    """The proposal a person's ``accept_replan`` / ``reject_replan`` is about."""
    p = None
    for q in reversed(run.replans):
        if q.state == "proposed" and step_id in (None, q.step_id):
            p = q
            break
    if p is None:
        asking = open_replan(run, step_id)
        why = (
            f"the planner is still working on replan #{asking.n}"
            if asking is not None
            else "no replan proposal waits for a decision"
            + (f" for step {step_id}" if step_id else "")
        )
        raise Refused(f"{name} refused: {why}")
    stale = _still_open(run, p)
    if stale:
        raise Refused(f"{name} refused: replan #{p.n} is stale: {stale}")
    return p


def accept(
    run: PlanRun, step_id: str | None, by: str, catalog: Mapping[str, ToolSpec], now: datetime
) -> str:
    p = check_decision(run, "accept_replan", step_id)
    r = review(run, p.step_id, _as_proposal(p), catalog)
    if r.problems or r.plan is None:  # cannot happen while the version is the same
        raise Refused("accept_replan refused: " + "; ".join(r.problems))
    detail = apply(run, p, r, by, now)
    p.state, p.decided_by, p.decided_at = "accepted", by, now
    return f"replan #{p.n} accepted: {detail}"


def reject(run: PlanRun, step_id: str | None, by: str, reason: str, now: datetime) -> str:
    p = check_decision(run, "reject_replan", step_id)
    p.state, p.decided_by, p.decided_at, p.decision_note = "rejected", by, now, reason
    return (
        f"replan #{p.n} rejected: {reason}; step {p.step_id} stays failed and waits for a "
        "correction, a retry, a skip or a cancel"
    )


def supersede(run: PlanRun, step_id: str | None, why: str, now: datetime) -> None:
    """Open rounds for ``step_id`` (all when None) end: the plan changed before a decision."""
    for p in run.replans:
        if p.state == "proposed" and step_id in (None, p.step_id):
            p.state, p.decision_note = "superseded", why
            audit(run, now, PLANNER, "replan_superseded", True, f"replan #{p.n}: {why}", p.step_id)


def _as_proposal(p: ReplanProposal) -> dict[str, Any]:
    if p.kind == "correction":
        return {"kind": "correction", "reason": p.reason, "updated_step": p.updated_step}
    return {"kind": p.kind, "reason": p.reason, "steps": p.steps, "replaces": p.replaces}

"""Changing a step in a run: merge patches, diffs, and putting failed steps back to run.

Shared by the controls (:mod:`plans.steering`) and replanning (:mod:`plans.replan`).
Pure code: ``now`` is always passed in.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from plans.models import Step, StepStatus
from plans.run_state import PlanRun, SkipReason, StepRun, log


def merge_patch(target: Any, patch: Any) -> Any:
    """RFC 7386 JSON merge patch: objects merge key by key, ``null`` removes a key."""
    if not isinstance(patch, dict):
        return patch
    out = dict(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if value is None:
            out.pop(key, None)
        else:
            out[key] = merge_patch(out.get(key), value)
    return out


def diff_step(old: Step, new: Step) -> dict[str, Any]:
    """Field by field, what a correction changed in one step: ``{field: {old, new}}``."""
    a, b = old.model_dump(mode="json"), new.model_dump(mode="json")
    keys = sorted(set(a) | set(b))
    return {k: {"old": a.get(k), "new": b.get(k)} for k in keys if a.get(k) != b.get(k)}


def reset_dependents(run: PlanRun, sid: str) -> list[str]:
    """Put back to pending the dependents that were skipped because ``sid`` failed."""
    reset: list[str] = []
    frontier = [sid]
    while frontier:
        cur = frontier.pop()
        for step in run.plan.steps:
            o = run.steps[step.id]
            if (
                cur in step.depends_on
                and o.status == StepStatus.SKIPPED
                and o.skip_reason in (SkipReason.UPSTREAM, SkipReason.STOPPED)
            ):
                make_pending(o)
                reset.append(step.id)
                frontier.append(step.id)
    return reset


def make_pending(s: StepRun) -> None:
    s.status = StepStatus.PENDING
    s.skip_reason = s.skip_detail = s.error = None
    s.awaiting_decision = False
    s.completed_at = None
    if s.code is not None:  # a code step runs again from new code, repairs counted anew
        s.code_unrun, s.code_gate = False, None
        s.code_round += 1


def lift_failure_stop(run: PlanRun, now: datetime) -> None:
    """After a retry or skip, an on_error=stop stop ends once no step is failed any more;
    the steps it had skipped become pending again. Other stops (cancel, timeouts) stay."""
    if not (run.stopping and run.stopped_by_failure) or run.cancel_requested:
        return
    if any(s.status == StepStatus.FAILED for s in run.steps.values()):
        return
    run.stopping, run.stopped_by_failure = None, False
    for s in run.steps.values():
        if s.status == StepStatus.SKIPPED and s.skip_reason == SkipReason.STOPPED:
            make_pending(s)
    log(run, now, "no step is failed any more: scheduling goes on")


def retry(run: PlanRun, sid: str, now: datetime) -> str:
    make_pending(run.steps[sid])
    reset = reset_dependents(run, sid)
    lift_failure_stop(run, now)
    return f"step {sid} will run again" + (f" with {len(reset)} dependent(s)" if reset else "")

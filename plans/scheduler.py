"""Scheduling a plan run: which steps start now, and what their outcomes do to the run.

The workflow calls :func:`advance` to learn which steps to start, reports activity
outcomes with :func:`record_success` / :func:`record_failure` / :func:`record_cancelled`
(and an llm step's tool calls with :func:`record_call` / :func:`finish_call`), and ends
the run with :func:`finish` once :func:`is_finished` holds, or at once with :func:`end`.
Pure code: ``now`` is always passed in.
"""

from __future__ import annotations

import heapq
from datetime import datetime
from typing import Any

from plans.expressions import evaluate_condition
from plans.models import OnError, PlanStatus, Step, StepKind, StepStatus
from plans.run_index import RunIndex, dependency_state
from plans.run_index import of as index_of
from plans.run_state import PlanRun, SkipReason, StepRun, log, preview


def _gated(step: Step, s: StepRun) -> bool:
    """The step waits for a person before it runs (and nobody approved it yet). A code
    step's gate comes after its code is written, so the person sees the code: the step
    runner holds it (``StepRunner._code_gate``)."""
    if step.kind == StepKind.CODE:
        return False
    return (
        step.requires_approval
        or step.kind == StepKind.APPROVAL
        or s.policy_gate is not None
        or s.change_gate is not None
    ) and s.gate_approved_by is None


def context(run: PlanRun, step_id: str | None = None) -> dict[str, Any]:
    """The names that conditions and templates see.

    ``inputs``, ``steps.<id>.output|status|error``, ``feedback`` (what people said when
    resuming, oldest first) and, for a step, ``answer``: the answer to its clarification
    question (null when it has none).
    """
    step = run.steps.get(step_id or "")
    return {
        "inputs": run.plan.inputs,
        "steps": {
            sid: {"output": s.output, "status": s.status.value, "error": s.error}
            for sid, s in run.steps.items()
        },
        "feedback": list(run.feedback),
        "answer": step.answer if step is not None and step.answered else None,
    }


_dependency_state = dependency_state


def mark_skipped(run: PlanRun, sid: str, reason: SkipReason, detail: str, now: datetime) -> None:
    s = run.steps[sid]
    s.status = StepStatus.SKIPPED
    s.skip_reason = reason
    s.skip_detail = detail
    s.completed_at = now
    s.waiting_since = None
    if s.code_unrun:  # a code step's written code will not run (rejected at its gate...)
        s.code_unrun, s.code_gate = False, None
        if s.code_attempts and s.code_attempts[-1].get("status") in ("written", "waiting"):
            s.code_attempts[-1].update(status="not run", error=detail)
    log(run, now, f"step {sid} skipped: {detail}", "info", sid)


def _stop_step(run: PlanRun, sid: str, now: datetime) -> None:
    why = run.stopping or "stopped"
    if run.cancel_requested:
        s = run.steps[sid]
        s.status, s.completed_at, s.skip_detail, s.waiting_since = (
            StepStatus.CANCELLED,
            now,
            why,
            None,
        )
        log(run, now, f"step {sid} cancelled: {why}", "info", sid)
    else:
        mark_skipped(run, sid, SkipReason.STOPPED, why, now)


def running_steps(run: PlanRun) -> list[str]:
    idx = index_of(run)
    return idx.in_order(idx.by_status[StepStatus.RUNNING])


def _visit(run: PlanRun, step: Step, now: datetime) -> bool:
    """One step's turn in a pass of :func:`advance`: True when it changed the run."""
    changed = False
    s = run.steps[step.id]
    if run.stopping and s.awaiting_decision:
        s.awaiting_decision = False  # a stopped plan asks nobody for a correction
        changed = True
    waiting = s.status in (StepStatus.WAITING_APPROVAL, StepStatus.WAITING_CLARIFICATION)
    if run.stopping and (
        waiting
        or (s.status == StepStatus.PENDING and not index_of(run).by_status[StepStatus.RUNNING])
    ):
        # Nobody is asked anything once the plan stops; pending steps end once
        # the running ones have finished.
        _stop_step(run, step.id, now)
        return True
    if s.status != StepStatus.PENDING:
        return changed
    if s.judge_gate is not None and _pass_judge_gate(run, step.id, now):
        return True
    state, dep = _dependency_state(run, step)
    if state == "wait":
        return changed
    if state == "blocked":
        d = run.steps[dep or ""]
        mark_skipped(
            run,
            step.id,
            SkipReason.UPSTREAM,
            f"dependency {dep} ended {d.status.value}",
            now,
        )
        return True
    if state == "inactive":
        mark_skipped(
            run,
            step.id,
            SkipReason.CONDITION,
            f"branch not taken (dependency {dep} was skipped)",
            now,
        )
        return True
    not_taken = _branch_not_taken(run, step.id)
    if not_taken:
        mark_skipped(run, step.id, SkipReason.CONDITION, not_taken, now)
        return True
    if step.when is not None:
        try:
            ok = evaluate_condition(step.when, context(run, step.id))
        except Exception as e:  # any evaluation failure fails the step, never the workflow
            s.status = StepStatus.FAILED
            s.error = f"condition could not be evaluated: step {step.id!r}, when: {e}"
            s.completed_at = now
            after_failure(run, step.id, now)
            return True
        if not ok:
            mark_skipped(
                run, step.id, SkipReason.CONDITION, f"condition is false: {step.when}", now
            )
            return True
    if run.stopping:
        return changed  # running steps are finishing; the rest is skipped after them
    if step.requires_clarification and not s.answered:
        s.status = StepStatus.WAITING_CLARIFICATION
        s.waiting_since = now
        log(
            run,
            now,
            f"step {step.id} waits for an answer: {step.clarification_question}",
            "info",
            step.id,
        )
        return True
    if _gated(step, s):
        s.status = StepStatus.WAITING_APPROVAL
        s.waiting_since = now
        why = f" ({s.change_gate or s.policy_gate})" if s.change_gate or s.policy_gate else ""
        log(run, now, f"step {step.id} waits for approval{why}", "info", step.id)
        return True
    if step.kind == StepKind.APPROVAL:
        s.status = StepStatus.COMPLETED
        s.output = {"approved_by": s.gate_approved_by}
        s.completed_at = now
        return True
    return changed


def _pass(run: PlanRun, idx: RunIndex, now: datetime) -> bool:
    """One pass over the steps in plan order, as a full pass would make it, visiting only
    the ready steps (and those that become ready further on during the pass). Once the
    plan is stopping, the rest of the pass visits every step."""
    plan = run.plan
    pos = idx.structure.pos
    idx.take_fresh()
    heap = [pos[sid] for sid in idx.ready if sid in pos]
    heapq.heapify(heap)
    changed = False
    last = -1
    while True:
        if run.stopping:
            for step in plan.steps[last + 1 :]:
                changed = _visit(run, step, now) or changed
            return changed
        while heap and heap[0] <= last:
            heapq.heappop(heap)
        if not heap:
            return changed
        last = heapq.heappop(heap)
        changed = _visit(run, plan.steps[last], now) or changed
        idx = index_of(run)
        if idx.plan is not plan:
            return True  # the plan changed under the pass: start over
        for sid in idx.take_fresh():
            p = pos.get(sid)
            if p is not None and p > last:
                heapq.heappush(heap, p)


def advance(run: PlanRun, now: datetime, may_start: bool = True) -> list[str]:
    """Settle skips and gates, then pick the steps to start now (marked running).

    A step starts the moment its own dependencies are done: there is no batch barrier.
    """
    if run.final_status is not None or run.approval is None:
        return []
    if run.started_at is None:
        run.started_at = now
        log(run, now, "plan execution started")
    idx = index_of(run)
    changed = True
    while changed:
        changed = _pass(run, idx, now)

    if run.stopping or run.pause is not None or not may_start:
        return []
    idx = index_of(run)
    capacity = run.plan.options.parallel_limit - len(idx.by_status[StepStatus.RUNNING])
    started: list[str] = []
    for sid in idx.in_order(idx.ready) if capacity > 0 else ():
        if capacity <= 0:
            break
        step = run.plan.step(sid)
        s = run.steps[step.id]
        if s.status != StepStatus.PENDING or _dependency_state(run, step)[0] != "ok":
            continue
        if step.requires_clarification and not s.answered:
            continue
        if _gated(step, s):
            continue
        s.status = StepStatus.RUNNING
        s.started_at = now
        s.completed_at = None
        s.error = None
        s.calls = []
        s.runs += 1
        started.append(step.id)
        capacity -= 1
        log(run, now, f"step {step.id} started", "info", step.id)
    return started


def record_success(run: PlanRun, sid: str, output: Any, attempts: int, now: datetime) -> None:
    s = run.steps[sid]
    s.status = StepStatus.COMPLETED
    s.output = output
    s.attempts = attempts
    s.completed_at = now
    s.error = None
    log(run, now, f"step {sid} completed after {attempts} attempt(s)", "info", sid)
    step = run.plan.step(sid)
    if step.kind == StepKind.DECISION and isinstance(output, dict) and "choice" in output:
        log(
            run,
            now,
            f"step {sid} chose {output['choice']!r}: {output.get('reason', '')}",
            "info",
            sid,
        )


def record_unassessed(
    run: PlanRun, sid: str, output: Any, criteria: list[str], attempts: int, now: datetime
) -> None:
    """A validation step (``on_unassessed: ask``) whose judge criteria no model assessed:
    it is not done; it waits for a person like a step gate. ``approve_step`` passes it
    (with ``output``), ``reject_step`` skips it, a correction makes it run again."""
    s = run.steps[sid]
    s.status = StepStatus.WAITING_APPROVAL
    s.waiting_since = now
    s.output = output
    s.attempts = attempts
    s.error = None
    s.gate_approved_by = None  # an approval given before it ran does not pass the judgement
    s.judge_gate = "no model assessed judge criteria " + ", ".join(repr(c) for c in criteria)
    s.judge_gate_version = s.version
    log(
        run,
        now,
        f"step {sid} waits for a person to pass it: {s.judge_gate} (on_unassessed: ask)",
        "warning",
        sid,
    )


def _pass_judge_gate(run: PlanRun, sid: str, now: datetime) -> bool:
    """A pending step that waited on its judge: completed when a person approved it for the
    version it judged (True); otherwise (retried after a reject, corrected) the stale
    judgement is dropped and the step runs again (False)."""
    s = run.steps[sid]
    if s.gate_approved_by is not None and s.judge_gate_version == s.version:
        by = s.gate_approved_by
        s.output = (
            {**s.output, "passed": True, "passed_by": by}
            if isinstance(s.output, dict)
            else s.output
        )
        s.status = StepStatus.COMPLETED
        s.completed_at = now
        log(run, now, f"step {sid} passed by {by}: {s.judge_gate}", "info", sid)
        s.judge_gate = None
        return True
    s.judge_gate, s.judge_gate_version, s.output = None, 0, None
    return False


def _branch_not_taken(run: PlanRun, sid: str) -> str | None:
    """Why ``sid`` is on a branch a decision did not choose (None: it is not)."""
    for decision, labels in index_of(run).structure.branches.get(sid, ()):
        d = run.steps[decision]
        choice = d.output.get("choice") if isinstance(d.output, dict) else None
        if d.status == StepStatus.COMPLETED and choice not in labels:
            named = " or ".join(repr(label) for label in labels)
            return f"branch {named} not taken: {decision} chose {choice!r}"
    return None


def record_call(run: PlanRun, sid: str, call: dict[str, Any], now: datetime) -> dict[str, Any]:
    """An llm step's tool call starts (or is refused, when ``call`` has an error)."""
    s = run.steps[sid]
    entry = {"n": len(s.calls) + 1, "at": now.isoformat(), **call}
    s.calls.append(entry)
    if entry.get("status") == "invalid":
        log(
            run,
            now,
            f"step {sid}: tool call {entry['n']} refused: {entry.get('error')}",
            "warning",
            sid,
        )
    else:
        log(
            run, now, f"step {sid}: tool call {entry['n']} {entry.get('tool')} started", "info", sid
        )
    return entry


def finish_call(
    run: PlanRun,
    sid: str,
    n: int,
    now: datetime,
    *,
    output: Any = None,
    error: str | None = None,
    attempts: int = 1,
) -> None:
    s = run.steps[sid]
    entry = next(c for c in s.calls if c["n"] == n)
    entry.update(
        status="failed" if error else "completed",
        completed_at=now.isoformat(),
        attempts=attempts,
        **({"error": error} if error else {"output": preview(output, 500)}),
    )
    outcome = f"failed: {error}" if error else "completed"
    log(
        run,
        now,
        f"step {sid}: tool call {n} {entry.get('tool')} {outcome}",
        "info" if not error else "warning",
        sid,
    )


def record_failure(run: PlanRun, sid: str, error: str, attempts: int, now: datetime) -> None:
    s = run.steps[sid]
    s.status = StepStatus.FAILED
    s.error = error
    s.attempts = attempts
    s.completed_at = now
    log(run, now, f"step {sid} failed after {attempts} attempt(s): {error}", "error", sid)
    after_failure(run, sid, now)


def record_cancelled(run: PlanRun, sid: str, now: datetime, why: str) -> None:
    s = run.steps[sid]
    s.status = StepStatus.CANCELLED
    s.error = why
    s.completed_at = now
    for call in s.calls:  # an llm step's tool call that was running ends with it
        if call.get("status") == "running":
            call.update(status="cancelled", completed_at=now.isoformat(), error=why)
    log(run, now, f"step {sid} cancelled: {why}", "warning", sid)


def on_error_of(run: PlanRun, sid: str) -> OnError:
    """What a failure of ``sid`` does: its own ``on_error``, else the plan's."""
    own = run.plan.step(sid).on_error if sid in run.steps else None
    return own or run.plan.options.on_error


def after_failure(run: PlanRun, sid: str, now: datetime) -> None:
    mode = on_error_of(run, sid)
    if mode == OnError.REPLAN:
        # The step waits as with on_error: ask; while rounds are left the planner is
        # asked first (the workflow sees replan_due), and a person decides after it.
        s = run.steps[sid]
        s.awaiting_decision = True
        left = run.plan.options.max_replans - len(run.replans)
        if left > 0 and not run.stopping:
            s.replan_due = True
            log(run, now, f"step {sid} failed: the planner is asked for a fix", "warning", sid)
        else:
            why = (
                f"no replan round left (max_replans {run.plan.options.max_replans})"
                if left <= 0
                else "the plan is stopping"
            )
            log(
                run,
                now,
                f"step {sid} waits for a correction, a retry, a skip or a cancel ({why})",
                "warning",
                sid,
            )
        return
    if mode == OnError.STOP and not run.stopping:
        run.stopping = f"step {sid} failed and on_error is stop"
        run.stopped_by_failure = True
        log(run, now, f"no new steps will start: {run.stopping}", "warning", sid)
    elif mode == OnError.ASK:
        run.steps[sid].awaiting_decision = True
        log(
            run,
            now,
            f"step {sid} waits for a correction, a retry, a skip or a cancel",
            "warning",
            sid,
        )


def stop(run: PlanRun, why: str, now: datetime) -> None:
    """Stop scheduling for a reason no retry lifts (a timeout, an unanswered question)."""
    if not run.stopping or run.stopped_by_failure:
        run.stopping = why
        log(run, now, f"no new steps will start: {why}", "warning")
    run.stopped_by_failure = False


def is_finished(run: PlanRun) -> bool:
    if run.final_status is not None:
        return True
    if run.approval is None:
        return False
    return index_of(run).finished()


def finish(run: PlanRun, now: datetime) -> PlanStatus:
    """Set and return the final status once :func:`is_finished` holds."""
    if run.final_status is not None:
        return run.final_status
    steps = list(run.steps.values())
    failed = [s for s in steps if s.status == StepStatus.FAILED]
    incomplete = [
        s
        for s in steps
        if s.status == StepStatus.FAILED
        or (s.status == StepStatus.SKIPPED and s.skip_reason not in (SkipReason.CONDITION, None))
        or s.status == StepStatus.CANCELLED
    ]
    completed = [s for s in steps if s.status == StepStatus.COMPLETED]
    if run.cancel_requested:
        status, outcome = PlanStatus.CANCELLED, run.cancel_requested
    elif not incomplete:
        status, outcome = PlanStatus.COMPLETED, f"all {len(completed)} step(s) done"
    elif run.stopping:
        status, outcome = PlanStatus.FAILED, run.stopping
    elif failed and run.plan.options.on_error == OnError.STOP:
        status, outcome = PlanStatus.FAILED, f"step {failed[0].id} failed"
    elif completed:
        names = ", ".join(s.id for s in incomplete)
        status, outcome = PlanStatus.PARTIAL, f"{len(completed)} step(s) done; not done: {names}"
    else:
        status, outcome = PlanStatus.FAILED, "no step completed"
    run.final_status = status
    run.outcome = run.outcome or outcome
    run.finished_at = now
    run.pause = None
    log(
        run,
        now,
        f"plan ended {status.value}: {run.outcome}",
        "info" if status == PlanStatus.COMPLETED else "warning",
    )
    return status


def end(run: PlanRun, status: PlanStatus, outcome: str, now: datetime) -> None:
    """End the run now with ``status`` (reject, cancel before start, timeouts)."""
    for s in run.steps.values():
        if not s.status.terminal:
            s.status = (
                StepStatus.CANCELLED if status == PlanStatus.CANCELLED else StepStatus.SKIPPED
            )
            if s.status == StepStatus.SKIPPED:
                s.skip_reason = SkipReason.STOPPED
            s.skip_detail = outcome
            s.completed_at = now
    run.final_status = status
    run.outcome = outcome
    run.finished_at = now
    log(run, now, f"plan ended {status.value}: {outcome}", "warning")

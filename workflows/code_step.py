"""A ``code`` step in the workflow: its model writes Python, the sandbox runs it.

Each attempt is two activities:

1. ``execute_step`` with the step's task (kind ``code``) on the plan's queue: the code
   model writes the code (:mod:`activities.llm.code_writer`). The code comes back as the
   activity's result, so it is in the workflow's history: a replay, or a worker that
   restarts, never writes different code. The run keeps it (``StepRun.code`` and an entry
   of ``StepRun.code_attempts``) and the audit trail records its hash.
2. the ``python`` tool's activity (``run_code`` on the ``sandbox`` queue) with that code,
   the step's ``input`` and its limits -- exactly how a ``python`` step runs. Its output
   (the JSON the code printed) is checked against the step's ``output_schema``.

A failure of the run (an exception, a timeout, a limit, output that is not JSON or does
not match the schema) goes back to the model with the code, for a new attempt, at most
``max_code_repairs`` times (default 2); then the step fails with the last error.

A gated step (``requires_approval``, or a gate of the approval policy or of a change)
waits for a person after its code is written and before it runs: ``waiting_approval``,
with the code in ``status`` (the step's ``code``, and ``waiting_for[].code``).
``approve_step`` runs that very code (kept in the run, never written again); code written
by a repair waits for a person again; ``reject_step`` skips the step.
"""

from __future__ import annotations

import hashlib
from datetime import timedelta
from typing import TYPE_CHECKING, Any

from temporalio import workflow
from temporalio.common import RetryPolicy
from temporalio.exceptions import ActivityError, CancelledError

from workflows.step_policy import (
    StepCancelled,
    attempts_spent,
    error_text,
    retry_policy,
    sandbox_record,
)

with workflow.unsafe.imports_passed_through():
    from contracts.steps import StepTask
    from contracts.tools import PYTHON_TOOL
    from plans import run_state, scheduler
    from plans.models import StepKind, StepStatus
    from plans.step_params import CODE_LIMIT_PARAMS, DEFAULT_MAX_CODE_REPAIRS, output_problems

if TYPE_CHECKING:
    from workflows.step_runner import StepRunner

CODE_STEPS_PATCH = "code-steps"
CODE_KEPT_CHARS = 8000  # an attempt's code as its entry keeps it (the step keeps it whole)
ERROR_CHARS = 2000


def _sha(code: str) -> str:
    return hashlib.sha256(code.encode()).hexdigest()


def _gated(runner: StepRunner, sid: str) -> bool:
    step = runner.run.plan.step(sid)
    s = runner.run.steps[sid]
    gate = step.requires_approval or s.policy_gate is not None or s.change_gate is not None
    return gate and s.gate_approved_by is None


async def run_code_step(
    runner: StepRunner,
    sid: str,
    task: StepTask,
    policy: RetryPolicy,
    timeout: timedelta,
    once: bool,
    attempts: int,
) -> None:
    """Write, (gate,) run and check the code of step ``sid``, repairing it when it fails;
    records the step's end (or its wait for a person) in the run."""
    run = runner.run
    s = run.steps[sid]
    if not workflow.patched(CODE_STEPS_PATCH):  # pragma: no cover - no run before it had one
        scheduler.record_failure(
            run, sid, "this run started before code steps existed", 0, workflow.now()
        )
        return
    step = run.plan.step(sid)
    repairs = int(task.params.get("max_code_repairs", DEFAULT_MAX_CODE_REPAIRS))
    spec = runner.catalog.get(PYTHON_TOOL)
    if spec is None:
        scheduler.record_failure(
            run,
            sid,
            f"the {PYTHON_TOOL!r} tool (the sandbox) is not in this run's catalog",
            0,
            workflow.now(),
        )
        return
    run_policy, _, run_attempts = retry_policy(step, spec, run.plan.options)
    used = 0
    usage: dict[str, Any] = {}
    while True:
        failed = [
            a
            for a in s.code_attempts
            if a.get("status") == "failed"
            and a.get("version") == s.version
            and a.get("round") == s.code_round
        ]
        if s.code is not None and s.code_unrun and s.code_version == s.version:
            code = s.code  # written before the gate: the person approved this very code
            entry = s.code_attempts[-1]
        else:
            if len(failed) > repairs:
                last = failed[-1].get("error", "")
                scheduler.record_failure(
                    run,
                    sid,
                    f"the generated code failed {len(failed)} time(s) "
                    f"(max_code_repairs is {repairs}); last: {last}",
                    max(used, s.attempts),
                    workflow.now(),
                )
                return
            written = await _write(runner, sid, task, failed, policy, timeout, once, attempts, used)
            if written is None:
                return  # the failure is recorded
            code, usage, used = written
            entry = _record_written(runner, sid, code, usage, len(failed))
            if _gated(runner, sid):
                _hold(runner, sid, entry)
                return
        if sid in runner.cancelled:
            raise StepCancelled()
        s.code_unrun, s.code_gate = False, None
        entry["status"] = "running"
        runner.changed()
        output, error = await _run(
            runner, sid, task, code, entry["n"], run_policy, timeout, run_attempts
        )
        used += 1
        if error is None:
            entry["status"] = "completed"
            result = {
                "json": output.get("json"),
                "code": code,
                "code_attempts": len(failed) + 1,
                "stdout": output.get("stdout"),
                "stderr": output.get("stderr"),
                "files": output.get("files") or {},
                **usage,
            }
            scheduler.record_success(run, sid, result, used, workflow.now())
            return
        entry["status"], entry["error"] = "failed", error[:ERROR_CHARS]
        run_state.log(
            run,
            workflow.now(),
            f"step {sid}: generated code (attempt {entry['n']}) failed: {error[:300]}",
            "warning",
            sid,
        )
        run_state.audit(
            run,
            workflow.now(),
            "sandbox",
            "code_failed",
            True,
            f"attempt {entry['n']}, sha256 {entry['sha256'][:16]}: {error[:800]}",
            step_id=sid,
        )
        runner.changed()


async def _write(
    runner: StepRunner,
    sid: str,
    task: StepTask,
    failed: list[dict[str, Any]],
    policy: RetryPolicy,
    timeout: timedelta,
    once: bool,
    attempts: int,
    used: int,
) -> tuple[str, dict[str, Any], int] | None:
    """The code model's code (an ``execute_step`` activity), its usage and the attempts."""
    run = runner.run
    s = run.steps[sid]
    context = {
        **task.context,
        "description": run.plan.step(sid).description,
        "code_attempts": [
            {"code": a.get("code", ""), "error": a.get("error", "")} for a in failed[-3:]
        ],
    }
    write = task.model_copy(
        update={
            "context": context,
            "idempotency_key": f"{task.idempotency_key}:code-{s.code_round}-{len(failed) + 1}",
        }
    )
    ran = await runner.activity(sid, write, None, policy, timeout, once, attempts, used)
    if ran is None:
        return None
    outcome, used = ran
    out = outcome.output if isinstance(outcome.output, dict) else {}
    code = out.get("code")
    if not isinstance(code, str) or not code.strip():
        scheduler.record_failure(run, sid, "the code model wrote no code", used, workflow.now())
        return None
    usage = {k: v for k, v in out.items() if k != "code"}
    return code, usage, used


def _record_written(
    runner: StepRunner, sid: str, code: str, usage: dict[str, Any], repairs_before: int
) -> dict[str, Any]:
    run = runner.run
    s = run.steps[sid]
    now = workflow.now()
    sha = _sha(code)
    entry: dict[str, Any] = {
        "n": len(s.code_attempts) + 1,
        "version": s.version,
        "round": s.code_round,
        "at": now.isoformat(),
        "status": "written",
        "sha256": sha,
        "chars": len(code),
        "code": code[:CODE_KEPT_CHARS],
        "model": usage.get("model", ""),
        "repair": repairs_before > 0,
    }
    s.code_attempts.append(entry)
    s.code, s.code_version, s.code_unrun = code, s.version, True
    s.gate_approved_by = s.gate_approved_version = None  # an approval was for other code
    what = "repaired code" if repairs_before else "code"
    run_state.log(
        run,
        now,
        f"step {sid}: the code model ({entry['model']}) wrote {what} "
        f"(attempt {entry['n']}, {len(code)} chars, sha256 {sha[:16]})",
        "info",
        sid,
    )
    run_state.audit(
        run,
        now,
        "code_model",
        "code_written",
        True,
        f"attempt {entry['n']}: {len(code)} chars, sha256 {sha}, model {entry['model']}",
        step_id=sid,
    )
    runner.changed()
    return entry


def _hold(runner: StepRunner, sid: str, entry: dict[str, Any]) -> None:
    """The written code waits for a person (``approve_step`` runs it)."""
    run = runner.run
    s = run.steps[sid]
    now = workflow.now()
    entry["status"] = "waiting"
    s.status = StepStatus.WAITING_APPROVAL
    s.waiting_since = now
    s.code_gate = (
        f"its generated code (attempt {entry['n']}, sha256 {entry['sha256'][:16]}) waits "
        "for a person's approval before it runs"
    )
    run_state.log(run, now, f"step {sid} waits for approval: {s.code_gate}", "info", sid)


async def _run(
    runner: StepRunner,
    sid: str,
    task: StepTask,
    code: str,
    n: int,
    policy: RetryPolicy,
    timeout: timedelta,
    attempts: int,
) -> tuple[dict[str, Any], str | None]:
    """Run ``code`` with the python tool (the sandbox): its output and the error, if any
    (an exception, a limit, output that does not match the schema)."""
    spec = runner.catalog[PYTHON_TOOL]
    params: dict[str, Any] = {"code": code}
    if task.params.get("input") is not None:
        params["input"] = task.params["input"]
    params.update({k: task.params[k] for k in CODE_LIMIT_PARAMS if k in task.params})
    child = StepTask(
        plan_id=task.plan_id,
        step_id=sid,
        kind=StepKind.TOOL,
        tool=PYTHON_TOOL,
        params=params,
        idempotency_key=f"{task.idempotency_key}:run-{_sha(code)[:16]}",
        step_version=task.step_version,
    )
    handle = runner.start_activity(sid, child, spec, policy, timeout, f"{sid} code {n}: python")
    try:
        outcome = await handle
    except ActivityError as e:
        if isinstance(e.cause, CancelledError):
            raise StepCancelled() from None
        runner.audit_sandbox(sid, spec, sandbox_record(e))
        spent = attempts_spent(e, attempts)
        return {}, error_text(e) + (f" (after {spent} attempts)" if spent > 1 else "")
    output = outcome.output if isinstance(outcome.output, dict) else {}
    runner.audit_sandbox(sid, spec, output.get("sandbox"))
    if output.get("json") is None:
        said = str(output.get("stdout") or "").strip()
        why = "printed nothing" if not said else f"printed no JSON: {said[:300]!r}"
        return output, f"OutputNotJson: the code {why}; print one JSON value with json.dumps"
    problems = output_problems(task.params.get("output_schema") or {}, output["json"])
    if problems:
        return output, "OutputSchemaMismatch: " + "; ".join(problems[:10])
    return output, None

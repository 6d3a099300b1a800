"""The steps of a running plan: one asyncio task per step, one activity per attempt.

:class:`StepRunner` renders a step's params, runs its activity (the tool's own, else
``execute_step``) on the tool's task queue, runs the tool calls an llm step's model asks
for (each checked against its tool's schema, one child activity each), and records every
outcome in the run through :mod:`plans.scheduler`. It tells the workflow of each change
through ``changed``, so the workflow's loop wakes up and schedules what became ready.
"""

from __future__ import annotations

import asyncio
import dataclasses
from collections import Counter
from collections.abc import Callable
from datetime import timedelta
from typing import Any

from temporalio import workflow
from temporalio.common import RetryPolicy
from temporalio.exceptions import ActivityError, ApplicationError, CancelledError
from temporalio.exceptions import TimeoutError as StepTimeoutError

from workflows.code_step import run_code_step
from workflows.step_policy import (
    MAX_WORKER_LOSSES,
    RESPOND_TOOL,
    CallBudget,
    StepCancelled,
    as_activity_error,
    attempts_spent,
    error_text,
    fast_eligible,
    retry_policy,
    sandbox_record,
    timeout_text,
    tool_result,
    worker_lost,
)

with workflow.unsafe.imports_passed_through():
    from contracts.steps import (
        EXECUTE_STEP,
        FAST_PATH_REFUSED,
        StepOutcome,
        StepTask,
        request_digest,
        request_key,
    )
    from plans import run_state, scheduler
    from plans.expressions import iter_templates, render
    from plans.models import StepKind, ToolSpec
    from plans.run_state import PlanRun
    from plans.secrets import secret_paths
    from plans.step_params import params_errors

# Idempotency keys derived from the step's request (plan id, step id, a digest of kind,
# tool and rendered params) instead of its version; runs recorded before keep theirs.
REQUEST_KEY_PATCH = "request-idempotency-key"
# Cheap pure steps (fast tools, validation checks without a judge) run as local
# activities; runs recorded before run every step as an ordinary activity.
FAST_PATH_PATCH = "fast-path"
# While local activities follow one another, the worker keeps its workflow task open (up
# to ~8 s) and nothing else reaches the run: queries, controls and timers wait. After
# FAST_BREAK_EVERY fast steps in a row, the next one runs as an ordinary activity, which
# ends the task, so a `status` query or a pause waits for at most that many fast steps.
# (A 1 ms timer would end it too, but the dev server fires timers up to ~1 s late.) Runs
# recorded before the patch take no breaks.
FAST_BREAK_PATCH = "fast-path-breaks"
FAST_BREAK_EVERY = 25
# A fast step's local activity is named by its activity id (the step id, as its marker in
# the history shows it) instead of a summary: the summary is one more payload per step,
# which the SDK carries through the workflow sandbox three times (about a third of the
# worker's time per fast step beyond a bare local activity). Runs recorded before the
# patch keep the summary and numbered ids.
FAST_IDS_PATCH = "fast-path-step-ids"


class StepRunner:
    """Runs the steps of ``run``: started by the workflow, each in a task of its own."""

    def __init__(
        self,
        run: PlanRun,
        catalog: dict[str, ToolSpec],
        heartbeat_timeout: timedelta,
        task_queues: dict[str, str],
        changed: Callable[[], None],
    ) -> None:
        self._run = run
        self._catalog = catalog
        self._heartbeat_timeout = heartbeat_timeout
        self._task_queues = task_queues  # logical queue of a tool -> the queue its workers poll
        self._changed = changed  # the run changed: the workflow's loop looks again
        self._handles: dict[str, workflow.ActivityHandle[StepOutcome]] = {}
        self._tasks: dict[str, asyncio.Task[None]] = {}
        self._cancelled: set[str] = set()  # steps a cancel or a timeout reached
        self._request_keys: bool | None = None  # idempotency keys from the request (patch)
        self._call_keys: dict[str, Counter[str]] = {}  # an llm step's calls, by request
        self._fast_path: bool | None = None  # local activities for fast steps (patch)
        self._fast_breaks: bool | None = None  # a break every FAST_BREAK_EVERY (patch)
        self._fast_ids: bool | None = None  # fast steps named by activity id (patch)
        self._fast_in_a_row = 0  # fast steps started since the last break or activity

    def _keys_from_requests(self) -> bool:
        """Whether idempotency keys come from the request (every run since the patch);
        asked once, at the first step, so one run never mixes the two kinds of key."""
        if self._request_keys is None:
            self._request_keys = workflow.patched(REQUEST_KEY_PATCH)
        return self._request_keys

    def _fast(self, step: Any, spec: ToolSpec | None, task: StepTask) -> bool:
        """Whether this run of the step takes the fast path. The patch is asked at the
        first eligible step and then kept, so one run never mixes the two."""
        if not fast_eligible(step, spec, task):
            return False
        if self._fast_path is None:
            self._fast_path = workflow.patched(FAST_PATH_PATCH)
        return self._fast_path

    def _named_by_id(self) -> bool:
        """Whether fast steps' local activities carry the step id as their activity id
        and no summary (asked at the first one, then kept)."""
        if self._fast_ids is None:
            self._fast_ids = workflow.patched(FAST_IDS_PATCH)
        return self._fast_ids

    def _fast_break(self) -> bool:
        """Before a fast step: whether it runs as an ordinary activity instead, being the
        one after FAST_BREAK_EVERY fast steps in a row, so the workflow task ends and what
        waits for the run (queries, controls) gets in."""
        self._fast_in_a_row += 1
        if self._fast_in_a_row <= FAST_BREAK_EVERY:
            return False
        if self._fast_breaks is None:
            self._fast_breaks = workflow.patched(FAST_BREAK_PATCH)
        return self._fast_breaks

    # --- what a code step's run (workflows.code_step) uses -----------------------------

    @property
    def run(self) -> PlanRun:
        return self._run

    @property
    def catalog(self) -> dict[str, ToolSpec]:
        return self._catalog

    @property
    def cancelled(self) -> set[str]:
        return self._cancelled

    def changed(self) -> None:
        self._changed()

    @property
    def running(self) -> bool:
        """Whether any step's task is still running."""
        return bool(self._tasks)

    async def settle(self) -> None:
        """Wait until every running step's task has recorded its end."""
        if self._tasks:
            await asyncio.gather(*self._tasks.values(), return_exceptions=True)

    def start(self, sid: str) -> None:
        """Run step ``sid`` in a task of its own (its dependencies are done)."""
        self._cancelled.discard(sid)
        self._call_keys.pop(sid, None)
        self._tasks[sid] = asyncio.create_task(self._run_step(sid))

    def cancel_running(self, why: str) -> None:
        """Cancel every running step's activity (a cancel or a timeout reached the plan)."""
        self._cancelled.update(self._tasks)  # an llm step starts no more tool calls or rounds
        for sid, handle in list(self._handles.items()):
            run_state.log(
                self._run, workflow.now(), f"cancelling step {sid}: {why}", "warning", sid
            )
            handle.cancel()

    async def _run_step(self, sid: str) -> None:
        run = self._run
        step = run.plan.step(sid)
        state = run.steps[sid]
        opts = run.plan.options
        try:
            # the context holds every step's output: built only when something reads it
            # (a template in the params, a validation step), not for every step
            reads = step.kind == StepKind.VALIDATION or next(iter_templates(step.params), None)
            ctx = scheduler.context(run, sid) if reads else {}
            params = render(step.params, ctx)
            if self._keys_from_requests():
                key = request_key(run.plan.id or "", sid, step.kind, step.tool, params)
            else:  # runs recorded before the patch keyed on the step's version
                key = f"{run.plan.id}:{sid}:v{state.version}"
            task = StepTask(
                plan_id=run.plan.id or "",
                step_id=sid,
                kind=step.kind,
                tool=step.tool,
                params=params,
                idempotency_key=key,
                step_version=state.version,
                context=self._step_context(sid, ctx),
                secret_params=[path for path, _ in secret_paths(step.params)],  # resolved there
            )
        except Exception as e:  # a template that cannot render fails the step, never the workflow
            # (MemoryError and RecursionError too: evaluation turns them into its budget's
            # error, and they are Exceptions here as well).
            scheduler.record_failure(
                run, sid, f"params could not be rendered: step {sid!r}, {e}", 0, workflow.now()
            )
            self._finish_task(sid)
            return
        policy, once, attempts = retry_policy(step, self._catalog.get(step.tool or ""), opts)
        spec = self._catalog.get(step.tool or "")
        timeout = timedelta(seconds=step.timeout_s or opts.step_timeout_s)
        fast = self._fast(step, spec, task)
        try:
            if step.kind == StepKind.CODE:  # write, (gate,) run, check, repair: code_step
                await run_code_step(self, sid, task, policy, timeout, once, attempts)
                return
            ran = await self._activity(sid, task, spec, policy, timeout, once, attempts, 0, fast)
            if ran is None:
                return
            outcome, used = ran
            budget = CallBudget.of(task.params)
            while outcome.calls:  # an llm step's model asked for tools: run them, go on
                results = await self._tool_calls(sid, task, outcome.calls, budget, timeout)
                if sid in self._cancelled:
                    raise StepCancelled()
                if budget.exhausted:
                    scheduler.record_failure(run, sid, budget.exhausted, used, workflow.now())
                    return
                task = task.model_copy(
                    update={
                        "context": {
                            **task.context,
                            "conversation": [
                                *outcome.conversation,
                                {"role": "user", "content": results},
                            ],
                            "llm_usage": outcome.usage,
                            "tool_calls_made": budget.made,
                        }
                    }
                )
                ran = await self._activity(sid, task, spec, policy, timeout, once, attempts, used)
                if ran is None:
                    return
                outcome, used = ran
            output = outcome.output
            self._audit_sandbox(
                sid, spec, output.get("sandbox") if isinstance(output, dict) else None
            )
            if outcome.unassessed:  # on_unassessed: ask -- a person passes the judgement
                scheduler.record_unassessed(
                    run, sid, outcome.output, outcome.unassessed, used, workflow.now()
                )
            else:
                scheduler.record_success(run, sid, outcome.output, used, workflow.now())
        except (asyncio.CancelledError, StepCancelled):
            scheduler.record_cancelled(run, sid, workflow.now(), run.stopping or "cancelled")
        except Exception as e:  # a bug must fail the step, never leave it running
            scheduler.record_failure(
                run, sid, f"{type(e).__name__}: {e}", run.steps[sid].attempts, workflow.now()
            )
        finally:
            self._handles.pop(sid, None)
            self._finish_task(sid)

    async def _activity(
        self,
        sid: str,
        task: StepTask,
        spec: ToolSpec | None,
        policy: RetryPolicy,
        timeout: timedelta,
        once: bool,
        attempts: int,
        used: int,
        fast: bool = False,
    ) -> tuple[StepOutcome, int] | None:
        """Run the step's activity (a local one on the fast path): its outcome and the
        attempts spent so far, or None once the failure (or cancellation) is recorded."""
        run = self._run
        step = run.plan.step(sid)
        lost = 0  # times the worker running this step vanished (no heartbeat)
        while True:
            summary = f"{sid}: {step.tool or step.kind.value}"
            if fast and self._fast_break():
                fast = False
            if not fast:
                self._fast_in_a_row = 0
            handle = self._start_activity(sid, task, spec, policy, timeout, summary, fast)
            try:
                outcome = await handle
            except Exception as raw:
                e = as_activity_error(raw, fast)
                if e is None:
                    raise
                cause = e.cause
                if fast and isinstance(cause, ApplicationError) and cause.type == FAST_PATH_REFUSED:
                    run_state.log(  # the worker's word: not on the fast path
                        run,
                        workflow.now(),
                        f"step {sid}: {cause.message}; running it as an ordinary activity",
                        "info",
                        sid,
                    )
                    fast = False
                    continue
                if fast and isinstance(cause, StepTimeoutError) and not run.stopping:
                    # The SDK does not retry a local activity that timed out: the step's
                    # remaining attempts run as ordinary activities, whose failures read
                    # as ever; with none left, the timeout reads as an ordinary one's.
                    used += 1
                    if attempts > 1:
                        run_state.log(
                            run,
                            workflow.now(),
                            f"step {sid}: timed out on the fast path; its other "
                            f"{attempts - 1} attempt(s) run as ordinary activities",
                            "warning",
                            sid,
                        )
                        attempts -= 1
                        policy = dataclasses.replace(policy, maximum_attempts=attempts)
                        fast = False
                        continue
                    scheduler.record_failure(run, sid, timeout_text(cause), used, workflow.now())
                    return None
                if isinstance(e.cause, CancelledError):
                    scheduler.record_cancelled(
                        run, sid, workflow.now(), run.stopping or "cancelled"
                    )
                    return None
                used += attempts_spent(e, attempts)
                if worker_lost(e) and not once and lost < MAX_WORKER_LOSSES and not run.stopping:
                    # A crashed worker is not the step's failure: run it again without
                    # spending its own retries (it is idempotent).
                    lost += 1
                    run_state.log(
                        run,
                        workflow.now(),
                        f"step {sid}: no heartbeat from its worker; running it again "
                        f"({lost}/{MAX_WORKER_LOSSES})",
                        "warning",
                        sid,
                    )
                    continue
                error = error_text(e)
                if worker_lost(e) and once:
                    error += (
                        " (the step is not idempotent, so it is not run again: check its effect)"
                    )
                scheduler.record_failure(run, sid, error, used, workflow.now())
                self._audit_sandbox(sid, spec, sandbox_record(e))
                return None
            return outcome, used + outcome.attempt

    def _start_activity(
        self,
        sid: str,
        task: StepTask,
        spec: ToolSpec | None,
        policy: RetryPolicy,
        timeout: timedelta,
        summary: str,
        fast: bool = False,
    ) -> workflow.ActivityHandle[StepOutcome]:
        """Start the activity that runs ``task`` (the tool's own, else ``execute_step``) on
        the tool's queue -- or, on the fast path, ``execute_step`` as a local activity on
        this worker, with the same retry policy and time limit (no heartbeats: it does no
        I/O); the step's handle, so a cancel reaches it."""
        if fast:
            if self._named_by_id():  # "s042" (its n-th run: "s042#n"), no summary
                runs = self._run.steps[sid].runs
                named: dict[str, Any] = {"activity_id": sid if runs <= 1 else f"{sid}#{runs}"}
            else:
                named = {"summary": summary}
            local = workflow.start_local_activity(
                EXECUTE_STEP,
                task,
                result_type=StepOutcome,
                start_to_close_timeout=timeout,
                retry_policy=policy,
                cancellation_type=workflow.ActivityCancellationType.WAIT_CANCELLATION_COMPLETED,
                **named,
            )
            self._handles[sid] = local
            return local
        handle = workflow.start_activity(
            (spec.activity if spec and spec.activity else EXECUTE_STEP),
            task,
            task_queue=self._queue_for(spec),
            result_type=StepOutcome,
            start_to_close_timeout=timeout,
            heartbeat_timeout=min(self._heartbeat_timeout, timeout),
            retry_policy=policy,
            cancellation_type=workflow.ActivityCancellationType.WAIT_CANCELLATION_COMPLETED,
            summary=summary,
        )
        self._handles[sid] = handle
        return handle

    async def _tool_calls(
        self,
        sid: str,
        task: StepTask,
        calls: list[dict[str, Any]],
        budget: CallBudget,
        timeout: timedelta,
    ) -> list[dict[str, Any]]:
        """Check each tool call of an llm step against its tool's schema and run the valid
        ones, one child activity each; the results (or problems) go back to the model."""
        run = self._run
        tools = task.params.get("tools")
        offered = sorted(str(t) for t in tools) if isinstance(tools, list) else []
        results: list[dict[str, Any]] = []
        for call in calls:
            if sid in self._cancelled:  # the plan was cancelled meanwhile: no more calls
                raise StepCancelled()
            call_id, name = str(call.get("id", "")), str(call.get("name", ""))
            raw = call.get("input")
            params: dict[str, Any] = raw if isinstance(raw, dict) else {}
            if name == RESPOND_TOOL:
                results.append(
                    tool_result(call_id, "give the final answer once the other results are in")
                )
                continue
            spec = self._catalog.get(name)
            problem = None
            if name not in offered or spec is None:
                problem = (
                    f"tool {name!r} is not offered to this step; offered: {', '.join(offered)}"
                )
            else:
                errors = params_errors(spec.params_schema, params, rendered=True)
                if errors:
                    problem = "invalid input: " + "; ".join(f"input{p}: {m}" for p, m in errors)
            if problem is not None:
                budget.invalid += 1
                scheduler.record_call(
                    run,
                    sid,
                    {
                        "tool": name,
                        "params": run_state.preview(params, 500),
                        "status": "invalid",
                        "error": problem,
                    },
                    workflow.now(),
                )
                self._changed()
                results.append(tool_result(call_id, problem, error=True))
                if budget.invalid > budget.max_invalid:
                    budget.exhausted = (
                        f"the model made {budget.invalid} invalid tool calls "
                        f"(max_invalid_calls is {budget.max_invalid}); last: {problem}"
                    )
                    return results
                continue
            assert spec is not None
            budget.made += 1
            if budget.made > budget.max_calls:
                budget.exhausted = (
                    f"the model asked for more than {budget.max_calls} tool calls (max_tool_calls)"
                )
                return results
            entry = scheduler.record_call(
                run,
                sid,
                {"tool": name, "params": run_state.preview(params, 500), "status": "running"},
                workflow.now(),
            )
            self._changed()
            results.append(
                await self._tool_call(sid, task, spec, call_id, params, entry["n"], timeout)
            )
        return results

    async def _tool_call(
        self,
        sid: str,
        task: StepTask,
        spec: ToolSpec,
        call_id: str,
        params: dict[str, Any],
        n: int,
        timeout: timedelta,
    ) -> dict[str, Any]:
        run = self._run
        policy, _, attempts = retry_policy(run.plan.step(sid), spec, run.plan.options)
        if self._keys_from_requests():
            # The call's own request decides its key: the same call asked again (the step
            # retried or resumed, its model asking the same) reuses it; the k-th identical
            # call within one run of the step gets a key of its own.
            digest = request_digest(StepKind.TOOL, spec.name, params)
            seen = self._call_keys.setdefault(sid, Counter())
            seen[digest] += 1
            same = seen[digest]
            key = f"{task.idempotency_key}:call-{digest}" + (f"-{same}" if same > 1 else "")
        else:
            key = f"{task.idempotency_key}:r{run.steps[sid].runs}:call{n}"
        child = StepTask(
            plan_id=task.plan_id,
            step_id=sid,
            kind=StepKind.TOOL,
            tool=spec.name,
            params=params,
            idempotency_key=key,
            step_version=task.step_version,
        )
        handle = self._start_activity(
            sid, child, spec, policy, timeout, f"{sid} call {n}: {spec.name}"
        )
        try:
            outcome = await handle
        except ActivityError as e:
            if isinstance(e.cause, CancelledError):
                raise StepCancelled() from None
            error = error_text(e)
            scheduler.finish_call(
                run, sid, n, workflow.now(), error=error, attempts=attempts_spent(e, attempts)
            )
            self._audit_sandbox(sid, spec, sandbox_record(e))
            self._changed()
            return tool_result(call_id, error, error=True)
        output = outcome.output
        scheduler.finish_call(run, sid, n, workflow.now(), output=output, attempts=outcome.attempt)
        self._audit_sandbox(sid, spec, output.get("sandbox") if isinstance(output, dict) else None)
        self._changed()
        # The output as it is (a large one by reference): the llm step's activity resolves
        # it and cuts it to a size the model can take.
        return {"type": "tool_result", "tool_use_id": call_id, "content": output}

    def _audit_sandbox(self, sid: str, spec: ToolSpec | None, record: Any) -> None:
        """Every run of generated code lands in the audit trail: code hash, limits, outcome."""
        if spec and spec.activity == "run_code" and isinstance(record, dict):
            run_state.audit(
                self._run,
                workflow.now(),
                "sandbox",
                "run_code",
                record.get("outcome") != "refused",
                str(record.get("summary", ""))[:1000],
                step_id=sid,
            )

    def _queue_for(self, spec: ToolSpec | None) -> str | None:
        """The real task queue for a tool's dedicated pool (None: the plan's own queue)."""
        if spec is None or spec.task_queue is None:
            return None
        return self._task_queues.get(spec.task_queue, spec.task_queue)

    def _step_context(self, sid: str, ctx: dict[str, Any]) -> dict[str, Any]:
        run = self._run
        step = run.plan.step(sid)
        extra: dict[str, Any] = {}
        if step.kind == StepKind.VALIDATION:
            extra.update(ctx)
        if run.steps[sid].answered:
            extra["answer"] = run.steps[sid].answer
        if run.feedback:
            extra["feedback"] = list(run.feedback)
        return extra

    def _finish_task(self, sid: str) -> None:
        self._tasks.pop(sid, None)
        self._changed()

    # a code step's run (workflows.code_step) starts activities and audits like the others
    activity = _activity
    start_activity = _start_activity
    audit_sandbox = _audit_sandbox

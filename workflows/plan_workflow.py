"""``PlanWorkflow``: the durable shell around the pure plan run state machine.

Every decision is made by pure code (:mod:`plans.run_state`, :mod:`plans.scheduler`,
:mod:`plans.steering`, :mod:`plans.deadlines`, :mod:`plans.approval_gate`); this class
only turns them into Temporal commands: one activity per step (started the moment its
own dependencies finish), durable timers for approval and total timeouts, signals and
updates for controls, queries for status, and search attributes so a person can find
waiting plans.
"""

from __future__ import annotations

import asyncio
from datetime import timedelta
from typing import Any

from pydantic import BaseModel, Field
from temporalio import workflow
from temporalio.common import RetryPolicy, SearchAttributeKey
from temporalio.exceptions import (
    ActivityError,
    ApplicationError,
    CancelledError,
    RetryState,
    TimeoutType,
)
from temporalio.exceptions import TimeoutError as StepTimeoutError

with workflow.unsafe.imports_passed_through():
    from contracts.approval import ASSESS_APPROVAL, AssessApprovalInput
    from contracts.snapshots import RECORD_SNAPSHOT, RecordResult, SnapshotCursor
    from contracts.steps import EXECUTE_STEP, StepOutcome, StepTask
    from contracts.tools import catalog
    from plans import approval_gate, deadlines, run_state, scheduler, steering
    from plans.controls import ControlResult
    from plans.expressions import render
    from plans.models import Plan, PlanStatus, Step, StepKind, ToolSpec
    from plans.policy import ApprovalDecision, decide_as_new_agent
    from plans.run_state import Approval, AuditEntry, LogEntry, PlanRun, Refused, StepRun
    from plans.validation import params_errors
    from plans.views import (
        ExecutionState,
        LogsQuery,
        PlanView,
        StatusView,
        execution_state,
        logs_view,
        plan_view,
        status_view,
        summary_line,
        waits,
    )

WORKFLOW_NAME = "PlanWorkflow"
DEFAULT_TASK_QUEUE = "plans"
PLAN_STATUS = SearchAttributeKey.for_keyword("PlanStatus")
WAITING_FOR = SearchAttributeKey.for_keyword("WaitingFor")
SEARCH_ATTRIBUTES = (PLAN_STATUS, WAITING_FOR)
HEARTBEAT_TIMEOUT = timedelta(seconds=20)
# require_approval "auto" asks the assess_approval activity (risk and trust) first; runs
# recorded before it decided with the engine's legacy rule and replay without it.
ADAPTIVE_APPROVAL_PATCH = "adaptive-approval"
MAX_WORKER_LOSSES = 3  # re-runs of an idempotent step whose worker died, beyond its retries
NON_RETRYABLE = [
    "InvalidParams",
    "InvalidModelOutput",
    "NoModelFits",
    "LLMBadRequest",
    "LLMAuthError",
    "LLMNotFound",
    "UnknownTool",
    "BadRequest",
    "HttpClientError",
    "ValidationFailed",
    "UnsupportedStep",
]


class PlanInput(BaseModel):
    plan: Plan | None = Field(default=None, description="the plan to run (not needed with `run`)")
    run: PlanRun | None = Field(default=None, description="state carried by continue-as-new")
    carried_steps: dict[str, StepRun] | None = Field(
        default=None,
        description="steps of an earlier run (resume from failure): completed ones are not run "
        "again, the others run as a new version of themselves",
    )
    tools: dict[str, ToolSpec] | None = Field(
        default=None,
        description="the tool catalog the plan was validated against; decisions that depend on "
        "a tool (risk, idempotency, schemas for corrections) read this snapshot, so a worker "
        "deployed with changed tools does not change a running plan",
    )
    heartbeat_timeout_s: float = HEARTBEAT_TIMEOUT.total_seconds()
    search_attributes: bool = Field(
        default=True,
        description="upsert PlanStatus/WaitingFor (they must be registered on the server; "
        "the worker registers them at start)",
    )
    resumed_by: str | None = Field(default=None, description="who resumed this plan from failure")
    feedback: list[str] = Field(
        default_factory=list,
        description="feedback people gave an earlier run (resume from failure)",
    )
    persist: bool = Field(
        default=True, description="record every change in the store (record_snapshot activity)"
    )
    snapshot_interval_s: float = Field(
        default=1.0,
        ge=0,
        description="at most one store snapshot per interval while the plan runs (changes in "
        "between are batched); the last one is always sent before the run ends",
    )
    snapshot_cursor: SnapshotCursor | None = Field(
        default=None, description="what was already sent to the store (carried by continue-as-new)"
    )
    task_queues: dict[str, str] = Field(
        default_factory=dict,
        description="logical task queue of a tool (e.g. 'sandbox') -> the queue its workers poll",
    )
    plan_version: int | None = Field(
        default=None,
        ge=1,
        description="version of `plan` (a resumed plan keeps its corrections' version)",
    )
    max_history_events: int | None = Field(
        default=None,
        ge=50,
        description="continue as new past this many history events (default: when Temporal suggests it)",
    )


class PlanResult(BaseModel):
    plan_id: str
    status: PlanStatus
    outcome: str | None
    version: int
    steps: dict[str, str]
    plan: Plan | None = Field(default=None, description="the plan as it ended, after corrections")
    feedback: list[str] = Field(default_factory=list)
    final_steps: dict[str, StepRun] = Field(
        default_factory=dict,
        description="every step as it ended; resume-from-failure carries the completed ones over",
    )


def _signal(name: str) -> Any:
    def handler(self, arg: Any) -> None:
        self._on_signal(name, arg)

    handler.__name__ = f"{name}_signal"
    return workflow.signal(name=name)(handler)


def _update(name: str) -> Any:
    async def handler(self, arg: Any) -> ControlResult:
        return self._on_update(name, arg)

    handler.__name__ = f"{name}_update"
    upd = workflow.update(name=name)(handler)

    def validate(self, arg: Any) -> None:
        self._validate(name, arg)

    validate.__name__ = f"validate_{name}"
    upd.validator(validate)
    return upd


@workflow.defn(name=WORKFLOW_NAME)
class PlanWorkflow:
    @workflow.init
    def __init__(self, inp: PlanInput) -> None:
        if inp.run is not None:
            self._run: PlanRun = inp.run
        elif inp.plan is not None:
            self._run = run_state.new_run(inp.plan, workflow.now(), inp.carried_steps)
        else:
            raise ApplicationError(
                "PlanInput needs a plan", type="InvalidInput", non_retryable=True
            )
        self._input = inp
        self._continue = False
        if inp.run is None and inp.plan_version and inp.plan_version > 1:
            self._run.version = inp.plan_version
            self._run.versions[0].version = inp.plan_version
            self._run.versions[0].change = "carried from the earlier run"
        if inp.run is None and inp.feedback:
            self._run.feedback = list(inp.feedback)
        if inp.run is None and inp.resumed_by:
            carried = sum(1 for s in self._run.steps.values() if s.carried)
            run_state.audit(
                self._run,
                workflow.now(),
                inp.resumed_by,
                "resume_from_failure",
                True,
                f"new run carrying {carried} completed step(s); they are not run again",
            )
        self._catalog = inp.tools if inp.tools is not None else catalog()
        self._handles: dict[str, workflow.ActivityHandle[StepOutcome]] = {}
        self._tasks: dict[str, asyncio.Task[None]] = {}
        self._cancelled: set[str] = set()  # steps a cancel or a timeout reached
        self._dirty = False
        self._published: tuple[str, str] | None = None
        self._heartbeat_timeout = timedelta(seconds=inp.heartbeat_timeout_s)
        self._search_attributes = inp.search_attributes
        self._cursor = inp.snapshot_cursor or SnapshotCursor()
        self._persister: asyncio.Task[None] | None = None
        self._persister_pausing = False
        self._flushing = False

    # --- main ------------------------------------------------------------------------

    @workflow.run
    async def run(self, inp: PlanInput) -> PlanResult:
        run = self._run
        try:
            await self._approval_phase()
            if run.final_status is None and not self._continue:
                await self._execute()
        except asyncio.CancelledError:
            await self._cancelled_by_temporal()
            await workflow.wait_condition(workflow.all_handlers_finished)
            await self._flush_store()
            raise
        self._publish()
        await workflow.wait_condition(workflow.all_handlers_finished)
        if self._continue and run.final_status is None:
            run_state.log(run, workflow.now(), "continuing as new to keep the history short")
            await self._flush_store()
            workflow.continue_as_new(
                self._input.model_copy(
                    update={
                        "plan": None,
                        "carried_steps": None,
                        "run": run,
                        "tools": self._catalog,
                        "snapshot_cursor": self._cursor,
                    }
                )
            )
        await self._flush_store()
        return self._result()

    def _history_is_long(self) -> bool:
        info = workflow.info()
        limit = self._input.max_history_events
        return info.is_continue_as_new_suggested() or bool(
            limit and info.get_current_history_length() > limit
        )

    async def _approval_phase(self) -> None:
        run = self._run
        if run.approval is not None or run.final_status is not None:
            return
        opts = run.plan.options
        if (
            opts.require_approval == "auto"
            and not opts.auto_approve
            and run.policy_decision is None
            and not run.approval_policy
            and workflow.patched(ADAPTIVE_APPROVAL_PATCH)
        ):
            await self._assess_approval()
            if run.approval is not None or run.final_status is not None:
                return  # a person approved or rejected the plan meanwhile: that stands
        required, why = approval_gate.needs_approval(run, self._catalog)
        now = workflow.now()
        if not run.approval_policy:
            for step in approval_gate.unattended_critical_steps(run, self._catalog):
                run_state.log(run, now, f"critical step runs without a person: {step}", "warning")
            run.approval_required = required
        if not run.approval_required:
            run.approval_policy = why
            run.approval = Approval(by="policy", at=now, comment=why, version=run.version)
            run_state.audit(run, now, "policy", "approve", True, f"no person needed: {why}")
            return
        if not run.approval_policy:
            run.approval_policy = why
            run_state.log(run, now, f"waiting for plan approval ({why})")
        self._publish()
        timeout_s = run.plan.options.approval_timeout_s
        remaining = None
        if timeout_s and run.created_at is not None:
            deadline = run.created_at + timedelta(seconds=timeout_s)
            remaining = max(deadline - now, timedelta(milliseconds=1))
        try:
            await workflow.wait_condition(
                lambda: (
                    run.approval is not None
                    or run.final_status is not None
                    or self._history_is_long()
                ),
                timeout=remaining,
                timeout_summary="plan approval timeout",
            )
            if run.approval is None and run.final_status is None:
                self._continue = True  # a long wait: carry on in a fresh history
        except TimeoutError:
            now = workflow.now()
            action = run.plan.options.on_approval_timeout
            detail = f"approval timed out after {timeout_s:g}s; on_approval_timeout={action}"
            run_state.audit(run, now, "system:timeout", "approval_timeout", True, detail)
            if action == "approve":
                run.approval = Approval(
                    by="system:timeout", at=now, comment=detail, version=run.version, timed_out=True
                )
            else:
                scheduler.end(run, PlanStatus.REJECTED, detail, now)

    async def _assess_approval(self) -> None:
        """The adaptive policy's decision (risk and trust, from the store) into the run.

        The activity degrades to "a new agent" when the store is unreachable; when the
        activity itself fails, the same pure decision is made here."""
        run = self._run
        plan = run.plan
        names = {s.tool for s in plan.steps if s.tool}
        for s in plan.steps:
            offered = s.params.get("tools") if s.kind == StepKind.LLM else None
            names |= {str(t) for t in offered} if isinstance(offered, list) else set()
        tools = {n: self._catalog[n] for n in sorted(names) if n in self._catalog}
        try:
            decision = await workflow.execute_activity(
                ASSESS_APPROVAL,
                AssessApprovalInput(plan=plan, tools=tools, now=workflow.now()),
                result_type=ApprovalDecision,
                start_to_close_timeout=timedelta(seconds=30),
                retry_policy=RetryPolicy(maximum_attempts=3, maximum_interval=timedelta(seconds=5)),
                summary="approval policy: risk and trust",
            )
        except ActivityError as e:
            decision = decide_as_new_agent(
                plan, self._catalog, workflow.now(), f"the assessment failed: {_error_text(e)}"
            )
        approval_gate.apply_policy_decision(run, decision, workflow.now())

    async def _execute(self) -> None:
        run = self._run
        if run.started_at is None:
            run.started_at = workflow.now()
            run_state.log(run, run.started_at, "plan execution started")
        total = run.plan.options.total_timeout_s
        timer = asyncio.create_task(self._total_timeout(total)) if total else None
        try:
            while True:
                draining = self._history_is_long()
                for sid in scheduler.advance(run, workflow.now(), may_start=not draining):
                    self._start_step(sid)
                self._publish()
                if scheduler.is_finished(run) and not self._tasks:
                    break
                if draining and not self._tasks:
                    self._continue = True  # nothing in flight: carry the state to a new run
                    return
                self._dirty = False
                deadline = deadlines.next_deadline(run)
                timeout = (
                    max(deadline - workflow.now(), timedelta(milliseconds=1)) if deadline else None
                )
                try:
                    await workflow.wait_condition(
                        lambda: self._dirty, timeout=timeout, timeout_summary="wait for a person"
                    )
                except TimeoutError:
                    deadlines.expire_waits(run, workflow.now())
        finally:
            if timer is not None and not timer.done():
                timer.cancel()
        scheduler.finish(run, workflow.now())

    async def _total_timeout(self, seconds: float) -> None:
        started = self._run.started_at or workflow.now()
        remaining = started + timedelta(seconds=seconds) - workflow.now()
        await workflow.sleep(
            max(remaining, timedelta(milliseconds=1)), summary="plan total timeout"
        )
        run = self._run
        why = f"total timeout of {seconds:g}s exceeded"
        now = workflow.now()
        scheduler.stop(run, why, now)
        run.outcome = why
        run_state.audit(run, now, "system:timeout", "total_timeout", True, why)
        self._cancel_running(why)
        self._dirty = True

    # --- steps -----------------------------------------------------------------------

    def _start_step(self, sid: str) -> None:
        self._cancelled.discard(sid)
        self._tasks[sid] = asyncio.create_task(self._run_step(sid))

    async def _run_step(self, sid: str) -> None:
        run = self._run
        step = run.plan.step(sid)
        state = run.steps[sid]
        opts = run.plan.options
        try:
            ctx = scheduler.context(run, sid)
            params = render(step.params, ctx)
            task = StepTask(
                plan_id=run.plan.id or "",
                step_id=sid,
                kind=step.kind,
                tool=step.tool,
                params=params,
                idempotency_key=f"{run.plan.id}:{sid}:v{state.version}",
                step_version=state.version,
                context=self._step_context(sid, ctx),
            )
        except Exception as e:  # a template that cannot render fails the step, never the workflow
            scheduler.record_failure(
                run, sid, f"params could not be rendered: {e}", 0, workflow.now()
            )
            self._finish_task(sid)
            return
        policy, once, attempts = self._policy(step, self._catalog.get(step.tool or ""))
        spec = self._catalog.get(step.tool or "")
        timeout = timedelta(seconds=step.timeout_s or opts.step_timeout_s)
        try:
            ran = await self._activity(sid, task, spec, policy, timeout, once, attempts, 0)
            if ran is None:
                return
            outcome, used = ran
            budget = _CallBudget.of(task.params)
            while outcome.calls:  # an llm step's model asked for tools: run them, go on
                results = await self._tool_calls(sid, task, outcome.calls, budget, timeout)
                if sid in self._cancelled:
                    raise _StepCancelled()
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
            scheduler.record_success(run, sid, outcome.output, used, workflow.now())
        except (asyncio.CancelledError, _StepCancelled):
            scheduler.record_cancelled(run, sid, workflow.now(), run.stopping or "cancelled")
        except Exception as e:  # a bug must fail the step, never leave it running
            scheduler.record_failure(
                run, sid, f"{type(e).__name__}: {e}", run.steps[sid].attempts, workflow.now()
            )
        finally:
            self._handles.pop(sid, None)
            self._finish_task(sid)

    def _policy(self, step: Step, spec: ToolSpec | None) -> tuple[RetryPolicy, bool, int]:
        """The step's retry policy, whether it runs at most once, and its attempts."""
        opts = self._run.plan.options
        retries = step.max_retries if step.max_retries is not None else opts.default_max_retries
        delay = step.retry_delay_s if step.retry_delay_s is not None else opts.default_retry_delay_s
        once = not step.idempotent or (spec is not None and not spec.idempotent)
        attempts = 1 if once else retries + 1
        policy = RetryPolicy(
            maximum_attempts=attempts,
            initial_interval=timedelta(seconds=max(delay, 0.001)),
            backoff_coefficient=step.backoff,
            non_retryable_error_types=NON_RETRYABLE,
        )
        return policy, once, attempts

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
    ) -> tuple[StepOutcome, int] | None:
        """Run the step's activity: its outcome and the attempts spent so far, or None
        once the failure (or cancellation) is recorded."""
        run = self._run
        step = run.plan.step(sid)
        lost = 0  # times the worker running this step vanished (no heartbeat)
        while True:
            summary = f"{sid}: {step.tool or step.kind.value}"
            handle = self._start_activity(sid, task, spec, policy, timeout, summary)
            try:
                outcome = await handle
            except ActivityError as e:
                if isinstance(e.cause, CancelledError):
                    scheduler.record_cancelled(
                        run, sid, workflow.now(), run.stopping or "cancelled"
                    )
                    return None
                used += _attempts(e, attempts)
                if _worker_lost(e) and not once and lost < MAX_WORKER_LOSSES and not run.stopping:
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
                error = _error_text(e)
                if _worker_lost(e) and once:
                    error += (
                        " (the step is not idempotent, so it is not run again: check its effect)"
                    )
                scheduler.record_failure(run, sid, error, used, workflow.now())
                self._audit_sandbox(sid, spec, _sandbox_record(e))
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
    ) -> workflow.ActivityHandle[StepOutcome]:
        """Start the activity that runs ``task`` (the tool's own, else ``execute_step``) on
        the tool's queue; the step's handle, so a cancel reaches it."""
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
        budget: _CallBudget,
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
                raise _StepCancelled()
            call_id, name = str(call.get("id", "")), str(call.get("name", ""))
            raw = call.get("input")
            params: dict[str, Any] = raw if isinstance(raw, dict) else {}
            if name == RESPOND_TOOL:
                results.append(
                    _tool_result(call_id, "give the final answer once the other results are in")
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
                self._dirty = True
                results.append(_tool_result(call_id, problem, error=True))
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
            self._dirty = True
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
        policy, _, attempts = self._policy(run.plan.step(sid), spec)
        child = StepTask(
            plan_id=task.plan_id,
            step_id=sid,
            kind=StepKind.TOOL,
            tool=spec.name,
            params=params,
            # a retried step's model may ask other things: its calls get keys of their own
            idempotency_key=f"{task.idempotency_key}:r{run.steps[sid].runs}:call{n}",
            step_version=task.step_version,
        )
        handle = self._start_activity(
            sid, child, spec, policy, timeout, f"{sid} call {n}: {spec.name}"
        )
        try:
            outcome = await handle
        except ActivityError as e:
            if isinstance(e.cause, CancelledError):
                raise _StepCancelled() from None
            error = _error_text(e)
            scheduler.finish_call(
                run, sid, n, workflow.now(), error=error, attempts=_attempts(e, attempts)
            )
            self._audit_sandbox(sid, spec, _sandbox_record(e))
            self._dirty = True
            return _tool_result(call_id, error, error=True)
        output = outcome.output
        scheduler.finish_call(run, sid, n, workflow.now(), output=output, attempts=outcome.attempt)
        self._audit_sandbox(sid, spec, output.get("sandbox") if isinstance(output, dict) else None)
        self._dirty = True
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
        return self._input.task_queues.get(spec.task_queue, spec.task_queue)

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
        self._dirty = True

    def _cancel_running(self, why: str) -> None:
        self._cancelled.update(self._tasks)  # an llm step starts no more tool calls or rounds
        for sid, handle in list(self._handles.items()):
            run_state.log(
                self._run, workflow.now(), f"cancelling step {sid}: {why}", "warning", sid
            )
            handle.cancel()

    async def _cancelled_by_temporal(self) -> None:
        run = self._run
        now = workflow.now()
        why = "cancelled through Temporal (workflow cancel request)"
        run_state.audit(run, now, "temporal", "cancel", True, why)
        run.cancel_requested = why
        scheduler.stop(run, why, now)
        self._cancel_running(why)
        if self._tasks:
            await asyncio.gather(*self._tasks.values(), return_exceptions=True)
        if run.final_status is None:
            scheduler.end(run, PlanStatus.CANCELLED, why, workflow.now())
        self._publish()

    # --- controls --------------------------------------------------------------------

    def _on_signal(self, name: str, arg: Any) -> None:
        try:
            msg = steering.parse_control(name, arg)
        except Refused as e:
            by = (
                str(arg["by"])
                if isinstance(arg, dict) and isinstance(arg.get("by"), str)
                else "unknown"
            )
            run_state.audit(self._run, workflow.now(), by, name, False, str(e), via="signal")
            run_state.log(self._run, workflow.now(), f"{name} signal refused: {e}", "warning")
            return
        try:
            steering.apply_control(
                self._run, name, msg, workflow.now(), self._catalog, via="signal"
            )
        except Refused:
            return  # audited by apply_control; a refused signal never breaks the workflow
        self._after_control(name)

    def _validate(self, name: str, arg: Any) -> None:
        """Refuse a malformed argument before it reaches history.

        Whether the transition is allowed is decided by the handler, against the state at
        that moment (an earlier update of the same burst may have changed it), and a
        refusal there is recorded in the audit trail with the actor before the caller
        gets it back, just as synchronously.
        """
        try:
            steering.parse_control(name, arg)
        except Refused as e:
            raise ApplicationError(str(e), type="InvalidControl", non_retryable=True) from None

    def _on_update(self, name: str, arg: Any) -> ControlResult:
        try:
            msg = steering.parse_control(name, arg)
            detail = steering.apply_control(
                self._run, name, msg, workflow.now(), self._catalog, via="update"
            )
        except Refused as e:
            raise ApplicationError(str(e), type="TransitionRefused", non_retryable=True) from None
        self._after_control(name)
        return ControlResult(
            control=name, status=self._run.status.value, version=self._run.version, detail=detail
        )

    def _after_control(self, name: str) -> None:
        if name == "cancel" and self._run.cancel_requested:
            self._cancel_running(self._run.cancel_requested)
        self._dirty = True
        self._publish()

    approve = _update("approve")
    approve_signal = _signal("approve")
    reject = _update("reject")
    reject_signal = _signal("reject")
    cancel = _update("cancel")
    cancel_signal = _signal("cancel")
    pause = _update("pause")
    pause_signal = _signal("pause")
    resume = _update("resume")
    resume_signal = _signal("resume")
    apply_correction = _update("apply_correction")
    apply_correction_signal = _signal("apply_correction")
    answer_clarification = _update("answer_clarification")
    answer_clarification_signal = _signal("answer_clarification")
    approve_step = _update("approve_step")
    approve_step_signal = _signal("approve_step")
    reject_step = _update("reject_step")
    reject_step_signal = _signal("reject_step")
    retry_step = _update("retry_step")
    retry_step_signal = _signal("retry_step")
    skip_step = _update("skip_step")
    skip_step_signal = _signal("skip_step")

    # --- queries ---------------------------------------------------------------------

    @workflow.query(name="status")
    def status(self) -> StatusView:
        return status_view(self._run)

    @workflow.query(name="execution_state")
    def execution_state(self) -> ExecutionState:
        return execution_state(self._run)

    @workflow.query(name="logs")
    def logs(self, query: LogsQuery | None = None) -> list[LogEntry]:
        return logs_view(self._run, query or LogsQuery())

    @workflow.query(name="plan")
    def plan(self) -> PlanView:
        return plan_view(self._run)

    @workflow.query(name="audit")
    def audit(self) -> list[AuditEntry]:
        return list(self._run.audit)

    @workflow.query(name="run_state")
    def run_state(self) -> PlanRun:
        """The whole state (resume-from-failure reads it when a run ended without a result)."""
        return self._run

    # --- visibility ------------------------------------------------------------------

    def _publish(self) -> None:
        run = self._run
        status = run.status.value
        pending = waits(run)
        waiting = pending[0].kind if pending else "none"
        if self._search_attributes and self._published != (status, waiting):
            self._published = (status, waiting)
            workflow.upsert_search_attributes(
                [PLAN_STATUS.value_set(status), WAITING_FOR.value_set(waiting)]
            )
        workflow.set_current_details(summary_line(run))
        if self._input.persist and (self._persister is None or self._persister.done()):
            self._persister = asyncio.create_task(self._send_snapshots())

    async def _send_snapshots(self, flush: bool = False) -> None:
        """Send what changed to the store until nothing is new.

        While the plan runs, at most one snapshot per ``snapshot_interval_s`` (changes in
        between travel together); with ``flush`` (the run is ending) at once, and at least
        one. The plan never waits for the store while it runs; the store's writes are
        idempotent and ordered, so retries and late deliveries are harmless.
        """
        force = flush
        while True:
            info = workflow.info()
            snap = self._cursor.take(
                self._run,
                info.first_execution_run_id,
                at=workflow.now(),
                workflow_id=info.workflow_id,
                execution_run_id=info.run_id,
                resumed_by=self._input.resumed_by,
                force=force,
            )
            force = False
            if snap is None:
                return
            await workflow.execute_activity(
                RECORD_SNAPSHOT,
                snap,
                result_type=RecordResult,
                start_to_close_timeout=timedelta(seconds=30),
                retry_policy=RetryPolicy(maximum_interval=timedelta(seconds=30)),
                cancellation_type=workflow.ActivityCancellationType.ABANDON,
                summary="record in the store",
            )
            if flush or not self._input.snapshot_interval_s:
                continue
            if self._flushing:
                return  # the run is ending: the flush sends the rest at once
            self._persister_pausing = True
            try:
                await workflow.sleep(self._input.snapshot_interval_s, summary="batch store writes")
            finally:
                self._persister_pausing = False

    async def _flush_store(self) -> None:
        """Before the run ends or continues as new: everything is in the store."""
        if not self._input.persist:
            return
        self._flushing = True
        if self._persister is not None and not self._persister.done():
            if self._persister_pausing:
                self._persister.cancel()  # only waiting to batch: send the last one now
            await asyncio.gather(self._persister, return_exceptions=True)
        await self._send_snapshots(flush=True)

    def _result(self) -> PlanResult:
        run = self._run
        return PlanResult(
            plan_id=run.plan.id or "",
            status=run.status,
            outcome=run.outcome,
            version=run.version,
            steps={sid: s.status.value for sid, s in run.steps.items()},
            plan=run.plan,
            final_steps=dict(run.steps),
            feedback=list(run.feedback),
        )


RESPOND_TOOL = "respond"  # an llm step's structured answer, not a registry tool


class _StepCancelled(Exception):
    """A step's child activity (an llm step's tool call) was cancelled."""


class _CallBudget:
    """How many tool calls an llm step may make, and how many invalid ones it may send."""

    def __init__(self, max_calls: int, max_invalid: int) -> None:
        self.max_calls = max_calls
        self.max_invalid = max_invalid
        self.made = 0
        self.invalid = 0
        self.exhausted: str | None = None

    @classmethod
    def of(cls, params: dict[str, Any]) -> _CallBudget:
        """From the step's rendered params (validation checked their types)."""

        def number(key: str, default: int) -> int:
            value = params.get(key, default)
            return value if isinstance(value, int) and not isinstance(value, bool) else default

        return cls(number("max_tool_calls", 8), number("max_invalid_calls", 3))


def _tool_result(call_id: str, text: str, error: bool = False) -> dict[str, Any]:
    block: dict[str, Any] = {"type": "tool_result", "tool_use_id": call_id, "content": text}
    if error:
        block["is_error"] = True
    return block


def _error_text(e: ActivityError) -> str:
    cause = e.cause
    if isinstance(cause, ApplicationError):
        return f"{cause.type or 'Error'}: {cause.message}"
    if cause is not None:
        return f"{type(cause).__name__}: {cause}"
    return str(e)


def _sandbox_record(e: ActivityError) -> Any:
    cause = e.cause
    if isinstance(cause, ApplicationError) and cause.details and isinstance(cause.details[0], dict):
        return cause.details[0].get("sandbox")
    return None


def _worker_lost(e: ActivityError) -> bool:
    cause = e.cause
    return isinstance(cause, StepTimeoutError) and cause.type == TimeoutType.HEARTBEAT


def _attempts(e: ActivityError, maximum: int) -> int:
    cause = e.cause
    if isinstance(cause, ApplicationError) and cause.details:
        detail = cause.details[0]
        if isinstance(detail, dict) and isinstance(detail.get("attempt"), int):
            return int(detail["attempt"])
    if e.retry_state == RetryState.MAXIMUM_ATTEMPTS_REACHED:
        return maximum
    return 1

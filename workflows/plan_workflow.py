"""``PlanWorkflow``: the durable shell around the pure plan run state machine.

Every decision is made by pure code (:mod:`plans.run_state`, :mod:`plans.scheduler`,
:mod:`plans.steering`, :mod:`plans.deadlines`, :mod:`plans.approval_gate`); this class
only turns them into Temporal commands: durable timers for approval and total timeouts,
and the loop that starts each step the moment its own dependencies finish. Alongside it:

- :mod:`workflows.plan_input`: its name, input, result and search attributes;
- :mod:`workflows.plan_handlers`: the signals and updates for controls, queries for status;
- :mod:`workflows.step_runner` (with :mod:`workflows.step_policy`): one activity per step;
- :mod:`workflows.plan_publisher`: search attributes and store snapshots after each change.
"""

from __future__ import annotations

import asyncio
from datetime import timedelta

from temporalio import workflow
from temporalio.common import RetryPolicy
from temporalio.exceptions import ActivityError, ApplicationError

from workflows.plan_handlers import PlanHandlers
from workflows.plan_input import WORKFLOW_NAME, PlanInput, PlanResult
from workflows.plan_publisher import PlanPublisher
from workflows.plan_slot import PlanSlot
from workflows.step_policy import error_text
from workflows.step_runner import StepRunner

with workflow.unsafe.imports_passed_through():
    from contracts.approval import ASSESS_APPROVAL, AssessApprovalInput
    from contracts.limits import GRANTED_SIGNAL
    from contracts.replan import PROPOSE_REPLAN, ReplanAnswer, ReplanRequest
    from contracts.secrets import CHECK_SECRETS, SecretCheck
    from contracts.tools import PYTHON_TOOL, catalog
    from contracts.tools import shared as shared_specs
    from plans import approval_gate, deadlines, replan, run_index, run_state, scheduler
    from plans.limits import SlotGrant
    from plans.models import PlanStatus, StepKind
    from plans.policy import ApprovalDecision, decide_as_new_agent, decide_without_trust
    from plans.run_state import Approval, PlanRun
    from plans.secrets import referenced as secrets_referenced

# require_approval "auto" asks the assess_approval activity (risk and trust) first; runs
# recorded before it decided with the engine's legacy rule and replay without it.
ADAPTIVE_APPROVAL_PATCH = "adaptive-approval"
# When the assessment fails a person is asked; runs recorded before decided as for a new
# agent (which could run a medium-risk plan unattended) and replay that way.
APPROVAL_FAILS_CLOSED_PATCH = "approval-fails-closed"
# A plan that uses {{ secrets.NAME }} asks a worker whether it has them all, first.
SECRETS_CHECK_PATCH = "secrets-check"
# resume-from-failure keeps the change gate of a step changed after approval whose change
# no person approved; runs resumed before carried nothing and ran the change unasked.
CARRY_CHANGE_GATES_PATCH = "carry-change-gates"
# on_error: replan asks the planner (the propose_replan activity) for a fix of a step that
# failed for good; runs recorded before it had no such step and never ask.
REPLAN_PATCH = "replan-on-error"


@workflow.defn(name=WORKFLOW_NAME)
class PlanWorkflow(PlanHandlers):
    """Runs one plan: its approval, then its steps, until it ends or continues as new."""

    @workflow.init
    def __init__(self, inp: PlanInput) -> None:
        if inp.run is not None:
            self._run: PlanRun = inp.run
        elif inp.plan is not None:
            keep = bool(inp.carried_steps) and workflow.patched(CARRY_CHANGE_GATES_PATCH)
            self._run = run_state.new_run(
                inp.plan, workflow.now(), inp.carried_steps, keep_change_gates=keep
            )
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
        if inp.run is None and inp.approval is not None:
            self._take_prior_approval(inp.approval)
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
        if inp.tools is not None:
            # one copy of the worker's own specs serves every run (equal values: the
            # decisions read the same catalog); the deserialized copy is let go
            inp.tools = shared_specs(inp.tools)
        self._catalog = inp.tools if inp.tools is not None else catalog()
        self._dirty = False  # the run changed since the loop last looked
        self._replanning: set[asyncio.Task[None]] = set()  # planner rounds in flight
        self._steps = StepRunner(
            self._run,
            self._catalog,
            timedelta(seconds=inp.heartbeat_timeout_s),
            inp.task_queues,
            self._changed,
        )
        self._publisher = PlanPublisher(self._run, inp)
        self._slot = PlanSlot(self._run, inp, self._changed)  # concurrency limits
        # the run's index (counts, waits, ready steps, the change journal) follows every
        # step change from here on, queried or not, so change numbers replay the same
        run_index.of(self._run)

    def _take_prior_approval(self, approval: Approval) -> None:
        """A person approved the plan before it ran (a draft): it runs without asking
        again if it is the very document they approved, and waits for a person if not."""
        run, now = self._run, workflow.now()
        digest = run.plan.digest()
        if approval.digest == digest and approval.version == run.version:
            run.approval = approval
            run.approval_policy = f"approved by {approval.by} before it ran (digest {digest})"
            run_state.audit(
                run, now, approval.by, "approve", True, run.approval_policy, via="update"
            )
            return
        why = (
            f"the approval by {approval.by} was for version {approval.version} digest "
            f"{approval.digest}; the plan is version {run.version} digest {digest}: "
            "it waits for approval again"
        )
        run_state.audit(run, now, approval.by, "approve", False, why, via="update")
        run_state.log(run, now, why, "warning")

    # --- main ------------------------------------------------------------------------

    @workflow.run
    async def run(self, inp: PlanInput) -> PlanResult:
        run = self._run
        if not run.audit_limits and workflow.patched("audit-limits"):
            run.audit_limits = True  # refused controls rate-limited, trimmed once stored
        try:
            if inp.run is None:  # a fresh run (not a continuation): are its secrets here?
                await self._check_secrets()
            await self._approval_phase()
            if run.final_status is None and not self._continue and self._slot.limited():
                await self._slot.acquire(self._publisher.publish)  # status `queued`
            if run.final_status is None and not self._continue:
                await self._execute()
            if not self._continue or run.final_status is not None:
                self._slot.release(run.status.value)
        except asyncio.CancelledError:
            await self._cancelled_by_temporal()
            self._slot.release("cancelled through Temporal")
            await workflow.wait_condition(workflow.all_handlers_finished)
            await self._publisher.flush()
            await self._slot.settled()
            raise
        self._publisher.publish()
        await workflow.wait_condition(workflow.all_handlers_finished)
        if self._continue and run.final_status is None:
            run_state.log(run, workflow.now(), "continuing as new to keep the history short")
            await self._publisher.flush()
            run_index.carry_changes(run)
            workflow.continue_as_new(
                self._input.model_copy(
                    update={
                        "plan": None,
                        "carried_steps": None,
                        "run": run,
                        "tools": self._catalog,
                        "snapshot_cursor": self._publisher.cursor,
                    }
                )
            )
        await self._publisher.flush()
        await self._slot.settled()
        return self._result()

    @workflow.signal(name=GRANTED_SIGNAL)
    def plan_slot_granted(self, grant: SlotGrant) -> None:
        """The queue's limiter gives this plan a slot (:mod:`workflows.plan_slot`)."""
        self._slot.on_grant(grant)

    def _history_is_long(self) -> bool:
        info = workflow.info()
        limit = self._input.max_history_events
        return info.is_continue_as_new_suggested() or bool(
            limit and info.get_current_history_length() > limit
        )

    def _changed(self) -> None:
        """The run changed (a step ended, a control or a timeout arrived): look again."""
        self._dirty = True

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
        self._publisher.publish()
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

        When the store is unreachable the activity answers that a person must approve
        (the trust could not be read); when the activity itself fails, the same pure
        decision is made here."""
        run = self._run
        plan = run.plan
        names = {s.tool for s in plan.steps if s.tool}
        for s in plan.steps:
            offered = s.params.get("tools") if s.kind == StepKind.LLM else None
            names |= {str(t) for t in offered} if isinstance(offered, list) else set()
            if s.kind == StepKind.CODE:  # its code runs with the python tool (risk.py)
                names.add(PYTHON_TOOL)
        tools = {n: self._catalog[n] for n in sorted(names) if n in self._catalog}
        try:
            decision = await workflow.execute_activity(
                ASSESS_APPROVAL,
                AssessApprovalInput(
                    plan=plan,
                    tools=tools,
                    now=workflow.now(),
                    submitted_by=self._input.submitted_by,
                ),
                result_type=ApprovalDecision,
                start_to_close_timeout=timedelta(seconds=30),
                retry_policy=RetryPolicy(maximum_attempts=3, maximum_interval=timedelta(seconds=5)),
                summary="approval policy: risk and trust",
            )
        except ActivityError as e:
            why = f"the assessment failed: {error_text(e)}"
            if workflow.patched(APPROVAL_FAILS_CLOSED_PATCH):
                decision = decide_without_trust(plan, self._catalog, workflow.now(), why)
            else:
                decision = decide_as_new_agent(plan, self._catalog, workflow.now(), why)
        approval_gate.apply_policy_decision(run, decision, workflow.now())

    async def _check_secrets(self) -> None:
        """A plan that references a secret the workers of its queue do not have fails
        now, before approval and before any step runs, naming where each one is used."""
        run = self._run
        refs = secrets_referenced(run.plan)
        if not refs or run.final_status is not None or not workflow.patched(SECRETS_CHECK_PATCH):
            return
        try:
            missing = await workflow.execute_activity(
                CHECK_SECRETS,
                SecretCheck(names=sorted({name for _, name in refs})),
                result_type=list[str],
                start_to_close_timeout=timedelta(seconds=30),
                retry_policy=RetryPolicy(maximum_attempts=3, maximum_interval=timedelta(seconds=5)),
                summary="secrets: does the worker have them",
            )
            problems = [
                f"{where}: unknown secret {name}" for where, name in refs if name in missing
            ]
        except ActivityError as e:
            problems = [f"the plan's secrets could not be checked: {error_text(e)}"]
        if problems and run.final_status is None:  # (a cancel may have come meanwhile)
            now = workflow.now()
            why = "; ".join(problems)
            run_state.log(run, now, f"the plan cannot run: {why}", "error")
            scheduler.end(run, PlanStatus.FAILED, why, now)

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
                    self._steps.start(sid)
                if replan.due(run) and workflow.patched(REPLAN_PATCH):
                    for sid in replan.due(run):
                        asked = replan.ask(run, sid, workflow.now())
                        task = asyncio.create_task(self._replan(asked.n))
                        self._replanning.add(task)
                        task.add_done_callback(self._replanning.discard)
                self._publisher.publish()
                if scheduler.is_finished(run) and not self._steps.running:
                    break
                if draining and not self._steps.running and not self._replanning:
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
            for task in list(self._replanning):
                task.cancel()  # the plan ended (a cancel) while the planner was asked
        scheduler.finish(run, workflow.now())

    async def _replan(self, n: int) -> None:
        """Round ``n`` of on_error: replan: the planner's proposal (an activity: no model
        is called from workflow code), checked and decided by :mod:`plans.replan`."""
        run = self._run
        sid = run.replans[n - 1].step_id
        request = ReplanRequest(**replan.request_for(run, sid, self._catalog))
        try:
            answer = await workflow.execute_activity(
                PROPOSE_REPLAN,
                request,
                result_type=ReplanAnswer,
                start_to_close_timeout=timedelta(seconds=300),
                heartbeat_timeout=timedelta(seconds=30),
                retry_policy=RetryPolicy(
                    maximum_attempts=3, maximum_interval=timedelta(seconds=10)
                ),
                summary=f"replan #{n}: step {sid}",
            )
            replan.receive(run, n, answer.model_dump(mode="json"), self._catalog, workflow.now())
        except ActivityError as e:
            replan.failed(run, n, error_text(e), workflow.now())
        except Exception as e:  # a bug must leave the step to a person, never hang it
            replan.failed(run, n, f"{type(e).__name__}: {e}", workflow.now())
        self._changed()

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
        self._steps.cancel_running(why)
        self._dirty = True

    async def _cancelled_by_temporal(self) -> None:
        run = self._run
        now = workflow.now()
        why = "cancelled through Temporal (workflow cancel request)"
        run_state.audit(run, now, "temporal", "cancel", True, why)
        run.cancel_requested = why
        scheduler.stop(run, why, now)
        self._steps.cancel_running(why)
        await self._steps.settle()
        if run.final_status is None:
            scheduler.end(run, PlanStatus.CANCELLED, why, workflow.now())
        self._publisher.publish()

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

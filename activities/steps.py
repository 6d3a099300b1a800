"""The one activity that runs a plan step: ``execute_step`` (:class:`StepActivities`).

The workflow renders the step's params, then hands this activity a :class:`StepTask`.
Here the params are checked again against the tool's schema (templates are only known
now), the tool runs with a heartbeat kept alive in the background, and every error
becomes an ``ApplicationError`` whose ``non_retryable`` flag says whether Temporal's
retry policy may try again. The attempt number travels in the error details so the
workflow can show how many attempts a failed step took.

Effects happen once per attempt at most: once the tool has run, nothing after it may make
Temporal run the attempt again. A large output's store write is retried here on its own
(:func:`activities.persist.offload_after_effect`) and, if the store still fails, the step
fails without a retry (``OutputNotStored``) rather than sending, say, a ``POST`` twice.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from dataclasses import dataclass
from typing import Any

from temporalio import activity
from temporalio.exceptions import ApplicationError

from activities.deps import ActivityDeps
from activities.llm.code_writer import write_code
from activities.llm.selector import load_selector
from activities.llm.steps import LLMStepResult, judge, run_decision, run_llm
from activities.persist import OutputNotStored, fits_inline, offload_after_effect, resolve_refs
from activities.secrets import with_secrets
from activities.telemetry import annotate_step
from activities.tools import ToolContext, ToolError, get_tool
from contracts.errors import LLMError
from contracts.models import ModelSelector
from contracts.snapshots import OUTPUT_REF_KEY
from contracts.steps import EXECUTE_STEP, FAST_PATH_REFUSED, StepOutcome, StepTask
from plans.expressions import Budget, ExpressionError, evaluate
from plans.models import StepKind
from plans.step_params import params_errors

HEARTBEAT_EVERY_S = 2.0
STORE_DEADLINE_MARGIN_S = 3.0  # the store write's retries end this long before the timeout


def _fail(message: str, kind: str, retryable: bool) -> ApplicationError:
    attempt = activity.info().attempt
    return ApplicationError(message, {"attempt": attempt}, type=kind, non_retryable=not retryable)


def _step_failure(task: StepTask, e: Exception) -> ApplicationError:
    """The step's failure for what its work raised, on either path: a tool's or a model's
    own error as it says; memory or stack exhausted, not retried (it would do the same on
    any worker); anything else a bug or an unexpected failure, retried per the policy."""
    if isinstance(e, ToolError | LLMError):
        return _fail(str(e), e.kind, e.retryable)
    if isinstance(e, MemoryError | RecursionError):
        return _fail(
            f"step {task.step_id!r} ran out of memory or stack ({type(e).__name__}); "
            "it is not retried",
            "ResourceExhausted",
            retryable=False,
        )
    return _fail(f"{type(e).__name__}: {e}", "StepError", retryable=True)


class StepActivities:
    """``execute_step``, with the model, the store and the settings of ``deps``."""

    def __init__(self, deps: ActivityDeps):
        self.deps = deps

    @activity.defn(name=EXECUTE_STEP)
    async def execute_step(self, task: StepTask) -> StepOutcome:
        info = activity.info()
        annotate_step(task, info.attempt)  # the trace's step span, when tracing
        engine = self.deps.engine
        timeout = info.start_to_close_timeout
        deadline = None
        if timeout:
            seconds = timeout.total_seconds()
            deadline = time.monotonic() + seconds - min(STORE_DEADLINE_MARGIN_S, seconds / 4)
        unassessed: list[str] = []
        if info.is_local:  # the fast path: only pure work, no heartbeats, nothing stored
            return await self._execute_fast(task, info.attempt)
        beat = asyncio.create_task(_keep_heartbeating())
        try:
            if _has_ref(task.params):  # an earlier step's large output, kept in the store
                task = task.model_copy(
                    update={"params": await asyncio.to_thread(resolve_refs, task.params, engine)}
                )
            conversation = task.context.get("conversation")
            if _has_ref(conversation):  # a tool call's large result, for the model to read
                resolved = await asyncio.to_thread(resolve_refs, conversation, engine)
                task = task.model_copy(
                    update={"context": {**task.context, "conversation": resolved}}
                )
            # {{ secrets.NAME }} resolved for the tool only; values redacted from what returns
            output = await with_secrets(
                task, self.deps.settings, lambda t: _dispatch(t, info.attempt, self.deps)
            )
            if isinstance(output, LLMStepResult) and output.calls:
                return StepOutcome(
                    attempt=info.attempt,
                    calls=output.calls,
                    conversation=output.conversation,
                    usage=output.usage,
                )
            if isinstance(output, LLMStepResult):
                output = output.output
            if isinstance(output, Unassessed):
                unassessed = output.criteria
                output = output.output
            # A large output goes to the store; the workflow's history keeps a reference.
            # The tool has run: only the store write is retried from here on.
            output = await offload_after_effect(
                task.plan_id,
                info.workflow_run_id,
                task.step_id,
                output,
                self.deps.settings.store.large_output_bytes,
                engine,
                deadline,
            )
        except OutputNotStored as e:
            raise _fail(
                f"{e}; step {task.step_id} ran ({task.tool or task.kind.value}) but is not run "
                "again by itself, since its effect may have happened: retry_step runs it "
                "again under the same idempotency key",
                "OutputNotStored",
                retryable=False,
            ) from None
        except ApplicationError:
            raise
        except Exception as e:
            failure = _step_failure(task, e)
            raise failure from (e if failure.type == "StepError" else None)
        finally:
            beat.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await beat
        return StepOutcome(output=output, attempt=info.attempt, unassessed=unassessed)

    async def _execute_fast(self, task: StepTask, attempt: int) -> StepOutcome:
        """``execute_step`` as a local activity on the workflow's worker. The worker's
        own registry decides what may run here, whatever the workflow's catalog says: a
        tool declared fast, or a validation step without a judge, with no secret or
        stored output to read and an output small enough to return inline. Anything else
        is refused (``FastPathRefused``) before it runs, or, for a large output, after its
        pure work, and the workflow runs the step again as an ordinary activity."""
        refusal = _fast_refusal(task)
        if refusal is not None:
            raise ApplicationError(refusal, type=FAST_PATH_REFUSED, non_retryable=True)
        try:
            # no secrets here (refused above): only the redaction of errors, as ever
            output = await with_secrets(
                task, self.deps.settings, lambda t: _dispatch(t, attempt, self.deps)
            )
        except ApplicationError:
            raise
        except Exception as e:
            failure = _step_failure(task, e)
            raise failure from (e if failure.type == "StepError" else None)
        if isinstance(output, (LLMStepResult, Unassessed)):  # not pure work: never here
            raise ApplicationError(
                "the step needs a model", type=FAST_PATH_REFUSED, non_retryable=True
            )
        if not fits_inline(output, self.deps.settings.store.large_output_bytes):
            raise ApplicationError(
                "its output is too large to return inline (it goes to the store)",
                type=FAST_PATH_REFUSED,
                non_retryable=True,
            )
        return StepOutcome(output=output, attempt=attempt)


def _fast_refusal(task: StepTask) -> str | None:
    """Why the worker will not run ``task`` as a local activity (None: it will)."""
    if task.secret_params:
        return "its params hold secrets"
    if _has_ref(task.params):
        return "its params read an output kept in the store"
    if task.kind == StepKind.TOOL:
        try:
            registered = get_tool(task.tool or "")
        except ToolError:
            return f"tool {task.tool!r} is not registered on this worker"
        if not registered.spec.fast:
            return f"tool {registered.spec.name!r} is not declared fast on this worker"
        return None
    if task.kind == StepKind.VALIDATION and not task.params.get("judge"):
        return None
    return f"a {task.kind.value} step is not fast"


def _has_ref(value: Any) -> bool:
    if isinstance(value, dict):
        return OUTPUT_REF_KEY in value or any(_has_ref(v) for v in value.values())
    if isinstance(value, list):
        return any(_has_ref(v) for v in value)
    return False


async def _keep_heartbeating() -> None:
    while True:
        activity.heartbeat()
        await asyncio.sleep(HEARTBEAT_EVERY_S)


async def _selector(deps: ActivityDeps) -> ModelSelector:
    """The models configured now (settings and store), read for each model step."""
    return await asyncio.to_thread(load_selector, deps.settings, deps.engine)


async def _dispatch(task: StepTask, attempt: int, deps: ActivityDeps) -> Any:
    if task.kind == StepKind.TOOL:
        return await run_tool(task, attempt, deps)
    if task.kind == StepKind.VALIDATION:
        return await _run_validation(task, deps)
    if task.kind == StepKind.LLM:
        return await run_llm(task.params, task.context, deps.chat_model, await _selector(deps))
    if task.kind == StepKind.DECISION:
        return await run_decision(task.params, task.context, deps.chat_model, await _selector(deps))
    if task.kind == StepKind.CODE:  # the code model writes the code; the workflow runs it
        return await write_code(task.params, task.context, deps.chat_model, await _selector(deps))
    raise ToolError(
        f"step kind {task.kind.value!r} has no work to do in an activity",
        retryable=False,
        kind="UnsupportedStep",
    )


async def run_tool(task: StepTask, attempt: int, deps: ActivityDeps) -> Any:
    """Check the rendered params against the tool's schema, then run the tool with
    ``deps`` in its context."""
    registered = get_tool(task.tool or "")
    problems = params_errors(registered.spec.params_schema, task.params, rendered=True)
    if problems:
        text = "; ".join(f"params{path}: {msg}" for path, msg in problems)
        raise ToolError(
            f"invalid params for tool {registered.spec.name}: {text}",
            retryable=False,
            kind="InvalidParams",
        )
    ctx = ToolContext(
        plan_id=task.plan_id,
        step_id=task.step_id,
        idempotency_key=task.idempotency_key,
        attempt=attempt,
        heartbeat=(lambda *_: None) if activity.info().is_local else activity.heartbeat,
        extra=task.context,
        deps=deps,
    )
    return await registered.fn(task.params, ctx)


@dataclass
class Unassessed:
    """A validation step with ``on_unassessed: ask`` whose judge criteria no model
    assessed: its output, and the criteria a person must pass."""

    output: dict[str, Any]
    criteria: list[str]


async def _run_validation(task: StepTask, deps: ActivityDeps) -> Any:
    """Every declared check, then the LLM judge's criteria; all failures are named.

    A criterion no model assessed never passes: it fails the step (non-retryable, named
    with "no model assessed it"), or, with ``on_unassessed: ask`` and nothing else
    failed, the step waits for a person (:class:`Unassessed`)."""
    results, failed = _run_checks(task)
    out: dict[str, Any] = {"passed": True, "checks": results}
    unassessed: list[str] = []
    spec = task.params.get("judge")
    if spec:
        verdicts, usage = await judge(spec, task.context, deps.chat_model, await _selector(deps))
        out["judge"] = {"verdicts": verdicts, **usage}
        failed += [
            f"judge: {v['criterion']}" + (f" ({v['reason']})" if v["reason"] else "")
            for v in verdicts
            if not v["passed"] and v.get("assessed", True)
        ]
        unassessed = [v["criterion"] for v in verdicts if not v.get("assessed", True)]
    ask = task.params.get("on_unassessed") == "ask"
    hint = ""
    if unassessed and (failed or not ask):
        failed += [f"judge: {c} (no model assessed it)" for c in unassessed]
        if not ask:
            hint = (
                " -- an unassessed criterion never passes: give the worker a model "
                "(ANTHROPIC_API_KEY), quote the terms the subject must contain ('like "
                "this') for the offline judge, or set on_unassessed: ask to let a person decide"
            )
    if failed:
        raise ToolError(
            f"{len(failed)} check(s) failed: " + "; ".join(failed) + hint,
            retryable=False,
            kind="ValidationFailed",
        )
    if unassessed:
        out["passed"] = False
        out["unassessed"] = unassessed
        return Unassessed(out, unassessed)
    return out


def _run_checks(task: StepTask) -> tuple[list[dict[str, Any]], list[str]]:
    results = []
    failed: list[str] = []
    budget = Budget()  # the step's checks together, like a step's templates
    for i, check in enumerate(task.params.get("checks", [])):
        name = check.get("name") or f"check {i + 1}"
        try:
            ok = bool(evaluate(check["expr"], task.context, budget))
            error = None
        except ExpressionError as e:
            ok, error = False, str(e)
        results.append({"name": name, "expr": check["expr"], "passed": ok, "error": error})
        if not ok:
            failed.append(
                f"{name} ({check.get('message') or check['expr']})"
                + (f": {error}" if error else "")
            )
    return results, failed

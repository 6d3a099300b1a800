"""How a step's activity is retried and how its failure reads.

Pure helpers of the step runner: the retry policy of a step, the error types never
retried, how an :class:`ActivityError` turns into the text, attempts and sandbox record
the run keeps, and the budget of tool calls an llm step's model may make.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from temporalio import workflow
from temporalio.common import RetryPolicy
from temporalio.exceptions import (
    ActivityError,
    ApplicationError,
    FailureError,
    RetryState,
    TimeoutType,
)
from temporalio.exceptions import TimeoutError as StepTimeoutError

with workflow.unsafe.imports_passed_through():
    from contracts.snapshots import OUTPUT_REF_KEY
    from contracts.steps import StepTask
    from plans.models import PlanOptions, Step, StepKind, ToolSpec

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
RESPOND_TOOL = "respond"  # an llm step's structured answer, not a registry tool


def retry_policy(
    step: Step, spec: ToolSpec | None, opts: PlanOptions
) -> tuple[RetryPolicy, bool, int]:
    """The step's retry policy, whether it runs at most once, and its attempts."""
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


def fast_eligible(step: Step, spec: ToolSpec | None, task: StepTask) -> bool:
    """Whether the step may run as a local activity (the fast path): the plan permits it
    (``fast``, default true) and its work is pure by the code's own declaration -- a tool
    whose spec says ``fast`` and that runs in ``execute_step`` on the plan's own queue, or a
    validation step without a judge -- with nothing to read from elsewhere (no secrets, no
    stored outputs). Decided from the run's history only (the step, the catalog the run
    started with, the rendered task), so a replay decides the same."""
    if not step.fast or task.secret_params or has_ref(task.params):
        return False
    if step.kind == StepKind.TOOL:
        return spec is not None and spec.fast and spec.activity is None and spec.task_queue is None
    if step.kind == StepKind.VALIDATION:
        return not task.params.get("judge")
    return False


def has_ref(value: Any) -> bool:
    """Whether ``value`` holds a reference to an output kept in the store."""
    if isinstance(value, dict):
        return OUTPUT_REF_KEY in value or any(has_ref(v) for v in value.values())
    if isinstance(value, list):
        return any(has_ref(v) for v in value)
    return False


class StepCancelled(Exception):
    """A step's child activity (an llm step's tool call) was cancelled."""


class CallBudget:
    """How many tool calls an llm step may make, and how many invalid ones it may send."""

    def __init__(self, max_calls: int, max_invalid: int) -> None:
        self.max_calls = max_calls
        self.max_invalid = max_invalid
        self.made = 0
        self.invalid = 0
        self.exhausted: str | None = None

    @classmethod
    def of(cls, params: dict[str, Any]) -> CallBudget:
        """From the step's rendered params (validation checked their types)."""

        def number(key: str, default: int) -> int:
            value = params.get(key, default)
            return value if isinstance(value, int) and not isinstance(value, bool) else default

        return cls(number("max_tool_calls", 8), number("max_invalid_calls", 3))


def tool_result(call_id: str, text: str, error: bool = False) -> dict[str, Any]:
    """A tool-result block for the model: the text of a result or of a problem."""
    block: dict[str, Any] = {"type": "tool_result", "tool_use_id": call_id, "content": text}
    if error:
        block["is_error"] = True
    return block


def as_activity_error(err: BaseException, local: bool) -> ActivityError | None:
    """The step activity's failure as an :class:`ActivityError`, whichever way it came:
    a local activity's failure can reach the workflow as its bare cause (an
    ``ApplicationError``, a ``TimeoutError``...), which then gets the wrapper an ordinary
    activity's failure has, so both read the same. None: not an activity's failure."""
    if isinstance(err, ActivityError):
        return err
    if not local or not isinstance(err, FailureError):
        return None
    wrapped = ActivityError(
        "Local activity failed",
        scheduled_event_id=0,
        started_event_id=0,
        identity="",
        activity_type="execute_step",
        activity_id="",
        retry_state=None,
    )
    wrapped.__cause__ = err
    return wrapped


def error_text(e: ActivityError) -> str:
    """The failure as the run records it: ``Type: message``."""
    cause = e.cause
    if isinstance(cause, ApplicationError):
        return f"{cause.type or 'Error'}: {cause.message}"
    if cause is not None:
        return f"{type(cause).__name__}: {cause}"
    return str(e)


_TIMEOUT_NAMES: dict[TimeoutType | None, str] = {
    TimeoutType.START_TO_CLOSE: "StartToClose",
    TimeoutType.SCHEDULE_TO_CLOSE: "ScheduleToClose",
    TimeoutType.SCHEDULE_TO_START: "ScheduleToStart",
    TimeoutType.HEARTBEAT: "Heartbeat",
}


def timeout_text(cause: StepTimeoutError) -> str:
    """A local activity's timeout as the run records an ordinary one's."""
    return f"TimeoutError: activity {_TIMEOUT_NAMES.get(cause.type, 'StartToClose')} timeout"


def sandbox_record(e: ActivityError) -> Any:
    """What the sandbox recorded about a failed run of generated code, if it was one."""
    cause = e.cause
    if isinstance(cause, ApplicationError) and cause.details and isinstance(cause.details[0], dict):
        return cause.details[0].get("sandbox")
    return None


def worker_lost(e: ActivityError) -> bool:
    """The activity stopped heartbeating: the worker running it is gone."""
    cause = e.cause
    return isinstance(cause, StepTimeoutError) and cause.type == TimeoutType.HEARTBEAT


def attempts_spent(e: ActivityError, maximum: int) -> int:
    """How many attempts the failed activity made (``maximum`` once its retries ran out)."""
    cause = e.cause
    if isinstance(cause, ApplicationError) and cause.details:
        detail = cause.details[0]
        if isinstance(detail, dict) and isinstance(detail.get("attempt"), int):
            return int(detail["attempt"])
    if e.retry_state == RetryState.MAXIMUM_ATTEMPTS_REACHED:
        return maximum
    return 1

"""The execution-plan format (an ``ExecutionPlan`` with its ``Steps`` and ``Options``, as
its Go structs serialize, or with their snake_case names) as a plan document.

Every field of that format has a counterpart here, in seconds where it counts in
milliseconds:

=======================  ==============================================================
execution plan           plan document
=======================  ==============================================================
``ID``                   ``id``
``Description``          ``title`` (its first line, up to 200 characters) and
                         ``description``
``Steps[i].ID``          ``steps[i].id`` (``step-<i+1>`` when it has none)
``Steps[i].ToolName``    ``steps[i].tool``
``Steps[i].Description`` ``steps[i].description``
``Steps[i].Parameters``  ``steps[i].params``
``Steps[i].DependsOn``   ``steps[i].depends_on``
``Steps[i].MaxRetries``  ``steps[i].max_retries``
``Steps[i].RetryDelayMs`` ``steps[i].retry_delay_s`` (÷ 1000)
``Options.RequireApproval`` / ``AutoApprove`` / ``AllowParallel`` / ``MaxParallelSteps``
                         the options of the same names
``Options.ApprovalTimeoutMs`` / ``StepTimeoutMs`` / ``TotalTimeoutMs``
                         ``approval_timeout_s`` / ``step_timeout_s`` / ``total_timeout_s``
``Options.StopOnError`` / ``ContinueOnError``
                         ``on_error``: ``continue`` when ``ContinueOnError`` is true or
                         ``StopOnError`` is false, else ``stop``
=======================  ==============================================================

What the format records of a run (``Status``, ``UserApproved``, ``ApprovedBy``,
``ApprovedAt``, ``CurrentStep``, ``StartedAt``, ``CompletedAt``; a step's ``Index``,
``Status``, ``Result``, ``Error``, ``StartedAt``, ``CompletedAt``, ``DurationMs``,
``RetryCount``) is not part of a plan and is dropped: above all, a document that says it
was approved is not approved (only a person's approval of this plan counts). Any other
field is refused, located by its own name (``Steps[2].ToolNme: unknown field``).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from plans.plan_loading import PlanInvalid, Problem

# field names as snake_case: "ToolName" -> "tool_name", "ID" -> "id"
_CAMEL = re.compile(r"(?<=[a-z0-9])(?=[A-Z])")

PLAN_RUNTIME = frozenset(
    {
        "status",
        "user_approved",
        "approved_by",
        "approved_at",
        "current_step",
        "started_at",
        "completed_at",
        "created_at",
        "updated_at",
    }
)
STEP_RUNTIME = frozenset(
    {
        "index",
        "status",
        "result",
        "error",
        "started_at",
        "completed_at",
        "duration_ms",
        "retry_count",
    }
)
# option -> (plan option, divisor); None: on_error, derived from both error options
OPTIONS: dict[str, tuple[str, float] | None] = {
    "require_approval": ("require_approval", 1),
    "auto_approve": ("auto_approve", 1),
    "allow_parallel": ("allow_parallel", 1),
    "max_parallel_steps": ("max_parallel_steps", 1),
    "approval_timeout_ms": ("approval_timeout_s", 1000),
    "step_timeout_ms": ("step_timeout_s", 1000),
    "total_timeout_ms": ("total_timeout_s", 1000),
    "stop_on_error": None,
    "continue_on_error": None,
}
STEP_FIELDS: dict[str, tuple[str, float]] = {
    "id": ("id", 1),
    "tool_name": ("tool", 1),
    "description": ("description", 1),
    "parameters": ("params", 1),
    "depends_on": ("depends_on", 1),
    "max_retries": ("max_retries", 1),
    "retry_delay_ms": ("retry_delay_s", 1000),
}
GO_PLAN_KEYS = frozenset({"ID", "Description", "Steps", "Options", "Status", "UserApproved"})


def snake(name: str) -> str:
    return _CAMEL.sub("_", name).lower()


def is_execution_plan(doc: Any) -> bool:
    """The document is in the execution-plan format: Go field names at its top, steps
    with a ``ToolName``/``tool_name``, or options only that format has."""
    if not isinstance(doc, Mapping):
        return False
    if GO_PLAN_KEYS & set(doc):
        return True
    steps = doc.get("steps")
    if isinstance(steps, list) and any(
        isinstance(s, Mapping) and ("tool_name" in s or "ToolName" in s) for s in steps
    ):
        return True
    options = doc.get("options")
    only_there = {"stop_on_error", "continue_on_error"} | {k for k in OPTIONS if k.endswith("_ms")}
    return isinstance(options, Mapping) and any(snake(str(k)) in only_there for k in options)


def _number(value: Any, divisor: float, where: str, problems: list[Problem]) -> Any:
    if divisor == 1 or value is None:
        return value
    if isinstance(value, bool) or not isinstance(value, int | float):
        problems.append(Problem(location=where, message="must be a number of milliseconds"))
        return None
    return value / divisor


def translate_execution_plan(doc: Mapping[str, Any]) -> dict[str, Any]:
    """The plan document of an execution plan (see the module docstring); raises
    :class:`PlanInvalid` with every problem, located by the document's own names."""
    problems: list[Problem] = []
    out: dict[str, Any] = {}
    for key, value in doc.items():
        name = snake(str(key))
        if name in PLAN_RUNTIME:
            continue
        if name == "id":
            out["id"] = value
        elif name == "description":
            if not isinstance(value, str):
                problems.append(Problem(location=str(key), message="must be text"))
                continue
            out["title"] = value.strip().splitlines()[0][:200] if value.strip() else ""
            out["description"] = value
        elif name in ("title", "agent_id", "inputs"):  # the plan document's own, kept
            out[name] = value
        elif name == "steps":
            out["steps"] = _steps(value, str(key), problems)
        elif name == "options":
            out["options"] = _options(value, str(key), problems)
        else:
            problems.append(Problem(location=str(key), message="unknown field"))
    if "steps" not in out:
        problems.append(Problem(location="Steps", message="required field is missing"))
    if problems:
        raise PlanInvalid(problems)
    return out


def _steps(value: Any, where: str, problems: list[Problem]) -> list[Any]:
    if not isinstance(value, list):
        problems.append(Problem(location=where, message="must be a list of steps"))
        return []
    steps: list[Any] = []
    for i, step in enumerate(value):
        at = f"{where}[{i}]"
        if not isinstance(step, Mapping):
            problems.append(Problem(location=at, message="must be an object"))
            continue
        new: dict[str, Any] = {}
        for key, field in step.items():
            name = snake(str(key))
            if name in STEP_RUNTIME:
                continue
            target = STEP_FIELDS.get(name)
            if target is None:
                problems.append(Problem(location=f"{at}.{key}", message="unknown field"))
                continue
            new[target[0]] = _number(field, target[1], f"{at}.{key}", problems)
        if new.get("depends_on") is None:
            new.pop("depends_on", None)  # Go's nil slice
        if new.get("params") is None:
            new.pop("params", None)  # Go's nil map
        new.setdefault("id", f"step-{i + 1}")
        steps.append(new)
    return steps


def _options(value: Any, where: str, problems: list[Problem]) -> dict[str, Any]:
    if value is None:  # Go's nil pointer: the defaults
        return {}
    if not isinstance(value, Mapping):
        problems.append(Problem(location=where, message="must be an object"))
        return {}
    out: dict[str, Any] = {}
    on_error: dict[str, Any] = {}
    for key, field in value.items():
        name = snake(str(key))
        if name not in OPTIONS:
            problems.append(Problem(location=f"{where}.{key}", message="unknown field"))
            continue
        target = OPTIONS[name]
        if target is None:
            if not isinstance(field, bool):
                problems.append(Problem(location=f"{where}.{key}", message="must be true or false"))
            else:
                on_error[name] = field
            continue
        out[target[0]] = _number(field, target[1], f"{where}.{key}", problems)
    if on_error:
        keep_going = on_error.get("continue_on_error") is True or (
            on_error.get("stop_on_error") is False
        )
        out["on_error"] = "continue" if keep_going else "stop"
    # Go's zero values mean "not set": a timeout of 0 ms is no timeout, not an instant one
    for name in ("approval_timeout_s", "step_timeout_s", "total_timeout_s"):
        if out.get(name) == 0:
            del out[name]
    if out.get("max_parallel_steps") == 0:
        del out["max_parallel_steps"]
    return out

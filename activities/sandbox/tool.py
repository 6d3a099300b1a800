"""The ``python`` tool and the ``run_code`` activity (:class:`SandboxActivities`) that hosts
it on the ``sandbox`` queue."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
from typing import Any

from temporalio import activity
from temporalio.exceptions import ApplicationError

from activities.deps import ActivityDeps
from activities.sandbox.models import SandboxFailed, SandboxResult, SandboxUnavailable
from activities.sandbox.params import request_from_params
from activities.sandbox.record import log_record, run_record
from activities.sandbox.run import run_in_thread
from activities.steps import run_tool
from activities.telemetry import annotate_step
from activities.tools import ToolContext, ToolError, get_tool, tool
from config import SandboxSettings
from contracts.steps import StepOutcome, StepTask
from contracts.tools import PYTHON, RUN_CODE


def _output(result: SandboxResult, record: dict[str, Any]) -> dict[str, Any]:
    files: dict[str, Any] = {}
    for path, data in result.files.items():
        try:
            files[path] = {"encoding": "utf-8", "content": data.decode("utf-8"), "size": len(data)}
        except UnicodeDecodeError:
            files[path] = {
                "encoding": "base64",
                "content": base64.b64encode(data).decode(),
                "size": len(data),
            }
    parsed: Any = None
    if result.stdout.strip() and not result.stdout_truncated:
        with contextlib.suppress(ValueError):
            parsed = json.loads(result.stdout)
    return {
        "ok": result.ok,
        "exit_code": result.exit_code,
        "stdout": result.stdout,
        "stderr": result.stderr,
        "stdout_truncated": result.stdout_truncated,
        "stderr_truncated": result.stderr_truncated,
        "json": parsed,
        "files": files,
        "sandbox": record,
    }


_FAILURE_KIND: dict[str, str] = {
    "timeout": "CodeTimeout",
    "cancelled": "CodeCancelled",
    "output_error": "CodeOutputError",
    "error": "CodeFailed",
    "killed": "CodeFailed",
    "no_network": "CodeFailed",
    "read_only": "CodeFailed",
    "denied": "CodeFailed",
}


def _step_ceiling_s() -> float | None:
    """What the step's activity timeout leaves for the code (minus a margin to report)."""
    if not activity.in_activity():
        return None
    total = activity.info().start_to_close_timeout
    if total is None:
        return None
    seconds = total.total_seconds()
    return max(seconds - min(2.0, seconds / 5), 0.1)


def _sandbox_settings(ctx: ToolContext) -> SandboxSettings:
    if ctx.deps is None:
        raise ToolError(
            "the python tool runs only in a worker (its settings give the sandbox's limits)",
            retryable=False,
            kind="SandboxUnavailable",
        )
    return ctx.deps.settings.sandbox


@tool(PYTHON)
async def python_tool(params: dict[str, Any], ctx: ToolContext) -> Any:
    s = _sandbox_settings(ctx)
    request, notes = request_from_params(params, s, _step_ceiling_s())
    try:
        result = await run_in_thread(request, s, ctx.heartbeat)
    except SandboxUnavailable as e:
        refused = run_record(request, None, ctx=ctx, refused=str(e), notes=notes)
        log_record(refused)
        raise SandboxFailed(str(e), kind=e.kind, record=refused) from None
    record = run_record(request, result, ctx=ctx, notes=notes)
    log_record(record)
    if result.ok or params.get("fail_on_error", True) is False:
        return _output(result, record)
    message = result.reason
    tail = result.stderr.strip()[-600:]
    if tail and result.outcome != "output_error":
        message += f"\nstderr (end):\n{tail}"
    kind = _FAILURE_KIND.get(result.outcome, "SandboxLimit")
    raise SandboxFailed(message, kind=kind, record=record)


class SandboxActivities:
    """``run_code``, with the sandbox settings of ``deps``."""

    def __init__(self, deps: ActivityDeps):
        self.deps = deps

    @activity.defn(name=RUN_CODE)
    async def run_code(self, task: StepTask) -> StepOutcome:
        """Run a ``python`` step in the sandbox (hosted by the ``sandbox`` worker pool).

        Same contract as ``execute_step``: the params are checked again against the tool's
        schema, failures become ``ApplicationError`` carrying the attempt number, and the
        run record travels in the output (``output.sandbox``) or in the error details
        (``details[0]["sandbox"]``).
        """
        attempt = activity.info().attempt
        annotate_step(task, attempt)  # the trace's step span, when tracing
        try:
            registered = get_tool(task.tool or "")
            if registered.spec.activity != RUN_CODE:
                raise ToolError(
                    f"tool {registered.spec.name!r} does not run in the sandbox",
                    retryable=False,
                    kind="UnknownTool",
                )
            output = await run_tool(task, attempt, self.deps)
        except SandboxFailed as e:
            raise ApplicationError(
                str(e), {"attempt": attempt, "sandbox": e.record}, type=e.kind, non_retryable=True
            ) from None
        except ToolError as e:
            raise ApplicationError(
                str(e), {"attempt": attempt}, type=e.kind, non_retryable=not e.retryable
            ) from None
        except (ApplicationError, asyncio.CancelledError):
            raise
        except Exception as e:
            raise ApplicationError(
                f"{type(e).__name__}: {e}", {"attempt": attempt}, type="SandboxError"
            ) from e
        return StepOutcome(output=output, attempt=attempt)

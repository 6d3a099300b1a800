"""Every call the API makes to Temporal, bounded in time and with its errors mapped.

One :class:`temporalio.client.Client` per process (made at start-up by the lifespan, or
at the first request that needs it when Temporal was down then). Every call here is
bounded by ``PLANSMITH_API_TIMEOUT_S``: the API never hangs on Temporal. Errors become
:class:`api.errors.ApiError`: unknown workflow → 404, refused transition → 409, malformed
control → 422, unreachable server or no worker → 503, anything else Temporal says → 502.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable
from datetime import timedelta
from typing import Any, TypeVar

from temporalio.api.workflowservice.v1 import GetSystemInfoRequest
from temporalio.client import (
    Client,
    WorkflowExecution,
    WorkflowExecutionDescription,
    WorkflowExecutionStatus,
    WorkflowHandle,
    WorkflowQueryFailedError,
    WorkflowUpdateFailedError,
    WorkflowUpdateRPCTimeoutOrCancelledError,
)
from temporalio.exceptions import ApplicationError, WorkflowAlreadyStartedError
from temporalio.service import RPCError, RPCStatusCode

from api.errors import ApiError, bad_gateway, conflict, invalid, not_found, unavailable
from config import ApiSettings, Settings
from contracts.errors import LLMError, NoModelFits
from contracts.planning import GeneratedPlan, PlanningFailed, PlanRequest
from plans.controls import ControlResult
from plans.models import Plan, PlanStatus, workflow_id_for
from plans.run_state import AuditEntry, LogEntry
from plans.validation import Problem
from plans.views import ExecutionState, LogsQuery, PlanView, StatusView
from workflows.plan_input import PLAN_STATUS, WAITING_FOR, WORKFLOW_NAME
from workflows.plan_workflow import PlanWorkflow
from workflows.planner_workflow import PlannerUnavailable, run_planner
from workflows.starter import ResumeRefused, resume_from_failure, start_plan

log = logging.getLogger("plansmith.api")
T = TypeVar("T")

_UNREACHABLE = {
    RPCStatusCode.UNAVAILABLE,
    RPCStatusCode.DEADLINE_EXCEEDED,
    RPCStatusCode.CANCELLED,
    RPCStatusCode.RESOURCE_EXHAUSTED,
    RPCStatusCode.ABORTED,
}
_NO_WORKER = {
    RPCStatusCode.DEADLINE_EXCEEDED,
    RPCStatusCode.CANCELLED,
    RPCStatusCode.FAILED_PRECONDITION,
}


def plan_id_of(workflow_id: str) -> str:
    return workflow_id.removeprefix("plan-")


class TemporalProvider:
    """The process's one Temporal client; connects lazily (bounded) when start-up could not."""

    def __init__(
        self,
        settings: Settings,
        config: ApiSettings,
        client: Client | None = None,
        connect: Callable[[Settings], Awaitable[Client]] | None = None,
    ):
        self.settings, self.config = settings, config
        self.client = client
        self._connect = connect
        self._lock = asyncio.Lock()
        self._failed_at: float | None = None
        self.last_error: str | None = None

    async def _do_connect(self) -> Client:
        if self._connect is not None:
            return await self._connect(self.settings)
        from workflows.client import connect

        return await connect(self.settings)

    async def get(self) -> Client:
        if self.client is not None:
            return self.client
        async with self._lock:
            if self.client is not None:
                return self.client
            if self._failed_at is not None and time.monotonic() - self._failed_at < 1.0:
                raise unavailable(self.last_error or "Temporal is unreachable")
            try:
                self.client = await asyncio.wait_for(
                    self._do_connect(), timeout=self.config.connect_timeout_s
                )
            except Exception as e:
                self._failed_at = time.monotonic()
                reason = "timed out" if isinstance(e, TimeoutError) else str(e)
                self.last_error = (
                    f"Temporal is unreachable at {self.settings.temporal.address}: {reason}"
                )
                raise unavailable(self.last_error) from None
            self._failed_at, self.last_error = None, None
            return self.client


class Gateway:
    """Plan-level operations on Temporal (the client is fetched only when a call needs it,
    so routes that can answer without Temporal — drafts — do not fail when it is down)."""

    def __init__(self, provider: TemporalProvider):
        self.provider = provider
        self.settings, self.config = provider.settings, provider.config
        self.rpc_timeout = timedelta(seconds=self.config.rpc_timeout_s)

    async def client(self) -> Client:
        return await self.provider.get()

    async def handle(self, plan_id: str) -> WorkflowHandle[Any, Any]:
        return (await self.client()).get_workflow_handle(workflow_id_for(plan_id))

    async def _call(self, aw: Awaitable[T], what: str, no_worker: str | None = None) -> T:
        """Await a Temporal call with a hard deadline; NOT_FOUND is left to the caller."""
        limit = self.config.rpc_timeout_s + 2
        try:
            return await asyncio.wait_for(aw, timeout=limit)
        except TimeoutError:
            raise unavailable(
                no_worker or f"Temporal did not answer {what} within {limit:g}s"
            ) from None
        except RPCError as e:
            if e.status == RPCStatusCode.NOT_FOUND:
                raise
            if no_worker and e.status in _NO_WORKER:
                raise unavailable(f"{no_worker} ({e.message})") from None
            if e.status in _UNREACHABLE:
                raise unavailable(f"Temporal is unreachable for {what}: {e.message}") from None
            raise bad_gateway(f"{what}: Temporal answered {e.status.name}: {e.message}") from None
        except RuntimeError as e:  # the client could not (re)connect
            raise unavailable(f"Temporal is unreachable for {what}: {e}") from None

    def _no_worker(self, what: str, plan_id: str) -> str:
        return (
            f"no worker answered {what} for plan {plan_id} within "
            f"{self.config.rpc_timeout_s:g}s: is a worker polling task queue "
            f"{self.settings.temporal.task_queue!r} (`plansmith worker`)?"
        )

    async def ping(self) -> None:
        await self._call(
            (await self.client()).workflow_service.get_system_info(
                GetSystemInfoRequest(), timeout=self.rpc_timeout
            ),
            "a health check",
        )

    async def describe(self, plan_id: str) -> WorkflowExecutionDescription | None:
        try:
            return await self._call(
                (await self.handle(plan_id)).describe(rpc_timeout=self.rpc_timeout), "describe"
            )
        except RPCError as e:
            if e.status == RPCStatusCode.NOT_FOUND:
                return None
            raise bad_gateway(f"describe: {e.message}") from None

    async def query(self, plan_id: str, query: Any, *args: Any, result_type: Any = None) -> Any:
        """Run a query (a typed reference such as ``PlanWorkflow.status``), bounded."""
        name = getattr(query, "__name__", str(query))
        try:
            return await self._call(
                (await self.handle(plan_id)).query(
                    query, *args, result_type=result_type, rpc_timeout=self.rpc_timeout
                ),
                f"the {name} query",
                no_worker=self._no_worker(f"the {name} query", plan_id),
            )
        except RPCError as e:  # NOT_FOUND
            raise not_found(f"no plan {plan_id!r}") from e
        except WorkflowQueryFailedError as e:
            raise bad_gateway(f"the {name} query failed in the workflow: {e.message}") from None

    async def status(self, plan_id: str) -> StatusView:
        result: StatusView = await self.query(plan_id, PlanWorkflow.status, result_type=StatusView)
        return result

    async def execution_state(self, plan_id: str) -> ExecutionState:
        result: ExecutionState = await self.query(
            plan_id, PlanWorkflow.execution_state, result_type=ExecutionState
        )
        return result

    async def logs(self, plan_id: str, query: LogsQuery) -> list[LogEntry]:
        result: list[LogEntry] = await self.query(
            plan_id, PlanWorkflow.logs, query, result_type=list[LogEntry]
        )
        return result

    async def audit(self, plan_id: str) -> list[AuditEntry]:
        result: list[AuditEntry] = await self.query(
            plan_id, PlanWorkflow.audit, result_type=list[AuditEntry]
        )
        return result

    async def plan(self, plan_id: str) -> PlanView:
        result: PlanView = await self.query(plan_id, PlanWorkflow.plan, result_type=PlanView)
        return result

    async def update(self, plan_id: str, control: str, payload: dict[str, Any]) -> ControlResult:
        """Send ``control`` as an update: the caller learns at once whether it was refused."""
        try:
            result: ControlResult = await self._call(
                (await self.handle(plan_id)).execute_update(
                    control, payload, result_type=ControlResult, rpc_timeout=self.rpc_timeout
                ),
                f"the {control} update",
            )
            return result
        except WorkflowUpdateFailedError as e:
            cause = e.cause
            message = getattr(cause, "message", None) or str(cause or e)
            if isinstance(cause, ApplicationError) and cause.type == "InvalidControl":
                raise invalid(message, [Problem(location="body", message=message)]) from None
            if isinstance(cause, ApplicationError) and cause.type == "TransitionRefused":
                raise conflict(message, code="transition_refused") from None
            raise bad_gateway(f"{control} failed in the workflow: {message}") from None
        except WorkflowUpdateRPCTimeoutOrCancelledError:
            raise unavailable(self._no_worker(f"the {control} update", plan_id)) from None
        except RPCError as e:  # NOT_FOUND: no such workflow, or it already closed
            desc = await self.describe(plan_id)
            if desc is None:
                raise not_found(f"no plan {plan_id!r}") from e
            raise conflict(
                f"{control} refused: the plan already ended {ended_status(desc)}",
                code="transition_refused",
            ) from None

    async def start(self, plan: Plan) -> tuple[WorkflowHandle[Any, Any], bool]:
        """Start ``plan``; a plan already running is returned as it is (started=False)."""
        assert plan.id is not None
        desc = await self.describe(plan.id)
        if desc is not None:
            if desc.status == WorkflowExecutionStatus.RUNNING:
                return await self.handle(plan.id), False
            raise conflict(
                f"plan {plan.id} already ran and ended {ended_status(desc)}; resume it with "
                f"POST /api/plans/{plan.id}/resume-from-failure, or create it under a new id",
                code="already_ran",
            )
        try:
            handle = await self._call(
                start_plan(
                    await self.client(),
                    plan,
                    self.settings.temporal.task_queue,
                    heartbeat_timeout_s=self.settings.temporal.heartbeat_timeout_s,
                ),
                "start",
            )
        except WorkflowAlreadyStartedError:
            raise conflict(
                f"plan {plan.id} already ran; resume it with resume-from-failure",
                code="already_ran",
            ) from None
        except RPCError as e:
            raise bad_gateway(f"start: {e.message}") from None
        return handle, True

    async def resume(self, plan_id: str, by: str) -> tuple[WorkflowHandle[Any, Any], int]:
        desc = await self.describe(plan_id)
        if desc is None:
            raise not_found(f"no plan {plan_id!r}")
        if desc.status == WorkflowExecutionStatus.RUNNING:
            # A plan shows its final status a moment before its run closes (its last
            # records are written first): wait for that, bounded, rather than refuse.
            view = await self.status(plan_id)
            if view.status.terminal:
                handle = await self.handle(plan_id)
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(handle.result(), timeout=self.config.rpc_timeout_s)
        try:
            return await self._call(
                resume_from_failure(
                    await self.client(),
                    plan_id,
                    by,
                    self.settings.temporal.task_queue,
                    heartbeat_timeout_s=self.settings.temporal.heartbeat_timeout_s,
                ),
                "resume-from-failure",
            )
        except ResumeRefused as e:
            raise conflict(f"resume-from-failure refused: {e}", code="resume_refused") from None
        except WorkflowAlreadyStartedError:
            raise conflict(
                f"resume-from-failure refused: plan {plan_id} was resumed meanwhile",
                code="resume_refused",
            ) from None
        except RPCError as e:
            raise bad_gateway(f"resume-from-failure: {e.message}") from None

    async def generate(self, req: PlanRequest) -> GeneratedPlan:
        """Run the LLM planner (the ``GeneratePlan`` workflow) and wait for its plan.

        Starting is bounded like every call; the planning itself may take minutes (model
        calls and repair rounds). A plan that stays invalid is a 422 listing the problems,
        an unknown model a 422 on ``model``, a model API that refuses the request a 502,
        one that is unavailable (retries spent), no worker or no end in time a 503.
        """
        client = await self.client()
        try:
            return await run_planner(
                client,
                req,
                self.settings.temporal.task_queue,
                no_worker_after_s=self.config.rpc_timeout_s,
                rpc_timeout=self.rpc_timeout,
            )
        except PlanningFailed as e:
            raise invalid(
                f"the planner could not make a valid plan in {e.rounds} round(s): "
                f"{len(e.problems)} problem(s) remain",
                e.problems,
                code="planning_failed",
            ) from None
        except NoModelFits as e:
            raise invalid(str(e), [Problem(location="model", message=str(e))]) from None
        except LLMError as e:
            if e.retryable:
                raise unavailable(f"the language model is unavailable: {e}") from None
            raise ApiError(502, "llm_error", f"the language model refused: {e}") from None
        except PlannerUnavailable as e:
            raise unavailable(str(e)) from None
        except RPCError as e:
            if e.status in _UNREACHABLE:
                raise unavailable(f"Temporal is unreachable for the planner: {e.message}") from None
            raise bad_gateway(
                f"the planner: Temporal answered {e.status.name}: {e.message}"
            ) from None
        except RuntimeError as e:  # the client could not (re)connect
            raise unavailable(f"Temporal is unreachable for the planner: {e}") from None

    async def list_plans(self, status: PlanStatus | None, limit: int) -> list[WorkflowExecution]:
        query = f"WorkflowType='{WORKFLOW_NAME}'"
        if status is not None:  # an enum value: nothing of the caller's text reaches the query
            query += f" AND {PLAN_STATUS.name}='{status.value}'"

        client = await self.client()

        async def collect() -> list[WorkflowExecution]:
            return [
                w
                async for w in client.list_workflows(
                    query, limit=limit, rpc_timeout=self.rpc_timeout
                )
            ]

        try:
            return await self._call(collect(), "list plans")
        except RPCError as e:
            raise bad_gateway(f"list plans: {e.message}") from None


def search_attribute(w: WorkflowExecution, key: Any) -> str | None:
    try:
        value = w.typed_search_attributes.get(key)
    except Exception:  # an attribute of another type under the same name
        return None
    return value if isinstance(value, str) else None


def plan_status_of(w: WorkflowExecution) -> PlanStatus | None:
    raw = search_attribute(w, PLAN_STATUS)
    try:
        return PlanStatus(raw) if raw else None
    except ValueError:
        return None


def waiting_for_of(w: WorkflowExecution) -> str | None:
    raw = search_attribute(w, WAITING_FOR)
    return None if raw in (None, "none") else raw


def ended_status(desc: WorkflowExecution) -> str:
    status = plan_status_of(desc)
    if status is not None:
        return status.value
    return desc.status.name.lower() if desc.status is not None else "unknown"

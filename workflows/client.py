"""The one way to reach Temporal: a client with the pydantic data converter, and
:class:`PlanClient`, every call the API and the CLI make about plans.

The API, the worker, the CLI and the tests all connect through :func:`connect`, so they
share one data converter. :class:`PlanClient` starts plans, reads their queries, sends
controls (as updates, or as signals), resumes them from failure and runs the planner.
Every call is bounded in time (``rpc_timeout_s``: neither the API nor the CLI hangs on
Temporal), and Temporal's failures become the errors of :mod:`workflows.errors`:
:class:`PlanNotFound`, :class:`ControlRefused` (the workflow's reason),
:class:`InvalidControl`, :class:`TemporalUnavailable`, :class:`NoWorker`… The planner's
own failures (:class:`~contracts.planning.PlanningFailed`,
:class:`~contracts.errors.NoModelFits`, :class:`~contracts.errors.LLMError`) pass through.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable, Callable
from datetime import timedelta
from typing import TYPE_CHECKING, Any, TypeVar

from temporalio.api.workflowservice.v1 import GetSystemInfoRequest
from temporalio.client import (
    Client,
    WorkflowExecution,
    WorkflowExecutionDescription,
    WorkflowExecutionStatus,
    WorkflowFailureError,
    WorkflowHandle,
    WorkflowQueryFailedError,
    WorkflowQueryRejectedError,
    WorkflowUpdateFailedError,
    WorkflowUpdateRPCTimeoutOrCancelledError,
)
from temporalio.common import QueryRejectCondition
from temporalio.exceptions import ApplicationError, WorkflowAlreadyStartedError
from temporalio.service import RPCError, RPCStatusCode

from config import Settings, get_settings
from contracts.limits import QUEUE_QUERY, limiter_workflow_id
from plans.controls import CONTROL_MODELS, ControlResult
from plans.limits import LimiterView
from plans.models import Plan, PlanStatus, StepStatus, workflow_id_for
from plans.run_state import Approval, AuditEntry, LogEntry
from plans.views import (
    ChangesQuery,
    ChangesView,
    ExecutionState,
    LogsQuery,
    PlanView,
    StatusView,
    StepChange,
    StepsPage,
    StepsQuery,
)
from workflows.errors import (
    ControlRefused,
    InvalidControl,
    NoWorker,
    PlanAlreadyRan,
    PlanClosed,
    PlanNotFound,
    QueryUnsupported,
    ResumeRefused,
    TemporalError,
    TemporalUnavailable,
    TooLargeForTemporal,
)
from workflows.plan_input import PLAN_STATUS, PlanResult
from workflows.telemetry import client_interceptors
from workflows.transport import data_converter, tls_config

if TYPE_CHECKING:  # the planner's and the starter's modules load only when used
    from temporalio.runtime import Runtime

    from contracts.planning import GeneratedPlan, PlanRequest

T = TypeVar("T")

# Every control is an update (the caller learns at once whether it was accepted) and a
# signal of the same name (fire and forget), both declared on PlanWorkflow under the
# names of CONTROL_MODELS. The client reaches them, and the queries, by name: it does not
# import the workflow's module (and with it the step runner, validation, jsonschema…),
# which keeps the CLI's start-up short. tests/workflows/test_client_names.py checks
# that every name here is one the workflow declares, with the same argument and result.
QUERY_RESULTS: dict[str, Any] = {
    "status": StatusView,
    "steps": StepsPage,
    "changes": ChangesView,
    "execution_state": ExecutionState,
    "logs": list[LogEntry],
    "audit": list[AuditEntry],
    "plan": PlanView,
}

_UNREACHABLE = {
    RPCStatusCode.UNAVAILABLE,
    RPCStatusCode.DEADLINE_EXCEEDED,
    RPCStatusCode.CANCELLED,
    RPCStatusCode.RESOURCE_EXHAUSTED,
    RPCStatusCode.ABORTED,
}


def _over_size(message: str) -> bool:
    """A message or payload over the limit (gRPC's "larger than max", Temporal's "exceeds
    size limit" or, for a payload over 2 MB, "Blob data size exceeds limit"), not a rate
    limit to wait out."""
    text = message.lower()
    return (
        "larger than max" in text
        or "size limit" in text
        or "too large" in text
        or "blob data size exceeds" in text
    )


# a request too big for gRPC is RESOURCE_EXHAUSTED; a payload too big for Temporal,
# INVALID_ARGUMENT
_SIZE_REFUSALS = {RPCStatusCode.RESOURCE_EXHAUSTED, RPCStatusCode.INVALID_ARGUMENT}

_NO_WORKER = {
    RPCStatusCode.DEADLINE_EXCEEDED,
    RPCStatusCode.CANCELLED,
    RPCStatusCode.FAILED_PRECONDITION,
}


async def connect(
    settings: Settings | None = None, address: str | None = None, runtime: Runtime | None = None
) -> Client:
    """A client of the settings' Temporal (``TEMPORAL_ADDRESS``, ``TEMPORAL_NAMESPACE``),
    over TLS/mTLS and with payloads encrypted when the settings say so
    (:mod:`workflows.transport`), traced when the process traces
    (:mod:`workflows.telemetry`), on ``runtime`` (default: the SDK's) when given."""
    s = settings or get_settings()
    return await Client.connect(
        address or s.temporal.address,
        namespace=s.temporal.namespace,
        data_converter=data_converter(s.temporal),
        tls=tls_config(s.temporal),
        interceptors=client_interceptors(),
        runtime=runtime,
    )


class PlanClient:
    """Plan-level operations on Temporal, for the API and the CLI.

    The Temporal client is given, or connected at the first call that needs it (bounded
    by ``connect_timeout_s``; after a failure, calls within the next second fail at once
    rather than each waiting again), so what can answer without Temporal does not fail
    when it is down. Plans are named by their plan id (workflow ``plan-<id>``).
    """

    def __init__(
        self,
        settings: Settings,
        *,
        client: Client | None = None,
        connect: Callable[[Settings], Awaitable[Client]] | None = None,
        rpc_timeout_s: float = 10.0,
        connect_timeout_s: float = 10.0,
    ):
        self.settings = settings
        self.task_queue = settings.temporal.task_queue
        self.rpc_timeout_s = rpc_timeout_s
        self.rpc_timeout = timedelta(seconds=rpc_timeout_s)
        self.connect_timeout_s = connect_timeout_s
        self._client = client
        self._connect = connect
        self._lock = asyncio.Lock()
        self._failed_at: float | None = None
        self._last_error: str | None = None
        self._no_query: dict[tuple[str, str], float] = {}

    # --- the connection -----------------------------------------------------------

    async def client(self) -> Client:
        """The Temporal client, connected now if it was not yet (TemporalUnavailable)."""
        if self._client is not None:
            return self._client
        async with self._lock:
            if self._client is not None:
                return self._client
            if self._failed_at is not None and time.monotonic() - self._failed_at < 1.0:
                raise TemporalUnavailable(self._last_error or "Temporal is unreachable")
            try:
                self._client = await asyncio.wait_for(
                    (self._connect or connect)(self.settings), timeout=self.connect_timeout_s
                )
            except Exception as e:
                self._failed_at = time.monotonic()
                reason = "timed out" if isinstance(e, TimeoutError) else str(e)
                self._last_error = (
                    f"Temporal is unreachable at {self.settings.temporal.address}: {reason}"
                )
                raise TemporalUnavailable(self._last_error) from None
            self._failed_at, self._last_error = None, None
            return self._client

    async def handle(self, plan_id: str) -> WorkflowHandle[Any, Any]:
        return (await self.client()).get_workflow_handle(workflow_id_for(plan_id))

    async def _call(self, aw: Awaitable[T], what: str, no_worker: str | None = None) -> T:
        """Await a Temporal call with a hard deadline; NOT_FOUND is left to the caller."""
        limit = self.rpc_timeout_s + 2
        try:
            return await asyncio.wait_for(aw, timeout=limit)
        except TimeoutError:
            if no_worker:
                raise NoWorker(no_worker) from None
            raise TemporalUnavailable(f"Temporal did not answer {what} within {limit:g}s") from None
        except RPCError as e:
            if e.status == RPCStatusCode.NOT_FOUND:
                raise
            if no_worker and e.status in _NO_WORKER:
                raise NoWorker(f"{no_worker} ({e.message})") from None
            if e.status in _SIZE_REFUSALS and _over_size(e.message):
                raise TooLargeForTemporal(
                    f"{what} refused by Temporal: what was sent is over its size limit "
                    f"({e.message}); keep plan inputs small and pass large data by reference"
                ) from None
            if e.status in _UNREACHABLE:
                raise TemporalUnavailable(
                    f"Temporal is unreachable for {what}: {e.message}"
                ) from None
            raise TemporalError(f"{what}: Temporal answered {e.status.name}: {e.message}") from None
        except RuntimeError as e:  # the client could not (re)connect
            raise TemporalUnavailable(f"Temporal is unreachable for {what}: {e}") from None

    def _no_worker(self, what: str, plan_id: str) -> str:
        return (
            f"no worker answered {what} for plan {plan_id} within "
            f"{self.rpc_timeout_s:g}s: is a worker polling task queue "
            f"{self.task_queue!r} (`plansmith worker`)?"
        )

    async def ping(self) -> None:
        """Ask Temporal for its system info (TemporalUnavailable when it cannot answer,
        naming the address asked however it failed: a refusal, a timeout, a deadline)."""
        address = self.settings.temporal.address
        try:
            await self._call(
                (await self.client()).workflow_service.get_system_info(
                    GetSystemInfoRequest(), timeout=self.rpc_timeout
                ),
                "a health check",
            )
        except TemporalUnavailable as e:
            if address in str(e):
                raise
            raise TemporalUnavailable(f"{e} (asked at {address})") from None

    async def limiter_queue(self) -> LimiterView | None:
        """The task queue's limiter as its ``queue`` query answers (who executes, who
        waits in which order); None when no plan of the queue ever asked for a slot."""
        client = await self.client()
        handle = client.get_workflow_handle(limiter_workflow_id(self.task_queue))
        try:
            return await self._call(
                handle.query(QUEUE_QUERY, result_type=LimiterView),
                "the limiter's queue",
                no_worker=f"no worker polls task queue {self.task_queue!r} to answer the limiter",
            )
        except RPCError as e:
            if e.status == RPCStatusCode.NOT_FOUND:
                return None
            raise TemporalError(f"the limiter's queue: {e.message}") from None

    async def describe(self, plan_id: str) -> WorkflowExecutionDescription | None:
        """The plan's workflow as Temporal describes it; None when Temporal knows none."""
        try:
            return await self._call(
                (await self.handle(plan_id)).describe(rpc_timeout=self.rpc_timeout), "describe"
            )
        except RPCError as e:
            if e.status == RPCStatusCode.NOT_FOUND:
                return None
            raise TemporalError(f"describe: {e.message}") from None

    async def final_result(self, plan_id: str, wait_s: float = 30.0) -> PlanResult | None:
        """The result of a plan whose workflow is ending or ended (waiting up to
        ``wait_s`` for it to close): read from its history, where a query of a closed
        workflow replays the whole run on a worker (seconds for thousands of steps).
        None when its last run ended without a result (cancelled or terminated in
        Temporal, failed) or did not close in time."""
        handle = (await self.client()).get_workflow_handle(
            workflow_id_for(plan_id), result_type=PlanResult
        )
        try:
            result: PlanResult = await asyncio.wait_for(handle.result(), wait_s)
            return result
        except (TimeoutError, WorkflowFailureError, RPCError):
            return None

    # --- queries ------------------------------------------------------------------

    async def query(
        self,
        plan_id: str,
        query: Any,
        *args: Any,
        result_type: type | None = None,
        open_only: bool = False,
    ) -> Any:
        """Run a query, given by name (its result type from :data:`QUERY_RESULTS`, or
        ``result_type``) or as a typed reference such as ``PlanWorkflow.status``. A worker that does not know the query (an older
        worker) raises :class:`QueryUnsupported`."""
        name = query if isinstance(query, str) else getattr(query, "__name__", str(query))
        kw: dict[str, Any] = {"rpc_timeout": self.rpc_timeout}
        result_type = result_type or (QUERY_RESULTS.get(query) if isinstance(query, str) else None)
        if result_type is not None:
            kw["result_type"] = result_type
        if open_only:  # the server refuses it for a closed workflow: no replay on a worker
            kw["reject_condition"] = QueryRejectCondition.NOT_OPEN
        try:
            return await self._call(
                (await self.handle(plan_id)).query(query, *args, **kw),
                f"the {name} query",
                no_worker=self._no_worker(f"the {name} query", plan_id),
            )
        except RPCError as e:  # NOT_FOUND
            raise PlanNotFound(plan_id, workflow_id_for(plan_id)) from e
        except WorkflowQueryRejectedError:
            raise PlanClosed(plan_id) from None
        except WorkflowQueryFailedError as e:
            if _unknown_query(e.message, name):
                raise QueryUnsupported(name, e.message) from None
            raise TemporalError(f"the {name} query failed in the workflow: {e.message}") from None

    def _unsupported(self, plan_id: str, name: str) -> bool:
        """The plan's worker answered lately that it does not know the query."""
        at = self._no_query.get((plan_id, name))
        return at is not None and time.monotonic() - at < UNSUPPORTED_TTL_S

    def _remember_unsupported(self, plan_id: str, name: str) -> None:
        if len(self._no_query) > 1000:
            self._no_query.clear()
        self._no_query[(plan_id, name)] = time.monotonic()

    async def _new_query(self, plan_id: str, name: str, arg: Any, open_only: bool = False) -> Any:
        """A query only newer workers know: QueryUnsupported at once (without asking)
        while the plan's worker said lately that it does not know it."""
        if self._unsupported(plan_id, name):
            raise QueryUnsupported(name)
        try:
            return await self.query(plan_id, name, arg, open_only=open_only)
        except QueryUnsupported:
            self._remember_unsupported(plan_id, name)
            raise

    async def steps(self, plan_id: str, query: StepsQuery) -> StepsPage:
        """One page of the plan's steps (the ``steps`` query); from an older worker, the
        page of the full ``status`` query."""
        try:
            page: StepsPage = await self._new_query(plan_id, "steps", query)
            return page
        except QueryUnsupported:
            return page_of(await self.status(plan_id), query)

    async def changes(
        self, plan_id: str, query: ChangesQuery, open_only: bool = False
    ) -> ChangesView:
        """The step changes numbered after ``query.since`` (the ``changes`` query).

        Raises QueryUnsupported from an older worker: the caller then compares successive
        ``status`` answers itself (:class:`StatusDiff`). ``open_only``: PlanClosed once
        the workflow has closed (read its result instead).
        """
        view: ChangesView = await self._new_query(plan_id, "changes", query, open_only)
        return view

    async def status(self, plan_id: str, open_only: bool = False) -> StatusView:
        """The status query; ``open_only``: PlanClosed for a closed workflow (whose query
        would replay the run on a worker)."""
        result: StatusView = await self.query(plan_id, "status", open_only=open_only)
        return result

    # ``open_only`` (as for status): PlanClosed for a closed workflow.
    async def execution_state(self, plan_id: str, open_only: bool = False) -> ExecutionState:
        result: ExecutionState = await self.query(plan_id, "execution_state", open_only=open_only)
        return result

    async def logs(self, plan_id: str, query: LogsQuery, open_only: bool = False) -> list[LogEntry]:
        result: list[LogEntry] = await self.query(plan_id, "logs", query, open_only=open_only)
        return result

    async def audit(self, plan_id: str, open_only: bool = False) -> list[AuditEntry]:
        result: list[AuditEntry] = await self.query(plan_id, "audit", open_only=open_only)
        return result

    async def plan(self, plan_id: str, open_only: bool = False) -> PlanView:
        result: PlanView = await self.query(plan_id, "plan", open_only=open_only)
        return result

    # --- controls -----------------------------------------------------------------

    async def control(self, plan_id: str, name: str, arg: dict[str, Any]) -> ControlResult:
        """Send the control ``name`` (a key of ``CONTROL_MODELS``) as its update."""
        if name not in CONTROL_MODELS:
            raise InvalidControl(f"unknown control {name!r}")
        return await self.update(plan_id, name, arg)

    async def update(self, plan_id: str, update: Any, arg: dict[str, Any]) -> ControlResult:
        """Send a control as an update, given by name (``"approve"``) or as a typed
        reference such as ``PlanWorkflow.approve``: the caller learns at once whether it
        was accepted.

        Raises ControlRefused (the transition is not allowed now, or the plan already
        ended), InvalidControl (a malformed argument), PlanNotFound, NoWorker…
        """
        control = update if isinstance(update, str) else getattr(update, "__name__", str(update))
        try:
            result: ControlResult = await self._call(
                (await self.handle(plan_id)).execute_update(
                    update, arg, result_type=ControlResult, rpc_timeout=self.rpc_timeout
                ),
                f"the {control} update",
            )
            return result
        except WorkflowUpdateFailedError as e:
            cause = e.cause
            message = getattr(cause, "message", None) or str(cause or e)
            if isinstance(cause, ApplicationError) and cause.type == "InvalidControl":
                raise InvalidControl(message) from None
            if isinstance(cause, ApplicationError) and cause.type == "TransitionRefused":
                raise ControlRefused(message) from None
            raise TemporalError(f"{control} failed in the workflow: {message}") from None
        except WorkflowUpdateRPCTimeoutOrCancelledError:
            raise NoWorker(self._no_worker(f"the {control} update", plan_id)) from None
        except RPCError as e:  # NOT_FOUND: no such workflow, or it already closed
            desc = await self.describe(plan_id)
            if desc is None:
                raise PlanNotFound(plan_id, workflow_id_for(plan_id)) from e
            raise ControlRefused(
                f"{control} refused: the plan already ended {ended_status(desc)}"
            ) from None

    async def signal(self, plan_id: str, name: str, arg: dict[str, Any]) -> None:
        """Send the control ``name`` as its signal: accepted by Temporal, not awaited by
        the workflow (a refusal shows only in the plan's audit trail)."""
        if name not in CONTROL_MODELS:
            raise InvalidControl(f"unknown control {name!r}")
        try:
            await self._call(
                (await self.handle(plan_id)).signal(name, arg, rpc_timeout=self.rpc_timeout),
                f"the {name} signal",
            )
        except RPCError as e:  # NOT_FOUND: no such workflow, or it already closed
            desc = await self.describe(plan_id)
            if desc is None:
                raise PlanNotFound(plan_id, workflow_id_for(plan_id)) from e
            raise ControlRefused(
                f"{name} refused: the plan already ended {ended_status(desc)}"
            ) from None

    # --- starting and resuming ----------------------------------------------------

    async def start(
        self, plan: Plan, approval: Approval | None = None, submitted_by: str | None = None
    ) -> tuple[WorkflowHandle[Any, Any], bool]:
        """Start ``plan``; a plan already running is returned as it is (started=False).

        ``approval``: a person's approval given to the plan before it ran (a draft's); the
        run counts it only if the plan is still the document it saw (its digest).
        ``submitted_by``: the API key owner that created or started it (None with keys
        off), for the approval policy (``PlanInput.submitted_by``).
        Raises PlanAlreadyRan when its workflow already ended (resume it instead).
        """
        assert plan.id is not None
        desc = await self.describe(plan.id)
        if desc is not None:
            if desc.status == WorkflowExecutionStatus.RUNNING:
                return await self.handle(plan.id), False
            raise PlanAlreadyRan(plan.id, plan.workflow_id, ended_status(desc))
        from workflows.starter import plan_limits, start_plan

        try:
            handle = await self._call(
                start_plan(
                    await self.client(),
                    plan,
                    self.task_queue,
                    heartbeat_timeout_s=self.settings.temporal.heartbeat_timeout_s,
                    limits=plan_limits(self.settings),
                    approval=approval,
                    submitted_by=submitted_by,
                ),
                "start",
            )
        except WorkflowAlreadyStartedError:
            raise PlanAlreadyRan(plan.id, plan.workflow_id) from None
        except RPCError as e:
            raise TemporalError(f"start: {e.message}") from None
        return handle, True

    async def resume(self, plan_id: str, by: str) -> tuple[WorkflowHandle[Any, Any], int]:
        """Run a failed, partial or cancelled plan again, carrying its completed steps:
        the new run's handle and how many steps were carried (ResumeRefused otherwise)."""
        desc = await self.describe(plan_id)
        if desc is None:
            raise PlanNotFound(plan_id, workflow_id_for(plan_id))
        if desc.status == WorkflowExecutionStatus.RUNNING:
            # A plan shows its final status a moment before its run closes (its last
            # records are written first): wait for that, bounded, rather than refuse.
            view = await self.status(plan_id)
            if view.status.terminal:
                handle = await self.handle(plan_id)
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(handle.result(), timeout=self.rpc_timeout_s)
        from workflows.starter import plan_limits, resume_from_failure

        try:
            return await self._call(
                resume_from_failure(
                    await self.client(),
                    plan_id,
                    by,
                    self.task_queue,
                    heartbeat_timeout_s=self.settings.temporal.heartbeat_timeout_s,
                    limits=plan_limits(self.settings),
                ),
                "resume-from-failure",
            )
        except WorkflowAlreadyStartedError:
            raise ResumeRefused(f"plan {plan_id} was resumed meanwhile") from None
        except RPCError as e:
            raise TemporalError(f"resume-from-failure: {e.message}") from None

    # --- the planner --------------------------------------------------------------

    async def generate(self, req: PlanRequest) -> GeneratedPlan:
        """Run the LLM planner (the ``GeneratePlan`` workflow) and wait for its plan.

        Starting is bounded like every call; the planning itself may take minutes (model
        calls and repair rounds). Raises PlanningFailed, NoModelFits, LLMError as the
        planner does; PlannerUnavailable when no worker ran it or it did not finish.
        """
        from workflows.planner_workflow import run_planner

        client = await self.client()
        try:
            return await run_planner(
                client,
                req,
                self.task_queue,
                no_worker_after_s=self.rpc_timeout_s,
                rpc_timeout=self.rpc_timeout,
            )
        except RPCError as e:
            if e.status in _UNREACHABLE:
                raise TemporalUnavailable(
                    f"Temporal is unreachable for the planner: {e.message}"
                ) from None
            raise TemporalError(
                f"the planner: Temporal answered {e.status.name}: {e.message}"
            ) from None
        except RuntimeError as e:  # the client could not (re)connect
            raise TemporalUnavailable(f"Temporal is unreachable for the planner: {e}") from None


UNSUPPORTED_TTL_S = 30.0  # how long an older worker's "unknown query" is believed


def _unknown_query(message: str, name: str) -> bool:
    """A query-failed message that says the worker has no handler for the query."""
    text = message.lower()
    return f"'{name}'" in text and (
        "expected but not found" in text or "unknown query" in text or "no query handler" in text
    )


def page_of(view: StatusView, query: StepsQuery) -> StepsPage:
    """A page of a status that lists every step (an older worker's, a draft's, the
    store's): the steps query's answer computed by the caller."""
    chosen = [s for s in view.steps if query.status is None or s.status == query.status]
    return StepsPage(
        plan_id=view.plan_id,
        total=len(chosen),
        offset=query.offset,
        limit=query.limit,
        steps=chosen[query.offset : query.offset + query.limit],
    )


def change_time(status: StepStatus, started_at: Any, completed_at: Any) -> Any:
    """When a step reached ``status``, as far as its view tells."""
    if status.terminal:
        return completed_at
    if status == StepStatus.RUNNING:
        return started_at
    return None


class StatusDiff:
    """The ``changes`` query computed by a caller from successive ``status`` answers (an
    older worker): every step whose status or attempts differ from the previous answer
    is one change, numbered by this caller. Changes between two answers are seen as one
    (a step that started and finished in between is reported finished once)."""

    def __init__(self) -> None:
        self.seen: dict[str, tuple[StepStatus, int]] = {}
        self.seq = 0

    def diff(self, view: StatusView) -> list[StepChange]:
        found: list[StepChange] = []
        for s in view.steps:
            key = (s.status, s.attempts)
            if self.seen.get(s.id) == key:
                continue
            first = s.id not in self.seen
            self.seen[s.id] = key
            if first and s.status == StepStatus.PENDING:
                continue
            self.seq += 1
            found.append(
                StepChange(
                    seq=self.seq,
                    step_id=s.id,
                    status=s.status,
                    at=change_time(s.status, s.started_at, s.completed_at),
                    attempts=s.attempts,
                    error=s.error,
                )
            )
        return found


def plan_status_of(w: WorkflowExecution) -> PlanStatus | None:
    """The plan status a workflow last published (its ``PlanStatus`` search attribute)."""
    try:
        raw = w.typed_search_attributes.get(PLAN_STATUS)
    except Exception:  # an attribute of another type under the same name
        return None
    try:
        return PlanStatus(raw) if isinstance(raw, str) and raw else None
    except ValueError:
        return None


def ended_status(desc: WorkflowExecution) -> str:
    """How a closed workflow ended, in the plan's words when it published them."""
    status = plan_status_of(desc)
    if status is not None:
        return status.value
    return desc.status.name.lower() if desc.status is not None else "unknown"

"""The worker process: hosts ``PlanWorkflow``, the planner (``GeneratePlan``) and their
activities on a task queue.

This is where the activities get what they work with: one :class:`ActivityDeps` (the
settings, the model from :func:`activities.llm.factory.chat_model_from`, the store's engine)
built from the settings when the worker starts, handed to the activity classes whose
bound methods the workers register (:func:`activities_for`, :func:`sandbox_activities_for`).
With ``OTEL_*`` set it traces (its client's interceptor, its HTTP clients, its model),
and with ``PLANSMITH_WORKER_METRICS_PORT`` it serves the SDK's metrics
(:mod:`workflows.telemetry`).
"""

from __future__ import annotations

import asyncio
import ctypes
import logging
import os
from collections.abc import Callable, Sequence
from datetime import timedelta
from typing import Any

from temporalio.api.enums.v1 import IndexedValueType
from temporalio.api.operatorservice.v1 import (
    AddSearchAttributesRequest,
    ListSearchAttributesRequest,
)
from temporalio.client import Client
from temporalio.runtime import Runtime
from temporalio.service import RPCError
from temporalio.worker import Worker
from temporalio.worker.workflow_sandbox import SandboxedWorkflowRunner, SandboxRestrictions

from activities.approval import ApprovalActivities
from activities.deps import ActivityDeps
from activities.limits import LimiterActivities
from activities.persist import SnapshotActivities
from activities.planning import PlanningActivities
from activities.sandbox import SandboxActivities, SandboxUnavailable, isolation
from activities.secrets import SecretActivities, redact_logs
from activities.steps import StepActivities
from activities.telemetry import instrument_http_clients, traced_deps
from activities.webhooks import WebhookActivities, kick_dispatcher
from config import SandboxSettings, Settings, get_settings
from contracts.planning import GeneratedPlan, PlanRequest
from workflows.client import connect
from workflows.limiter_workflow import LimiterWorkflow
from workflows.plan_input import SEARCH_ATTRIBUTES
from workflows.plan_workflow import PlanWorkflow
from workflows.planner_workflow import GeneratePlanWorkflow
from workflows.telemetry import enable_tracing, metrics_runtime
from workflows.webhook_dispatcher import WebhookDispatcher

log = logging.getLogger("plansmith.worker")

WORKFLOWS: Sequence = (PlanWorkflow, GeneratePlanWorkflow, LimiterWorkflow, WebhookDispatcher)

# The sandbox imports every module that is not passed through anew for each workflow run.
# The workflows package's own modules (the pydantic models of PlanInput, the handlers, the
# step runner) cost ~0.4 MB per run that way: a worker holding 1,000 plans waiting for
# approval took 641 MiB, 319 MiB with them passed through (python -m bench.waiting). They
# keep no state of their own at module level (tests/test_architecture.py checks that none
# is mutated or declared global), so one copy serves every run.
WORKFLOW_RUNNER = SandboxedWorkflowRunner(
    restrictions=SandboxRestrictions.default.with_passthrough_modules("workflows")
)


def activities_for(deps: ActivityDeps) -> list[Callable[..., Any]]:
    """The plans queue's activities, working with ``deps``."""
    hooks = WebhookActivities(deps)
    return [
        StepActivities(deps).execute_step,
        SnapshotActivities(deps).record_snapshot,
        PlanningActivities(deps).generate_plan,
        PlanningActivities(deps).propose_replan,
        ApprovalActivities(deps).assess_approval,
        SecretActivities(deps).check_secrets,
        LimiterActivities().request_plan_slot,
        LimiterActivities().check_plan_slots,
        # webhooks (docs/webhooks.md): the dispatcher's activities
        hooks.claim_deliveries,
        hooks.send_delivery,
    ]


def sandbox_activities_for(deps: ActivityDeps) -> list[Callable[..., Any]]:
    """The sandbox queue's activity (``run_code``), working with ``deps``."""
    return [SandboxActivities(deps).run_code]


async def plan_in_this_process(req: PlanRequest) -> GeneratedPlan:
    """The planner run here, without Temporal (``plansmith plan --local``)."""
    return await PlanningActivities(ActivityDeps.from_settings(get_settings())).plan(req)


def build_worker(
    client: Client,
    task_queue: str,
    max_concurrent_activities: int = 100,
    deps: ActivityDeps | None = None,
) -> Worker:
    """The plans queue's worker; its activities work with ``deps`` (default: those the
    process's settings describe)."""
    deps = traced_deps(deps or ActivityDeps.from_settings(get_settings()))  # model spans
    return Worker(
        client,
        task_queue=task_queue,
        workflows=list(WORKFLOWS),
        workflow_runner=WORKFLOW_RUNNER,
        activities=activities_for(deps),
        max_concurrent_activities=max_concurrent_activities,
        # Cancellation reaches an activity only in answer to a heartbeat: send them often
        # enough that a cancel or a total timeout stops a running step within ~1 s.
        max_heartbeat_throttle_interval=timedelta(seconds=1),
        default_heartbeat_throttle_interval=timedelta(seconds=1),
    )


async def ensure_search_attributes(client: Client, namespace: str) -> None:
    """Register PlanStatus and WaitingFor on the server if they are missing.

    Plans upsert them on every change; on a server without them every workflow task
    would fail, so the worker makes sure they exist before it polls.
    """
    wanted = {key.name: IndexedValueType.INDEXED_VALUE_TYPE_KEYWORD for key in SEARCH_ATTRIBUTES}
    try:
        have = await client.operator_service.list_search_attributes(
            ListSearchAttributesRequest(namespace=namespace)
        )
        missing = {k: v for k, v in wanted.items() if k not in have.custom_attributes}
        if missing:
            await client.operator_service.add_search_attributes(
                AddSearchAttributesRequest(namespace=namespace, search_attributes=missing)
            )
            log.info("registered search attributes %s", ", ".join(missing))
    except RPCError as e:
        log.warning(
            "could not check or register search attributes %s: %s", ", ".join(wanted), e.message
        )


def build_sandbox_worker(
    client: Client, task_queue: str | None = None, deps: ActivityDeps | None = None
) -> Worker:
    """The code sandbox's pool: only ``run_code``, on its own queue (``sandbox``)."""
    deps = deps or ActivityDeps.from_settings(get_settings())
    sandbox = deps.settings.sandbox
    return Worker(
        client,
        task_queue=task_queue or sandbox.task_queue,
        activities=sandbox_activities_for(deps),
        max_concurrent_activities=sandbox.max_concurrent_runs,
        max_heartbeat_throttle_interval=timedelta(seconds=1),
        default_heartbeat_throttle_interval=timedelta(seconds=1),
    )


def check_sandbox(settings: SandboxSettings) -> None:
    """Say at start whether generated code can run here (steps are refused clearly if not)."""
    try:
        iso = isolation(settings)
    except SandboxUnavailable as e:
        log.error("code sandbox unavailable, python steps will be refused: %s", e)
    else:
        log.info("code sandbox: %s; python %s", iso.description, iso.python_version)


async def connect_patiently(s: Settings, runtime: Runtime | None = None) -> Client:
    """Connect to Temporal (on ``runtime``, when given), trying again (backing off to
    5 s) for up to ``PLANSMITH_WORKER_CONNECT_WAIT_S``: a worker started while the server
    restarts, or before it, waits for it instead of exiting."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + s.temporal.worker_connect_wait_s
    delay = 0.2
    while True:
        try:
            return await connect(s, runtime=runtime)
        except RuntimeError as e:  # the SDK's "Failed client connect: ..."
            left = deadline - loop.time()
            if left <= 0:
                raise
            log.warning(
                "Temporal at %s is not reachable yet (%s); trying again for %.0f s",
                s.temporal.address,
                str(e).splitlines()[0][:200],
                left,
            )
            await asyncio.sleep(min(delay, left))
            delay = min(delay * 2, 5.0)


# glibc's mallopt parameter for the number of malloc arenas (malloc.h: M_ARENA_MAX)
M_ARENA_MAX = -8
MALLOC_ARENAS = 2


def limit_malloc_arenas() -> bool:
    """At most :data:`MALLOC_ARENAS` malloc arenas (glibc), unless ``MALLOC_ARENA_MAX``
    says otherwise; called before the worker starts its threads.

    glibc gives each thread that allocates its own arena, up to 8 per core, and Temporal's
    core allocates from several threads: the free memory left in each arena stays in the
    worker's RSS. With 2, a worker holding 1,000 waiting plans takes ~8 MiB less
    (python -m bench.waiting). Returns whether the limit was set (not on other C
    libraries)."""
    if "MALLOC_ARENA_MAX" in os.environ:
        return False
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return False
    return bool(mallopt(M_ARENA_MAX, MALLOC_ARENAS))


async def run_worker(settings: Settings | None = None, queue: str | None = None) -> None:
    """Poll ``queue``; with no queue named, both the plans queue and the sandbox queue."""
    limit_malloc_arenas()
    s = settings or get_settings()
    redact_logs(s)  # no secret value reaches the worker's log
    deps = ActivityDeps.from_settings(s)
    sandbox_queue = s.sandbox.task_queue
    # --- tracing (OTEL_*) and the SDK's metrics (PLANSMITH_WORKER_METRICS_PORT) ---
    if enable_tracing("plansmith-worker"):
        instrument_http_clients(s)  # the tools' and the model's HTTP calls are spans
    runtime = metrics_runtime(s.temporal)
    if runtime is not None:
        log.info(
            "worker metrics for Prometheus at http://%s/metrics", s.temporal.worker_metrics_address
        )
    client = await connect_patiently(s, runtime)
    workers = []
    if queue != sandbox_queue:
        await ensure_search_attributes(client, s.temporal.namespace)
        workers.append(build_worker(client, queue or s.temporal.task_queue, deps=deps))
        # webhooks: deliveries left pending when every worker stopped go out again
        try:
            await kick_dispatcher(client, queue or s.temporal.task_queue, "worker start")
        except RPCError as e:
            log.warning("could not wake the webhook dispatcher: %s", e.message)
        log.info(
            "worker polling task queue %s at %s", queue or s.temporal.task_queue, s.temporal.address
        )
    if queue is None or queue == sandbox_queue:
        await asyncio.to_thread(check_sandbox, s.sandbox)
        workers.append(build_sandbox_worker(client, sandbox_queue, deps=deps))
        log.info("sandbox worker polling task queue %s", sandbox_queue)
    await asyncio.gather(*(w.run() for w in workers))


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO)
    asyncio.run(run_worker())

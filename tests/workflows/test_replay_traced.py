"""Tracing does not change what a workflow does: the recorded histories replay with
Temporal's ``TracingInterceptor`` on, in the worker's own sandbox, and a run recorded
with tracing on replays with it on or off. A replay opens no workflow span (the
interceptor makes them only when not replaying)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator, Sequence
from typing import Any

import pytest
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from temporalio.client import Client, WorkflowHistory
from temporalio.contrib.opentelemetry import TracingInterceptor
from temporalio.contrib.pydantic import pydantic_data_converter
from temporalio.testing import WorkflowEnvironment
from temporalio.worker import Replayer

from tests.helpers import make_plan, start, worker_with
from tests.workflows.test_replay import history_files, load
from worker import WORKFLOW_RUNNER
from workflows.plan_input import PlanResult
from workflows.plan_workflow import PlanWorkflow


@pytest.fixture
def exporter() -> Iterator[tuple[InMemorySpanExporter, TracerProvider]]:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    yield exporter, provider
    provider.shutdown()


async def replay(histories: Sequence[WorkflowHistory], interceptors: list[Any]) -> dict[str, str]:
    """Replay in the worker's sandbox; the failures by run id."""

    async def each() -> AsyncIterator[WorkflowHistory]:
        for h in histories:
            yield h

    replayer = Replayer(
        workflows=[PlanWorkflow],
        workflow_runner=WORKFLOW_RUNNER,
        data_converter=pydantic_data_converter,
        interceptors=interceptors,
    )
    results = await replayer.replay_workflows(each(), raise_on_replay_failure=False)
    return {run: f"{type(e).__name__}: {e}" for run, e in results.replay_failures.items()}


async def test_the_recorded_histories_replay_with_tracing_on(
    exporter: tuple[InMemorySpanExporter, TracerProvider],
) -> None:
    spans, provider = exporter
    histories = [load(p) for p in history_files()]
    tracing = TracingInterceptor(provider.get_tracer("replay"), always_create_workflow_spans=True)
    failures = await replay(histories, [tracing])
    assert not failures, failures
    assert not [s.name for s in spans.get_finished_spans()]  # replaying: no workflow spans


async def test_a_run_recorded_with_tracing_replays_with_it_on_and_off(
    env: WorkflowEnvironment,
    task_queue: str,
    exporter: tuple[InMemorySpanExporter, TracerProvider],
) -> None:
    spans, provider = exporter
    tracing = TracingInterceptor(provider.get_tracer("run"))
    client = Client(
        env.client.service_client,
        namespace=env.client.namespace,
        data_converter=env.client.data_converter,
        interceptors=[tracing],
    )
    plan = make_plan(  # a fast-path step (local activity) then an ordinary one
        [
            {"id": "t", "tool": "transform", "params": {"data": {"x": [1]}, "expression": "x"}},
            {"id": "w", "tool": "wait", "params": {"seconds": 0}, "depends_on": ["t"]},
        ]
    )
    async with worker_with(client, task_queue):
        handle = await start(client, plan, task_queue)
        assert PlanResult.model_validate(await handle.result()).status == "completed"
    recorded = [s.name for s in spans.get_finished_spans()]
    assert recorded.count("RunWorkflow:PlanWorkflow") == 1
    assert recorded.count("RunActivity:execute_step") == 2
    history = await handle.fetch_history()
    spans.clear()

    assert not await replay([history], [TracingInterceptor(provider.get_tracer("replay"))])
    assert not await replay([history], [])
    assert not [s.name for s in spans.get_finished_spans()]

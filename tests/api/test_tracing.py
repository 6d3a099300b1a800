"""Tracing: one plan run through the API is one trace, from the request to each step's
HTTP and model calls, with the steps' identity on their spans; exported to an OTLP/HTTP
receiver when ``OTEL_EXPORTER_OTLP_ENDPOINT`` names one; nothing loaded otherwise.

The API (in-process, as the other API tests), a worker and the "outside" HTTP server all
run here against the session's dev server; spans go to an in-memory exporter, or to a
receiver on 127.0.0.1 that this test starts.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import subprocess
import sys
import threading
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
from opentelemetry import trace
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind
from temporalio.client import Client
from temporalio.contrib.opentelemetry import TracingInterceptor
from temporalio.testing import WorkflowEnvironment

from config import get_settings
from plans.models import PlanStatus
from tests.api.serving import serve
from tests.api.test_plans_routes import make_app, parse_sse
from tests.helpers import worker_with
from tests.otlp_receiver import OtlpReceiver
from tests.tracing_helpers import reset_tracing, traced_in_memory
from workflows.client import connect
from workflows.plan_input import PlanResult

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


@pytest.fixture
def spans() -> Iterator[InMemorySpanExporter]:
    """This process traces into memory; HTTP clients are instrumented like a worker's."""
    with traced_in_memory() as exporter:
        yield exporter


@dataclass
class Outside:
    """A server standing for the outside world: what it was asked, with which headers."""

    base: str
    asked: list[tuple[str, dict[str, str]]] = field(default_factory=list)


@pytest.fixture
def outside() -> Iterator[Outside]:
    got = Outside(base="")

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            got.asked.append((self.path, {k.lower(): v for k, v in self.headers.items()}))
            body = json.dumps({"items": [3, 4, 5]}).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: Any) -> None:
            pass

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    got.base = f"http://127.0.0.1:{httpd.server_address[1]}"
    yield got
    httpd.shutdown()
    httpd.server_close()


def three_steps(plan_id: str, base: str) -> dict[str, Any]:
    """fetch (http_request, an ordinary activity) -> total (transform: the fast path, a
    local activity) -> say (llm: the worker's model)."""
    return {
        "id": plan_id,
        "title": "traced",
        "options": {"require_approval": False},
        "steps": [
            {
                "id": "fetch",
                "tool": "http_request",
                "params": {"url": f"{base}/items?token=s3cret-token&page=2"},
            },
            {
                "id": "total",
                "tool": "transform",
                "params": {
                    "data": {"xs": "{{ steps.fetch.output.body.items }}"},
                    "fields": {"total": "sum(xs)"},
                },
                "depends_on": ["fetch"],
            },
            {
                "id": "say",
                "kind": "llm",
                "params": {"prompt": "say the total: {{ steps.total.output.total }}"},
                "depends_on": ["total"],
            },
        ],
    }


async def traced_client(env: WorkflowEnvironment) -> Client:
    """A client made the way the API, the CLI and the worker make theirs."""
    target = env.client.service_client.config.target_host
    return await connect(get_settings().replace(temporal={"address": target}))


@contextlib.asynccontextmanager
async def api_and_worker(client: Client, task_queue: str) -> AsyncIterator[Any]:
    async with worker_with(client, task_queue), serve(make_app(client, task_queue)) as http:
        yield http


async def run_plan(http: Any, client: Client, doc: dict[str, Any]) -> None:
    r = await http.post("/api/plans", json=doc)
    assert r.status_code == 201, r.text
    r = await http.post(f"/api/plans/{doc['id']}/execute")
    assert r.status_code == 202, r.text
    handle = client.get_workflow_handle(f"plan-{doc['id']}", result_type=PlanResult)
    result = await asyncio.wait_for(handle.result(), 30)
    assert result.status == PlanStatus.COMPLETED, result


def attrs(span: ReadableSpan) -> dict[str, Any]:
    return dict(span.attributes or {})


def parent_id(span: ReadableSpan) -> int | None:
    return span.parent.span_id if span.parent else None


async def test_one_plan_run_is_one_trace_from_the_request_to_each_steps_calls(
    env: WorkflowEnvironment, task_queue: str, spans: InMemorySpanExporter, outside: Outside
) -> None:
    client = await traced_client(env)
    assert any(isinstance(i, TracingInterceptor) for i in client.config()["interceptors"])
    plan_id = f"tr-{uuid.uuid4().hex[:10]}"
    async with api_and_worker(client, task_queue) as http:
        await run_plan(http, client, three_steps(plan_id, outside.base))
    finished = list(spans.get_finished_spans())

    # the request that executed the plan is the root of the run's trace
    [request] = [
        s
        for s in finished
        if s.kind == SpanKind.SERVER and s.name == "POST /api/plans/{plan_id}/execute"
    ]
    assert request.parent is None
    assert request.context is not None
    run = [s for s in finished if s.context and s.context.trace_id == request.context.trace_id]
    by_name: dict[str, list[ReadableSpan]] = {}
    for s in run:
        by_name.setdefault(s.name, []).append(s)
    by_id = {s.context.span_id: s for s in run if s.context}

    [start] = by_name["StartWorkflow:PlanWorkflow"]
    [workflow] = by_name["RunWorkflow:PlanWorkflow"]
    assert parent_id(start) == request.context.span_id
    assert parent_id(workflow) == start.context.span_id  # type: ignore[union-attr]
    assert attrs(workflow)["temporalWorkflowID"] == f"plan-{plan_id}"

    # one span per step activity, the fast path's local activity included, each carrying
    # the step's identity; each hangs from the workflow's run
    steps = {attrs(s).get("plansmith.step_id"): s for s in by_name["RunActivity:execute_step"]}
    assert set(steps) == {"fetch", "total", "say"}
    for sid, s in steps.items():
        a = attrs(s)
        assert a["plansmith.plan_id"] == plan_id
        assert a["plansmith.version"] == 1
        assert a["plansmith.attempt"] == 1
        assert a["temporalWorkflowID"] == f"plan-{plan_id}"
        ancestor, hops = s, 0
        while parent_id(ancestor) is not None and hops < 10:
            ancestor, hops = by_id[parent_id(ancestor)], hops + 1  # type: ignore[index]
        assert ancestor is request, sid
    assert attrs(steps["total"])["plansmith.tool"] == "transform"
    assert attrs(steps["fetch"])["plansmith.tool"] == "http_request"

    # the fetch step's HTTP call is its child, shown with the URL the step asked for (its
    # token redacted), and the trace went along to the server it called
    [call] = [s for s in run if s.kind == SpanKind.CLIENT and s.name == "GET"]
    assert parent_id(call) == steps["fetch"].context.span_id  # type: ignore[union-attr]
    shown = attrs(call).get("url.full") or attrs(call).get("http.url")
    assert shown == f"{outside.base}/items?token=***&page=2"
    [(path, headers)] = outside.asked
    assert path == "/items?token=s3cret-token&page=2"
    assert headers["traceparent"].split("-")[1] == f"{request.context.trace_id:032x}"
    assert "s3cret-token" not in json.dumps([attrs(s) for s in finished])

    # the llm step's model call is its child
    [chat] = [s for s in run if s.name.startswith("chat ")]
    assert parent_id(chat) == steps["say"].context.span_id  # type: ignore[union-attr]
    assert attrs(chat)["gen_ai.operation.name"] == "chat"
    assert attrs(chat)["gen_ai.usage.output_tokens"] > 0


# --- OTLP/HTTP ----------------------------------------------------------------------------


async def test_an_event_streams_polls_do_not_join_the_watchers_trace(
    env: WorkflowEnvironment, task_queue: str, spans: InMemorySpanExporter
) -> None:
    """The feed behind ``/events`` polls the workflow several times a second while anyone
    watches; those polls are not traced (a trace per watcher would grow without end)."""
    client = await traced_client(env)
    plan_id = f"tr-{uuid.uuid4().hex[:10]}"
    doc = {
        "id": plan_id,
        "title": "watched",
        "options": {"require_approval": False},
        "steps": [{"id": "w", "tool": "wait", "params": {"seconds": 1.5}}],
    }
    async with api_and_worker(client, task_queue) as http:
        assert (await http.post("/api/plans", json=doc)).status_code == 201
        assert (await http.post(f"/api/plans/{plan_id}/execute")).status_code == 202
        r = await http.get(f"/api/plans/{plan_id}/events")  # the whole stream, to its end
        assert r.status_code == 200
        events = parse_sse(r.text)
    # what the feed's polls saw after the stream's first read
    assert [e["data"]["status"] for e in events if e["event"] == "step"][-1] == "completed"
    assert events[-1]["event"] == "end"
    names = [s.name for s in spans.get_finished_spans()]
    [watch] = [s for s in spans.get_finished_spans() if s.name == "GET /api/plans/{plan_id}/events"]
    in_watch = [
        s.name
        for s in spans.get_finished_spans()
        if s.context and watch.context and s.context.trace_id == watch.context.trace_id
    ]
    assert "QueryWorkflow:changes" not in names and "HandleQuery:changes" not in names
    assert len(in_watch) <= 3, in_watch  # the request, and its first read of the status


@pytest.fixture
def receiver() -> Iterator[OtlpReceiver]:
    with OtlpReceiver() as r:
        yield r


async def test_with_an_otlp_endpoint_one_plan_run_reaches_the_receiver_as_one_trace(
    env: WorkflowEnvironment,
    task_queue: str,
    receiver: OtlpReceiver,
    outside: Outside,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", receiver.endpoint)
    monkeypatch.setenv("OTEL_SERVICE_NAME", "plansmith-under-test")
    plan_id = f"tr-{uuid.uuid4().hex[:10]}"
    try:
        client = await traced_client(env)  # installs the SDK's provider, as a process would
        provider = trace.get_tracer_provider()
        assert isinstance(provider, TracerProvider)
        async with api_and_worker(client, task_queue) as http:
            await run_plan(http, client, three_steps(plan_id, outside.base))
        assert provider.force_flush(10_000)
    finally:
        provider = trace.get_tracer_provider()
        if isinstance(provider, TracerProvider):
            provider.shutdown()
        reset_tracing()

    assert set(receiver.paths) == {"/v1/traces"}
    received = receiver.spans()
    assert {r.service for r in received} == {"plansmith-under-test"}
    [request] = [r for r in received if r.name == "POST /api/plans/{plan_id}/execute"]
    run = [r for r in received if r.trace_id == request.trace_id]
    assert [r.name for r in run].count("RunWorkflow:PlanWorkflow") == 1
    steps = [r.attribute("plansmith.step_id") for r in run if r.name == "RunActivity:execute_step"]
    assert sorted(steps) == ["fetch", "say", "total"]


def cli_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("OTEL_")}
    return {**env, "PYTHONPATH": ROOT, **extra}


def test_without_otel_variables_the_cli_loads_no_opentelemetry() -> None:
    """``plansmith status`` (which connects to Temporal, here to nothing) imports none of
    OpenTelemetry when no OTEL_* variable asks for traces."""
    probe = (
        "import sys\n"
        "from plansmith.cli.main import run_cli\n"
        "code = run_cli(['status', 'nothing-here'])\n"
        "print(code, sorted(m for m in sys.modules if m.startswith('opentelemetry')))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", probe],
        env=cli_env(TEMPORAL_ADDRESS="127.0.0.1:1"),  # nothing listens: status fails fast
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert "cannot reach Temporal" in out.stderr
    assert out.stdout.strip().splitlines()[-1] == "2 []", out.stdout + out.stderr


async def test_a_plan_started_by_the_cli_is_traced_from_its_start(
    env: WorkflowEnvironment,
    task_queue: str,
    spans: InMemorySpanExporter,
    receiver: OtlpReceiver,
    outside: Outside,
    tmp_path: Any,
) -> None:
    """``plansmith run`` (its own process, exporting to the receiver) starts the plan; the
    worker (here, tracing into memory) runs it in the trace the CLI began, and the CLI's
    span is sent before it exits."""
    plan_id = f"tr-{uuid.uuid4().hex[:10]}"
    doc = tmp_path / "plan.json"
    doc.write_text(json.dumps(three_steps(plan_id, outside.base)))
    target = env.client.service_client.config.target_host
    client = await traced_client(env)
    async with worker_with(client, task_queue):
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "plansmith.cli",
            "run",
            str(doc),
            env=cli_env(
                TEMPORAL_ADDRESS=target,
                PLANSMITH_TASK_QUEUE=task_queue,
                OTEL_EXPORTER_OTLP_ENDPOINT=receiver.endpoint,
            ),
            cwd=ROOT,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        out, errs = await asyncio.wait_for(proc.communicate(), 60)
        assert proc.returncode == 0, (out + errs).decode()
        handle = client.get_workflow_handle(f"plan-{plan_id}", result_type=PlanResult)
        assert (await asyncio.wait_for(handle.result(), 30)).status == PlanStatus.COMPLETED

    [started] = [r for r in receiver.spans() if r.name == "StartWorkflow:PlanWorkflow"]
    assert started.service == "plansmith"
    in_worker = [s for s in spans.get_finished_spans() if s.context]
    run = [s for s in in_worker if f"{s.context.trace_id:032x}" == started.trace_id]  # type: ignore[union-attr]
    assert [s.name for s in run].count("RunWorkflow:PlanWorkflow") == 1
    assert sorted(
        attrs(s)["plansmith.step_id"] for s in run if s.name == "RunActivity:execute_step"
    ) == ["fetch", "say", "total"]

"""Acceptance, as an operator runs it: a worker and an API as processes, both with
``OTEL_EXPORTER_OTLP_ENDPOINT`` pointing at a local OTLP/HTTP receiver, and the worker
with ``PLANSMITH_WORKER_METRICS_PORT``. One plan run through the API reaches the receiver
as one trace (the API request, the workflow, one span per step, the step's HTTP call),
and the worker's metrics endpoint serves the Temporal SDK's metrics of that run."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path

import httpx
import pytest

from tests.e2e.test_secrets import ROOT, free_port, spawn, wait_ready
from tests.echo_server import EchoServer
from tests.otlp_receiver import OtlpReceiver

pytestmark = pytest.mark.slow


def stop_gracefully(proc: subprocess.Popen[bytes]) -> int | None:
    """SIGINT, as Ctrl-C (the process sends its last spans as it stops), then SIGKILL."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)
    return proc.returncode


async def scrape(url: str, wanted: str, seconds: float = 20) -> str:
    """The metrics page once it shows ``wanted`` (metrics are updated as tasks complete)."""
    deadline = time.monotonic() + seconds
    text = ""
    async with httpx.AsyncClient(timeout=5) as http:
        while time.monotonic() < deadline:
            try:
                text = (await http.get(url)).text
            except httpx.TransportError:
                text = ""
            if wanted in text:
                return text
            await asyncio.sleep(0.2)
    raise AssertionError(f"{wanted!r} not in the metrics of {url}:\n{text[:2000]}")


async def test_a_plan_through_processes_is_one_trace_and_the_worker_serves_its_metrics(
    env, task_queue: str, tmp_path: Path
) -> None:
    address = env.client.service_client.config.target_host
    metrics_port, api_port = free_port(), free_port()
    with OtlpReceiver() as receiver, EchoServer() as outside:
        base = {k: v for k, v in os.environ.items() if not k.startswith("OTEL_")}
        base.update(
            {
                "TEMPORAL_ADDRESS": address,
                "PLANSMITH_TASK_QUEUE": task_queue,
                "DATABASE_URL": f"sqlite:///{tmp_path / 'store.db'}",
                "OTEL_EXPORTER_OTLP_ENDPOINT": receiver.endpoint,
                "OTEL_BSP_SCHEDULE_DELAY": "200",  # ms: spans leave soon after they end
            }
        )
        worker_env = {**base, "PLANSMITH_WORKER_METRICS_PORT": str(metrics_port)}
        logs = {"worker": tmp_path / "worker.log", "api": tmp_path / "api.log"}
        worker = spawn(["worker", "--queue", task_queue], worker_env, logs["worker"])
        api = spawn(["api", "--port", str(api_port)], base, logs["api"])
        plan_id = f"otel-{uuid.uuid4().hex[:8]}"
        try:
            async with httpx.AsyncClient(
                base_url=f"http://127.0.0.1:{api_port}",
                headers={"Content-Type": "application/json"},
                timeout=30,
            ) as http:
                await wait_ready(http, api)
                plan = {
                    "id": plan_id,
                    "title": "traced by processes",
                    "options": {"require_approval": False},
                    "steps": [
                        {"id": "a", "tool": "http_request", "params": {"url": f"{outside.url}/a"}},
                        {"id": "b", "tool": "wait", "params": {"seconds": 0}, "depends_on": ["a"]},
                        {
                            "id": "c",
                            "tool": "transform",
                            "params": {"data": {"x": [1, 2]}, "expression": "x"},
                            "depends_on": ["b"],
                        },
                    ],
                }
                assert (await http.post("/api/plans", json=plan)).status_code == 201
                assert (await http.post(f"/api/plans/{plan_id}/execute")).status_code == 202
                deadline = time.monotonic() + 60
                while (st := (await http.get(f"/api/plans/{plan_id}/status")).json())[
                    "status"
                ] != "completed":
                    assert st["status"] not in ("failed", "cancelled"), st
                    assert time.monotonic() < deadline, st
                    await asyncio.sleep(0.3)

            # the worker's metrics, on loopback, with this run's workflow and activities
            page = await scrape(
                f"http://127.0.0.1:{metrics_port}/metrics", "temporal_activity_execution_latency"
            )
            assert f'task_queue="{task_queue}"' in page
            assert "temporal_workflow_completed" in page or "temporal_workflow_task" in page
        finally:
            codes = {"api": stop_gracefully(api), "worker": stop_gracefully(worker)}
        logs_text = {k: v.read_text() for k, v in logs.items()}
        assert codes == {"api": 0, "worker": 0}, logs_text
        assert (
            f"worker metrics for Prometheus at http://127.0.0.1:{metrics_port}/metrics"
            in (logs_text["worker"])
        )

        received = receiver.spans()
        [request] = [r for r in received if r.name == "POST /api/plans/{plan_id}/execute"]
        assert request.service == "plansmith-api"
        run = [r for r in received if r.trace_id == request.trace_id]
        [workflow] = [r for r in run if r.name == "RunWorkflow:PlanWorkflow"]
        assert workflow.service == "plansmith-worker"
        steps = {
            r.attribute("plansmith.step_id"): r for r in run if r.name == "RunActivity:execute_step"
        }
        assert set(steps) == {"a", "b", "c"}
        assert {r.attribute("plansmith.plan_id") for r in steps.values()} == {plan_id}
        [call] = [r for r in run if r.name == "GET"]
        assert call.span.parent_span_id == steps["a"].span.span_id
        [asked] = outside.requests
        assert asked["headers"]["traceparent"].split("-")[1] == request.trace_id


def test_a_worker_whose_metrics_port_is_taken_stops_at_start_saying_so(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        env = {k: v for k, v in os.environ.items() if not k.startswith("OTEL_")}
        env.update(
            {
                "PLANSMITH_WORKER_METRICS_PORT": str(port),
                "TEMPORAL_ADDRESS": "127.0.0.1:1",  # never reached: the port is refused first
                "DATABASE_URL": f"sqlite:///{tmp_path / 'store.db'}",
            }
        )
        done = subprocess.run(
            [sys.executable, "-m", "plansmith.cli", "worker", "--queue", "metrics-taken"],
            cwd=ROOT,
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
        )
    assert done.returncode == 2, done.stderr
    last = done.stderr.strip().splitlines()[-1]
    assert last.startswith(f"error: cannot serve the worker's metrics on 127.0.0.1:{port} "), last
    assert "PLANSMITH_WORKER_METRICS_PORT" in last
    assert "Traceback" not in done.stderr

"""The worker's Temporal SDK metrics for Prometheus (``PLANSMITH_WORKER_METRICS_PORT``):
a worker on a runtime of its own serves them on the port, on loopback by default, and a
port that cannot be bound is refused with the variables' names."""

from __future__ import annotations

import asyncio
import socket
import time

import httpx
import pytest
from temporalio.testing import WorkflowEnvironment

from config import ConfigError, get_settings
from tests.helpers import make_plan, start, worker_with
from workflows.client import connect
from workflows.plan_input import PlanResult
from workflows.telemetry import MetricsUnavailable, metrics_runtime


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def scrape_until(url: str, wanted: str, seconds: float = 20) -> str:
    deadline = time.monotonic() + seconds
    text = ""
    async with httpx.AsyncClient(timeout=5) as http:
        while time.monotonic() < deadline:
            text = (await http.get(url)).text
            if wanted in text:
                return text
            await asyncio.sleep(0.1)
    raise AssertionError(f"{wanted!r} never appeared in {url}:\n{text[:2000]}")


async def test_a_worker_with_a_metrics_port_serves_the_sdks_metrics_of_its_runs(
    env: WorkflowEnvironment, task_queue: str
) -> None:
    port = free_port()
    target = env.client.service_client.config.target_host
    settings = get_settings().replace(
        temporal={"address": target, "worker_metrics_port": port, "task_queue": task_queue}
    )
    assert settings.temporal.worker_metrics_address == f"127.0.0.1:{port}"  # loopback
    runtime = metrics_runtime(settings.temporal)
    assert runtime is not None
    client = await connect(settings, runtime=runtime)
    plan = make_plan(
        [{"id": "t", "tool": "transform", "params": {"data": {"x": [1]}, "expression": "x"}}]
    )
    async with worker_with(client, task_queue):
        handle = await start(client, plan, task_queue)
        result = await handle.result()
        assert PlanResult.model_validate(result).status == "completed"
        url = f"http://127.0.0.1:{port}/metrics"
        page = await scrape_until(url, "temporal_workflow_completed")
    lines = [line for line in page.splitlines() if f'task_queue="{task_queue}"' in line]
    assert any(
        line.startswith("temporal_workflow_completed") and 'workflow_type="PlanWorkflow"' in line
        for line in lines
    ), page[:2000]
    assert any(line.startswith("temporal_activity_execution_latency") for line in lines)


def test_without_a_port_there_is_no_metrics_runtime() -> None:
    assert (
        get_settings()
        .replace(temporal={"worker_metrics_port": None})
        .temporal.worker_metrics_address
        is None
    )
    assert (
        metrics_runtime(get_settings().replace(temporal={"worker_metrics_port": None}).temporal)
        is None
    )


def test_a_port_that_cannot_be_bound_is_refused_naming_the_variables() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        settings = get_settings().replace(temporal={"worker_metrics_port": port})
        with pytest.raises(MetricsUnavailable) as e:
            metrics_runtime(settings.temporal)
    assert f"127.0.0.1:{port}" in str(e.value)
    assert "PLANSMITH_WORKER_METRICS_PORT" in str(e.value)


@pytest.mark.parametrize(
    ("host", "address"),
    [("0.0.0.0", "0.0.0.0:9464"), ("::", "[::]:9464"), ("[::1]", "[::1]:9464")],
)
def test_the_metrics_host_binds_elsewhere_when_told(host: str, address: str) -> None:
    temporal = (
        get_settings()
        .replace(temporal={"worker_metrics_port": 9464, "worker_metrics_host": host})
        .temporal
    )
    assert temporal.worker_metrics_address == address


def test_a_port_out_of_range_is_a_configuration_error() -> None:
    with pytest.raises(ConfigError, match="PLANSMITH_WORKER_METRICS_PORT"):
        get_settings().replace(temporal={"worker_metrics_port": 70000})

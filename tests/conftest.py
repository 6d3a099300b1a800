"""Shared fixtures: one local dev server per session (signals, updates, queries), one
time-skipping server per session (timers), both from the pip-installed binaries, and a
worker on a fresh task queue per test."""

from __future__ import annotations

import os
import socket
import tempfile
import threading
import time
import uuid
from collections.abc import AsyncIterator, Iterator

import pytest
import pytest_asyncio
from temporalio.client import Client
from temporalio.contrib.pydantic import pydantic_data_converter
from temporalio.testing import WorkflowEnvironment
from temporalio.worker import Worker

import tests.tools_for_tests  # noqa: F401  registers the test tools
from plansmith.temporal import temporal_cli_path, test_server_path
from worker import build_worker
from workflows.plan_workflow import SEARCH_ATTRIBUTES


def pytest_configure(config: pytest.Config) -> None:
    """Workers in the tests record plans in a store of their own, never in ./plansmith.db
    (subprocesses the tests start inherit it)."""
    store_dir = tempfile.mkdtemp(prefix="plansmith-tests-")
    os.environ["DATABASE_URL"] = f"sqlite:///{store_dir}/store.db"
    # No test talks to the real Anthropic API: without a key the offline model answers,
    # and the Anthropic path is tested against a mocked transport (test_llm_anthropic).
    os.environ.pop("ANTHROPIC_API_KEY", None)


@pytest_asyncio.fixture(scope="session")
async def env() -> AsyncIterator[WorkflowEnvironment]:
    async with await WorkflowEnvironment.start_local(
        dev_server_existing_path=temporal_cli_path(),
        data_converter=pydantic_data_converter,
        search_attributes=SEARCH_ATTRIBUTES,
    ) as e:
        yield e


@pytest_asyncio.fixture(scope="session")
async def ts_env() -> AsyncIterator[WorkflowEnvironment]:
    async with await WorkflowEnvironment.start_time_skipping(
        test_server_existing_path=test_server_path(),
        data_converter=pydantic_data_converter,
    ) as e:
        yield e


@pytest.fixture
def task_queue() -> str:
    return f"tq-{uuid.uuid4()}"


@pytest_asyncio.fixture
async def client(env: WorkflowEnvironment) -> Client:
    return env.client


@pytest_asyncio.fixture
async def worker(env: WorkflowEnvironment, task_queue: str) -> AsyncIterator[Worker]:
    w = build_worker(env.client, task_queue)
    async with w:
        yield w


@pytest.fixture
def local_server() -> Iterator[tuple[int, list[str]]]:
    """A TCP server on 127.0.0.1 that records every connection it accepts."""
    srv = socket.create_server(("127.0.0.1", 0))
    srv.settimeout(0.2)
    seen: list[str] = []
    stop = threading.Event()

    def serve() -> None:
        while not stop.is_set():
            try:
                conn, addr = srv.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            seen.append(f"{addr[0]}:{addr[1]}")
            conn.close()

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    port = srv.getsockname()[1]
    # the server works: the test itself can reach it
    socket.create_connection(("127.0.0.1", port), timeout=2).close()
    deadline = time.monotonic() + 2
    while not seen and time.monotonic() < deadline:
        time.sleep(0.01)
    assert len(seen) == 1
    seen.clear()
    yield port, seen
    stop.set()
    srv.close()
    thread.join(timeout=2)

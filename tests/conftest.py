"""Shared fixtures: one local dev server per session (signals, updates, queries), one
time-skipping server per session (timers), both from the pip-installed binaries, and a
worker on a fresh task queue per test."""

from __future__ import annotations

import os
import tempfile
import uuid
from collections.abc import AsyncIterator

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

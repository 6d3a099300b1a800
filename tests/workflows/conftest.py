"""Fixtures of the workflow tests."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator

import pytest_asyncio
from temporalio.testing import WorkflowEnvironment

from worker import build_worker


@pytest_asyncio.fixture
async def ts(ts_env: WorkflowEnvironment) -> AsyncIterator[tuple[WorkflowEnvironment, str]]:
    """The time-skipping server and a fresh task queue with a worker polling it."""
    tq = f"ts-{uuid.uuid4()}"
    async with build_worker(ts_env.client, tq):
        yield ts_env, tq

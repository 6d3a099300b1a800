"""Fixtures of the workflow tests."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator

import pytest_asyncio
from temporalio.testing import WorkflowEnvironment

from worker import build_worker


@pytest_asyncio.fixture
async def ts(ts_env: WorkflowEnvironment) -> AsyncIterator[tuple[WorkflowEnvironment, str]]:
    """The time-skipping server and a fresh task queue with a worker polling it.

    The server skips time only while no activity is outstanding, so the plans these tests
    start leave the store out (``persist=False``): a store snapshot held up by the shared
    test store would hold the clock still (seen once in a full run: an hour-long approval
    timeout that never fired)."""
    tq = f"ts-{uuid.uuid4()}"
    async with build_worker(ts_env.client, tq):
        yield ts_env, tq

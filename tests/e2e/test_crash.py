"""A worker killed with SIGKILL mid-plan: a new worker finishes the plan and no completed
step runs twice (counted by a local HTTP server that sees every request); a ``POST`` cut
off by the kill and sent again on resume-from-failure carries the same idempotency key."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

from contracts.steps import request_key
from plans.models import Plan
from tests.helpers import start, status, wait_for
from tests.key_server import KeyServer
from workflows.starter import resume_from_failure

ROOT = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.slow


def spawn_worker(env, task_queue: str) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, "-m", "plansmith.cli", "worker", "--queue", task_queue],
        cwd=ROOT,
        env={**os.environ, "TEMPORAL_ADDRESS": env.client.service_client.config.target_host},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )


async def test_sigkill_worker_mid_plan_then_new_worker_finishes_without_repeats(env, task_queue):
    with KeyServer() as server:
        plan = Plan.model_validate(
            {
                "id": f"crash-{uuid.uuid4().hex[:8]}",
                "options": {"require_approval": False},
                "steps": [
                    {
                        "id": "first",
                        "tool": "http_request",
                        "params": {"url": server.url("/first")},
                    },
                    {
                        "id": "long",
                        "tool": "wait",
                        "params": {"seconds": 3},
                        "depends_on": ["first"],
                    },
                    {
                        "id": "last",
                        "tool": "http_request",
                        "params": {"url": server.url("/last")},
                        "depends_on": ["long"],
                    },
                ],
            }
        )
        worker = spawn_worker(env, task_queue)
        try:
            handle = await start(env.client, plan, task_queue, heartbeat_timeout_s=2)
            await wait_for(handle, lambda s: s.steps[1].status == "running", timeout=30)
            os.killpg(worker.pid, signal.SIGKILL)
            worker.wait()
            worker = spawn_worker(env, task_queue)
            res = await asyncio.wait_for(handle.result(), timeout=60)
            st = await status(handle)  # queries need a live worker
        finally:
            if worker.poll() is None:
                os.killpg(worker.pid, signal.SIGINT)
                try:
                    worker.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    os.killpg(worker.pid, signal.SIGKILL)
                    worker.wait()
        assert res.status == "completed"
        assert server.paths["/first"] == 1, "a completed step ran again after the crash"
        assert server.paths["/last"] == 1
        first = plan.step("first")
        assert (
            server.keys[request_key(plan.id or "", "first", first.kind, first.tool, first.params)]
            == 1
        )
        long = next(s for s in st.steps if s.id == "long")
        assert long.attempts == 2, (
            "the interrupted step runs again after its heartbeat timeout, though it has no retries of its own"
        )


async def test_sigkill_after_a_post_reached_the_server_then_resume_sends_one_key(env, task_queue):
    """The worker dies right after the POST reached the server; the step (not idempotent,
    so never re-run by itself) fails, the plan fails, a person resumes it unchanged: the
    server sees the POST again under the key it already knows, so it can answer it
    without a second effect."""
    with KeyServer() as server:
        plan = Plan.model_validate(
            {
                "id": f"post-crash-{uuid.uuid4().hex[:8]}",
                "options": {"require_approval": False},
                "steps": [
                    {
                        "id": "charge",
                        "tool": "http_request",
                        "idempotent": False,
                        "params": {
                            "url": server.url("/hold"),
                            "method": "POST",
                            "json": {"amount": 42},
                        },
                    },
                ],
            }
        )
        worker = spawn_worker(env, task_queue)
        try:
            handle = await start(env.client, plan, task_queue, heartbeat_timeout_s=2)
            assert await asyncio.to_thread(server.arrived.wait, 30), "the POST never arrived"
            os.killpg(worker.pid, signal.SIGKILL)  # the request reached the server
            worker.wait()
            server.release()
            worker = spawn_worker(env, task_queue)
            first = await asyncio.wait_for(handle.result(), timeout=60)
            assert first.status == "failed"
            assert "not idempotent" in (first.final_steps["charge"].error or "")
            handle2, carried = await resume_from_failure(
                env.client, plan.id or "", by="rita", task_queue=task_queue
            )
            assert carried == 0
            second = await asyncio.wait_for(handle2.result(), timeout=60)
        finally:
            if worker.poll() is None:
                os.killpg(worker.pid, signal.SIGINT)
                try:
                    worker.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    os.killpg(worker.pid, signal.SIGKILL)
                    worker.wait()
        assert second.status == "completed"
        keys = server.requests("/hold", "POST")
        assert len(keys) == 2, keys  # sent once per run...
        assert len(set(keys)) == 1, keys  # ...under one idempotency key
        step = plan.step("charge")
        assert keys[0] == request_key(plan.id or "", "charge", step.kind, step.tool, step.params)


async def test_a_worker_started_before_temporal_is_reachable_waits_for_it(
    env, task_queue, tmp_path
):
    """A worker started while the server is down (restarting, or a stack starting in any
    order) keeps trying to connect instead of exiting, then runs plans once it is up."""
    from tests.tcp_proxy import TcpProxy

    host, port = env.client.service_client.config.target_host.rsplit(":", 1)
    log = tmp_path / "worker.log"
    with TcpProxy((host, int(port))) as proxy, log.open("wb") as out:
        proxy.cut()  # Temporal "down": every connection is reset
        worker = subprocess.Popen(
            [sys.executable, "-m", "plansmith.cli", "worker", "--queue", task_queue],
            cwd=ROOT,
            env={
                **os.environ,
                "TEMPORAL_ADDRESS": f"127.0.0.1:{proxy.port}",
                "PLANSMITH_WORKER_CONNECT_WAIT_S": "120",
            },
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        try:
            deadline = asyncio.get_running_loop().time() + 60
            while "is not reachable yet" not in log.read_text(errors="replace"):
                assert worker.poll() is None, log.read_text(errors="replace")[-2000:]
                assert asyncio.get_running_loop().time() < deadline, "no retry was logged"
                await asyncio.sleep(0.2)
            await asyncio.sleep(1.5)  # several attempts, still alive
            assert worker.poll() is None, log.read_text(errors="replace")[-2000:]
            proxy.restore()
            plan = Plan.model_validate(
                {
                    "id": f"late-{uuid.uuid4().hex[:8]}",
                    "options": {"require_approval": False},
                    "steps": [{"id": "a", "tool": "wait", "params": {"seconds": 0}}],
                }
            )
            handle = await start(env.client, plan, task_queue)
            res = await asyncio.wait_for(handle.result(), timeout=90)
            assert res.status == "completed"
        finally:
            if worker.poll() is None:
                os.killpg(worker.pid, signal.SIGKILL)
            worker.wait()

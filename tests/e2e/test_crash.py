"""A worker killed with SIGKILL mid-plan: a new worker finishes the plan and no completed
step runs twice (counted by a local HTTP server that sees every request)."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import threading
import uuid
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from plans.models import Plan
from tests.helpers import start, status, wait_for

ROOT = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.slow


class CountingServer:
    """An HTTP server on 127.0.0.1 (free port) that counts requests per path and key."""

    def __init__(self) -> None:
        self.paths: Counter[str] = Counter()
        self.keys: Counter[str] = Counter()
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                outer.paths[self.path] += 1
                outer.keys[self.headers.get("Idempotency-Key", "")] += 1
                body = b'{"ok": true}'
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> CountingServer:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()


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
    with CountingServer() as server:
        plan = Plan.model_validate(
            {
                "id": f"crash-{uuid.uuid4().hex[:8]}",
                "options": {"require_approval": False},
                "steps": [
                    {
                        "id": "first",
                        "tool": "http_request",
                        "params": {"url": f"{server.url}/first"},
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
                        "params": {"url": f"{server.url}/last"},
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
        assert server.keys[f"{plan.id}:first:v1"] == 1
        long = next(s for s in st.steps if s.id == "long")
        assert long.attempts == 2, (
            "the interrupted step runs again after its heartbeat timeout, though it has no retries of its own"
        )

"""A worker killed in the middle of a fast-path chain, and a new worker that finishes it:
shared by the crash test (tests/e2e/test_fast_crash.py) and the recorded history
``fast_path_crash`` (tests/histories/make_histories.py).

The workers are processes of their own (``worker.run_worker`` with the test tools), so
the kill is a real SIGKILL. The chain's steps are ``tick`` steps (a fast test tool) that
append their key to a file as they end: a process that dies can still be counted.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from temporalio.api.enums.v1 import EventType
from temporalio.client import Client, WorkflowHandle

from plans.models import Plan
from workflows.plan_input import PlanInput
from workflows.plan_workflow import PlanWorkflow

ROOT = Path(__file__).resolve().parents[1]
LOCAL_ACTIVITY_MARKER = "core_local_activity"
WORKER_CODE = """
import asyncio, logging, sys
import tests.tools_for_tests
from temporalio.client import Client
from temporalio.contrib.pydantic import pydantic_data_converter
from worker import build_worker

async def main():
    address, queue, identity = sys.argv[1:4]
    client = await Client.connect(
        address, data_converter=pydantic_data_converter, identity=identity or None
    )
    await build_worker(client, queue).run()

logging.basicConfig(level=logging.WARNING)
asyncio.run(main())
"""


def spawn_worker(address: str, task_queue: str, identity: str = "") -> subprocess.Popen[bytes]:
    """A worker process with the test tools, polling ``task_queue`` (as ``identity``, when
    given: a recorded history then holds no host name or pid)."""
    return subprocess.Popen(
        [sys.executable, "-c", WORKER_CODE, address, task_queue, identity],
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )


def stop(worker: subprocess.Popen[bytes]) -> None:
    if worker.poll() is None:
        os.killpg(worker.pid, signal.SIGINT)
        try:
            worker.wait(timeout=10)
        except subprocess.TimeoutExpired:
            os.killpg(worker.pid, signal.SIGKILL)
            worker.wait()


def chain_plan(
    plan_id: str, log: Path, steps: int = 12, sleep_s: float = 0.3, ordinary_at: int = 3
) -> Plan:
    """A chain of ``steps`` steps: fast ``tick`` steps taking ``sleep_s`` each (keys
    ``t0``, ``t1``...), but step ``ordinary_at`` is an ordinary activity (a ``wait`` of
    0 s), whose scheduling ends a workflow task: the history then holds the markers of
    the fast steps before it."""

    def step(i: int) -> dict[str, Any]:
        if i == ordinary_at:
            return {"id": f"t{i}", "tool": "wait", "params": {"seconds": 0}}
        return {
            "id": f"t{i}",
            "tool": "tick",
            "params": {"key": f"t{i}", "sleep_s": sleep_s, "log": str(log)},
        }

    return Plan.model_validate(
        {
            "id": plan_id,
            "options": {"require_approval": False},
            "steps": [{**step(i), "depends_on": [f"t{i - 1}"] if i else []} for i in range(steps)],
        }
    )


def ran(log: Path) -> list[str]:
    """The keys of the tick steps that ended, in order (repeats included)."""
    return log.read_text().split() if log.exists() else []


async def markers(handle: WorkflowHandle[Any, Any]) -> int:
    """How many local activities the run's history holds (steps it will not repeat)."""
    history = await handle.fetch_history()
    return sum(
        1
        for e in history.events
        if e.event_type == EventType.EVENT_TYPE_MARKER_RECORDED
        and e.marker_recorded_event_attributes.marker_name == LOCAL_ACTIVITY_MARKER
    )


@dataclass
class Crash:
    handle: WorkflowHandle[Any, Any]
    ran_before: list[str]  # the steps that had ended when the worker was killed
    durable: int  # of which the history held this many (the first ones of the chain)


async def crash_mid_chain(
    client: Client, task_queue: str, plan: Plan, log: Path, after: int = 4, identity: str = ""
) -> Crash:
    """Start ``plan`` on a worker process, SIGKILL it once ``after`` steps have ended, and
    let a new worker finish the plan (waited for)."""
    address = client.service_client.config.target_host
    worker = spawn_worker(address, task_queue, identity)
    try:
        handle = await client.start_workflow(
            PlanWorkflow.run, PlanInput(plan=plan), id=plan.workflow_id, task_queue=task_queue
        )
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 60
        while len(ran(log)) < after:
            if loop.time() > deadline:
                raise AssertionError(f"the chain did not get going: {ran(log)}")
            await asyncio.sleep(0.02)
        os.killpg(worker.pid, signal.SIGKILL)
        worker.wait()
        ran_before = ran(log)
        durable = await markers(handle)
        worker = spawn_worker(address, task_queue, identity)
        await asyncio.wait_for(handle.result(), timeout=90)
    finally:
        stop(worker)
    return Crash(handle, ran_before, durable)

"""Benchmark: the worker's memory with many plans waiting for approval.

Run with ``.venv/bin/python -m bench.waiting [--plans 1000]``.

It starts a local dev server (127.0.0.1, the dynamic config of ``plansmith server``) and
``plansmith worker`` as its own process, as deployed, with a SQLite store in a temporary
directory, and takes its resident memory (RSS) once it polls (idle). It starts
``--plans`` five-step plans as the API and the CLI do (``workflows.starter.start_plan``,
with the tool catalog's snapshot), waits until every one of them says it waits for
approval, and prints the worker's RSS with them waiting, and per waiting plan. Then it approves them all and waits
for them to complete, so the figures are of plans that still work.

The goal (issue "speed"): 1,000 waiting plans on one worker in at most 300 MB RSS.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

from temporalio.service import RPCError

from bench.server import dev_server
from plans.models import Plan, PlanStatus
from workflows.plan_workflow import PlanWorkflow
from workflows.starter import start_plan


def rss_mib(pid: int) -> float:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    raise RuntimeError(f"no VmRSS for {pid}")


def waiting_plan(n: int, tag: str) -> Plan:
    steps = [
        {
            "id": f"s{i}",
            "kind": "tool",
            "tool": "transform",
            "params": {"data": {"n": i}, "expression": "n"},
            "depends_on": [f"s{i - 1}"] if i else [],
        }
        for i in range(5)
    ]
    return Plan.model_validate(
        {
            "id": f"wait-{tag}-{n}",
            "title": f"waiting {n}",
            "options": {"require_approval": True},
            "steps": steps,
        }
    )


async def gather_limited(coros: list, limit: int = 50) -> list:
    sem = asyncio.Semaphore(limit)

    async def one(c):  # type: ignore[no-untyped-def]
        async with sem:
            return await c

    return await asyncio.gather(*(one(c) for c in coros))


async def until_polling(worker: subprocess.Popen, log: Path, wait_s: float = 120.0) -> None:
    """Until the worker says it polls its queue: everything it loads at start is loaded."""
    deadline = time.monotonic() + wait_s
    while b"worker polling task queue" not in log.read_bytes():
        if worker.poll() is not None:
            raise SystemExit(f"the worker exited with {worker.returncode}")
        if time.monotonic() > deadline:
            raise SystemExit(f"the worker did not poll within {wait_s:.0f}s")
        await asyncio.sleep(0.2)


async def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.waiting", description=__doc__.split("\n")[0])
    ap.add_argument("--plans", type=int, default=1000, help="plans waiting at once (default 1000)")
    ap.add_argument(
        "--worker-env",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="extra environment for the worker process (repeatable)",
    )
    ap.add_argument(
        "--no-approve",
        action="store_true",
        help="stop after the memory figures (default: approve every plan and wait for it)",
    )
    args = ap.parse_args(argv)
    if args.plans < 1:
        ap.error("--plans must be >= 1")
    tag = uuid.uuid4().hex[:8]
    queue = f"bench-wait-{tag}"
    async with await dev_server() as env:
        client = env.client
        address = client.service_client.config.target_host
        with tempfile.TemporaryDirectory() as tmp:
            worker_env = {
                **os.environ,
                "TEMPORAL_ADDRESS": address,
                "PLANSMITH_TASK_QUEUE": queue,
                "DATABASE_URL": f"sqlite:///{Path(tmp) / 'store.db'}",
                **dict(kv.split("=", 1) for kv in args.worker_env),
            }
            log = Path(tmp) / "worker.log"
            with open(log, "wb") as out:
                worker = subprocess.Popen(
                    [str(Path(sys.executable).parent / "plansmith"), "worker", "--queue", queue],
                    env=worker_env,
                    stdout=subprocess.DEVNULL,
                    stderr=out,
                )
            try:
                await until_polling(worker, log)
                await asyncio.sleep(1.0)
                idle = rss_mib(worker.pid)
                t0 = time.perf_counter()
                plans = [waiting_plan(i, tag) for i in range(args.plans)]
                handles = await gather_limited([start_plan(client, p, queue) for p in plans])

                async def status_of(h):  # type: ignore[no-untyped-def]
                    try:
                        return (await h.query(PlanWorkflow.status)).status
                    except RPCError:  # a busy worker: a query times out, ask again later
                        return None

                while True:
                    statuses = await gather_limited([status_of(h) for h in handles])
                    waiting = sum(s == PlanStatus.PENDING_APPROVAL for s in statuses)
                    if waiting == len(handles):
                        break
                    await asyncio.sleep(1.0)
                started = time.perf_counter() - t0
                await asyncio.sleep(2.0)
                full = rss_mib(worker.pid)
                print(
                    f"{args.plans} plans waiting for approval after {started:.1f}s; worker RSS: "
                    f"idle {idle:.0f} MiB, with them waiting {full:.0f} MiB "
                    f"(+{(full - idle) * 1024 / args.plans:.0f} KiB per plan; goal 300 MB in all)",
                    flush=True,
                )
                if args.no_approve:
                    return 0
                t1 = time.perf_counter()
                await gather_limited(
                    [h.execute_update("approve", {"by": "bench"}) for h in handles]
                )
                results = await gather_limited([h.result() for h in handles])
                bad = [r for r in results if r.status != PlanStatus.COMPLETED]
                print(
                    f"approved and completed in {time.perf_counter() - t1:.1f}s; "
                    f"worker RSS after: {rss_mib(worker.pid):.0f} MiB; not completed: {len(bad)}"
                )
                return 1 if bad else 0
            finally:
                worker.terminate()
                try:
                    worker.wait(10)
                except subprocess.TimeoutExpired:
                    worker.kill()


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))

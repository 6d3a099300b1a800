"""Benchmark: per-step cost of a long chain, and the status query of a big plan.

Run with ``.venv/bin/python -m bench.chain_status --steps 100,2000``.

Like :mod:`bench.run` it starts its own local dev server (the pip-installed ``temporal``
binary, 127.0.0.1 only) and one in-process worker on a fresh task queue with
``PlanWorkflow`` and the real ``execute_step`` activity. Then:

1. For each N in ``--steps``: an N-step chain (each step depends on the one before) of
   cheap ``transform`` steps runs to its end, unwatched; it prints seconds per 1,000
   steps, and the per-step ratio of the largest N to the smallest (1.0: flat in size).
2. For each N in ``--query-sizes``: an N-step plan is started and waits for its approval;
   the ``status`` query is sent ``--queries`` times, one after the other, and p50/p95 of
   its round trip (as the client sees it, JSON included) are printed. The plan is then
   cancelled.

The dev server runs with ``plansmith server``'s dynamic config (the history queues' poll
limiters lifted, :data:`plansmith.devserver.DEV_SERVER_DYNAMIC_CONFIG`) and the client
and worker with the product's data converter, which compresses big payloads (a
10,000-step plan's input is ~3 MB as JSON, over Temporal's 2 MB limit);
``--server-config`` replaces the dynamic config.

A benchmark, not a test: it only prints timings (it exits non-zero if a chain does not
end ``completed``).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import sys
import tempfile
import time
import uuid
from typing import Any

import temporalio
from temporalio.client import Client
from temporalio.worker import Worker

from activities.deps import ActivityDeps
from activities.persist import SnapshotActivities
from activities.steps import StepActivities
from bench.server import BENCH_RUNNER, dev_server
from config import get_settings
from plans.models import Plan, PlanStatus
from plansmith.devserver import DEV_SERVER_DYNAMIC_CONFIG
from workflows.plan_input import PlanInput, PlanResult
from workflows.plan_workflow import PlanWorkflow

# as `plansmith server` runs it: the history queues' poll limiters lifted
DEFAULT_SERVER_CONFIG = [f"{k}={v}" for k, v in DEV_SERVER_DYNAMIC_CONFIG.items()]


def chain_plan(n: int, *, approval: bool = False) -> Plan:
    steps: list[dict[str, Any]] = [
        {
            "id": f"s{i:05d}",
            "tool": "transform",
            "params": {"data": {"i": i}, "expression": "i"},
            "depends_on": [f"s{i - 1:05d}"] if i else [],
        }
        for i in range(n)
    ]
    return Plan.model_validate(
        {
            "id": f"bench-chain-{n}-{uuid.uuid4().hex[:8]}",
            "title": f"bench: chain of {n}",
            "options": {"require_approval": approval},
            "steps": steps,
        }
    )


async def run_chain(client: Client, queue: str, n: int, store: bool) -> float:
    plan = chain_plan(n)
    t0 = time.perf_counter()
    handle = await client.start_workflow(
        PlanWorkflow.run, PlanInput(plan=plan, persist=store), id=plan.workflow_id, task_queue=queue
    )
    result: PlanResult = await handle.result()
    elapsed = time.perf_counter() - t0
    if result.status != PlanStatus.COMPLETED:
        raise RuntimeError(f"chain of {n} ended {result.status.value}: {result.outcome}")
    return elapsed


def _pct(xs: list[float], p: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, round(p * (len(xs) - 1)))]


async def query_status(client: Client, queue: str, n: int, queries: int) -> tuple[float, ...]:
    plan = chain_plan(n, approval=True)
    handle = await client.start_workflow(
        PlanWorkflow.run, PlanInput(plan=plan, persist=False), id=plan.workflow_id, task_queue=queue
    )
    try:
        while True:  # until it waits for its approval
            st = await handle.query("status")
            if st.get("status") == "pending_approval":
                break
            await asyncio.sleep(0.1)
        times: list[float] = []
        size = 0
        for _ in range(queries):
            t0 = time.perf_counter()
            st = await handle.query("status")
            times.append(time.perf_counter() - t0)
            size = len(str(st))
        return _pct(times, 0.5) * 1000, _pct(times, 0.95) * 1000, size / 1024
    finally:
        await handle.terminate("benchmark done")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(prog="python -m bench.chain_status", description=__doc__)
    ap.add_argument("--steps", default="100,2000", help="chain lengths, comma-separated")
    ap.add_argument(
        "--query-sizes", default="2000,10000", help="plan sizes for the status query ('' skips)"
    )
    ap.add_argument("--queries", type=int, default=50, help="status queries per plan size")
    ap.add_argument("--store", action="store_true", help="record snapshots in a temporary store")
    ap.add_argument(
        "--server-config",
        action="append",
        default=None,
        metavar="KEY=VALUE",
        help=f"dev server dynamic config (default {', '.join(DEFAULT_SERVER_CONFIG)})",
    )
    return ap.parse_args(argv)


async def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    sizes = [int(x) for x in args.steps.split(",") if x.strip()]
    query_sizes = [int(x) for x in args.query_sizes.split(",") if x.strip()]
    config = args.server_config if args.server_config is not None else DEFAULT_SERVER_CONFIG
    os.environ["DATABASE_URL"] = f"sqlite:///{tempfile.mkdtemp(prefix='plansmith-bench-')}/store.db"
    print(
        f"chain_status bench: python {platform.python_version()}, temporalio "
        f"{temporalio.__version__}; dynamic config: {', '.join(config) or 'defaults'}",
        flush=True,
    )
    extra = [a for kv in config for a in ("--dynamic-config-value", kv)]
    async with await dev_server(extra) as env:
        queue = f"bench-{uuid.uuid4().hex[:12]}"
        deps = ActivityDeps.from_settings(get_settings())
        worker = Worker(
            env.client,
            task_queue=queue,
            workflows=[PlanWorkflow],
            activities=[
                StepActivities(deps).execute_step,
                SnapshotActivities(deps).record_snapshot,
            ],
            workflow_runner=BENCH_RUNNER,
        )
        async with worker:
            await run_chain(env.client, queue, 3, args.store)  # warm up
            per_step: dict[int, float] = {}
            for n in sizes:
                cpu0 = time.process_time()
                elapsed = await run_chain(env.client, queue, n, args.store)
                cpu = time.process_time() - cpu0
                per_step[n] = elapsed / n
                print(
                    f"chain {n:>6}: {elapsed:7.1f}s  {elapsed / n * 1000:6.1f} s per 1,000 steps"
                    f"  (client+worker CPU {cpu:.1f}s)",
                    flush=True,
                )
            if len(per_step) > 1:
                lo, hi = min(per_step), max(per_step)
                print(f"per-step time, chain {hi} / chain {lo}: {per_step[hi] / per_step[lo]:.2f}")
            for n in query_sizes:
                p50, p95, kib = await query_status(env.client, queue, n, args.queries)
                print(
                    f"status query, {n:>6}-step plan waiting for approval: p50 {p50:6.1f} ms"
                    f"  p95 {p95:6.1f} ms  ({kib:.0f} KiB)",
                    flush=True,
                )
    return 0


def cli() -> None:
    sys.exit(asyncio.run(main()))


if __name__ == "__main__":
    cli()

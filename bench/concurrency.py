"""Many plans at once, and how fast a person's control shows (issue 14, items 4 and 6).

One dev server (started as ``bench/run.py`` starts it), one in-process worker::

    python -m bench.concurrency [--plans 50,200] [--tries 15] [--repeat 3]

- **Concurrent plans**: N five-step chains started together through Plansmith (store on,
  as deployed), against N bare workflows running the same ``execute_step`` activities
  (``bench.baseline``), alternating who goes first. It prints each side's wall time for
  all N and the throughput ratio (bare time / Plansmith time; goal >= 1.0 at 50, "keeps
  up" at 200).
- **Control latency**: a plan running a long step is paused and resumed ``--tries`` times
  each, every control sent as a signal and then the ``status`` query asked until it
  shows the change (as ``temporal workflow signal`` and a watcher would); against a bare
  workflow whose signal flips a flag its query returns. It prints p50 and max of both
  (goal: Plansmith's p50 <= bare's p50, max <= 100 ms).

A benchmark, not a test: it exits non-zero only if a plan or a baseline does not finish.
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import os
import platform
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import Awaitable, Callable

import temporalio
from temporalio import workflow
from temporalio.client import Client, WorkflowHandle
from temporalio.worker import Worker

with workflow.unsafe.imports_passed_through():
    from activities.deps import ActivityDeps
    from activities.persist import SnapshotActivities
    from activities.steps import StepActivities
    from bench.baseline import Baseline
    from bench.run import STORE, BenchFailure, chain, run_bare, run_plansmith
    from bench.server import BENCH_RUNNER, config_args, dev_server
    from config import get_settings
    from plans.controls import CancelInput, PauseInput, ResumeInput
    from plans.models import Plan, PlanStatus
    from workflows.plan_input import PlanInput
    from workflows.plan_workflow import PlanWorkflow

BARE_CONTROLLED = "BenchControlled"
CHAIN_STEPS = 5


@workflow.defn(name=BARE_CONTROLLED)
class Controlled:
    """The bare counterpart of a paused and resumed plan: a signal flips a flag, a query
    reads it, and a ``stop`` signal ends it."""

    def __init__(self) -> None:
        self.paused = False
        self.stopped = False

    @workflow.run
    async def run(self) -> None:
        await workflow.wait_condition(lambda: self.stopped)

    @workflow.signal(name="toggle")
    def toggle(self, paused: bool) -> None:
        self.paused = paused

    @workflow.signal(name="stop")
    def stop(self) -> None:
        self.stopped = True

    @workflow.query(name="paused")
    def is_paused(self) -> bool:
        return self.paused


# --- concurrent plans ----------------------------------------------------------------


async def _all_at_once(
    client: Client,
    queue: str,
    n: int,
    runner: Callable[..., Awaitable[tuple[float, WorkflowHandle]]],
) -> float:
    sc = chain(CHAIN_STEPS)
    t0 = time.perf_counter()
    await asyncio.gather(*(runner(client, queue, sc) for _ in range(n)))
    return time.perf_counter() - t0


async def concurrent(client: Client, queue: str, n: int, repeat: int) -> tuple[float, float]:
    """The best wall time of N plans at once, and of N bare workflows."""
    plansmith: list[float] = []
    bare: list[float] = []
    for r in range(repeat):
        order = [("p", run_plansmith), ("b", run_bare)]
        for kind, runner in order if r % 2 == 0 else order[::-1]:
            await asyncio.sleep(1)
            took = await _all_at_once(client, queue, n, runner)
            (plansmith if kind == "p" else bare).append(took)
        print(
            f"  {n} plans at once, run {r + 1}/{repeat}: plansmith {plansmith[-1]:.2f}s, "
            f"bare {bare[-1]:.2f}s",
            flush=True,
        )
    return min(plansmith), min(bare)


# --- control latency -----------------------------------------------------------------


async def _until(read: Callable[[], Awaitable[bool]]) -> float:
    t0 = time.perf_counter()
    while not await read():
        await asyncio.sleep(0.001)
    return time.perf_counter() - t0


async def plansmith_controls(client: Client, queue: str, tries: int) -> list[float]:
    """Seconds from a pause (or resume) signal's send to ``status`` showing it."""
    plan = Plan.model_validate(
        {
            "id": f"bench-control-{uuid.uuid4().hex[:8]}",
            "options": {"require_approval": False},
            "steps": [{"id": "long", "tool": "wait", "params": {"seconds": 600}}],
        }
    )
    handle = await client.start_workflow(
        PlanWorkflow.run,
        PlanInput(plan=plan, persist=STORE[0]),
        id=plan.workflow_id,
        task_queue=queue,
    )

    async def status_is(want: PlanStatus) -> bool:
        return (await handle.query(PlanWorkflow.status)).status == want

    await _until(lambda: status_is(PlanStatus.EXECUTING))
    took: list[float] = []
    try:
        for _ in range(tries):
            await asyncio.sleep(0.05)
            t0 = time.perf_counter()
            await handle.signal(PlanWorkflow.pause_signal, PauseInput(by="bench"))
            await _until(lambda: status_is(PlanStatus.PAUSED))
            took.append(time.perf_counter() - t0)
            await asyncio.sleep(0.05)
            t0 = time.perf_counter()
            await handle.signal(PlanWorkflow.resume_signal, ResumeInput(by="bench"))
            await _until(lambda: status_is(PlanStatus.EXECUTING))
            took.append(time.perf_counter() - t0)
    finally:
        await handle.signal(PlanWorkflow.cancel_signal, CancelInput(by="bench", reason="done"))
        await handle.result()
    return took


async def bare_controls(client: Client, queue: str, tries: int) -> list[float]:
    handle = await client.start_workflow(
        Controlled.run, id=f"bench-bare-control-{uuid.uuid4().hex[:8]}", task_queue=queue
    )

    async def paused_is(want: bool) -> bool:
        return bool(await handle.query(Controlled.is_paused)) == want

    took: list[float] = []
    for _ in range(tries):
        for state in (True, False):
            await asyncio.sleep(0.05)
            t0 = time.perf_counter()
            await handle.signal(Controlled.toggle, state)
            await _until(functools.partial(paused_is, state))
            took.append(time.perf_counter() - t0)
    await handle.signal(Controlled.stop)
    return took


def _ms(xs: list[float], q: float) -> float:
    """The median (q=50) or the largest (q=100) of ``xs``, in milliseconds."""
    return 1000 * (statistics.median(xs) if q == 50 else max(xs))


# --- main ----------------------------------------------------------------------------


def _verdict(ok: bool) -> str:
    return "met" if ok else "MISSED"


async def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m bench.concurrency", description=__doc__.split("\n\n")[0]
    )
    p.add_argument("--plans", default="50,200", help="plans at once, comma-separated (50,200)")
    p.add_argument("--tries", type=int, default=15, help="pauses and resumes each (15)")
    p.add_argument("--repeat", type=int, default=3, help="runs of each side (3; the best counts)")
    p.add_argument(
        "--store",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="record plans in a (throwaway SQLite) store, as deployed (default); --no-store without",
    )
    p.add_argument("--server-config", action="append", default=[], metavar="KEY=VALUE")
    args = p.parse_args(argv)
    STORE[0] = args.store
    sizes = [int(x) for x in args.plans.split(",") if x.strip()]
    os.environ["DATABASE_URL"] = f"sqlite:///{tempfile.mkdtemp(prefix='plansmith-bench-')}/store.db"
    print(
        f"bench.concurrency: python {platform.python_version()}, temporalio {temporalio.__version__}; "
        f"{', '.join(map(str, sizes))} {CHAIN_STEPS}-step plans at once; {args.tries} pauses + resumes"
    )
    lines: list[str] = []
    async with await dev_server(config_args(args.server_config)) as env:
        queue = f"bench-{uuid.uuid4().hex[:12]}"
        deps = ActivityDeps.from_settings(get_settings())
        worker = Worker(
            env.client,
            task_queue=queue,
            workflows=[PlanWorkflow, Baseline, Controlled],
            activities=[
                StepActivities(deps).execute_step,
                SnapshotActivities(deps).record_snapshot,
            ],
            max_concurrent_activities=200,
            workflow_runner=BENCH_RUNNER,
        )
        async with worker:
            try:
                await _all_at_once(env.client, queue, 5, run_plansmith)  # warm-up
                await _all_at_once(env.client, queue, 5, run_bare)
                for n in sizes:
                    pt, bt = await concurrent(env.client, queue, n, args.repeat)
                    ratio = bt / pt
                    goal = 1.0
                    lines.append(
                        f"  {n:>4} plans at once: plansmith {pt:.2f}s ({n / pt:.1f} plans/s), "
                        f"bare {bt:.2f}s ({n / bt:.1f} plans/s); throughput {ratio:.2f}x bare "
                        f"(goal >= {goal:g}x: {_verdict(ratio >= goal)})"
                    )
                ours = await plansmith_controls(env.client, queue, args.tries)
                theirs = await bare_controls(env.client, queue, args.tries)
            except BenchFailure as e:
                print(f"\nBENCH FAILED: {e}", file=sys.stderr)
                return 1
    p50, worst, bare50 = _ms(ours, 50), _ms(ours, 100), _ms(theirs, 50)
    lines.append(
        f"  control -> visible in status ({len(ours)} controls): p50 {p50:.1f} ms, max {worst:.1f} ms; "
        f"bare signal -> query p50 {bare50:.1f} ms, max {_ms(theirs, 100):.1f} ms "
        f"(goal p50 <= bare's: {_verdict(p50 <= bare50)}; max <= 100 ms: {_verdict(worst <= 100)})"
    )
    print()
    print("\n".join(lines))
    return 0


def cli() -> None:
    sys.exit(asyncio.run(main()))


if __name__ == "__main__":
    cli()

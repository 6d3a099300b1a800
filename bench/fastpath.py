"""The fast path against a bare local-activity chain (issue 14, item 3).

One dev server (started as ``bench/run.py`` starts it), one worker. Four ways to run a
chain of N ``transform`` steps, the same work each time (``execute_step`` running the
JMESPath ``i`` over ``{"i": n}``)::

    python -m bench.fastpath --steps 100 [--repeat 3] [--server-config KEY=VALUE]

- **plansmith fast**: a plan of N transform steps as shipped (``fast`` left at its
  default: every step a local activity);
- **bare local**: a bare Temporal workflow awaiting N local activities in a row;
- **plansmith ordinary**: the same plan with ``fast: false`` on every step (every step
  an ordinary activity, as before the fast path: the "before" figure);
- **bare ordinary**: a bare workflow awaiting N ordinary activities (``bench.baseline``).

It prints the median ms/step of each and the ratios; the goal is plansmith fast <= 1.2x
bare local.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import os
import platform
import statistics
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import temporalio
from pydantic import BaseModel
from temporalio import workflow
from temporalio.common import RetryPolicy
from temporalio.worker import Worker

with workflow.unsafe.imports_passed_through():
    from activities.deps import ActivityDeps
    from activities.persist import SnapshotActivities
    from activities.steps import StepActivities
    from bench.baseline import Baseline
    from bench.run import STORE, BenchFailure, Scenario, chain, run_bare, run_plansmith
    from bench.server import BENCH_RUNNER, config_args, dev_server
    from config import get_settings
    from contracts.steps import EXECUTE_STEP, StepOutcome, StepTask
    from plans.models import Plan
    from plansmith.devserver import temporal_cli_path
    from workflows.plan_workflow import PlanWorkflow
    from workflows.step_policy import NON_RETRYABLE

LOCAL_CHAIN_WORKFLOW = "BenchLocalChain"


class LocalChainInput(BaseModel):
    tasks: list[StepTask]
    step_timeout_s: float = 300.0


@workflow.defn(name=LOCAL_CHAIN_WORKFLOW)
class LocalChain:
    """The bare fast path: ``execute_step`` as a local activity, one after another."""

    @workflow.run
    async def run(self, inp: LocalChainInput) -> int:
        for task in inp.tasks:
            await workflow.execute_local_activity(
                EXECUTE_STEP,
                task,
                result_type=StepOutcome,
                start_to_close_timeout=timedelta(seconds=inp.step_timeout_s),
                retry_policy=RetryPolicy(
                    maximum_attempts=1, non_retryable_error_types=NON_RETRYABLE
                ),
            )
        return len(inp.tasks)


@dataclass
class AllOrdinary(Scenario):
    """The scenario's plan with ``fast: false`` on every step (each an ordinary activity,
    the path every step took before the fast path)."""

    def plan(self) -> Plan:
        p = super().plan()
        return p.model_copy(
            update={"steps": [s.model_copy(update={"fast": False}) for s in p.steps]}
        )


def ordinary(sc: Scenario) -> Scenario:
    return AllOrdinary(f"{sc.name} (fast: false)", sc.stages, dict(sc.options))


async def run_local(client: Any, queue: str, sc: Scenario) -> tuple[float, Any]:
    wf_id = f"bench-local-{uuid.uuid4().hex[:12]}"
    tasks = [t for stage in sc.baseline_input(wf_id).stages for t in stage]
    t0 = time.perf_counter()
    handle = await client.start_workflow(
        LocalChain.run, LocalChainInput(tasks=tasks), id=wf_id, task_queue=queue
    )
    done = await handle.result()
    elapsed = time.perf_counter() - t0
    if done != sc.steps:
        raise BenchFailure(f"local chain {wf_id} ran {done} steps, expected {sc.steps}")
    return elapsed, handle


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python -m bench.fastpath", description=(__doc__ or "").splitlines()[0]
    )
    p.add_argument("--steps", type=int, default=100, help="steps in the chain (default 100)")
    p.add_argument("--repeat", type=int, default=3, help="runs of each (default 3)")
    p.add_argument(
        "--pause",
        type=float,
        default=1.0,
        help="seconds between runs, so the server's rate limiters refill (default 1)",
    )
    p.add_argument(
        "--server-config",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="dynamic config for the dev server (repeatable), on top of plansmith server's, "
        "as in bench.run",
    )
    p.add_argument(
        "--no-store",
        dest="store",
        action="store_false",
        help="plans without store snapshots (default: recorded, as deployed)",
    )
    return p.parse_args(argv)


async def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    STORE[0] = args.store
    os.environ["DATABASE_URL"] = f"sqlite:///{tempfile.mkdtemp(prefix='plansmith-bench-')}/store.db"
    binary = temporal_cli_path()
    extra_args = config_args(args.server_config)
    print(
        f"plansmith bench.fastpath: python {platform.python_version()}, temporalio "
        f"{temporalio.__version__}, {args.steps} steps, repeat {args.repeat}, pause "
        f"{args.pause:g}s, store {'on' if args.store else 'off'}; dev server {binary} "
        f"(127.0.0.1); dynamic config: {' '.join(extra_args[1::2])}",
        flush=True,
    )
    sc = dataclasses.replace(chain(args.steps), fast=True)
    runners = [
        ("plansmith fast", sc, run_plansmith),
        ("bare local", sc, run_local),
        ("plansmith ordinary", ordinary(sc), run_plansmith),
        ("bare ordinary", sc, run_bare),
    ]
    times: dict[str, list[float]] = {name: [] for name, _, _ in runners}
    async with await dev_server(extra_args) as env:
        queue = f"bench-{uuid.uuid4().hex[:12]}"
        deps = ActivityDeps.from_settings(get_settings())
        async with Worker(
            env.client,
            task_queue=queue,
            workflows=[PlanWorkflow, Baseline, LocalChain],
            activities=[
                StepActivities(deps).execute_step,
                SnapshotActivities(deps).record_snapshot,
            ],
            max_concurrent_activities=100,
            workflow_runner=BENCH_RUNNER,
        ):
            warm = dataclasses.replace(chain(3), fast=True)
            for _, _, runner in runners:
                await runner(env.client, queue, warm)
            for r in range(args.repeat):
                order = runners if r % 2 == 0 else runners[::-1]
                for name, scenario, runner in order:
                    await asyncio.sleep(args.pause)
                    elapsed, _ = await runner(env.client, queue, scenario)
                    times[name].append(elapsed)
                print(
                    f"  run {r + 1}/{args.repeat}: "
                    + "  ".join(f"{n} {times[n][-1]:.3f}s" for n, _, _ in runners),
                    flush=True,
                )
    ms = {n: statistics.median(t) * 1000 / args.steps for n, t in times.items()}
    print()
    print(f"{'chain of ' + str(args.steps) + ' transform steps':<34} {'ms/step':>9}")
    for name, _, _ in runners:
        print(f"{name:<34} {ms[name]:9.2f}")
    print()
    ratio = ms["plansmith fast"] / ms["bare local"]
    goal = "met" if ratio <= 1.2 else "MISSED"
    print(f"plansmith fast / bare local:          {ratio:.2f}x  (goal <= 1.2x: {goal})")
    print(
        f"plansmith ordinary / bare ordinary:   {ms['plansmith ordinary'] / ms['bare ordinary']:.2f}x"
    )
    print(
        f"plansmith fast vs ordinary (after/before): {ms['plansmith fast'] / ms['plansmith ordinary']:.2f}x"
    )
    return 0


def cli() -> None:
    try:
        code = asyncio.run(main())
    except BenchFailure as e:
        print(f"BENCH FAILED: {e}", file=sys.stderr)
        code = 1
    sys.stdout.flush()
    os._exit(code)  # no interpreter finalization with the SDK's threads about (see bench.run)


if __name__ == "__main__":
    cli()

"""Benchmark: PlanWorkflow against bare Temporal code running the same activity.

Run with ``.venv/bin/python -m bench.run`` (``make bench``), ``--quick`` for a small run.

It starts its own local dev server from the pip-installed ``temporal`` binary (nothing is
downloaded; it listens on 127.0.0.1 only) and one in-process worker on a fresh task queue
hosting ``PlanWorkflow``, the bare :class:`bench.baseline.Baseline` workflow and the
``execute_step`` activity. Every scenario is run through both, alternating which goes
first, ``--repeat`` times; the table shows the best (lowest) wall-clock time of each,
measured by the client from ``start_workflow`` to the result.

Between two measured runs the benchmark idles ``--pause`` seconds, so neither system
profits from going first. The dev server starts with the same dynamic config as
``plansmith server`` (:data:`plansmith.devserver.DEV_SERVER_DYNAMIC_CONFIG`: the history
queues' poll limiters lifted). ``--stock-server`` starts it with Temporal's defaults, where
the transfer queue's limiter (20 polls/s) lets a sequential run have a burst of fast steps,
then one step per 50 ms; ``--server-config KEY=VALUE`` adds or overrides a setting.

With ``--big-docs``, a "big documents" section (:mod:`bench.big_documents`) times the
validation of big plans and ``/healthz`` during a big ``POST /api/plans``.

Before the server starts, a CLI-latency section times ``plansmith --help`` and
``plansmith validate examples/ci_diamond.yaml`` as new processes, beside the floor of any
command that talks to Temporal (a Python that imports pydantic and temporalio's client);
with the server up, ``plansmith run`` (no ``--watch``), ``status`` and ``approve`` of a
plan that waits for approval (median of ``--cli-runs``; ``--cli-only`` runs only the
first part, without Temporal).

This is a benchmark, not a test: timings are only printed. It exits non-zero if a plan
does not end ``completed`` (or a baseline workflow fails).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import resource
import statistics
import sys
import tempfile
import time
import traceback
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import temporalio
from temporalio.client import Client, WorkflowFailureError, WorkflowHandle
from temporalio.worker import Worker

from activities.deps import ActivityDeps
from activities.persist import SnapshotActivities
from activities.steps import StepActivities
from bench import big_documents
from bench.baseline import Baseline, BaselineInput, BaselineResult
from bench.server import BENCH_RUNNER, dev_server
from config import get_settings
from contracts.steps import StepTask
from contracts.tools import catalog
from plans.models import Plan, PlanStatus, StepKind
from plans.validation import validate_or_raise
from plansmith.devserver import DEV_SERVER_DYNAMIC_CONFIG, temporal_cli_path
from workflows.plan_input import PlanInput, PlanResult
from workflows.plan_workflow import PlanWorkflow

# --- scenarios -----------------------------------------------------------------------

StepSpec = tuple[str, str, dict[str, Any]]  # (step id, tool, params)


class BenchFailure(RuntimeError):
    """A plan or a baseline run did not finish as it should."""


@dataclass
class Scenario:
    """A DAG given as stages: every step depends on every step of the stage before it.

    ``bare_serial`` runs the baseline one step at a time (the contrast for
    ``allow_parallel=false``); ``critical_path_s`` is set for the timed (``wait``) scenarios.
    """

    name: str
    stages: list[list[StepSpec]]
    options: dict[str, Any] = field(default_factory=dict)
    bare_serial: bool = False
    critical_path_s: float | None = None
    # false: every step an ordinary activity, like for like with the bare workflow's
    # (bench.fastpath sets it for the fast path against bare local activities)
    fast: bool = False

    @property
    def steps(self) -> int:
        return sum(len(s) for s in self.stages)

    def plan(self) -> Plan:
        slug = "".join(c if c.isalnum() else "-" for c in self.name.lower())[:30].strip("-")
        steps: list[dict[str, Any]] = []
        previous: list[str] = []
        for stage in self.stages:
            for sid, tool, params in stage:
                steps.append(
                    {
                        "id": sid,
                        "tool": tool,
                        "params": params,
                        "depends_on": list(previous),
                        "fast": self.fast,
                    }
                )
            previous = [sid for sid, _, _ in stage]
        opts = {"require_approval": False, **self.options}
        return Plan.model_validate(
            {
                "id": f"bench-{slug}-{uuid.uuid4().hex[:10]}",
                "title": f"bench: {self.name}",
                "options": opts,
                "steps": steps,
            }
        )

    def baseline_input(self, plan_id: str) -> BaselineInput:
        def task(spec: StepSpec) -> StepTask:
            sid, tool, params = spec
            return StepTask(
                plan_id=plan_id,
                step_id=sid,
                kind=StepKind.TOOL,
                tool=tool,
                params=params,
                idempotency_key=f"{plan_id}:{sid}:v1",
            )

        stages = (
            [[task(s)] for stage in self.stages for s in stage]
            if self.bare_serial
            else [[task(s) for s in stage] for stage in self.stages]
        )
        return BaselineInput(stages=stages)


def _trivial(i: int) -> tuple[str, dict[str, Any]]:
    return "transform", {"data": {"i": i}, "expression": "i"}


def chain(n: int) -> Scenario:
    return Scenario(f"chain {n}", [[(f"s{i:03d}", *_trivial(i))] for i in range(n)])


def fan_out(n: int) -> Scenario:
    root = [("root", *_trivial(0))]
    children = [(f"c{i:03d}", *_trivial(i)) for i in range(n)]
    join = [("join", *_trivial(n + 1))]
    return Scenario(
        f"fan-out {n} + join", [root, children, join], options={"max_parallel_steps": max(n, 1)}
    )


def diamond(wait_s: float, parallel: bool) -> Scenario:
    w: dict[str, Any] = {"seconds": wait_s}
    stages: list[list[StepSpec]] = [
        [("a", "wait", w)],
        [("b", "wait", w), ("c", "wait", w)],
        [("d", "wait", w)],
    ]
    name = f"diamond {wait_s:g}s" + ("" if parallel else " serial")
    return Scenario(
        name,
        stages,
        options={"allow_parallel": parallel, "max_parallel_steps": 4},
        bare_serial=not parallel,
        critical_path_s=3 * wait_s,
    )


# --- running -------------------------------------------------------------------------


@dataclass
class Samples:
    plansmith: list[float] = field(default_factory=list)
    bare: list[float] = field(default_factory=list)
    plansmith_events: int = 0
    bare_events: int = 0


async def _events(handle: WorkflowHandle) -> int:
    history = await handle.fetch_history()
    return len(history.events)


async def run_plansmith(client: Client, queue: str, sc: Scenario) -> tuple[float, WorkflowHandle]:
    plan = sc.plan()
    validate_or_raise(plan, catalog())
    t0 = time.perf_counter()
    handle = await client.start_workflow(
        PlanWorkflow.run,
        PlanInput(plan=plan, persist=STORE[0]),
        id=plan.workflow_id,
        task_queue=queue,
    )
    try:
        result: PlanResult = await handle.result()
    except WorkflowFailureError as e:
        raise BenchFailure(f"plan {plan.id} ({sc.name}): workflow failed: {e.cause or e}") from e
    elapsed = time.perf_counter() - t0
    bad = {sid: st for sid, st in result.steps.items() if st != "completed"}
    if result.status != PlanStatus.COMPLETED or bad or len(result.steps) != sc.steps:
        raise BenchFailure(
            f"plan {plan.id} ({sc.name}) ended {result.status.value!r}, not 'completed': "
            f"outcome={result.outcome!r}, steps not completed={bad}"
        )
    return elapsed, handle


async def run_bare(client: Client, queue: str, sc: Scenario) -> tuple[float, WorkflowHandle]:
    wf_id = f"bench-bare-{uuid.uuid4().hex[:12]}"
    inp = sc.baseline_input(wf_id)
    t0 = time.perf_counter()
    handle = await client.start_workflow(Baseline.run, inp, id=wf_id, task_queue=queue)
    try:
        result: BaselineResult = await handle.result()
    except WorkflowFailureError as e:
        raise BenchFailure(f"baseline {wf_id} ({sc.name}): workflow failed: {e.cause or e}") from e
    elapsed = time.perf_counter() - t0
    if result.steps != sc.steps:
        raise BenchFailure(
            f"baseline {wf_id} ({sc.name}) ran {result.steps} steps, expected {sc.steps}"
        )
    return elapsed, handle


LONG_WIDTH = 40  # parallel chains in the long plan


async def run_long(client: Client, queue: str, n: int) -> str:
    """One n-step plan (LONG_WIDTH parallel chains); report its runs and history sizes."""
    width = min(LONG_WIDTH, n)
    steps: list[dict[str, Any]] = []
    for i in range(n):
        name, params = _trivial(i)
        dep = [steps[i - width]["id"]] if i >= width else []
        steps.append({"id": f"s{i:05d}", "tool": name, "params": params, "depends_on": dep})
    plan = Plan.model_validate(
        {
            "id": f"bench-long-{uuid.uuid4().hex[:8]}",
            "options": {"require_approval": False, "max_parallel_steps": width},
            "steps": steps,
        }
    )
    validate_or_raise(plan, catalog())
    print(f"  long plan: {n} steps in {width} parallel chains…", flush=True)
    t0 = time.perf_counter()
    handle = await client.start_workflow(
        PlanWorkflow.run,
        PlanInput(plan=plan, persist=STORE[0]),
        id=plan.workflow_id,
        task_queue=queue,
    )
    result: PlanResult = await handle.result()
    elapsed = time.perf_counter() - t0
    done = sum(1 for st in result.steps.values() if st == "completed")
    if result.status != PlanStatus.COMPLETED or done != n:
        raise BenchFailure(f"long plan ended {result.status.value}: {done}/{n} steps completed")
    runs: list[int] = []
    for _ in range(50):  # visibility is eventually consistent
        runs = [
            w.history_length
            async for w in client.list_workflows(f"WorkflowId = '{plan.workflow_id}'")
        ]
        if runs and all(runs):
            break
        await asyncio.sleep(0.2)
    size = (await handle.describe()).raw_description.workflow_execution_info.history_size_bytes
    return (
        f"long plan: {n} steps completed in {elapsed:.1f}s ({elapsed / n * 1000:.1f} ms/step) over "
        f"{len(runs)} run(s) (continue-as-new); history events per run: max {max(runs)}, "
        f"total {sum(runs)} (Temporal's limit: 51,200 events / 50 MB per run); "
        f"last run's history {size / 1024:.0f} KiB"
    )


async def measure(client: Client, queue: str, sc: Scenario, repeat: int, pause: float) -> Samples:
    samples = Samples()
    runners: list[
        tuple[str, Callable[[Client, str, Scenario], Awaitable[tuple[float, WorkflowHandle]]]]
    ] = [
        ("plansmith", run_plansmith),
        ("bare", run_bare),
    ]
    for r in range(repeat):
        order = runners if r % 2 == 0 else runners[::-1]  # alternate who goes first
        for kind, runner in order:
            await asyncio.sleep(pause)  # same server state (rate limiter refilled) for every run
            elapsed, handle = await runner(client, queue, sc)
            getattr(samples, kind).append(elapsed)
            if r == 0:
                setattr(samples, f"{kind}_events", await _events(handle))
        print(
            f"  {sc.name:<22} run {r + 1}/{repeat}: plansmith {samples.plansmith[-1]:7.3f}s  bare {samples.bare[-1]:7.3f}s",
            flush=True,
        )
    return samples


# --- report --------------------------------------------------------------------------


def _fmt(x: float | None, spec: str) -> str:
    return "-" if x is None else format(x, spec)


def print_table(results: list[tuple[Scenario, Samples]], repeat: int) -> None:
    headers = [
        "scenario",
        "steps",
        "plansmith s",
        "bare s",
        "ratio p/b",
        "p/crit",
        "b/crit",
        "events p/b",
    ]
    rows: list[list[str]] = []
    for sc, s in results:
        p, b = min(s.plansmith), min(s.bare)
        crit = sc.critical_path_s
        rows.append(
            [
                sc.name,
                str(sc.steps),
                f"{p:.3f}",
                f"{b:.3f}",
                f"{p / b:.2f}x",
                _fmt(p / crit if crit else None, ".2f"),
                _fmt(b / crit if crit else None, ".2f"),
                f"{s.plansmith_events}/{s.bare_events}",
            ]
        )
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(headers)]

    def line(cells: list[str]) -> str:
        return "  ".join(
            c.ljust(w) if i == 0 else c.rjust(w)
            for i, (c, w) in enumerate(zip(cells, widths, strict=True))
        )

    print()
    print(f"best of {repeat} (wall clock, client start_workflow -> result)")
    print(line(headers))
    print(line(["-" * w for w in widths]))
    for r in rows:
        print(line(r))
    print()
    print("details (median of runs; per-step = time / steps)")
    for sc, s in results:
        pm, bm = statistics.median(s.plansmith), statistics.median(s.bare)
        extra = ""
        if sc.critical_path_s:
            extra = f"  critical path {sc.critical_path_s:g}s"
        else:
            extra = (
                f"  per step: plansmith {1000 * min(s.plansmith) / sc.steps:.1f} ms, "
                f"bare {1000 * min(s.bare) / sc.steps:.1f} ms"
            )
        print(f"  {sc.name:<22} median plansmith {pm:.3f}s, bare {bm:.3f}s{extra}")


def _mib(kib: int) -> str:
    return f"{kib / 1024:.1f} MiB"  # ru_maxrss is in KiB on Linux


# --- CLI latency -----------------------------------------------------------------------

CLI_COMMANDS = [["--help"], ["validate", "examples/ci_diamond.yaml"]]
# what any command that talks to Temporal must load: the floor under status, run, approve
IMPORT_FLOOR = ["-c", "import pydantic, pydantic_settings, temporalio.client"]
# a plan that waits for approval: `run` starts it, `status` reads it, `approve` lets it go
CLI_PLAN = """{"title": "cli latency", "options": {"require_approval": true},
 "steps": [{"id": "t", "tool": "transform", "params": {"data": {"value": 1}, "expression": "value"}}]}"""
ROOT = Path(__file__).resolve().parent.parent


FLOOR_S: list[float] = []  # the import floor's median, once measured


def _median_line(label: str, times: list[float]) -> str:
    median = statistics.median(times)
    ratio = f"  {median / FLOOR_S[0]:.2f}x floor" if FLOOR_S else ""
    return f"  {label:<50} {median:.3f}s{ratio}"


async def _timed(argv: list[str], env: dict[str, str] | None = None) -> float:
    """Run ``python argv`` in a new process (without blocking the loop, where an
    in-process worker may have to answer it); its wall time."""
    t0 = time.perf_counter()
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        *argv,
        cwd=ROOT,
        env=env,
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.PIPE,
    )
    _, err = await proc.communicate()
    if proc.returncode != 0:
        raise BenchFailure(
            f"python {' '.join(argv)} exited {proc.returncode}: {err.decode()[-400:]}"
        )
    return time.perf_counter() - t0


async def cli_latency(runs: int) -> str:
    """The median wall time of each of :data:`CLI_COMMANDS` run as ``plansmith`` in a new
    process (after one run not counted), as lines to print. Needs no Temporal."""
    lines = [f"CLI latency (median wall time of {runs} run(s), a new process each; goal < 0.6s)"]
    for label, argv in [
        ("python: import pydantic, temporalio.client (floor)", IMPORT_FLOOR),
        *((f"plansmith {' '.join(a)}", ["-m", "plansmith.cli", *a]) for a in CLI_COMMANDS),
    ]:
        times = [await _timed(argv) for _ in range(runs + 1)][1:]
        lines.append(_median_line(label, times))
        if argv is IMPORT_FLOOR:
            FLOOR_S.append(statistics.median(times))
    return "\n".join(lines)


async def cli_server_latency(client: Client, queue: str, runs: int) -> str:
    """``plansmith run`` (no ``--watch``), ``status`` and ``approve`` as new processes
    against the benchmark's server and worker: ``runs`` plans (plus one not counted), each
    started, read and approved once."""
    target = client.service_client.config.target_host
    env = {**os.environ, "TEMPORAL_ADDRESS": target, "PLANSMITH_TASK_QUEUE": queue}
    doc = Path(tempfile.mkdtemp(prefix="plansmith-bench-cli-")) / "plan.json"
    doc.write_text(CLI_PLAN)
    cli = ["-m", "plansmith.cli"]
    times: dict[str, list[float]] = {"run": [], "status": [], "approve": []}
    for i in range(runs + 1):
        plan_id = f"cli-{uuid.uuid4().hex[:8]}"
        took = {
            "run": await _timed([*cli, "run", str(doc), "--id", plan_id], env),
            "status": await _timed([*cli, "status", plan_id], env),
            "approve": await _timed([*cli, "approve", plan_id, "--by", "bench"], env),
        }
        if i:
            for k, v in took.items():
                times[k].append(v)
    lines = [f"CLI against Temporal (median of {runs}, a new process each; goal < 0.6s)"]
    lines += [
        _median_line(f"plansmith {k}" + (" (no --watch)" if k == "run" else ""), v)
        for k, v in times.items()
    ]
    return "\n".join(lines)


# --- main ----------------------------------------------------------------------------


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(prog="python -m bench.run", description=__doc__.split("\n\n")[0])
    ap.add_argument(
        "--quick",
        action="store_true",
        help="small run: 20-step chain, 20-wide fan-out, 0.25 s waits",
    )
    ap.add_argument(
        "--repeat",
        type=int,
        default=3,
        help="runs per scenario and system; the best is reported (default 3)",
    )
    ap.add_argument("--chain", type=int, help="chain length (default 100, quick 20)")
    ap.add_argument("--fanout", type=int, help="fan-out width (default 100, quick 20)")
    ap.add_argument("--wait", type=float, help="seconds per diamond step (default 1, quick 0.25)")
    ap.add_argument("--pause", type=float, help="idle seconds before each measured run (default 1)")
    ap.add_argument(
        "--store",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="record every plan change in the store, as deployed (default); --no-store leaves it out",
    )
    ap.add_argument(
        "--long",
        type=int,
        help="steps of the long plan run once to check history stays bounded via continue-as-new "
        "(default 2000, quick 300; 0 skips it)",
    )
    ap.add_argument(
        "--cli-runs",
        type=int,
        default=5,
        help="runs of each CLI command timed for the CLI-latency section (default 5; 0 skips it)",
    )
    ap.add_argument(
        "--big-docs",
        action="store_true",
        help="also the big-documents section (bench.big_documents: validation of big "
        "plans, /healthz during a big POST); with --cli-only, that and the CLI section",
    )
    ap.add_argument(
        "--cli-only",
        action="store_true",
        help="only the CLI-latency section: no Temporal server, no plans",
    )
    ap.add_argument(
        "--server-config",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="dynamic config for the dev server (repeatable), on top of plansmith server's "
        "(plansmith.devserver.DEV_SERVER_DYNAMIC_CONFIG), e.g. history.transferProcessorMaxPollRPS=20",
    )
    ap.add_argument(
        "--stock-server",
        action="store_true",
        help="start the dev server with Temporal's own defaults, not plansmith server's "
        "dynamic config (to see what the lifted limiters are worth)",
    )
    args = ap.parse_args(argv)
    args.chain = args.chain or (20 if args.quick else 100)
    args.fanout = args.fanout or (20 if args.quick else 100)
    args.wait = args.wait if args.wait is not None else (0.25 if args.quick else 1.0)
    args.pause = args.pause if args.pause is not None else 1.0
    args.long = args.long if args.long is not None else (300 if args.quick else 2000)
    if args.cli_runs < 0 or (args.cli_only and args.cli_runs < 1):
        ap.error("--cli-runs must be >= 0 (>= 1 with --cli-only)")
    if args.repeat < 1 or args.chain < 1 or args.fanout < 1 or args.wait <= 0 or args.pause < 0:
        ap.error("--repeat, --chain and --fanout must be >= 1, --wait > 0 and --pause >= 0")
    if any("=" not in kv for kv in args.server_config):
        ap.error("--server-config takes KEY=VALUE")
    return args


STORE = [True]  # record plans in the store (as deployed); --no-store measures without


async def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    # timed first, while no dev server or worker competes for the processors
    cli_report = await cli_latency(args.cli_runs) if args.cli_runs else None
    big_report = big_documents.report() if args.big_docs else None
    if args.cli_only:
        print(cli_report)
        if big_report:
            print(big_report)
        return 0
    STORE[0] = args.store
    # plans are recorded in a throwaway SQLite store, never in ./plansmith.db
    os.environ["DATABASE_URL"] = f"sqlite:///{tempfile.mkdtemp(prefix='plansmith-bench-')}/store.db"
    scenarios = [
        chain(args.chain),
        fan_out(args.fanout),
        diamond(args.wait, parallel=True),
        diamond(args.wait, parallel=False),
    ]
    binary = temporal_cli_path()
    print(
        f"plansmith bench: python {platform.python_version()}, temporalio {temporalio.__version__}, "
        f"repeat {args.repeat}, pause {args.pause:g}s{', quick' if args.quick else ''}"
    )
    config = {} if args.stock_server else dict(DEV_SERVER_DYNAMIC_CONFIG)
    config.update(kv.split("=", 1) for kv in args.server_config)
    extra_args = [a for k, v in config.items() for a in ("--dynamic-config-value", f"{k}={v}")]
    shown = ", ".join(f"{k}={v}" for k, v in config.items()) or "Temporal's defaults"
    print(f"dev server: {binary} (127.0.0.1, own process); dynamic config: {shown}")
    t_start = time.perf_counter()
    results: list[tuple[Scenario, Samples]] = []
    long_report: str | None = None
    cli_server_report: str | None = None
    failure: BenchFailure | None = None
    async with await dev_server(extra_args) as env:
        queue = f"bench-{uuid.uuid4().hex[:12]}"
        deps = ActivityDeps.from_settings(get_settings())
        worker = Worker(
            env.client,
            task_queue=queue,
            workflows=[PlanWorkflow, Baseline],
            activities=[
                StepActivities(deps).execute_step,
                SnapshotActivities(deps).record_snapshot,
            ],
            max_concurrent_activities=max(100, args.fanout),
            workflow_runner=BENCH_RUNNER,
        )
        async with worker:
            try:
                print(
                    f"server up in {time.perf_counter() - t_start:.1f}s; task queue {queue}; warming up",
                    flush=True,
                )
                warm = chain(3)
                await run_plansmith(env.client, queue, warm)
                await run_bare(env.client, queue, warm)
                for sc in scenarios:
                    results.append(
                        (sc, await measure(env.client, queue, sc, args.repeat, args.pause))
                    )
                if args.long:
                    long_report = await run_long(env.client, queue, args.long)
                if args.cli_runs:
                    cli_server_report = await cli_server_latency(env.client, queue, args.cli_runs)
            except BenchFailure as e:
                failure = e
    # the server has stopped here
    if failure is not None:
        print(f"\nBENCH FAILED: {failure}", file=sys.stderr)
        return 1
    print_table(results, args.repeat)
    if long_report:
        print()
        print(long_report)
    if cli_report:
        print()
        print(cli_report)
    if cli_server_report:
        print(cli_server_report)
    if big_report:
        print(big_report)
    own = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    children = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    print()
    print(
        f"peak RSS: this process (client + worker) {_mib(own)}; largest child (dev server) {_mib(children)}"
    )
    print(f"total time {time.perf_counter() - t_start:.1f}s")
    return 0


def cli() -> None:
    try:
        code = asyncio.run(main())
    except KeyboardInterrupt:
        code = 130
    except SystemExit as e:  # --help, or argparse refusing an option (it printed why)
        code = e.code if isinstance(e.code, int) else 0 if e.code is None else 2
    except BaseException:
        traceback.print_exc()
        code = 1
    sys.stdout.flush()
    sys.stderr.flush()
    # The Temporal core runtime's threads can abort interpreter teardown ("PyGILState_Release:
    # thread state must be current", temporalio/sdk-python#300); the server is already
    # stopped and all output flushed, so leave without it.
    os._exit(code)


if __name__ == "__main__":
    cli()

"""Benchmark: what watchers cost a plan.

Run with ``.venv/bin/python -m bench.watchers --steps 2000`` (``--steps 200`` for a quick
look). It starts its own local dev server (127.0.0.1 only), a worker (``plansmith
worker``) and an API (``plansmith api``) as child processes, on a throwaway SQLite store,
then runs a chain of ``--steps`` trivial steps (each depends on the one before) twice:

1. with nobody watching;
2. with ``--pollers`` (10) clients asking the workflow's ``status`` query every
   ``--poll-s`` (0.2 s) straight from Temporal (as ``plansmith status`` in a loop, a
   script or a dashboard does), plus ``--sse`` (10) clients of ``GET …/events``.

It prints each run's completion time (start to result, seconds per 1,000 steps), the
slowdown of the watched run against the unwatched one, the worker's CPU time in each, the
pollers' ``status`` latency (p50, p95) and, over the SSE clients, the lag of each step's
``completed`` event (received minus the step's ``completed_at``; p50, p95, max) and how
many of the steps' completions each client received.

A benchmark, not a test: nothing is asserted; it exits non-zero only if a plan does not
complete.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx

from bench.server import config_args, dev_server
from config import get_settings
from plansmith.children import popen
from workflows.client import PlanClient

ROOT = Path(__file__).resolve().parents[1]
JSON = {"Content-Type": "application/json"}


def chain_doc(n: int) -> dict[str, Any]:
    steps = [
        {
            "id": f"s{i:05d}",
            "tool": "transform",
            "params": {"data": {"i": i}, "expression": "i"},
            "depends_on": [f"s{i - 1:05d}"] if i else [],
        }
        for i in range(n)
    ]
    return {
        "id": f"bench-watch-{uuid.uuid4().hex[:8]}",
        "title": f"chain of {n}",
        "options": {"require_approval": False},
        "steps": steps,
    }


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _cpu_s(pid: int) -> float:
    """User + system CPU seconds of a process (Linux /proc)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return float("nan")
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _pct(xs: list[float], p: float) -> float:
    if not xs:
        return float("nan")
    xs = sorted(xs)
    return xs[min(len(xs) - 1, round(p / 100 * (len(xs) - 1)))]


@dataclass
class Watched:
    status_s: list[float] = field(default_factory=list)
    status_errors: int = 0
    lags: list[float] = field(default_factory=list)
    completed_seen: list[int] = field(default_factory=list)
    sse_errors: list[str] = field(default_factory=list)


async def poller(plans: PlanClient, plan_id: str, every_s: float, out: Watched) -> None:
    while True:
        t0 = time.perf_counter()
        try:
            await plans.status(plan_id)
            out.status_s.append(time.perf_counter() - t0)
        except Exception:
            out.status_errors += 1
        await asyncio.sleep(max(0.0, every_s - (time.perf_counter() - t0)))


async def sse_client(base: str, plan_id: str, out: Watched) -> None:
    """Follow the plan's events to the end; record the lag of every step completion."""
    completed: set[str] = set()
    try:
        async with (
            httpx.AsyncClient(base_url=base, headers=JSON, timeout=None) as http,
            http.stream("GET", f"/api/plans/{plan_id}/events") as resp,
        ):
            if resp.status_code != 200:
                body = (await resp.aread()).decode(errors="replace")[:200]
                out.sse_errors.append(f"HTTP {resp.status_code}: {body}")
                return
            buffer = ""
            async for chunk in resp.aiter_text():
                buffer += chunk
                *blocks, buffer = buffer.split("\n\n")
                now = datetime.now(UTC)
                for block in blocks:
                    event, data = None, None
                    for line in block.splitlines():
                        if line.startswith("event: "):
                            event = line[7:]
                        elif line.startswith("data: "):
                            data = json.loads(line[6:])
                    if event == "step" and data and data["status"] == "completed":
                        sid = data["step_id"]
                        if sid not in completed and data.get("completed_at"):
                            completed.add(sid)
                            done_at = datetime.fromisoformat(data["completed_at"])
                            out.lags.append((now - done_at).total_seconds())
                    if event == "error" and data:
                        out.sse_errors.append(f"error event: {data.get('detail')}")
                    if event in ("end", "error"):
                        return
    except Exception as e:
        out.sse_errors.append(f"{type(e).__name__}: {e}")
    finally:
        out.completed_seen.append(len(completed))


async def run_chain(
    http: httpx.AsyncClient,
    plans: PlanClient,
    base: str,
    n: int,
    worker_pid: int,
    pollers: int,
    poll_s: float,
    sse: int,
    timeout_s: float = 1800,
) -> tuple[float, float, Watched]:
    doc = chain_doc(n)
    plan_id = doc["id"]
    r = await http.post("/api/plans", json=doc)
    r.raise_for_status()
    watched = Watched()
    cpu0 = _cpu_s(worker_pid)
    t0 = time.perf_counter()
    r = await http.post(f"/api/plans/{plan_id}/execute")
    r.raise_for_status()
    tasks = [asyncio.create_task(sse_client(base, plan_id, watched)) for _ in range(sse)]
    tasks += [asyncio.create_task(poller(plans, plan_id, poll_s, watched)) for _ in range(pollers)]
    handle = await plans.handle(plan_id)
    # a long poll on the history: no work for the worker
    result = await asyncio.wait_for(handle.result(), timeout_s)
    elapsed = time.perf_counter() - t0
    cpu = _cpu_s(worker_pid) - cpu0
    for t in tasks[sse:]:
        t.cancel()
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(asyncio.gather(*tasks[:sse], return_exceptions=True), 30)
    for t in tasks:
        t.cancel()
    status = result.get("status") if isinstance(result, dict) else getattr(result, "status", None)
    if str(getattr(status, "value", status)) != "completed":
        raise RuntimeError(f"plan {plan_id} ended {status}")
    return elapsed, cpu, watched


async def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.watchers", description=__doc__.split("\n")[0])
    p.add_argument("--steps", type=int, default=2000, help="steps in the chain (2000)")
    p.add_argument("--pollers", type=int, default=10, help="status pollers (10)")
    p.add_argument("--poll-s", type=float, default=0.2, help="their interval (0.2 s)")
    p.add_argument("--sse", type=int, default=10, help="SSE clients (10)")
    p.add_argument(
        "--server-config",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="dev server dynamic config on top of plansmith server's (repeatable)",
    )
    args = p.parse_args(argv)
    tmp = tempfile.mkdtemp(prefix="plansmith-bench-watch-")
    queue = f"bench-watch-{uuid.uuid4().hex[:8]}"
    port = _free_port()
    base = f"http://127.0.0.1:{port}"
    extra = config_args(args.server_config)
    print(
        f"bench.watchers: chain of {args.steps} steps; watched run: {args.pollers} status "
        f"pollers every {args.poll_s:g}s + {args.sse} SSE clients",
        flush=True,
    )
    async with await dev_server(extra) as env:
        address = env.client.service_client.config.target_host
        child_env = {
            **os.environ,
            "TEMPORAL_ADDRESS": address,
            "PLANSMITH_TASK_QUEUE": queue,
            "DATABASE_URL": f"sqlite:///{tmp}/store.db",
        }
        cli = [sys.executable, "-m", "plansmith.cli"]
        log = open(Path(tmp) / "children.log", "wb")  # noqa: SIM115 (closed below)
        worker = popen(
            [*cli, "worker", "--queue", queue],
            env=child_env,
            cwd=ROOT,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        api = popen(
            [*cli, "api", "--port", str(port)],
            env=child_env,
            cwd=ROOT,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        settings = get_settings().replace(temporal={"task_queue": queue})
        plans = PlanClient(settings, client=env.client, rpc_timeout_s=30)
        try:
            async with httpx.AsyncClient(base_url=base, headers=JSON, timeout=60) as http:
                for _ in range(300):
                    with contextlib.suppress(httpx.HTTPError):
                        if (await http.get("/readyz")).status_code == 200:
                            break
                    await asyncio.sleep(0.1)
                else:
                    raise RuntimeError(f"the API did not start: see {tmp}/children.log")
                await run_chain(http, plans, base, 3, worker.pid, 0, args.poll_s, 0)  # warm up
                quiet, quiet_cpu, _ = await run_chain(
                    http, plans, base, args.steps, worker.pid, 0, args.poll_s, 0
                )
                print(f"  unwatched: {quiet:.1f}s", flush=True)
                busy, busy_cpu, w = await run_chain(
                    http, plans, base, args.steps, worker.pid, args.pollers, args.poll_s, args.sse
                )
                print(f"  watched:   {busy:.1f}s", flush=True)
        finally:
            for child in (api, worker):
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(child.pid, signal.SIGTERM)
            for child in (api, worker):
                try:
                    child.wait(15)
                except subprocess.TimeoutExpired:
                    os.killpg(child.pid, signal.SIGKILL)
            log.close()
    per_k = 1000 / args.steps
    seen = w.completed_seen
    print()
    print(f"chain of {args.steps} steps")
    print(
        f"  unwatched: {quiet:8.1f}s  ({quiet * per_k:.1f}s per 1,000 steps), worker CPU {quiet_cpu:.1f}s"
    )
    print(
        f"  watched:   {busy:8.1f}s  ({busy * per_k:.1f}s per 1,000 steps), worker CPU {busy_cpu:.1f}s"
    )
    print(f"  slowdown:  {busy / quiet:8.2f}x  (goal: at most 1.2x)")
    print(
        f"  status query ({len(w.status_s)} answered, {w.status_errors} errors): "
        f"p50 {_pct(w.status_s, 50) * 1000:.1f} ms, p95 {_pct(w.status_s, 95) * 1000:.1f} ms"
    )
    print(
        f"  SSE lag of step completions ({len(w.lags)} events): p50 {_pct(w.lags, 50):.3f}s, "
        f"p95 {_pct(w.lags, 95):.3f}s, max {max(w.lags, default=float('nan')):.3f}s (goal: p95 < 1s)"
    )
    print(
        f"  SSE clients saw {min(seen, default=0)}..{max(seen, default=0)} of {args.steps} "
        f"completions" + (f"; errors: {w.sse_errors[:3]}" if w.sse_errors else "")
    )
    if statistics.mean(seen or [0]) < args.steps:
        print("  (a client missing completions: changes merged by status polling, or a resync)")
    return 0


def cli() -> None:
    code = asyncio.run(main())
    sys.stdout.flush()
    os._exit(
        code
    )  # not through interpreter finalization, which Temporal's runtime thread can crash


if __name__ == "__main__":
    cli()

"""Benchmark section "big documents": how long validation of a big plan takes, and how
long ``GET /healthz`` waits while the API takes in a big ``POST /api/plans``.

``python -m bench.big_documents`` (or ``python -m bench.run --big-docs``). Needs neither
Temporal nor a database server: validation is timed as a function call, and the API is
served by uvicorn on 127.0.0.1 (a free port) with its drafts in a temporary SQLite file
and no Temporal (a valid plan is answered 503 once validated: Temporal is asked only
after validation; what is timed is the work done before).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import socket
import statistics
import tempfile
import threading
import time
from collections.abc import Iterator
from typing import Any

from plans.models import Plan


def chain(n: int, reverse: bool = False) -> dict[str, Any]:
    """``n`` wait steps, each after the one before (``reverse``: each after the next,
    listed first to last: the last step runs first)."""
    steps: list[dict[str, Any]] = []
    for i in range(n):
        s: dict[str, Any] = {"id": f"s{i}", "tool": "wait", "params": {"seconds": 0}}
        dep = i + 1 if reverse else i - 1
        if 0 <= dep < n:
            s["depends_on"] = [f"s{dep}"]
        steps.append(s)
    return {"title": f"chain of {n}", "steps": steps}


def full_dag(n: int) -> dict[str, Any]:
    """``n`` steps, each after every step before it (n(n-1)/2 dependencies)."""
    steps = [
        {
            "id": f"s{i}",
            "tool": "wait",
            "params": {"seconds": 0},
            "depends_on": [f"s{j}" for j in range(i)],
        }
        for i in range(n)
    ]
    return {"title": f"full DAG of {n}", "steps": steps}


def time_validation(doc: dict[str, Any], repeat: int = 1) -> tuple[float, str]:
    """Best wall-clock seconds of ``validate_plan`` (after parsing), and its outcome."""
    from contracts.tools import catalog
    from plans.validation import validate_plan

    plan = Plan.model_validate(doc)
    best, outcome = float("inf"), ""
    for _ in range(repeat):
        t0 = time.perf_counter()
        try:
            problems = validate_plan(plan, catalog())
            outcome = f"{len(problems)} problem(s)"
        except RecursionError:
            outcome = "RecursionError"
        best = min(best, time.perf_counter() - t0)
    return best, outcome


@contextlib.contextmanager
def _serving(db_path: str) -> Iterator[str]:
    import uvicorn

    from api.app import create_app
    from config import get_settings

    async def no_temporal(_settings: Any) -> Any:
        raise ConnectionError("no Temporal in this benchmark")

    settings = get_settings().replace(api={"connect_timeout_s": 0.5, "rpc_timeout_s": 2.0})
    app = create_app(settings=settings, connect=no_temporal, database_url=f"sqlite:///{db_path}")
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    server = uvicorn.Server(
        uvicorn.Config(app, host="127.0.0.1", port=port, log_level="error", lifespan="on")
    )
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    try:
        deadline = time.monotonic() + 20
        while not server.started:
            if time.monotonic() > deadline:
                raise RuntimeError("uvicorn did not start")
            time.sleep(0.02)
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=15)
        sock.close()


async def healthz_during_post(base: str, body: bytes) -> tuple[int | str, float, list[float]]:
    """POST ``body`` to /api/plans while /healthz is asked every 20 ms: the POST's status
    and seconds, and the latency of every /healthz answered meanwhile."""
    import httpx

    latencies: list[float] = []
    headers = {"Content-Type": "application/json"}
    async with httpx.AsyncClient(base_url=base, timeout=300) as http:
        await http.get("/healthz")
        done = asyncio.Event()

        async def probe() -> None:
            async with httpx.AsyncClient(base_url=base, timeout=300) as h2:
                while not done.is_set():
                    t0 = time.perf_counter()
                    r = await h2.get("/healthz")
                    r.raise_for_status()
                    latencies.append(time.perf_counter() - t0)
                    await asyncio.sleep(0.02)

        task = asyncio.create_task(probe())
        await asyncio.sleep(0.1)
        t0 = time.perf_counter()
        try:
            r = await http.post("/api/plans", content=body, headers=headers)
            status: int | str = r.status_code
        except httpx.HTTPError as e:
            status = f"no answer ({type(e).__name__})"
        took = time.perf_counter() - t0
        done.set()
        await task
    return status, took, latencies


async def post_latency(base: str, steps: int, runs: int) -> list[float]:
    """Seconds of each of ``runs`` ``POST /api/plans`` of an ``steps``-step chain, each
    under a new id (a new draft: validated fully and stored), after one not counted."""
    import httpx

    took: list[float] = []
    async with httpx.AsyncClient(base_url=base, timeout=60) as http:
        for i in range(runs + 1):
            doc = {**chain(steps), "id": f"post-{i}-{time.monotonic_ns()}"}
            t0 = time.perf_counter()
            r = await http.post("/api/plans", json=doc)
            # 503: validated, then Temporal (which this benchmark has none of) was asked
            if r.status_code not in (200, 201, 503):
                raise RuntimeError(f"POST /api/plans answered {r.status_code}: {r.text[:300]}")
            if i:
                took.append(time.perf_counter() - t0)
    return took


def report(api: bool = True, sizes: tuple[int, ...] = (1_000, 10_000), dag: int = 1_500) -> str:
    lines = ["", "Big documents (validate_plan after parsing; best of 3, 1 for the largest)"]
    cases: list[tuple[str, dict[str, Any]]] = [(f"chain of {n:,}", chain(n)) for n in sizes]
    cases.append(("reversed chain of 3,000", chain(3_000, reverse=True)))
    cases.append((f"full DAG of {dag:,}", full_dag(dag)))
    for name, doc in cases:
        size = len(json.dumps(doc))
        repeat = 1 if "DAG" in name or size > 2_000_000 else 3
        s, outcome = time_validation(doc, repeat)
        lines.append(f"  {name:<26} {size / 1e6:6.2f} MB  {s:7.3f} s  ({outcome})")
    if api:
        with tempfile.TemporaryDirectory() as tmp, _serving(os.path.join(tmp, "b.db")) as base:
            posts = asyncio.run(post_latency(base, 100, runs=10))
            lines.append(
                f"  POST /api/plans of a 100-step plan (validated, up to asking Temporal): median "
                f"{statistics.median(posts) * 1000:.1f} ms, max {max(posts) * 1000:.1f} ms of "
                f"{len(posts)} (goal: under 100 ms)"
            )
            for name, doc in [
                ("chain of 10,000", chain(10_000)),
                (f"full DAG of {dag:,}", full_dag(dag)),
            ]:
                body = json.dumps(doc).encode()
                status, took, lat = asyncio.run(healthz_during_post(base, body))
                worst = max(lat) if lat else float("nan")
                med = statistics.median(lat) if lat else float("nan")
                lines.append(
                    f"  POST {name:<21} {len(body) / 1e6:6.2f} MB  {took:7.3f} s  -> {status}; "
                    f"/healthz meanwhile: {len(lat)} answers, median {med * 1000:.1f} ms, "
                    f"worst {worst * 1000:.1f} ms"
                )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(prog="python -m bench.big_documents", description=__doc__)
    ap.add_argument("--no-api", action="store_true", help="only the validation timings")
    args = ap.parse_args(argv)
    print(report(api=not args.no_api))


if __name__ == "__main__":
    main()

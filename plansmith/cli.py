"""``plansmith``: the project's command line (DESIGN.md §8).

Exit codes: 0 success, 1 the plan did not complete (``plan``: no valid plan within the
repair rounds, or the model failed), 2 bad input or a refused control (messages on stderr).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import os
import signal
import subprocess
import sys
import time
import uuid
from datetime import timedelta
from pathlib import Path
from typing import Any

from temporalio.client import (
    Client,
    WorkflowExecutionStatus,
    WorkflowHandle,
    WorkflowUpdateFailedError,
)
from temporalio.exceptions import WorkflowAlreadyStartedError
from temporalio.service import RPCError, RPCStatusCode

from config import ConfigError, Settings, get_settings
from plans.controls import CONTROL_MODELS
from plans.models import Plan, PlanStatus
from plans.validation import PlanInvalid, load_document, parse_plan, validate_or_raise
from plans.views import StatusView

EXIT_OK, EXIT_NOT_COMPLETED, EXIT_BAD_INPUT = 0, 1, 2
SYMBOLS = {
    "pending": "·",
    "running": "▶",
    "waiting_approval": "?",
    "waiting_clarification": "?",
    "completed": "✓",
    "failed": "✗",
    "skipped": "↷",
    "cancelled": "■",
}


class CliError(Exception):
    """Bad input: printed on stderr, exit code 2."""


def err(msg: str) -> None:
    print(msg, file=sys.stderr)


# --- plan files ----------------------------------------------------------------------


def load_plan(path: str, inputs: list[str] | None = None, plan_id: str | None = None) -> Plan:
    """Read, shape-check and fully validate a plan file; give it an id if it has none."""
    from contracts.tools import catalog

    p = Path(path)
    if not p.is_file():
        raise CliError(f"{path}: no such file")
    data = load_document(p.read_text(encoding="utf-8"), source=path)
    for item in inputs or []:
        key, sep, raw = item.partition("=")
        if not sep or not key:
            raise CliError(f"--input {item!r}: expected KEY=VALUE")
        try:
            value = json.loads(raw)
        except json.JSONDecodeError:
            value = raw
        data.setdefault("inputs", {})[key] = value
    if plan_id:
        data["id"] = plan_id
    plan = parse_plan(data)
    if plan.id is None:
        stem = "".join(c if c.isalnum() else "-" for c in p.stem.lower()).strip("-") or "plan"
        plan = plan.model_copy(update={"id": f"{stem[:40]}-{uuid.uuid4().hex[:8]}"})
    return validate_or_raise(plan, catalog())


# --- talking to Temporal -------------------------------------------------------------


async def _client(settings: Settings) -> Client:
    from workflows.client import connect

    try:
        return await asyncio.wait_for(connect(settings), timeout=10)
    except Exception as e:
        raise CliError(
            f"cannot reach Temporal at {settings.temporal.address}: {e}\n"
            f"start it with `plansmith server` (or `plansmith up`)"
        ) from None


def _handle(client: Client, plan_id: str) -> WorkflowHandle[Any, Any]:
    from plans.models import workflow_id_for

    wid = plan_id if plan_id.startswith("plan-") else workflow_id_for(plan_id)
    return client.get_workflow_handle(wid)


QUERY_TIMEOUT = timedelta(seconds=10)


async def _query(
    handle: WorkflowHandle[Any, Any], name: str, *args: Any, result_type: Any = None
) -> Any:
    """A query with a bounded wait and a clear message when nobody can answer it."""
    try:
        return await handle.query(name, *args, result_type=result_type, rpc_timeout=QUERY_TIMEOUT)
    except RPCError as e:
        if e.status == RPCStatusCode.NOT_FOUND:
            raise CliError(f"no plan with workflow id {handle.id}") from None
        if e.status in (
            RPCStatusCode.DEADLINE_EXCEEDED,
            RPCStatusCode.FAILED_PRECONDITION,
            RPCStatusCode.CANCELLED,
        ):
            raise CliError(
                f"no worker answered the {name} query for {handle.id} within "
                f"{QUERY_TIMEOUT.total_seconds():g}s: is a worker running (`plansmith worker`)? ({e.message})"
            ) from None
        raise


async def _status(handle: WorkflowHandle[Any, Any]) -> StatusView:
    status: StatusView = await _query(handle, "status", result_type=StatusView)
    return status


def ui_url(settings: Settings, workflow_id: str | None = None) -> str:
    if settings.temporal.ui_url:
        root = settings.temporal.ui_url.rstrip("/")
    else:
        local = settings.temporal.host in ("localhost", "0.0.0.0")
        root = (
            f"http://{'127.0.0.1' if local else settings.temporal.host}:{settings.temporal.ui_port}"
        )
    base = f"{root}/namespaces/{settings.temporal.namespace}/workflows"
    return f"{base}/{workflow_id}" if workflow_id else base


async def start_plan(client: Client, plan: Plan, settings: Settings) -> WorkflowHandle[Any, Any]:
    from workflows.starter import start_plan as start

    return await start(
        client,
        plan,
        settings.temporal.task_queue,
        heartbeat_timeout_s=settings.temporal.heartbeat_timeout_s,
    )


def _print_change(st: StatusView, seen: dict[str, tuple[str, int]], last_status: list[str]) -> None:
    if st.status.value != last_status[0]:
        last_status[0] = st.status.value
        extra = ""
        if st.waiting_for:
            w = st.waiting_for
            extra = (
                f" — waiting for {w.kind}"
                + (f" on step {w.step_id}" if w.step_id else "")
                + (f": {w.question}" if w.question else "")
            )
        print(
            f"[{time.strftime('%H:%M:%S')}] plan {st.plan_id}: {st.status.value} ({st.progress:.0%}){extra}",
            flush=True,
        )
    for s in st.steps:
        key = (s.status.value, s.attempts)
        if seen.get(s.id) == key:
            continue
        seen[s.id] = key
        if s.status.value == "pending":
            continue
        line = f"  {SYMBOLS.get(s.status.value, ' ')} {s.id:<24} {s.status.value}"
        if s.attempts:
            line += f" (attempts: {s.attempts})"
        if s.error and s.status.value in ("failed", "cancelled"):
            line += f" — {s.error}"
        if s.skip_detail and s.status.value == "skipped":
            line += f" — {s.skip_detail}"
        print(line, flush=True)


def _print_results(st: StatusView, limit: int = 400) -> None:
    """The outputs of the completed final steps (those no other step depends on)."""
    needed = {d for s in st.steps for d in s.depends_on}
    for s in st.steps:
        if s.id in needed or s.status.value != "completed" or s.output is None:
            continue
        text = json.dumps(s.output, default=str, ensure_ascii=False)
        print(f"  result of {s.id}: {text[:limit]}{'…' if len(text) > limit else ''}", flush=True)


async def watch(handle: WorkflowHandle[Any, Any], interval_s: float = 0.3) -> StatusView:
    """Print every step change until the plan ends; return the last status."""
    seen: dict[str, tuple[str, int]] = {}
    last = [""]
    while True:
        st = await _status(handle)
        _print_change(st, seen, last)
        if st.status.terminal:
            if st.outcome:
                print(f"  outcome: {st.outcome}", flush=True)
            _print_results(st)
            return st
        await asyncio.sleep(interval_s)


# --- commands ------------------------------------------------------------------------


def cmd_validate(args: argparse.Namespace, settings: Settings) -> int:
    plan = load_plan(args.file)
    kinds: dict[str, int] = {}
    for s in plan.steps:
        kinds[s.kind.value] = kinds.get(s.kind.value, 0) + 1
    summary = ", ".join(f"{n} {k}" for k, n in sorted(kinds.items()))
    print(f"{args.file}: valid — {len(plan.steps)} step(s) ({summary})")
    return EXIT_OK


async def cmd_run(args: argparse.Namespace, settings: Settings) -> int:
    plan = load_plan(args.file, args.input, args.id)
    client = await _client(settings)
    try:
        desc = await client.get_workflow_handle(plan.workflow_id).describe()
    except RPCError as e:
        if e.status != RPCStatusCode.NOT_FOUND:
            raise
    else:
        if desc.status == WorkflowExecutionStatus.RUNNING:
            raise CliError(
                f"plan {plan.id} is already running (workflow {plan.workflow_id}); follow it with "
                f"`plansmith watch {plan.id}`, or pass --id NEW_ID to start another"
            )
    try:
        handle = await start_plan(client, plan, settings)
    except WorkflowAlreadyStartedError:
        raise CliError(
            f"plan {plan.id} already ran (workflow {plan.workflow_id}); pass --id NEW_ID to run it again, "
            f"or `plansmith resume-from-failure {plan.id}` if it failed"
        ) from None
    started = f"started plan {plan.id} as workflow {handle.id} on task queue {settings.temporal.task_queue}"
    return await _announce(handle, settings, started, args.watch)


async def _announce(
    handle: WorkflowHandle[Any, Any], settings: Settings, what: str, follow: bool
) -> int:
    """Say what was started and where to see it; with ``follow``, watch it to the end."""
    print(what, flush=True)
    print(f"watch it in the Temporal Web UI: {ui_url(settings, handle.id)}", flush=True)
    if not follow:
        return EXIT_OK
    st = await watch(handle)
    return EXIT_OK if st.status == PlanStatus.COMPLETED else EXIT_NOT_COMPLETED


async def cmd_status(args: argparse.Namespace, settings: Settings) -> int:
    client = await _client(settings)
    st = await _status(_handle(client, args.id))
    print(st.model_dump_json(indent=2))
    return EXIT_OK


async def cmd_query(args: argparse.Namespace, settings: Settings) -> int:
    from plans.views import LogsQuery

    client = await _client(settings)
    handle = _handle(client, args.id)
    await _status(handle)  # a clear "no plan" error first
    if args.command == "logs":
        result = await _query(handle, "logs", LogsQuery(level=args.level, limit=args.limit))
    else:
        result = await _query(
            handle, "plan" if args.command == "show-plan" else args.command.replace("-", "_")
        )
    print(json.dumps(result, indent=2, default=str))
    return EXIT_OK


async def cmd_control(args: argparse.Namespace, settings: Settings) -> int:
    name = args.control
    payload: dict[str, Any] = {"by": args.by}
    for field in (
        "comment",
        "version",
        "digest",
        "reason",
        "step_id",
        "question",
        "feedback",
        "answer",
    ):
        value = getattr(args, field, None)
        if value is not None:
            payload[field] = value
    if name == "apply_correction":
        try:
            updated = json.loads(args.updated_step)
        except json.JSONDecodeError as e:
            raise CliError(f"--updated-step is not JSON: {e}") from None
        payload["correction"] = {"updated_step": updated}
    client = await _client(settings)
    handle = _handle(client, args.id)
    st = await _status(handle)
    if st.status.terminal:
        # The workflow is closed: Temporal itself would only say "workflow completed".
        raise CliError(f"{name} refused: the plan already ended {st.status.value} ({st.outcome})")
    try:
        result = await handle.execute_update(name, payload)
    except WorkflowUpdateFailedError as e:
        cause = e.cause
        raise CliError(getattr(cause, "message", None) or str(cause or e)) from None
    except RPCError as e:
        raise CliError(f"{name} refused: {e.message}") from None
    print(json.dumps(result, indent=2, default=str))
    return EXIT_OK


def cmd_server(args: argparse.Namespace, settings: Settings) -> int:
    from plansmith.devserver import server_command

    cmd = server_command(settings, args.db_filename)
    print(
        f"Temporal dev server on {settings.temporal.address}, Web UI on {ui_url(settings)}",
        flush=True,
    )
    proc = subprocess.Popen(cmd)
    try:
        return proc.wait()
    except KeyboardInterrupt:
        proc.send_signal(signal.SIGINT)
        return proc.wait()


def cmd_worker(args: argparse.Namespace, settings: Settings) -> int:
    from worker import run_worker

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s %(message)s")
    logging.getLogger("httpx").setLevel(logging.WARNING)
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(run_worker(settings, args.queue))
    return EXIT_OK


def cmd_api(args: argparse.Namespace, settings: Settings) -> int:
    import uvicorn

    uvicorn.run("api.app:app", host=args.host, port=args.port, log_level="warning")
    return EXIT_OK


def _spawn(argv: list[str]) -> subprocess.Popen[bytes]:
    return subprocess.Popen([sys.executable, "-m", "plansmith.cli", *argv], start_new_session=True)


class Stack:
    """Dev server + worker + API as child processes; stopped together."""

    def __init__(self, settings: Settings, api_port: int = 8000, host: str = "127.0.0.1"):
        self.settings, self.api_port, self.host = settings, api_port, host
        self.procs: list[subprocess.Popen[bytes]] = []

    async def start(self) -> None:
        from plansmith.devserver import port_open, start_server, wait_until_ready

        if port_open(self.host, self.api_port):
            raise CliError(
                f"port {self.api_port} on {self.host} is taken; pass --port to use another"
            )
        try:
            self.procs.append(start_server(self.settings))
        except RuntimeError as e:
            raise CliError(str(e)) from None
        await wait_until_ready(self.settings)
        self.procs.append(_spawn(["worker"]))
        self.procs.append(_spawn(["api", "--host", self.host, "--port", str(self.api_port)]))
        deadline = time.monotonic() + 30
        while not port_open(self.host, self.api_port):
            if time.monotonic() > deadline or any(p.poll() is not None for p in self.procs):
                raise CliError("the worker or the API did not start; see the messages above")
            await asyncio.sleep(0.2)

    def stop(self) -> None:
        from plansmith.devserver import stop_process

        for proc in reversed(self.procs):
            stop_process(proc)
        self.procs.clear()

    def print_where(self) -> None:
        print(f"  Temporal:   {self.settings.temporal.address}", flush=True)
        print(f"  Web UI:     {ui_url(self.settings)}", flush=True)
        print(f"  API:        http://{self.host}:{self.api_port}/healthz", flush=True)


def _wait_forever(stack: Stack) -> None:
    try:
        while all(p.poll() is None for p in stack.procs):
            time.sleep(0.5)
        err("a process of the stack stopped; stopping the others")
    except KeyboardInterrupt:
        print("\nstopping…", flush=True)


def cmd_up(args: argparse.Namespace, settings: Settings) -> int:
    stack = Stack(settings, args.port, args.host)
    try:
        asyncio.run(stack.start())
        print("Plansmith is up (Ctrl-C stops it):", flush=True)
        stack.print_where()
        _wait_forever(stack)
    finally:
        stack.stop()
    return EXIT_OK


def cmd_demo(args: argparse.Namespace, settings: Settings) -> int:
    """Start the stack, run an example plan to completion, say where to look."""
    stack = Stack(settings, args.port, "127.0.0.1")
    try:
        asyncio.run(stack.start())
        print("Plansmith is up:", flush=True)
        stack.print_where()
        inputs = [f"api_url=http://127.0.0.1:{args.port}", *(args.input or [])]
        run_id = f"{Path(args.file).stem.replace('_', '-')}-{time.strftime('%Y%m%d-%H%M%S')}"
        code = asyncio.run(
            cmd_run(
                argparse.Namespace(file=args.file, input=inputs, id=run_id, watch=True), settings
            )
        )
        verdict = "completed" if code == EXIT_OK else "did NOT complete"
        print(f"\nThe example plan {verdict}.", flush=True)
        if code == EXIT_OK and not args.no_planner:
            code = asyncio.run(_demo_planner(args.port, settings))
            verdict = "completed" if code == EXIT_OK else "did NOT complete"
            print(f"\nThe generated plan {verdict}.", flush=True)
        print(f"Their histories are kept in {settings.temporal.db_file}.", flush=True)
        keep = args.keep if args.keep is not None else sys.stdin.isatty()
        if keep:
            print(f"Browse it at {ui_url(settings)} — Ctrl-C stops everything.", flush=True)
            _wait_forever(stack)
        else:
            print(
                "Run `make up` (or `plansmith up`) to start the stack again and browse it.",
                flush=True,
            )
        return code
    finally:
        stack.stop()


DEMO_TASK = (
    "fetch the service health from http://127.0.0.1:{port}/healthz and summarise it "
    "for the on-call engineer"
)


async def _demo_planner(port: int, settings: Settings) -> int:
    """The demo's second part: the planner turns a task into a plan, which then runs."""
    from contracts.planning import PlanRequest
    from workflows.planner_workflow import run_planner

    task = DEMO_TASK.format(port=port)
    print(f"\nAsking the planner for a plan: {task!r}", flush=True)
    client = await _client(settings)
    result = await run_planner(
        client, PlanRequest(task=task, agent_id="demo"), settings.temporal.task_queue
    )
    plan = parse_plan(result.plan)
    _print_generated(result, plan, None)
    plan = plan.model_copy(update={"id": f"generated-{time.strftime('%Y%m%d-%H%M%S')}"})
    from contracts.tools import catalog

    validate_or_raise(plan, catalog())
    handle = await start_plan(client, plan, settings)
    print(f"started the generated plan {plan.id}", flush=True)
    watcher = asyncio.create_task(watch(handle))
    # The adaptive policy may ask a person before a new agent's plan runs: in the demo,
    # the person is you, and the approval says so in the audit trail.
    for _ in range(50):
        if watcher.done():
            break
        st = await _status(handle)
        if st.status == PlanStatus.PENDING_APPROVAL:
            print(
                f"approving it for you ({st.approval_note or 'policy asked a person'})", flush=True
            )
            await handle.execute_update(
                "approve", {"by": "demo (make run)", "comment": "approved by the demo"}
            )
            break
        await asyncio.sleep(0.2)
    st = await watcher
    return EXIT_OK if st.status == PlanStatus.COMPLETED else EXIT_NOT_COMPLETED


# --- argument parsing ----------------------------------------------------------------

CONTROL_ARGS: dict[str, list[tuple[str, dict[str, Any]]]] = {
    "approve": [
        ("--comment", {}),
        (
            "--version",
            {"type": int, "help": "the plan version you reviewed; refused if it is stale"},
        ),
        (
            "--digest",
            {"help": "the plan digest you reviewed (from status); refused if the plan changed"},
        ),
    ],
    "reject": [("--reason", {"required": True})],
    "pause": [("--reason", {}), ("--step-id", {}), ("--question", {})],
    "resume": [("--feedback", {})],
    "apply_correction": [
        ("--step-id", {"required": True}),
        ("--updated-step", {"required": True, "help": "JSON object"}),
    ],
    "answer_clarification": [("--step-id", {}), ("--answer", {"required": True})],
    "approve_step": [
        ("--step-id", {"required": True}),
        ("--version", {"type": int}),
        ("--comment", {}),
    ],
    "reject_step": [
        ("--step-id", {"required": True}),
        ("--version", {"type": int}),
        ("--reason", {"required": True}),
    ],
    "retry_step": [("--step-id", {"required": True})],
    "skip_step": [("--step-id", {"required": True}), ("--reason", {"required": True})],
    "cancel": [("--reason", {"default": "cancelled from the CLI"})],
}


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="plansmith", description="Run AI-agent plans durably on Temporal."
    )
    sub = p.add_subparsers(dest="command", required=True)

    s = sub.add_parser(
        "server", help="run the embedded Temporal dev server (Web UI on port + 1000)"
    )
    s.add_argument(
        "--db-filename", help="SQLite file for Temporal's state (default .plansmith/temporal.db)"
    )
    s = sub.add_parser("worker", help="run a worker")
    s.add_argument(
        "--queue",
        help="the plans queue (PLANSMITH_TASK_QUEUE, 'plans') or the sandbox queue "
        "(PLANSMITH_SANDBOX_QUEUE, 'sandbox'); default: both",
    )
    s = sub.add_parser("api", help="run the REST API")
    s.add_argument("--host", default="127.0.0.1")
    s.add_argument("--port", type=int, default=8000)
    s = sub.add_parser("up", help="dev server + worker + API in the foreground; Ctrl-C stops them")
    s.add_argument("--host", default="127.0.0.1")
    s.add_argument("--port", type=int, default=8000, help="API port")
    s = sub.add_parser(
        "demo",
        help="start everything, run an example plan to completion, then a plan the planner made",
    )
    s.add_argument("file", nargs="?", default="examples/ci_diamond.yaml")
    s.add_argument("--port", type=int, default=8000, help="API port")
    s.add_argument("--input", action="append", metavar="KEY=VALUE")
    s.add_argument(
        "--keep",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="keep the stack up afterwards (default: when run in a terminal)",
    )
    s.add_argument(
        "--no-planner",
        action="store_true",
        help="skip the second part: the planner making a plan from a task, then running it",
    )
    s = sub.add_parser("validate", help="validate a plan file (JSON or YAML)")
    s.add_argument("file")
    s = sub.add_parser("run", help="start a plan")
    s.add_argument("file")
    s.add_argument(
        "--watch", action="store_true", help="show live progress; exit 1 unless it completes"
    )
    s.add_argument(
        "--input",
        action="append",
        metavar="KEY=VALUE",
        help="set an input (value parsed as JSON if it can be)",
    )
    s.add_argument("--id", help="plan id (default: from the file, else generated)")
    s = sub.add_parser(
        "plan",
        help="make a plan with the LLM planner: the validated document as JSON on stdout",
        description="Turn a task into a validated plan document (JSON on stdout); the "
        "constraints and how they are met, repair rounds and lessons go to stderr. Runs the "
        "GeneratePlan workflow on a worker (or in this process with --local). Without "
        "ANTHROPIC_API_KEY an offline stand-in makes the plan. Exit 0: a valid plan; 1: no "
        "valid plan within the repair rounds (problems on stderr); 2: bad input.",
    )
    s.add_argument("task", help="what the plan must do")
    s.add_argument("--context", help="what the planner should know: TEXT, or @FILE")
    s.add_argument("--constraint", action="append", metavar="C", help="a constraint (repeatable)")
    s.add_argument("--agent-id", help="who proposes the plan")
    s.add_argument(
        "--input",
        action="append",
        metavar="KEY=VALUE",
        help="a plan input (value parsed as JSON if it can be)",
    )
    s.add_argument("--rounds", type=int, default=3, help="repair rounds, 0-5 (default 3)")
    s.add_argument("--model", help="a configured model (default: the planning model)")
    s.add_argument(
        "--save",
        action="store_true",
        help="also create the plan as a draft in the store (POST /api/plans/ID/execute runs it)",
    )
    s.add_argument(
        "--local",
        action="store_true",
        help="plan in this process instead of on a worker (no Temporal needed)",
    )
    s = sub.add_parser("status", help="print a plan's status")
    s.add_argument("id", help="plan id or workflow id")
    s = sub.add_parser(
        "resume-from-failure",
        help="run a failed, partial or cancelled plan again; completed steps are carried, not re-run",
    )
    s.add_argument("id", help="plan id or workflow id")
    s.add_argument(
        "--by", default=_default_actor(), help="who you are (recorded in the audit trail)"
    )
    s.add_argument(
        "--watch", action="store_true", help="show live progress; exit 1 unless it completes"
    )
    s = sub.add_parser("watch", help="follow a running plan until it ends")
    s.add_argument("id")
    for q in ("execution-state", "show-plan", "audit"):
        s = sub.add_parser(q, help=f"print the {q.removeprefix('show-')} query")
        s.add_argument("id")
    s = sub.add_parser("logs", help="print a plan's logs")
    s.add_argument("id")
    s.add_argument("--level", choices=["debug", "info", "warning", "error"])
    s.add_argument("--limit", type=int)

    for name in CONTROL_MODELS:
        verb = name.replace("_", "-")
        s = sub.add_parser(verb, help=f"send the {name} control (as an update)")
        s.set_defaults(control=name)
        s.add_argument("id", help="plan id or workflow id")
        s.add_argument(
            "--by", default=_default_actor(), help="who you are (recorded in the audit trail)"
        )
        for flag, kw in CONTROL_ARGS[name]:
            s.add_argument(flag, **kw)
    return p


def _default_actor() -> str:
    import getpass

    try:
        return getpass.getuser()
    except Exception:
        return "cli"


async def cmd_resume_from_failure(args: argparse.Namespace, settings: Settings) -> int:
    from workflows.errors import ResumeRefused
    from workflows.starter import resume_from_failure

    client = await _client(settings)
    plan_id = args.id.removeprefix("plan-")
    try:
        handle, carried = await resume_from_failure(
            client,
            plan_id,
            args.by,
            settings.temporal.task_queue,
            heartbeat_timeout_s=settings.temporal.heartbeat_timeout_s,
        )
    except ResumeRefused as e:
        raise CliError(f"resume-from-failure refused: {e}") from None
    resumed = f"resumed plan {plan_id} as a new run of {handle.id}; {carried} completed step(s) carried over"
    return await _announce(handle, settings, resumed, args.watch)


def _plan_request(args: argparse.Namespace) -> Any:
    """The planner request of ``plansmith plan``; CliError for bad input."""
    from pydantic import ValidationError

    from contracts.planning import PlanRequest

    context: Any = args.context
    if isinstance(context, str) and context.startswith("@"):
        path = Path(context[1:])
        if not path.is_file():
            raise CliError(f"--context {context}: no such file")
        context = path.read_text(encoding="utf-8")
        with contextlib.suppress(json.JSONDecodeError):
            parsed = json.loads(context)
            if isinstance(parsed, dict):
                context = parsed
    inputs: dict[str, Any] = {}
    for item in args.input or []:
        key, sep, raw = item.partition("=")
        if not sep or not key:
            raise CliError(f"--input {item!r}: expected KEY=VALUE")
        try:
            inputs[key] = json.loads(raw)
        except json.JSONDecodeError:
            inputs[key] = raw
    try:
        return PlanRequest(
            task=args.task,
            context=context,
            constraints=args.constraint or [],
            agent_id=args.agent_id,
            inputs=inputs,
            max_repair_rounds=args.rounds,
            model=args.model,
        )
    except ValidationError as e:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in x['loc']) or 'request'}: {x['msg']}" for x in e.errors()
        )
        raise CliError(f"bad planner request: {problems}") from None


def _approval_note(plan: Plan) -> str:
    """Whether a run of ``plan`` will wait for ``plansmith approve``, and why."""
    from datetime import UTC, datetime

    from contracts.tools import catalog
    from plans.approval_gate import needs_approval
    from plans.run_state import new_run

    run = new_run(plan, datetime.now(UTC))
    if plan.options.require_approval == "auto" and not plan.options.auto_approve:
        # the adaptive policy decides when the plan starts; as a new agent's plan, now:
        from plans.policy import fresh_trust, should_require_approval
        from plans.risk import assess_risk

        now = datetime.now(UTC)
        trust = fresh_trust(plan.agent_id, now)
        d = should_require_approval(plan, trust, assess_risk(plan, catalog()))
        waits = d.required
        why = (
            f"auto, predicted for an agent with no record: {d.summary()}; "
            "the agent's real record decides when the plan starts"
        )
    else:
        waits, why = needs_approval(run, catalog())
    if waits:
        return (
            f"it waits for a person's approval before it runs ({why}): approve it with "
            "`plansmith approve <plan id>` (run prints the id), or edit options.require_approval"
        )
    return f"it runs without waiting for approval ({why})"


def _print_generated(result: Any, plan: Plan, saved: str | None) -> None:
    model = result.model
    rounds = f"{result.rounds} round{'s' if result.rounds != 1 else ''}"
    err(f"planned by {model} in {rounds} ({len(plan.steps)} step(s); the plan is valid)")
    if result.offline:
        err(
            "offline model: ANTHROPIC_API_KEY is not set on the planner's side, so the plan was "
            "made from the task's wording without a language model (and its llm steps answer "
            "offline too)"
        )
    if result.constraints:
        err("constraints:")
        for c in result.constraints:
            err(f"  - {c.constraint}: {c.how}")
    for i, problems in enumerate(result.repairs, start=1):
        err(f"repair round {i}: {len(problems)} problem(s) sent back to the model:")
        for line in problems:
            err(f"    - {line}")
    if result.lessons_applied:
        err("lessons applied:")
        for lesson in result.lessons_applied:
            err(f"  - [lesson {lesson.id}] {lesson.summary}")
    err(f"tokens: {result.usage.input_tokens} in, {result.usage.output_tokens} out")
    if saved:
        err(
            f"saved as draft {saved}: execute it with POST /api/plans/{saved}/execute, "
            "or run the JSON with `plansmith run FILE --watch`"
        )
    else:
        err("run it: save the JSON (`> plan.json`) and `plansmith run plan.json --watch`")
    err(f"approval: {_approval_note(plan)}")


async def cmd_plan(args: argparse.Namespace, settings: Settings) -> int:
    """``plansmith plan "TASK"``: the validated plan document on stdout, the rest on stderr."""
    from contracts.errors import LLMError, NoModelFits
    from contracts.planning import PlanningFailed
    from workflows.errors import PlannerUnavailable
    from workflows.planner_workflow import run_planner

    req = _plan_request(args)
    try:
        if args.local:
            from worker import plan_in_this_process

            result = await plan_in_this_process(req)
        else:
            try:
                client = await _client(settings)
            except CliError as e:
                raise CliError(
                    f"{e}\nor plan in this process, without Temporal: `plansmith plan --local ...`"
                ) from None
            result = await run_planner(client, req, settings.temporal.task_queue)
    except PlanningFailed as e:
        for i, problems in enumerate(e.repairs, start=1):
            err(f"repair round {i}: {len(problems)} problem(s) sent back to the model:")
            for line in problems:
                err(f"    - {line}")
        err(f"error: {e}")
        return EXIT_NOT_COMPLETED
    except NoModelFits as e:
        raise CliError(str(e)) from None
    except LLMError as e:
        err(f"error: the language model failed ({e.kind}): {e}")
        return EXIT_NOT_COMPLETED
    except PlannerUnavailable as e:
        raise CliError(str(e)) from None
    plan = parse_plan(result.plan)
    saved = None
    document = result.plan
    if args.save:
        from store.db import ensure_migrated, get_engine
        from store.knowledge import link_generation_quietly

        saved = await _save_draft(plan, settings)
        document = {"id": saved, **result.plan}
        engine = ensure_migrated(get_engine(settings.store.database_url))
        await asyncio.to_thread(link_generation_quietly, engine, result.generation_id, saved)
    print(json.dumps(document, indent=2, ensure_ascii=False), flush=True)
    _print_generated(result, plan, saved)
    return EXIT_OK


async def _save_draft(plan: Plan, settings: Settings) -> str:
    """Create ``plan`` as a draft in the store, as ``POST /api/plans`` does."""
    from datetime import UTC, datetime

    from api.drafts import Draft, StoreDrafts
    from store.db import get_engine

    slug = "".join(c if c.isalnum() else "-" for c in plan.title.lower()).strip("-")
    slug = "-".join(filter(None, slug.split("-")))[:40].strip("-") or "plan"
    plan_id = f"{slug}-{uuid.uuid4().hex[:8]}"
    try:
        await StoreDrafts(get_engine(settings.store.database_url)).add(
            Draft(
                plan=plan.model_copy(update={"id": plan_id}),
                created_at=datetime.now(UTC),
                created_by=_default_actor(),
            )
        )
    except Exception as e:
        raise CliError(f"could not save the plan as a draft: {type(e).__name__}: {e}") from None
    return plan_id


async def cmd_watch(args: argparse.Namespace, settings: Settings) -> int:
    client = await _client(settings)
    st = await watch(_handle(client, args.id))
    return EXIT_OK if st.status == PlanStatus.COMPLETED else EXIT_NOT_COMPLETED


def run_cli(argv: list[str] | None = None) -> int:
    """Run one command and return its exit code."""
    args = build_parser().parse_args(argv)
    try:
        settings = get_settings()
    except ConfigError as e:
        err(f"error: {e}")
        return EXIT_BAD_INPUT
    sync = {
        "server": cmd_server,
        "worker": cmd_worker,
        "api": cmd_api,
        "up": cmd_up,
        "demo": cmd_demo,
        "validate": cmd_validate,
    }
    async_cmds = {
        "run": cmd_run,
        "status": cmd_status,
        "watch": cmd_watch,
        "execution-state": cmd_query,
        "show-plan": cmd_query,
        "audit": cmd_query,
        "logs": cmd_query,
        "resume-from-failure": cmd_resume_from_failure,
        "plan": cmd_plan,
    }
    try:
        if args.command in sync:
            return sync[args.command](args, settings)
        if args.command in async_cmds:
            return asyncio.run(async_cmds[args.command](args, settings))
        return asyncio.run(cmd_control(args, settings))
    except PlanInvalid as e:
        err(str(e))
        return EXIT_BAD_INPUT
    except CliError as e:
        err(f"error: {e}")
        return EXIT_BAD_INPUT
    except KeyboardInterrupt:
        return 130


def main(argv: list[str] | None = None) -> None:
    """The ``plansmith`` entry point.

    Ends with ``os._exit`` after flushing: the Temporal SDK's native threads can abort the
    interpreter while it finalizes (temporalio/sdk-python#300), which would turn a
    successful command into a crash with exit code 134.
    """
    try:
        code = run_cli(argv)
    except SystemExit as e:  # argparse errors and --help
        code = e.code if isinstance(e.code, int) else (0 if e.code is None else 2)
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


if __name__ == "__main__":
    main()

"""``plansmith``: the project's command line: its parser, and each verb run by the module
of its group (:mod:`~plansmith.cli.plan_files`, :mod:`~plansmith.cli.running`,
:mod:`~plansmith.cli.controls`, :mod:`~plansmith.cli.planning`,
:mod:`~plansmith.cli.processes`, :mod:`~plansmith.cli.demo`), imported only when one of
its verbs runs: ``--help`` loads no more than the standard library, and ``validate`` no
more than the configuration, the plan domain and the tool catalog.

Exit codes: 0 success, 1 the plan did not complete (``plan``: no valid plan within the
repair rounds, or the model failed), 2 bad input or a refused control (messages on stderr).
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
from collections.abc import Callable
from typing import Any

from plansmith.cli.console import EXIT_BAD_INPUT, CliError, default_actor, err, message_of
from workflows.errors import PlanClientError

# --- argument parsing ----------------------------------------------------------------

# The options of each control verb (one per control of plans.controls.CONTROL_MODELS,
# in its order; tests/test_cli.py checks they match).
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
        (
            "--approve",
            {
                "action": "store_true",
                "help": "correct and approve: you also approve the change (after the plan's "
                "approval, a changed step otherwise waits for approve-step)",
            },
        ),
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
    "accept_replan": [("--step-id", {}), ("--comment", {})],
    "reject_replan": [("--step-id", {}), ("--reason", {"required": True})],
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
    s.add_argument(
        "--exit-with-parent",
        action="store_true",
        help="stop everything when the process that started this one ends (make, a "
        "supervisor that does not pass SIGTERM on)",
    )
    s = sub.add_parser(
        "demo",
        help="start everything, run an example plan to completion, then a plan the planner made",
    )
    s.add_argument("file", nargs="?", default="examples/ci_diamond.yaml")
    s.add_argument("--port", type=int, default=8000, help="API port")
    s.add_argument("--input", action="append", metavar="KEY=VALUE")
    s.add_argument(
        "--exit-with-parent",
        action="store_true",
        help="stop everything when the process that started this one ends (make, a "
        "supervisor that does not pass SIGTERM on)",
    )
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
        "ANTHROPIC_API_KEY or PLANSMITH_OLLAMA_URL an offline stand-in makes the plan. Exit 0: a "
        "valid plan; 1: no "
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
        "--by", default=default_actor(), help="who you are (recorded in the audit trail)"
    )
    s.add_argument(
        "--watch", action="store_true", help="show live progress; exit 1 unless it completes"
    )
    sub.add_parser(
        "queue",
        help="the concurrency limits: plans executing and plans queued, in order (JSON)",
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

    for name in CONTROL_ARGS:
        verb = name.replace("_", "-")
        s = sub.add_parser(verb, help=f"send the {name} control (as an update)")
        s.set_defaults(control=name)
        s.add_argument("id", help="plan id or workflow id")
        s.add_argument(
            "--by", default=default_actor(), help="who you are (recorded in the audit trail)"
        )
        for flag, kw in CONTROL_ARGS[name]:
            s.add_argument(flag, **kw)
    return p


# --- running a verb ------------------------------------------------------------------

# Each verb's (module of plansmith.cli, function); every other verb is a control.
COMMANDS: dict[str, tuple[str, str]] = {
    "server": ("processes", "cmd_server"),
    "worker": ("processes", "cmd_worker"),
    "api": ("processes", "cmd_api"),
    "up": ("processes", "cmd_up"),
    "demo": ("demo", "cmd_demo"),
    "validate": ("plan_files", "cmd_validate"),
    "run": ("running", "cmd_run"),
    "status": ("running", "cmd_status"),
    "watch": ("running", "cmd_watch"),
    "queue": ("running", "cmd_queue"),
    "execution-state": ("running", "cmd_query"),
    "show-plan": ("running", "cmd_query"),
    "audit": ("running", "cmd_query"),
    "logs": ("running", "cmd_query"),
    "resume-from-failure": ("running", "cmd_resume_from_failure"),
    "plan": ("planning", "cmd_plan"),
}
CONTROL_COMMAND = ("controls", "cmd_control")


def command_for(verb: str) -> Callable[..., Any]:
    """The function of ``verb``: ``(args, settings)`` to an exit code, or to a coroutine
    of one. Only the verb's group is imported (it loads what its verbs need)."""
    module, name = COMMANDS.get(verb, CONTROL_COMMAND)
    function: Callable[..., Any] = getattr(importlib.import_module(f"plansmith.cli.{module}"), name)
    return function


def run_cli(argv: list[str] | None = None) -> int:
    """Run one command and return its exit code."""
    args = build_parser().parse_args(argv)
    import asyncio  # the standard library's, imported after parsing: --help does not need it

    # deferred: pydantic-settings and the plan models take ~0.4 s to load; --help needs neither
    from config import ConfigError, get_settings

    try:
        settings = get_settings()
    except ConfigError as e:
        err(f"error: {e}")
        return EXIT_BAD_INPUT
    try:
        code = command_for(args.command)(args, settings)
        if asyncio.iscoroutine(code):
            code = asyncio.run(code)
        assert isinstance(code, int)
        return code
    except CliError as e:
        err(f"error: {e}")
        return EXIT_BAD_INPUT
    except PlanClientError as e:
        err(f"error: {message_of(e)}")
        return EXIT_BAD_INPUT
    except KeyboardInterrupt:
        return 130
    except Exception as e:
        if _plan_invalid(e):
            err(str(e))
            return EXIT_BAD_INPUT
        raise


def _plan_invalid(e: Exception) -> bool:
    """``e`` is a :class:`~plans.plan_loading.PlanInvalid`. Plan loading and validation
    load only with the verbs that read a document (they bring YAML, jsonschema and the
    expression language, too slow for ``status``); if they never loaded, nothing raised
    their error."""
    loading = sys.modules.get("plans.plan_loading")
    return loading is not None and isinstance(e, loading.PlanInvalid)


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
    if "opentelemetry.trace" in sys.modules:  # a traced command: its last spans go out first
        from workflows.telemetry import shutdown_tracing

        shutdown_tracing()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)

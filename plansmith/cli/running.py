"""Running and watching plans: ``run``, ``status``, ``watch``, the queries
(``execution-state``, ``show-plan``, ``audit``, ``logs``) and ``resume-from-failure``."""

from __future__ import annotations

import argparse
import asyncio
import json
import time
from typing import Any

from pydantic_core import to_jsonable_python

from config import Settings
from plans.models import PlanStatus
from plans.views import LogsQuery, StatusView
from plansmith.cli.connection import connect, plan_id_of
from plansmith.cli.console import EXIT_NOT_COMPLETED, EXIT_OK, CliError, ui_url
from plansmith.cli.plan_files import load_plan
from workflows.client import PlanClient
from workflows.errors import PlanAlreadyRan, ResumeRefused

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


# --- watching ------------------------------------------------------------------------


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


async def watch(plans: PlanClient, plan_id: str, interval_s: float = 0.3) -> StatusView:
    """Print every step change until the plan ends; return the last status."""
    seen: dict[str, tuple[str, int]] = {}
    last = [""]
    while True:
        st = await plans.status(plan_id)
        _print_change(st, seen, last)
        if st.status.terminal:
            if st.outcome:
                print(f"  outcome: {st.outcome}", flush=True)
            _print_results(st)
            return st
        await asyncio.sleep(interval_s)


async def _announce(
    plans: PlanClient, plan_id: str, workflow_id: str, settings: Settings, what: str, follow: bool
) -> int:
    """Say what was started and where to see it; with ``follow``, watch it to the end."""
    print(what, flush=True)
    print(f"watch it in the Temporal Web UI: {ui_url(settings, workflow_id)}", flush=True)
    if not follow:
        return EXIT_OK
    st = await watch(plans, plan_id)
    return EXIT_OK if st.status == PlanStatus.COMPLETED else EXIT_NOT_COMPLETED


# --- commands ------------------------------------------------------------------------


async def cmd_run(args: argparse.Namespace, settings: Settings) -> int:
    plan = load_plan(args.file, args.input, args.id)
    assert plan.id is not None
    plans = await connect(settings)
    try:
        handle, started = await plans.start(plan)
    except PlanAlreadyRan:
        raise CliError(
            f"plan {plan.id} already ran (workflow {plan.workflow_id}); pass --id NEW_ID to run it again, "
            f"or `plansmith resume-from-failure {plan.id}` if it failed"
        ) from None
    if not started:
        raise CliError(
            f"plan {plan.id} is already running (workflow {plan.workflow_id}); follow it with "
            f"`plansmith watch {plan.id}`, or pass --id NEW_ID to start another"
        )
    what = f"started plan {plan.id} as workflow {handle.id} on task queue {settings.temporal.task_queue}"
    return await _announce(plans, plan.id, handle.id, settings, what, args.watch)


async def cmd_status(args: argparse.Namespace, settings: Settings) -> int:
    plans = await connect(settings)
    st = await plans.status(plan_id_of(args.id))
    print(st.model_dump_json(indent=2))
    return EXIT_OK


async def cmd_watch(args: argparse.Namespace, settings: Settings) -> int:
    plans = await connect(settings)
    st = await watch(plans, plan_id_of(args.id))
    return EXIT_OK if st.status == PlanStatus.COMPLETED else EXIT_NOT_COMPLETED


async def cmd_query(args: argparse.Namespace, settings: Settings) -> int:
    """``execution-state``, ``show-plan``, ``audit`` and ``logs``: the query as JSON."""
    plans = await connect(settings)
    plan_id = plan_id_of(args.id)
    await plans.status(plan_id)  # a clear "no plan" error first
    result: Any
    if args.command == "logs":
        result = await plans.logs(plan_id, LogsQuery(level=args.level, limit=args.limit))
    elif args.command == "show-plan":
        result = await plans.plan(plan_id)
    elif args.command == "execution-state":
        result = await plans.execution_state(plan_id)
    else:
        result = await plans.audit(plan_id)
    print(json.dumps(to_jsonable_python(result), indent=2, default=str))
    return EXIT_OK


async def cmd_resume_from_failure(args: argparse.Namespace, settings: Settings) -> int:
    plans = await connect(settings)
    plan_id = plan_id_of(args.id)
    try:
        handle, carried = await plans.resume(plan_id, args.by)
    except ResumeRefused as e:
        raise CliError(f"resume-from-failure refused: {e}") from None
    what = f"resumed plan {plan_id} as a new run of {handle.id}; {carried} completed step(s) carried over"
    return await _announce(plans, plan_id, handle.id, settings, what, args.watch)

"""Running and watching plans: ``run``, ``status``, ``watch``, the queries
(``execution-state``, ``show-plan``, ``audit``, ``logs``) and ``resume-from-failure``."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
from datetime import datetime
from pathlib import Path
from typing import Any

from pydantic_core import to_jsonable_python

from config import Settings
from plans.models import PlanStatus, StepStatus
from plans.run_state import StepRun
from plans.views import (
    ChangesQuery,
    ChangesView,
    LogsQuery,
    StatusView,
    StepChange,
    StepsQuery,
    StepView,
)
from plansmith.cli.connection import connect, plan_id_of
from plansmith.cli.console import EXIT_NOT_COMPLETED, EXIT_OK, CliError, ui_url
from workflows.client import PlanClient, StatusDiff
from workflows.errors import PlanAlreadyRan, PlanClosed, QueryUnsupported, ResumeRefused

WAITS = {StepStatus.WAITING_APPROVAL, StepStatus.WAITING_CLARIFICATION}

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


def _clock(at: datetime | None) -> str:
    """A change's time on this machine's clock (now when the change has none)."""
    return (at.astimezone() if at is not None else datetime.now().astimezone()).strftime("%H:%M:%S")


class WatchPrinter:
    """What ``--watch`` prints: the plan's status when it changes, and one line per step
    change with its time and, for a finished step, how long it ran."""

    def __init__(self) -> None:
        self.plan_status = ""
        self.started: dict[str, datetime] = {}
        self.ended: set[str] = set()  # steps whose final change was printed

    def plan(self, st: StatusView) -> None:
        for s in st.steps:
            if s.started_at is not None and s.status != StepStatus.PENDING:
                self.started.setdefault(s.id, s.started_at)
        if st.status.value == self.plan_status:
            return
        self.plan_status = st.status.value
        extra = ""
        if st.waiting_for:
            w = st.waiting_for
            extra = (
                f" — waiting for {w.kind}"
                + (f" on step {w.step_id}" if w.step_id else "")
                + (f": {w.question}" if w.question else "")
            )
        at = st.finished_at if st.status.terminal else None
        print(
            f"[{_clock(at)}] plan {st.plan_id}: {st.status.value} ({st.progress:.0%}){extra}",
            flush=True,
        )

    def snapshot(self, st: StatusView) -> None:
        """The steps already under way when watching starts."""
        for s in st.steps:
            if s.status != StepStatus.PENDING:
                self.step_as_it_is(s)

    def step_as_it_is(self, s: StepView | StepRun) -> None:
        """One line for a step as it stands (a status's view or a result's final step)."""
        at = s.completed_at if s.status.terminal else s.started_at
        self.change(
            StepChange(
                seq=0, step_id=s.id, status=s.status, at=at, attempts=s.attempts, error=s.error
            ),
            started=s.started_at,
            skip_detail=s.skip_detail,
        )

    def change(
        self, c: StepChange, started: datetime | None = None, skip_detail: str | None = None
    ) -> None:
        if started is not None:
            self.started[c.step_id] = started
        if c.status.terminal:
            self.ended.add(c.step_id)
        if c.status == StepStatus.RUNNING and c.at is not None and started is None:
            self.started[c.step_id] = c.at
        line = (
            f"[{_clock(c.at)}] {SYMBOLS.get(c.status.value, ' ')} {c.step_id:<24} {c.status.value}"
        )
        if c.attempts:
            line += f" (attempts: {c.attempts})"
        began = self.started.get(c.step_id)
        if c.status.terminal and c.at is not None and began is not None:
            line += f" in {max(0.0, (c.at - began).total_seconds()):.2f}s"
        if c.error and c.status in (StepStatus.FAILED, StepStatus.CANCELLED):
            line += f" — {c.error}"
        if skip_detail and c.status == StepStatus.SKIPPED:
            line += f" — {skip_detail}"
        print(line, flush=True)


def _print_results(st: StatusView, limit: int = 400) -> None:
    """The outputs of the completed final steps (those no other step depends on)."""
    needed = {d for s in st.steps for d in s.depends_on}
    for s in st.steps:
        if s.id in needed or s.status.value != "completed":
            continue
        _print_output(s.id, s.output, limit)


def _print_output(step_id: str, output: object, limit: int = 400) -> None:
    if output is None:
        return
    text = json.dumps(output, default=str, ensure_ascii=False)
    print(f"  result of {step_id}: {text[:limit]}{'…' if len(text) > limit else ''}", flush=True)


async def _every_step(plans: PlanClient, st: StatusView) -> StatusView:
    """``st`` with every step (a big plan's status lists only its active ones)."""
    if st.steps_complete:
        return st
    steps: list[StepView] = []
    while True:
        page = await plans.steps(st.plan_id, StepsQuery(offset=len(steps), limit=1000))
        steps += page.steps
        if not page.steps or len(steps) >= page.total:
            return st.model_copy(update={"steps": steps, "steps_complete": True})


async def _finish(plans: PlanClient, st: StatusView) -> StatusView:
    if st.outcome:
        print(f"  outcome: {st.outcome}", flush=True)
    _print_results(await _every_step(plans, st))
    return st


async def _finish_from_result(
    plans: PlanClient, plan_id: str, out: WatchPrinter, cv: ChangesView | None = None
) -> PlanStatus | None:
    """The end of a watched plan from its workflow's result (its history), not from
    queries: a query of a closed workflow replays the whole run (about 9 s for 2,000
    steps). The steps whose end was not printed yet are printed as they ended. None when
    there is no result to read (the caller asks the status)."""
    result = await plans.final_result(plan_id)
    if result is None:
        return None
    at = max((c.at for c in cv.changes if c.at is not None), default=None) if cv else None
    order = [step.id for step in result.plan.steps] if result.plan else list(result.final_steps)
    for sid in order:
        s = result.final_steps.get(sid)
        if s is None or not s.status.terminal or sid in out.ended:
            continue
        out.step_as_it_is(s)
        at = max(at, s.completed_at) if at and s.completed_at else (at or s.completed_at)
    if result.status.value != out.plan_status:
        out.plan_status = result.status.value
        print(f"[{_clock(at)}] plan {plan_id}: {result.status.value} (100%)", flush=True)
    if result.outcome:
        print(f"  outcome: {result.outcome}", flush=True)
    if result.plan is not None:
        needed = {d for step in result.plan.steps for d in step.depends_on}
        for step in result.plan.steps:
            s = result.final_steps.get(step.id)
            if step.id in needed or s is None or s.status != StepStatus.COMPLETED:
                continue
            _print_output(step.id, s.output)
    return result.status


async def watch(plans: PlanClient, plan_id: str, interval_s: float = 0.3) -> PlanStatus:
    """Print every step change until the plan ends; return how it ended.

    Reads the workflow's ``changes`` query (the changes after the last one printed: its
    cost does not grow with the plan), and ``status`` only when the plan's status changes
    or a step waits for a person. From an older worker, compares its ``status`` answers.
    """
    out = WatchPrinter()
    st = await plans.status(plan_id)
    out.plan(st)
    out.snapshot(st)
    if st.status.terminal:
        return (await _finish(plans, st)).status
    since = st.seq
    diff: StatusDiff | None = None  # set when the worker has no changes query
    while True:
        await asyncio.sleep(interval_s)
        if diff is None:
            try:
                cv = await plans.changes(plan_id, ChangesQuery(since=since), open_only=True)
            except PlanClosed:
                # its last changes come from the result: a query would replay the run
                ended = await _finish_from_result(plans, plan_id, out)
                if ended is not None:
                    return ended
                cv = await plans.changes(plan_id, ChangesQuery(since=since))
            except QueryUnsupported:
                diff = StatusDiff()
                diff.diff(st)  # what was printed already
                continue
            if not cv.complete:
                print(f"[{_clock(None)}] (changes were missed: reading the status again)")
                st = await plans.status(plan_id)
                out.plan_status = ""
                out.plan(st)
                out.snapshot(st)
                since = st.seq
                continue
            unknown = [
                c.step_id
                for c in cv.changes
                if c.status.terminal
                and c.step_id not in out.started
                and not any(
                    b.step_id == c.step_id and b.status == StepStatus.RUNNING and b.at
                    for b in cv.changes
                )
            ]
            if unknown and st.steps_complete:
                # steps that started and finished between two reads: their start is in
                # the status (which lists every step of a plan up to 200 steps)
                st = await plans.status(plan_id)
                out.plan(st)
            person = False
            for c in cv.changes:
                since = max(since, c.seq)
                out.change(c)
                person = person or c.status in WAITS
            if cv.status.terminal:
                ended = await _finish_from_result(plans, plan_id, out, cv)
                if ended is not None:
                    return ended
            if cv.status.value != out.plan_status or person or cv.status.terminal:
                st = await plans.status(plan_id)
                out.plan(st)
                if cv.status.terminal:
                    return (await _finish(plans, st)).status
        else:
            st = await plans.status(plan_id)
            by_id = {s.id: s for s in st.steps}
            for c in diff.diff(st):
                s = by_id[c.step_id]
                out.change(c, started=s.started_at, skip_detail=s.skip_detail)
            out.plan(st)
            if st.status.terminal:
                return (await _finish(plans, st)).status


async def _announce(
    plans: PlanClient, plan_id: str, workflow_id: str, settings: Settings, what: str, follow: bool
) -> int:
    """Say what was started and where to see it; with ``follow``, watch it to the end."""
    print(what, flush=True)
    print(f"watch it in the Temporal Web UI: {ui_url(settings, workflow_id)}", flush=True)
    if not follow:
        return EXIT_OK
    ended = await watch(plans, plan_id)
    return EXIT_OK if ended == PlanStatus.COMPLETED else EXIT_NOT_COMPLETED


# --- commands ------------------------------------------------------------------------


async def cmd_run(args: argparse.Namespace, settings: Settings) -> int:
    # validation (jsonschema, the expression language) loads only for the verbs that
    # read a document, not for status, watch or query
    from plansmith.cli.plan_files import load_plan

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


def _recorded_end(settings: Settings, plan_id: str) -> StatusView | None:
    """The status of the plan's newest run as the store recorded it when the run ended;
    None when that run did not end there, or the store cannot be read (a SQLite file that
    does not exist is not created)."""
    # deferred: SQLAlchemy and the store are needed only for a plan that ended
    import sqlalchemy as sa

    from store.db import get_engine, session_scope
    from store.reads import get_status

    url = settings.store.database_url
    try:
        parsed = sa.engine.make_url(url)
        if parsed.get_backend_name() == "sqlite":
            name = parsed.database or ""
            if not name or name == ":memory:" or not Path(name).is_file():
                return None
        with session_scope(get_engine(url)) as s:
            view = get_status(s, plan_id)
    except Exception:  # any failure of the store: the workflow answers instead
        return None
    return view if view is not None and view.status.terminal else None


async def plan_status(plans: PlanClient, settings: Settings, plan_id: str) -> StatusView:
    """The plan's status: the ``status`` query while its workflow is open; once it closed,
    the status the store recorded at its end (a query of a closed workflow makes a worker
    replay the whole run: seconds for thousands of steps), else the query after all."""
    try:
        return await plans.status(plan_id, open_only=True)
    except PlanClosed:
        ended = await asyncio.to_thread(_recorded_end, settings, plan_id)
        return ended if ended is not None else await plans.status(plan_id)


async def cmd_status(args: argparse.Namespace, settings: Settings) -> int:
    plans = await connect(settings)
    st = await plan_status(plans, settings, plan_id_of(args.id))
    print(st.model_dump_json(indent=2))
    return EXIT_OK


async def cmd_queue(args: argparse.Namespace, settings: Settings) -> int:
    """The task queue's limits and its limiter's ``queue`` query (docs/operating.md,
    Concurrency limits); ``limiter`` is null before any plan asked for a slot."""
    plans = await connect(settings)
    view = await plans.limiter_queue()
    t = settings.temporal
    answer = {
        "task_queue": plans.task_queue,
        "max_concurrent_plans": t.max_concurrent_plans,
        "max_concurrent_plans_per_agent": t.max_concurrent_plans_per_agent,
        "limiter": view.model_dump(mode="json") if view is not None else None,
    }
    print(json.dumps(answer, indent=2))
    return EXIT_OK


async def cmd_watch(args: argparse.Namespace, settings: Settings) -> int:
    plans = await connect(settings)
    ended = await watch(plans, plan_id_of(args.id))
    return EXIT_OK if ended == PlanStatus.COMPLETED else EXIT_NOT_COMPLETED


async def cmd_query(args: argparse.Namespace, settings: Settings) -> int:
    """``execution-state``, ``show-plan``, ``audit`` and ``logs``: the query as JSON."""
    plans = await connect(settings)
    plan_id = plan_id_of(args.id)
    # a clear "no plan" error first (open_only: a closed plan is not replayed for it)
    with contextlib.suppress(PlanClosed):
        await plans.status(plan_id, open_only=True)
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

"""``plansmith demo`` (``make run``): start the stack, run an example plan to completion,
then let the planner turn a task into a plan and run that one too; say where to look."""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from pathlib import Path

from config import Settings
from contracts.planning import PlanRequest
from contracts.tools import catalog
from plans.models import PlanStatus
from plans.validation import parse_plan, validate_or_raise
from plansmith.children import StopSignals
from plansmith.cli.connection import connect
from plansmith.cli.console import EXIT_NOT_COMPLETED, EXIT_OK, ui_url
from plansmith.cli.planning import print_generated
from plansmith.cli.processes import Stack, follow_parent, wait_forever
from plansmith.cli.running import cmd_run, watch
from workflows.plan_workflow import PlanWorkflow

DEMO_TASK = (
    "fetch the service health from http://127.0.0.1:{port}/healthz and summarise it "
    "for the on-call engineer"
)


def cmd_demo(args: argparse.Namespace, settings: Settings) -> int:
    """Start the stack, run an example plan to completion, say where to look."""
    stack = Stack(settings, args.port, "127.0.0.1")
    with StopSignals() as signals:
        try:
            follow_parent(args)
            return _demo(args, settings, stack)
        finally:
            signals.stopping()
            stack.stop()


def _demo(args: argparse.Namespace, settings: Settings, stack: Stack) -> int:
    asyncio.run(stack.start())
    print("Plansmith is up:", flush=True)
    stack.print_where()
    inputs = [f"api_url=http://127.0.0.1:{args.port}", *(args.input or [])]
    run_id = f"{Path(args.file).stem.replace('_', '-')}-{time.strftime('%Y%m%d-%H%M%S')}"
    code = asyncio.run(
        cmd_run(argparse.Namespace(file=args.file, input=inputs, id=run_id, watch=True), settings)
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
        wait_forever(stack)
    else:
        print(
            "Run `make up` (or `plansmith up`) to start the stack again and browse it.",
            flush=True,
        )
    return code


async def _demo_planner(port: int, settings: Settings) -> int:
    """The demo's second part: the planner turns a task into a plan, which then runs."""
    task = DEMO_TASK.format(port=port)
    print(f"\nAsking the planner for a plan: {task!r}", flush=True)
    plans = await connect(settings)
    result = await plans.generate(PlanRequest(task=task, agent_id="demo"))
    plan = parse_plan(result.plan)
    print_generated(result, plan, None)
    plan = plan.model_copy(update={"id": f"generated-{time.strftime('%Y%m%d-%H%M%S')}"})
    assert plan.id is not None
    validate_or_raise(plan, catalog())
    await plans.start(plan)
    print(f"started the generated plan {plan.id}", flush=True)
    watcher = asyncio.create_task(watch(plans, plan.id))
    # The adaptive policy may ask a person before a new agent's plan runs: in the demo,
    # the person is you, and the approval says so in the audit trail.
    for _ in range(50):
        if watcher.done():
            break
        st = await plans.status(plan.id)
        if st.status == PlanStatus.PENDING_APPROVAL:
            print(
                f"approving it for you ({st.approval_note or 'policy asked a person'})", flush=True
            )
            await plans.update(
                plan.id,
                PlanWorkflow.approve,
                {"by": "demo (make run)", "comment": "approved by the demo"},
            )
            break
        await asyncio.sleep(0.2)
    ended = await watcher
    return EXIT_OK if ended == PlanStatus.COMPLETED else EXIT_NOT_COMPLETED

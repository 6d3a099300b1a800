"""``plansmith plan "TASK"``: the LLM planner turns a task into a validated plan document
(JSON on stdout); how it was made, and whether a run will wait for approval, go to stderr.
The planner runs as the ``GeneratePlan`` workflow on a worker, or in this process with
``--local``; ``--save`` also creates the plan as a draft in the store."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from config import Settings
from contracts.errors import LLMError, NoModelFits
from contracts.planning import GeneratedPlan, PlanningFailed, PlanRequest
from contracts.tools import catalog
from plans.approval_gate import needs_approval
from plans.models import Plan
from plans.policy import fresh_trust, should_require_approval
from plans.risk import assess_risk
from plans.run_state import new_run
from plans.validation import parse_plan
from plansmith.cli.connection import connect
from plansmith.cli.console import (
    EXIT_NOT_COMPLETED,
    EXIT_OK,
    CliError,
    default_actor,
    err,
    parse_inputs,
)


def plan_request(args: argparse.Namespace) -> PlanRequest:
    """The planner request of ``plansmith plan``; CliError for bad input."""
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
    inputs = parse_inputs(args.input)
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


def approval_note(plan: Plan) -> str:
    """Whether a run of ``plan`` will wait for ``plansmith approve``, and why."""
    now = datetime.now(UTC)
    run = new_run(plan, now)
    if plan.options.require_approval == "auto" and not plan.options.auto_approve:
        # the adaptive policy decides when the plan starts; as a new agent's plan, now:
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


def _print_repairs(repairs: list[list[str]]) -> None:
    for i, problems in enumerate(repairs, start=1):
        err(f"repair round {i}: {len(problems)} problem(s) sent back to the model:")
        for line in problems:
            err(f"    - {line}")


def print_generated(result: GeneratedPlan, plan: Plan, saved: str | None) -> None:
    """How the plan was made (model, rounds, constraints, lessons, tokens), on stderr."""
    rounds = f"{result.rounds} round{'s' if result.rounds != 1 else ''}"
    err(f"planned by {result.model} in {rounds} ({len(plan.steps)} step(s); the plan is valid)")
    if result.offline:
        err(
            "offline model: neither ANTHROPIC_API_KEY nor PLANSMITH_OLLAMA_URL is set on the "
            "planner's side, so the plan was "
            "made from the task's wording without a language model (and its llm steps answer "
            "offline too)"
        )
    if result.constraints:
        err("constraints:")
        for c in result.constraints:
            err(f"  - {c.constraint}: {c.how}")
    _print_repairs(result.repairs)
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
    err(f"approval: {approval_note(plan)}")


async def _generate(req: PlanRequest, settings: Settings, local: bool) -> GeneratedPlan:
    if local:
        # deferred: the worker's wiring loads every activity (model clients, sandbox, store)
        from worker import plan_in_this_process

        return await plan_in_this_process(req)
    try:
        plans = await connect(settings)
    except CliError as e:
        raise CliError(
            f"{e}\nor plan in this process, without Temporal: `plansmith plan --local ...`"
        ) from None
    return await plans.generate(req)


async def cmd_plan(args: argparse.Namespace, settings: Settings) -> int:
    """``plansmith plan "TASK"``: the validated plan document on stdout, the rest on stderr."""
    req = plan_request(args)
    try:
        result = await _generate(req, settings, args.local)
    except PlanningFailed as e:
        _print_repairs(e.repairs)
        err(f"error: {e}")
        return EXIT_NOT_COMPLETED
    except NoModelFits as e:
        raise CliError(str(e)) from None
    except LLMError as e:
        err(f"error: the language model failed ({e.kind}): {e}")
        return EXIT_NOT_COMPLETED
    plan = parse_plan(result.plan)
    saved = None
    document = result.plan
    if args.save:
        # deferred: the store (SQLAlchemy) is needed only to save a draft
        from store.db import ensure_migrated, get_engine
        from store.knowledge import link_generation_quietly

        saved = await _save_draft(plan, settings)
        document = {"id": saved, **result.plan}
        engine = ensure_migrated(get_engine(settings.store.database_url))
        await asyncio.to_thread(link_generation_quietly, engine, result.generation_id, saved)
    print(json.dumps(document, indent=2, ensure_ascii=False), flush=True)
    print_generated(result, plan, saved)
    return EXIT_OK


async def _save_draft(plan: Plan, settings: Settings) -> str:
    """Create ``plan`` as a draft in the store, as ``POST /api/plans`` does."""
    # deferred: the drafts and the store load SQLAlchemy, needed only to save a draft
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
                created_by=default_actor(),
            )
        )
    except Exception as e:
        raise CliError(f"could not save the plan as a draft: {type(e).__name__}: {e}") from None
    return plan_id

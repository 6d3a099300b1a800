"""The ``generate_plan`` activity: the planner with this worker's model, tools and lessons.

:meth:`PlanningActivities.plan` does the work — the worker's model
(``ActivityDeps.chat_model``: Anthropic with a key, the offline stand-in without), the
planning model's name and token limit from the selector, the tool catalog, the lessons
that fit the task from the store — and records the run in the store
(``plan_generations``). The activity wraps it with heartbeats and turns its errors into
``ApplicationError`` s: a model error keeps its kind and retryability, ``PlanningFailed``
and ``NoModelFits`` are not retried. ``plansmith plan --local`` calls the same method
without Temporal (``worker.plan_in_this_process``).

The store is optional here: when it cannot be read the planner goes on without lessons
and says so in a warning.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import time
import uuid
from collections.abc import AsyncIterator, Iterable, Mapping
from typing import Any

from sqlalchemy.engine import Engine
from temporalio import activity
from temporalio.exceptions import ApplicationError

from activities.deps import ActivityDeps
from activities.llm import planner, replanner
from activities.llm.selector import load_selector
from contracts.errors import LLMError, NoModelFits
from contracts.models import PLANNING
from contracts.planning import GENERATE_PLAN, GeneratedPlan, PlanningFailed, PlanRequest
from contracts.replan import PROPOSE_REPLAN, ReplanAnswer, ReplanRequest
from contracts.tools import catalog
from plans.models import ToolSpec
from store import knowledge
from store.db import ensure_migrated, session_scope

log = logging.getLogger("plansmith.planner")

HEARTBEAT_EVERY_S = 2.0
LESSONS_LIMIT = 5


def tools_named(text: str, tools: Iterable[str]) -> list[str]:
    """The tools whose name (``http_request`` or ``http request``) appears in ``text``:
    what lessons are matched on besides the task's words."""
    found = []
    for name in tools:
        spaced = re.escape(name).replace("_", "[_ ]")
        if re.search(rf"(?<![\w-]){spaced}(?![\w-])", text, re.I):
            found.append(name)
    return sorted(found)


def load_lessons(engine: Engine, req: PlanRequest, tools: Iterable[str]) -> list[dict[str, Any]]:
    """The lessons that fit the task (``store.knowledge.relevant_lessons``); [] with a
    warning when the store cannot be read. Blocking: call it in a thread."""
    context = req.context if isinstance(req.context, str) else str(req.context or "")
    try:
        with session_scope(ensure_migrated(engine)) as session:
            return knowledge.relevant_lessons(
                session,
                req.task,
                tools_named(f"{req.task}\n{context}", tools),
                limit=LESSONS_LIMIT,
            )
    except Exception as e:
        log.warning(
            "planning without lessons: the store cannot be read (%s: %s)",
            type(e).__name__,
            str(e)[:300],
        )
        return []


def record_generation(
    engine: Engine,
    generation_id: str,
    req: PlanRequest,
    *,
    result: GeneratedPlan | None = None,
    failure: PlanningFailed | None = None,
    latency_ms: float = 0.0,
) -> None:
    """Keep the planner run in the store (and count the lessons it applied); a store that
    cannot be written only costs a warning."""
    try:
        fields: dict[str, Any] = {
            "id": generation_id,
            "agent_id": req.agent_id,
            "task": req.task,
            "latency_ms": round(latency_ms, 1),
        }
        if result is not None:
            lesson_ids = [x.id for x in result.lessons_applied if isinstance(x.id, int)]
            fields.update(
                model=result.model,
                offline=result.offline,
                ok=True,
                rounds=result.rounds,
                repairs=result.repairs,
                lessons_applied=lesson_ids,
                input_tokens=result.usage.input_tokens,
                output_tokens=result.usage.output_tokens,
            )
        elif failure is not None:
            repairs = [*failure.repairs, [str(p) for p in failure.problems]]
            fields.update(model=failure.model, ok=False, rounds=failure.rounds, repairs=repairs)
        with session_scope(ensure_migrated(engine), write=True) as session:
            knowledge.record_generation(session, **fields)
            if result is not None and fields["lessons_applied"]:
                knowledge.mark_lessons_applied(session, fields["lessons_applied"])
    except Exception as e:
        log.warning(
            "the planner run %s was not recorded in the store (%s: %s)",
            generation_id,
            type(e).__name__,
            str(e)[:300],
        )


async def _keep_heartbeating() -> None:
    while True:
        activity.heartbeat()
        await asyncio.sleep(HEARTBEAT_EVERY_S)


class PlanningActivities:
    """``generate_plan``, with the model, the settings and the store of ``deps``."""

    def __init__(self, deps: ActivityDeps):
        self.deps = deps

    async def plan(
        self,
        req: PlanRequest,
        generation_id: str | None = None,
        tools: Mapping[str, ToolSpec] | None = None,
    ) -> GeneratedPlan:
        """Plan ``req`` with the worker's model, selector, tool catalog and store.

        Raises:
            NoModelFits: ``req.model`` (or a planning model) is not configured.
            LLMError: the model call failed.
            PlanningFailed: no valid plan within the repair rounds.
        """

        deps = self.deps
        generation_id = generation_id or f"local-{uuid.uuid4().hex[:12]}"
        started = time.monotonic()
        selector = await asyncio.to_thread(load_selector, deps.settings, deps.engine)
        config = selector.resolve(req.model, [PLANNING])
        cat = dict(tools) if tools is not None else catalog()
        lessons = await asyncio.to_thread(load_lessons, deps.engine, req, list(cat))
        try:
            result = await planner.generate_plan(
                req,
                model=deps.chat_model,
                model_name=config.name,
                catalog=cat,
                lessons=lessons,
                max_tokens=config.max_tokens,
                provider=config.provider,
            )
        except PlanningFailed as e:
            elapsed = (time.monotonic() - started) * 1000
            await asyncio.to_thread(
                record_generation, deps.engine, generation_id, req, failure=e, latency_ms=elapsed
            )
            raise
        elapsed = (time.monotonic() - started) * 1000
        await asyncio.to_thread(
            record_generation, deps.engine, generation_id, req, result=result, latency_ms=elapsed
        )
        return result.model_copy(update={"generation_id": generation_id})

    @activity.defn(name=GENERATE_PLAN)
    async def generate_plan(self, req: PlanRequest) -> GeneratedPlan:
        """The planner as an activity; its errors say whether Temporal may retry."""
        async with _as_activity_errors():
            try:
                return await self.plan(req, activity.info().workflow_id)
            except PlanningFailed as e:
                raise ApplicationError(
                    str(e), e.details(), type="PlanningFailed", non_retryable=True
                ) from None

    async def replan(self, req: ReplanRequest) -> ReplanAnswer:
        """A fix for a step that failed for good (``on_error: replan``), with the lessons
        that fit the failed step; the answer is checked by the workflow, not here."""
        deps = self.deps
        selector = await asyncio.to_thread(load_selector, deps.settings, deps.engine)
        config = selector.resolve(None, [PLANNING])
        step = req.plan.step(req.step_id)
        task = " ".join(
            x for x in (req.plan.title, step.description, step.tool or "", req.error) if x
        )
        lessons = await asyncio.to_thread(
            load_lessons,
            deps.engine,
            PlanRequest(task=task or req.step_id, agent_id=req.plan.agent_id),
            [*req.tools, *([step.tool] if step.tool else [])],
        )
        return await replanner.propose(
            req,
            model=deps.chat_model,
            model_name=config.name,
            lessons=lessons,
            max_tokens=min(config.max_tokens, 4096),
            provider=config.provider,
        )

    @activity.defn(name=PROPOSE_REPLAN)
    async def propose_replan(self, req: ReplanRequest) -> ReplanAnswer:
        """The replanner as an activity; a model error says whether Temporal may retry."""
        async with _as_activity_errors():
            return await self.replan(req)


@contextlib.asynccontextmanager
async def _as_activity_errors() -> AsyncIterator[None]:
    """Heartbeats while the body runs; a model's errors become ApplicationErrors that
    say whether Temporal may retry."""
    beat = asyncio.create_task(_keep_heartbeating())
    try:
        yield
    except NoModelFits as e:
        raise ApplicationError(
            str(e), {"location": "model"}, type="NoModelFits", non_retryable=True
        ) from None
    except LLMError as e:
        raise ApplicationError(
            str(e),
            {"status": e.status, "retryable": e.retryable},
            type=e.kind,
            non_retryable=not e.retryable,
        ) from None
    finally:
        beat.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await beat

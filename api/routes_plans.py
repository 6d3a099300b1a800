"""``/api/plans``: create, list, read, generate, execute and resume plans.

A plan created with ``POST /api/plans`` is a *draft* until ``POST .../execute`` starts its
workflow; drafts are kept in the store by :mod:`api.drafts`. The reads of a plan's run
(status, logs, audit, events…) are in :mod:`api.routes_plan_reads`, the controls people
send in :mod:`api.routes_plan_controls`. ``GET /api/plans`` lists from the store.
"""

import asyncio
import re
import uuid
from datetime import UTC, datetime
from typing import Annotated, Any

from fastapi import APIRouter, Body, Depends, Query, Request, Response
from fastapi.exceptions import RequestValidationError
from pydantic import SkipValidation, ValidationError
from temporalio.client import WorkflowExecutionStatus

from api.auth import Principal
from api.controls import (
    ByBody,
)
from api.deps import (
    ActorDep,
    ApiServices,
    DraftsDep,
    GatewayDep,
    PlanIdDep,
    ServicesDep,
    StoreDep,
    get_principal,
    plan_agent_id,
    reject_unknown_query,
)
from api.drafts import Draft, DraftExists, DraftStore, refuse_draft
from api.errors import (
    ErrorBody,
    conflict,
    invalid,
    not_found,
    problems_from_errors,
    responses,
)
from api.limits import off_loop
from api.schemas import (
    ConstraintAnswer,
    ExecuteResponse,
    GenerateRequest,
    GenerateResponse,
    LessonUsed,
    PlanCreated,
    PlanDetail,
    PlanList,
    PlanSummary,
    ResumeResponse,
    examples_of,
)
from api.store_reads import open_or_recorded, temporal_or_store, unless_store_down
from contracts.planning import PlanRequest
from contracts.tools import catalog
from plans.execution_plan_import import is_execution_plan, translate_execution_plan
from plans.models import Plan, PlanStatus, workflow_id_for
from plans.plan_loading import PlanInvalid
from plans.validation import Problem, too_many_steps, validate_plan
from workflows.client import PlanClient, ended_status

router = APIRouter(
    prefix="/plans",
    tags=["plans"],
    dependencies=[Depends(get_principal), Depends(reject_unknown_query)],
)

READ = responses(401, 404, 422, 502, 503)
CONTROL = responses(401, 403, 404, 409, 422, 502, 503)

PLAN_EXAMPLE = {
    "id": "release-2-4",
    "title": "Release 2.4 to production",
    "inputs": {"version": "2.4.0"},
    "options": {"require_approval": True, "on_error": "stop"},
    "steps": [
        {
            "id": "build",
            "tool": "wait",
            "params": {"seconds": 1, "result": {"artifact": "app-{{ inputs.version }}.tar.gz"}},
        },
        {
            "id": "deploy-prod",
            "tool": "wait",
            "depends_on": ["build"],
            "requires_approval": True,
            "params": {"seconds": 1},
        },
    ],
}


def _new_plan_id(plan: Plan) -> str:
    slug = re.sub(r"[^a-z0-9]+", "-", plan.title.lower()).strip("-")[:40].strip("-")
    return f"{slug or 'plan'}-{uuid.uuid4().hex[:8]}"


async def steps_within_limit(request: Request, services: ServicesDep) -> None:
    """A plan with more than ``PLANSMITH_MAX_PLAN_STEPS`` steps is refused (422) before
    its body becomes a model per step. FastAPI has parsed the JSON already (and keeps
    it); the models are made after the dependencies."""
    try:
        data = await request.json()
    except Exception:  # FastAPI has answered a malformed body before this runs
        return
    steps = (data.get("steps") or data.get("Steps")) if isinstance(data, dict) else None
    if isinstance(steps, list):
        over = too_many_steps(len(steps), services.config.max_plan_steps)
        if over is not None:
            raise invalid("plan is invalid (1 problem(s))", [over], code="too_many_steps")


def _plan_of(body: Any) -> Plan:
    """The body as a :class:`Plan`, or the 422 FastAPI would have answered (a body in
    the execution-plan format is translated first, its problems located by its names)."""
    if is_execution_plan(body):
        try:
            body = translate_execution_plan(body)
        except PlanInvalid as e:
            raise invalid(f"plan is invalid ({len(e.problems)} problem(s))", e.problems) from None
    try:
        return Plan.model_validate(body)
    except ValidationError as e:
        errors = [{**err, "loc": ("body", *err["loc"])} for err in e.errors(include_url=False)]
        raise RequestValidationError(errors) from None


async def _digest(plan: Plan) -> str:
    return await off_loop(plan.digest)


async def plan_problems(plan: Plan, services: ApiServices) -> list[Problem]:
    """Every problem of ``plan`` (the full validation of POST /api/plans: ids,
    dependencies, cycles, tools, tool parameters, expressions, templates, the step limit);
    empty means valid. Off the event loop: linear in the plan, but a big one takes a while."""
    return await off_loop(validate_plan, plan, catalog(), max_steps=services.config.max_plan_steps)


async def create_draft(
    document: Plan,
    actor: Principal,
    gateway: PlanClient,
    drafts: DraftStore,
    services: ApiServices,
    by: str | None = None,
) -> tuple[Draft, bool]:
    """The create path of POST /api/plans once the document has its shape: an id made
    from the title when it has none, the agent key's claim (403), full validation (422
    with every located problem), a taken id (409), then the draft kept in the store.
    ``by``: the creator recorded with keys off (the key's owner with keys on). Returns
    the draft and whether it is new (False: the very same document was stored)."""
    plan = document if document.id else document.model_copy(update={"id": _new_plan_id(document)})
    plan = actor.claim(plan)  # an agent key creates plans only as itself (403 otherwise)
    problems = await plan_problems(plan, services)
    if problems:
        raise invalid(f"plan is invalid ({len(problems)} problem(s))", problems)
    assert plan.id is not None
    desc = await gateway.describe(plan.id)
    if desc is not None:
        raise conflict(
            f"plan id {plan.id} is taken by a plan that was executed "
            f"(workflow {workflow_id_for(plan.id)}); choose another id",
            code="id_taken",
        )
    try:
        return await drafts.add(
            Draft(plan=plan, created_at=datetime.now(UTC), created_by=actor.actor(by))
        )
    except DraftExists:
        raise conflict(
            f"another document already has plan id {plan.id}; choose another id",
            code="id_taken",
        ) from None


# --- create, list, read --------------------------------------------------------------


@router.post(
    "",
    status_code=201,
    response_model=PlanCreated,
    summary="Create a plan (a draft until executed)",
    description="The body is a plan document (docs/plan-document.md). It is "
    "validated fully: shape first, then the whole document (ids, dependencies, cycles, "
    "tools, tool parameters, expressions and templates); a 422 lists every problem with its "
    "location. Without an `id` one is made from the title. Posting the very same document "
    "again answers 200 with the stored one; a different document under a taken id is a 409. "
    "The draft is kept in the store until executed (it survives an API restart and every "
    "API process sees it).",
    responses={
        200: {"model": PlanCreated, "description": "the same document was already stored"},
        **responses(401, 403, 409, 422, 502, 503),
    },
)
async def create_plan(
    _limit: Annotated[None, Depends(steps_within_limit)],
    # the body's JSON Schema is the Plan's; its models are made off the event loop
    document: Annotated[
        Plan,
        SkipValidation,
        Body(
            openapi_examples={
                "release": {"summary": "two steps, the second behind a gate", "value": PLAN_EXAMPLE}
            }
        ),
    ],
    actor: ActorDep,
    gateway: GatewayDep,
    drafts: DraftsDep,
    services: ServicesDep,
) -> Response:
    document = await off_loop(_plan_of, document)
    draft, created = await create_draft(document, actor, gateway, drafts, services)
    plan_id = draft.plan.id
    assert plan_id is not None

    def answer() -> bytes:  # the plan echoed: as big as the plan, made off the event loop
        return (
            PlanCreated(
                plan_id=plan_id,
                workflow_id=workflow_id_for(plan_id),
                status=PlanStatus.DRAFT,
                version=1,
                digest=draft.plan.digest(),
                created=created,
                plan=draft.plan,
            )
            .model_dump_json()
            .encode()
        )

    return Response(  # a PlanCreated (response_model), made by answer()
        content=await off_loop(answer),
        status_code=201 if created else 200,
        media_type="application/json",
        headers={"Location": f"/api/plans/{plan_id}"},
    )


@router.get(
    "",
    response_model=PlanList,
    summary="List plans",
    description="Plans from the store, drafts included, most recently updated first. "
    "`status` keeps plans in that status (as last recorded); `limit` and `offset` page.",
    responses=responses(401, 422, 503),
)
async def list_plans(
    store: StoreDep,
    status: Annotated[PlanStatus | None, Query(description="only plans in this status")] = None,
    limit: Annotated[int, Query(ge=1, le=1000, description="at most this many plans")] = 100,
    offset: Annotated[int, Query(ge=0, le=1_000_000, description="skip this many")] = 0,
) -> PlanList:
    items: list[PlanSummary] = []
    for p, run in await store.list(status, limit, offset):
        waiting = (run or {}).get("waiting") or []
        first = waiting[0] if waiting else None
        items.append(
            PlanSummary(
                plan_id=p.id,
                workflow_id=workflow_id_for(p.id),
                executed=p.last_run_id is not None,
                status=PlanStatus(p.status),
                waiting_for=(first.get("kind") if isinstance(first, dict) else None),
                run_id=(run or {}).get("execution_run_id"),
                created_at=p.created_at,
                closed_at=(run or {}).get("finished_at"),
            )
        )
    return PlanList(plans=items, count=len(items))


@router.get(
    "/{plan_id}",
    response_model=PlanDetail,
    summary="A plan's current document and status",
    responses=READ,
)
async def get_plan(
    plan_id: PlanIdDep, gateway: GatewayDep, drafts: DraftsDep, store: StoreDep
) -> PlanDetail:
    draft = await unless_store_down(drafts.get(plan_id))
    if draft is not None:
        return PlanDetail(
            plan_id=plan_id,
            workflow_id=workflow_id_for(plan_id),
            executed=False,
            status=PlanStatus.APPROVED if draft.approval else PlanStatus.DRAFT,
            version=1,
            digest=await _digest(draft.plan),
            plan=draft.plan,
        )

    async def ask(open_only: bool) -> PlanDetail:
        view, status = await asyncio.gather(
            gateway.plan(plan_id, open_only), gateway.status(plan_id, open_only)
        )
        return PlanDetail(
            plan_id=plan_id,
            workflow_id=workflow_id_for(plan_id),
            executed=True,
            status=status.status,
            version=view.version,
            digest=view.digest,
            plan=view.plan,
        )

    async def from_store() -> PlanDetail | None:
        found = await store.plan(plan_id)
        if found is None:
            return None
        detail, plan = found
        return PlanDetail(
            plan_id=plan_id,
            workflow_id=workflow_id_for(plan_id),
            executed=True,
            status=PlanStatus(detail.status),
            version=detail.current_version,
            digest=detail.digest or plan.digest(),
            plan=plan,
        )

    return await temporal_or_store(
        lambda: open_or_recorded(ask, from_store, lambda: store.ended(plan_id)), from_store
    )


@router.post(
    "/generate",
    response_model=GenerateResponse,
    summary="Generate a plan with the LLM planner",
    description="The planner turns a task, its context and constraints into a plan document "
    "that passes full validation (the same checks as POST /api/plans): the model hands in the "
    "plan through a tool whose schema is the plan document, every validation problem is sent "
    "back to it for repair (up to `max_repair_rounds`), and the answer lists each constraint "
    "and how the plan meets it. Lessons people taught earlier plans (rejections, corrections) "
    "go into the prompt and are listed. It runs as the `GeneratePlan` workflow on the API's "
    "task queue. Without ANTHROPIC_API_KEY or PLANSMITH_OLLAMA_URL on the worker an "
    "offline stand-in answers "
    "(`offline: true`). With `save: true` the plan is also created as a draft, exactly as "
    "POST /api/plans would, so POST /api/plans/{plan_id}/execute runs it. A plan that stays "
    "invalid is a 422 listing the problems (`code: planning_failed`); an invalid plan is "
    "never returned.",
    responses={
        422: {
            "model": ErrorBody,
            "description": "invalid request, an unknown model, or no valid plan within the "
            "repair rounds (`planning_failed`, every problem located)",
        },
        502: {
            "model": ErrorBody,
            "description": "the language model API refused the request, or Temporal answered "
            "with an unexpected error",
        },
        **responses(401, 403, 409, 503),
    },
)
async def generate_plan(
    request: Annotated[GenerateRequest, Body(openapi_examples=examples_of(GenerateRequest))],
    gateway: GatewayDep,
    drafts: DraftsDep,
    actor: ActorDep,
    store: StoreDep,
    services: ServicesDep,
) -> GenerateResponse:
    agent_id = actor.agent_id_for(request.agent_id)  # an agent key plans only as itself
    try:
        req = PlanRequest(**request.model_dump(exclude={"save"}) | {"agent_id": agent_id})
    except ValidationError as e:
        problems = problems_from_errors(e.errors(include_url=False))
        raise invalid(f"request is invalid ({len(problems)} problem(s))", problems) from None
    result = await gateway.generate(req)
    document, plan_id = result.plan, None
    if request.save:
        plan = actor.claim(Plan.model_validate(result.plan))
        plan = plan.model_copy(update={"id": _new_plan_id(plan)})
        problems = await off_loop(
            validate_plan, plan, catalog(), max_steps=services.config.max_plan_steps
        )
        if problems:  # the API's tool catalog differs from the worker's
            raise invalid(
                f"the generated plan is not valid against this API's tools "
                f"({len(problems)} problem(s))",
                problems,
            )
        assert plan.id is not None
        try:
            await drafts.add(
                Draft(plan=plan, created_at=datetime.now(UTC), created_by=actor.actor(None))
            )
        except DraftExists:
            raise conflict(
                f"another document already has plan id {plan.id}; generate again",
                code="id_taken",
            ) from None
        plan_id = plan.id
        document = {"id": plan.id, **result.plan}
        await store.link_generation(result.generation_id, plan.id)
    return GenerateResponse(
        plan=document,
        plan_id=plan_id,
        constraints=[ConstraintAnswer(**c.model_dump()) for c in result.constraints],
        rounds=result.rounds,
        repairs=result.repairs,
        model=result.model,
        offline=result.offline,
        lessons_applied=[LessonUsed(**x.model_dump()) for x in result.lessons_applied],
        input_tokens=result.usage.input_tokens,
        output_tokens=result.usage.output_tokens,
    )


# --- run -----------------------------------------------------------------------------


@router.post(
    "/{plan_id}/execute",
    status_code=202,
    response_model=ExecuteResponse,
    summary="Start a created plan as its workflow (idempotent)",
    description="Starts workflow `plan-<plan_id>` on the API's task queue. Idempotent on the "
    "plan id: executing a plan that is already running answers 202 with `started: false` "
    "and starts nothing. A plan whose workflow already ended is a 409 (resume it with "
    "resume-from-failure).",
    responses=responses(401, 403, 404, 409, 422, 502, 503),
)
async def execute_plan(
    plan_id: PlanIdDep, gateway: GatewayDep, drafts: DraftsDep, actor: ActorDep
) -> ExecuteResponse:
    if actor.is_agent:  # an agent key runs only the plans it proposed
        actor.may_control("execute", await plan_agent_id(gateway, drafts, plan_id))
    draft = await drafts.get(plan_id)
    if draft is not None:
        # the submitter: the key that created the draft (None with keys off)
        submitted_by = draft.created_by if actor.owner is not None else None
        handle, started = await gateway.start(
            draft.plan, approval=draft.approval, submitted_by=submitted_by
        )
        await drafts.remove(plan_id)
    else:
        desc = await gateway.describe(plan_id)
        if desc is None:
            raise not_found(f"no plan {plan_id!r}")
        if desc.status != WorkflowExecutionStatus.RUNNING:
            raise conflict(
                f"plan {plan_id} already ran and ended {ended_status(desc)}; resume it with "
                f"POST /api/plans/{plan_id}/resume-from-failure",
                code="already_ran",
            )
        handle, started = await gateway.handle(plan_id), False
    return ExecuteResponse(
        plan_id=plan_id,
        workflow_id=handle.id,
        run_id=handle.result_run_id or handle.run_id,
        started=started,
        detail=(
            f"started workflow {handle.id} on task queue {gateway.settings.temporal.task_queue}"
            if started
            else f"plan {plan_id} is already running; nothing new was started"
        ),
        status_url=f"/api/plans/{plan_id}/status",
        events_url=f"/api/plans/{plan_id}/events",
    )


@router.post(
    "/{plan_id}/resume-from-failure",
    status_code=202,
    response_model=ResumeResponse,
    summary="Run a failed, partial or cancelled plan again, keeping its completed steps",
    description="A new run of the same workflow id carries the completed steps over (they are "
    "never run again); failed, skipped and pending steps run. The new run goes through plan "
    "approval again as the plan's options say. Refused (409) for a running plan or one that "
    "ended completed or rejected.",
    responses=CONTROL,
)
async def resume_plan_from_failure(
    plan_id: PlanIdDep,
    gateway: GatewayDep,
    drafts: DraftsDep,
    actor: ActorDep,
    body: Annotated[ByBody | None, Body(openapi_examples=examples_of(ByBody))] = None,
) -> ResumeResponse:
    actor.may_control("resume_from_failure")  # a person's decision (403 for an agent key)
    by = actor.actor(body.by if body else None)
    await refuse_draft(drafts, plan_id, "resume-from-failure")
    handle, carried = await gateway.resume(plan_id, by)
    return ResumeResponse(
        plan_id=plan_id,
        workflow_id=handle.id,
        run_id=handle.result_run_id or handle.run_id,
        carried_steps=carried,
        detail=f"resumed by {by}: a new run of {handle.id}, {carried} completed step(s) carried",
    )

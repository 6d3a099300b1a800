"""``/api/plans``: create, list, read, execute, watch and steer plans.

Controls are sent to the workflow as *updates*, so the caller learns at once whether one
was accepted: a refused transition is a 409 with the workflow's reason, a malformed
argument a 422.

A plan created with ``POST /api/plans`` is a *draft* until ``POST .../execute`` starts its
workflow; drafts are kept in the store by :mod:`api.drafts`. Reads of a draft (status,
execution-state, logs, audit, versions) answer from the document itself, as a fresh run
would; controls and events need the workflow and answer 409 for a draft.

Reads of an executed plan ask its workflow first (Temporal is the truth for a live plan)
and fall back to the store (:mod:`api.store_reads`) when Temporal does not know the
workflow (retention, deletion, another Temporal) or cannot answer; 404 / 503 only when
neither can. ``GET /api/plans`` lists from the store.
"""

# No ``from __future__ import annotations`` here: the control routes are built in a
# loop, and FastAPI must see their body models as real objects in the annotations.

import asyncio
import re
import uuid
from datetime import UTC, datetime
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Body, Depends, Header, Query, Response
from fastapi.responses import StreamingResponse
from pydantic import BaseModel, ValidationError
from temporalio.client import WorkflowExecutionStatus

from api.controls import (
    PLAN_BODIES,
    PLAN_ROUTES,
    STEP_BODIES,
    STEP_ROUTES,
    SUMMARIES,
    ByBody,
    body_is_optional,
    payload,
)
from api.deps import (
    ActorDep,
    DraftsDep,
    GatewayDep,
    HubDep,
    PlanIdDep,
    StepIdDep,
    StoreDep,
    get_principal,
    reject_unknown_query,
)
from api.drafts import Draft, DraftExists, DraftStore
from api.errors import (
    ErrorBody,
    conflict,
    invalid,
    not_found,
    problems_from_errors,
    responses,
)
from api.schemas import (
    ConstraintAnswer,
    ExecuteResponse,
    GenerateRequest,
    GenerateResponse,
    LessonUsed,
    LogLine,
    PlanCreated,
    PlanDetail,
    PlanList,
    PlanSummary,
    ResumeResponse,
)
from api.sse import EventsDoc
from api.store_reads import temporal_or_store
from contracts.planning import PlanRequest
from contracts.tools import catalog
from plans.controls import ControlResult
from plans.models import ID_PATTERN, Plan, PlanStatus, workflow_id_for
from plans.run_state import AuditEntry, LogEntry, PlanRun, PlanVersion, new_run
from plans.validation import validate_plan
from plans.views import (
    ExecutionState,
    LogsQuery,
    StatusView,
    audit_view,
    execution_state,
    logs_view,
    plan_view,
    status_view,
)
from workflows.client import PlanClient, ended_status

router = APIRouter(
    prefix="/plans",
    tags=["plans"],
    dependencies=[Depends(get_principal), Depends(reject_unknown_query)],
)
controls = APIRouter(
    prefix="/plans",
    tags=["controls"],
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


def _examples(model: type[BaseModel]) -> dict[str, Any]:
    """The model's examples as OpenAPI ``examples`` of a request body."""
    extra = model.model_config.get("json_schema_extra")
    found = extra.get("examples") if isinstance(extra, dict) else None
    values = found if isinstance(found, list) and found else [{}]
    return {f"example{i + 1}": {"value": v} for i, v in enumerate(values)}


def _new_plan_id(plan: Plan) -> str:
    slug = re.sub(r"[^a-z0-9]+", "-", plan.title.lower()).strip("-")[:40].strip("-")
    return f"{slug or 'plan'}-{uuid.uuid4().hex[:8]}"


async def _draft_run(drafts: DraftStore, plan_id: str) -> PlanRun | None:
    """A draft's state as a fresh run would have it (status ``draft``, nothing ran)."""
    draft = await drafts.get(plan_id)
    if draft is None:
        return None
    run = new_run(draft.plan, draft.created_at)
    run.versions[0].by = draft.plan.agent_id or draft.created_by
    return run


async def _refuse_draft(drafts: DraftStore, plan_id: str, what: str) -> None:
    if await drafts.get(plan_id) is not None:
        raise conflict(
            f"{what} refused: plan {plan_id} is a draft that was not executed yet; "
            f"POST /api/plans/{plan_id}/execute first",
            code="not_executed",
        )


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
        **responses(401, 409, 422, 502, 503),
    },
)
async def create_plan(
    document: Annotated[
        Plan,
        Body(
            openapi_examples={
                "release": {"summary": "two steps, the second behind a gate", "value": PLAN_EXAMPLE}
            }
        ),
    ],
    actor: ActorDep,
    gateway: GatewayDep,
    drafts: DraftsDep,
    response: Response,
) -> PlanCreated:
    plan = document if document.id else document.model_copy(update={"id": _new_plan_id(document)})
    problems = validate_plan(plan, catalog())
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
        draft, created = await drafts.add(
            Draft(plan=plan, created_at=datetime.now(UTC), created_by=actor.actor(None))
        )
    except DraftExists:
        raise conflict(
            f"another document already has plan id {plan.id}; choose another id",
            code="id_taken",
        ) from None
    response.status_code = 201 if created else 200
    response.headers["Location"] = f"/api/plans/{plan.id}"
    return PlanCreated(
        plan_id=plan.id,
        workflow_id=workflow_id_for(plan.id),
        status=PlanStatus.DRAFT,
        version=1,
        digest=draft.plan.digest(),
        created=created,
        plan=draft.plan,
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
    draft = await drafts.get(plan_id)
    if draft is not None:
        return PlanDetail(
            plan_id=plan_id,
            workflow_id=workflow_id_for(plan_id),
            executed=False,
            status=PlanStatus.DRAFT,
            version=1,
            digest=draft.plan.digest(),
            plan=draft.plan,
        )

    async def from_temporal() -> PlanDetail:
        view, status = await asyncio.gather(gateway.plan(plan_id), gateway.status(plan_id))
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

    return await temporal_or_store(from_temporal, from_store)


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
    "task queue. Without ANTHROPIC_API_KEY on the worker an offline stand-in answers "
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
        **responses(401, 409, 503),
    },
)
async def generate_plan(
    request: Annotated[GenerateRequest, Body(openapi_examples=_examples(GenerateRequest))],
    gateway: GatewayDep,
    drafts: DraftsDep,
    actor: ActorDep,
    store: StoreDep,
) -> GenerateResponse:
    try:
        req = PlanRequest(**request.model_dump(exclude={"save"}))
    except ValidationError as e:
        problems = problems_from_errors(e.errors(include_url=False))
        raise invalid(f"request is invalid ({len(problems)} problem(s))", problems) from None
    result = await gateway.generate(req)
    document, plan_id = result.plan, None
    if request.save:
        plan = Plan.model_validate(result.plan)
        plan = plan.model_copy(update={"id": _new_plan_id(plan)})
        problems = validate_plan(plan, catalog())
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
    responses=responses(401, 404, 409, 422, 502, 503),
)
async def execute_plan(
    plan_id: PlanIdDep, gateway: GatewayDep, drafts: DraftsDep
) -> ExecuteResponse:
    draft = await drafts.get(plan_id)
    if draft is not None:
        handle, started = await gateway.start(draft.plan)
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
    body: Annotated[ByBody | None, Body(openapi_examples=_examples(ByBody))] = None,
) -> ResumeResponse:
    by = actor.actor(body.by if body else None)
    await _refuse_draft(drafts, plan_id, "resume-from-failure")
    handle, carried = await gateway.resume(plan_id, by)
    return ResumeResponse(
        plan_id=plan_id,
        workflow_id=handle.id,
        run_id=handle.result_run_id or handle.run_id,
        carried_steps=carried,
        detail=f"resumed by {by}: a new run of {handle.id}, {carried} completed step(s) carried",
    )


# --- queries -------------------------------------------------------------------------


@router.get(
    "/{plan_id}/status",
    response_model=StatusView,
    summary="The status query: plan status, progress, what it waits for, every step",
    responses=READ,
)
async def get_status(
    plan_id: PlanIdDep, gateway: GatewayDep, drafts: DraftsDep, store: StoreDep
) -> StatusView:
    run = await _draft_run(drafts, plan_id)
    if run is not None:
        return status_view(run)
    return await temporal_or_store(lambda: gateway.status(plan_id), lambda: store.status(plan_id))


@router.get(
    "/{plan_id}/execution-state",
    response_model=ExecutionState,
    summary="The execution_state query (state, step_id, question, paused_at)",
    responses=READ,
)
async def get_execution_state(
    plan_id: PlanIdDep, gateway: GatewayDep, drafts: DraftsDep, store: StoreDep
) -> ExecutionState:
    run = await _draft_run(drafts, plan_id)
    if run is not None:
        return execution_state(run)
    return await temporal_or_store(
        lambda: gateway.execution_state(plan_id), lambda: store.execution_state(plan_id)
    )


@router.get(
    "/{plan_id}/logs",
    response_model=list[LogLine],
    summary="The plan's log (newest 500 entries are kept)",
    description="`level` keeps entries of that level and above (debug < info < warning < "
    "error); `limit` keeps the newest ones; `step_id` keeps one step's entries.",
    responses=READ,
)
async def get_logs(
    plan_id: PlanIdDep,
    gateway: GatewayDep,
    drafts: DraftsDep,
    store: StoreDep,
    level: Annotated[Literal["debug", "info", "warning", "error"] | None, Query()] = None,
    limit: Annotated[int | None, Query(ge=1, le=10000)] = None,
    step_id: Annotated[str | None, Query(pattern=ID_PATTERN)] = None,
) -> list[LogLine]:
    query = LogsQuery(level=level, limit=limit, step_id=step_id)
    run = await _draft_run(drafts, plan_id)
    entries: list[LogEntry]
    if run is not None:
        entries = logs_view(run, query)
    else:
        entries = await temporal_or_store(
            lambda: gateway.logs(plan_id, query), lambda: store.logs(plan_id, query)
        )
    return [LogLine(at=e.at, level=e.level, message=e.message, step_id=e.step_id) for e in entries]


@router.get(
    "/{plan_id}/audit",
    response_model=list[AuditEntry],
    summary="The audit trail: every control, accepted or refused, with who, when and what",
    responses=READ,
)
async def get_audit(
    plan_id: PlanIdDep, gateway: GatewayDep, drafts: DraftsDep, store: StoreDep
) -> list[AuditEntry]:
    run = await _draft_run(drafts, plan_id)
    if run is not None:
        return audit_view(run)
    return await temporal_or_store(lambda: gateway.audit(plan_id), lambda: store.audit(plan_id))


@router.get(
    "/{plan_id}/versions",
    response_model=list[PlanVersion],
    summary="The plan's versions: who changed which step, field by field",
    responses=READ,
)
async def get_versions(
    plan_id: PlanIdDep, gateway: GatewayDep, drafts: DraftsDep, store: StoreDep
) -> list[PlanVersion]:
    run = await _draft_run(drafts, plan_id)
    if run is not None:
        return [PlanVersion.model_validate(v) for v in plan_view(run).versions]

    async def from_temporal() -> list[PlanVersion]:
        view = await gateway.plan(plan_id)
        return [PlanVersion.model_validate(v) for v in view.versions]

    return await temporal_or_store(from_temporal, lambda: store.versions(plan_id))


@router.get(
    "/{plan_id}/events",
    response_class=StreamingResponse,
    response_model=None,
    summary="Server-sent events: every plan and step change until the plan ends",
    description="`text/event-stream` with events `plan`, `step`, `end` and `error`; the data "
    "of each is a JSON object (schema `EventsDoc` under `x-event`). A new watcher first gets a "
    "snapshot (a `plan` event and a `step` event per step), then every change the server "
    "sees (it polls the status query every 0.25 s, so a client never polls). Ids are "
    "`<feed>:<n>`, n growing by one; reconnect with `Last-Event-ID` to get exactly the events "
    "after it (or a fresh snapshot if they are gone). The stream ends after `end` (the plan "
    "reached a final status) or `error`; reconnecting after `end` answers 204. Close the "
    "EventSource on `end`. With API keys, send the key in a header (a browser EventSource "
    "cannot: use a fetch-based client).",
    responses={
        200: {
            "description": "the event stream",
            "content": {
                "text/event-stream": {
                    "schema": {"type": "string"},
                    "example": 'retry: 2000\n\nid: 3fa2c1d0:4\nevent: step\ndata: {"plan_id":'
                    '"release-2-4","step_id":"build","status":"completed","attempts":1,...}\n\n',
                    "x-event": EventsDoc.model_json_schema(),
                }
            },
        },
        204: {"description": "the watcher already saw the `end` event: nothing more will come"},
        **responses(401, 404, 409, 422, 502, 503),
    },
)
async def get_events(
    plan_id: PlanIdDep,
    gateway: GatewayDep,
    drafts: DraftsDep,
    hub: HubDep,
    last_event_id: Annotated[
        str | None,
        Header(alias="Last-Event-ID", max_length=200, description="resume after this event"),
    ] = None,
) -> Response:
    await _refuse_draft(drafts, plan_id, "events")

    async def fetch() -> StatusView:
        return await gateway.status(plan_id)

    feed = await hub.open(plan_id, fetch)
    if feed.finished_for(last_event_id):
        return Response(status_code=204)
    return StreamingResponse(
        feed.stream(last_event_id),
        media_type="text/event-stream",
        headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
    )


# --- controls ------------------------------------------------------------------------


async def _send(
    gateway: PlanClient,
    drafts: DraftStore,
    plan_id: str,
    control: str,
    body: BaseModel | None,
    by: str,
    step_id: str | None = None,
) -> ControlResult:
    await _refuse_draft(drafts, plan_id, control)
    return await gateway.control(plan_id, control, payload(body, by, step_id))


def _by(body: BaseModel | None) -> str | None:
    value = getattr(body, "by", None) if body is not None else None
    return value if isinstance(value, str) else None


def _plan_control(control: str, model: type[BaseModel]) -> Any:
    if body_is_optional(model):

        async def optional_body(
            plan_id: PlanIdDep,
            gateway: GatewayDep,
            drafts: DraftsDep,
            actor: ActorDep,
            body: Annotated[model | None, Body(openapi_examples=_examples(model))] = None,  # type: ignore[valid-type]
        ) -> ControlResult:
            return await _send(gateway, drafts, plan_id, control, body, actor.actor(_by(body)))

        return optional_body

    async def required_body(
        plan_id: PlanIdDep,
        gateway: GatewayDep,
        drafts: DraftsDep,
        actor: ActorDep,
        body: Annotated[model, Body(openapi_examples=_examples(model))],  # type: ignore[valid-type]
    ) -> ControlResult:
        return await _send(gateway, drafts, plan_id, control, body, actor.actor(_by(body)))

    return required_body


def _step_control(control: str, model: type[BaseModel]) -> Any:
    if body_is_optional(model):

        async def optional_body(
            plan_id: PlanIdDep,
            step_id: StepIdDep,
            gateway: GatewayDep,
            drafts: DraftsDep,
            actor: ActorDep,
            body: Annotated[model | None, Body(openapi_examples=_examples(model))] = None,  # type: ignore[valid-type]
        ) -> ControlResult:
            by = actor.actor(_by(body))
            return await _send(gateway, drafts, plan_id, control, body, by, step_id)

        return optional_body

    async def required_body(
        plan_id: PlanIdDep,
        step_id: StepIdDep,
        gateway: GatewayDep,
        drafts: DraftsDep,
        actor: ActorDep,
        body: Annotated[model, Body(openapi_examples=_examples(model))],  # type: ignore[valid-type]
    ) -> ControlResult:
        by = actor.actor(_by(body))
        return await _send(gateway, drafts, plan_id, control, body, by, step_id)

    return required_body


_CONTROL_DESCRIPTION = (
    "Sent to the workflow as the `{control}` update, so the answer says at "
    "once whether it was accepted. 409: the transition is not allowed now (the workflow's "
    "reason; the refusal is also in the audit trail) or the plan is a draft. 422: the "
    "argument is malformed. The recorded `by` is the API key's owner (or the body's `by`, "
    "`api` by default, without keys)."
)

for _verb, _control in PLAN_ROUTES.items():
    controls.add_api_route(
        f"/{{plan_id}}/{_verb}",
        _plan_control(_control, PLAN_BODIES[_control]),
        methods=["POST"],
        response_model=ControlResult,
        name=_control,
        operation_id=_control,
        summary=SUMMARIES[_control],
        description=_CONTROL_DESCRIPTION.format(control=_control),
        responses=CONTROL,
    )

for _verb, _control in STEP_ROUTES.items():
    controls.add_api_route(
        f"/{{plan_id}}/steps/{{step_id}}/{_verb}",
        _step_control(_control, STEP_BODIES[_control]),
        methods=["POST"],
        response_model=ControlResult,
        name=_control,
        operation_id=_control,
        summary=SUMMARIES[_control],
        description=_CONTROL_DESCRIPTION.format(control=_control),
        responses=CONTROL,
    )

__all__ = ["controls", "router"]

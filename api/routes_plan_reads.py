"""``/api/plans/{id}/…`` reads: the workflow's queries (status, execution state, logs,
audit, versions) and the live event stream. A draft answers from its document, as a
fresh run would; an executed plan asks its workflow first and falls back to the store
(:func:`api.store_reads.temporal_or_store`); once its workflow has closed, the store
answers what it recorded of the run's end (:func:`api.store_reads.open_or_recorded`: no
worker replays the run for it). While the database is down, what Temporal
answers still answers (the draft lookup is skipped), and what needs the store is a 503.
"""

from typing import Annotated, Literal

from fastapi import APIRouter, Depends, Header, Query, Response
from fastapi.responses import JSONResponse, StreamingResponse

from api.deps import (
    ApiServices,
    DraftsDep,
    GatewayDep,
    HubDep,
    PlanIdDep,
    ServicesDep,
    StepIdDep,
    StoreDep,
    get_principal,
    reject_unknown_query,
)
from api.drafts import DraftStore, draft_run, refuse_draft
from api.errors import not_found, responses
from api.schemas import (
    LogLine,
)
from api.sse import EventHub, EventsDoc, Feed
from api.store_reads import open_or_recorded, temporal_or_store, unless_store_down
from contracts.snapshots import as_output_ref
from plans.models import ID_PATTERN, StepStatus
from plans.run_state import AuditEntry, LogEntry, PlanVersion
from plans.views import (
    ChangesQuery,
    ChangesView,
    ExecutionState,
    LogsQuery,
    StatusView,
    StepsPage,
    StepsQuery,
    StepView,
    audit_view,
    execution_state,
    logs_view,
    plan_view,
    status_view,
)
from workflows.client import page_of

reads = APIRouter(
    prefix="/plans",
    tags=["plans"],
    dependencies=[Depends(get_principal), Depends(reject_unknown_query)],
)

READ = responses(401, 404, 422, 502, 503)


# --- queries -------------------------------------------------------------------------


@reads.get(
    "/{plan_id}/status",
    response_model=StatusView,
    summary="The status query: plan status, progress, what it waits for, every step",
    responses=READ,
)
async def get_status(
    plan_id: PlanIdDep, services: ServicesDep, drafts: DraftsDep, store: StoreDep
) -> StatusView:
    run = await unless_store_down(draft_run(drafts, plan_id))
    if run is not None:
        return status_view(run)
    # concurrent requests of one plan share one status query
    return await temporal_or_store(lambda: services.status(plan_id), lambda: store.status(plan_id))


@reads.get(
    "/{plan_id}/steps",
    response_model=StepsPage,
    summary="One page of the plan's steps, in plan order, optionally of one status",
    description="The steps query: `status` keeps the steps of that status, `offset` skips "
    "that many, `limit` (1-1000, default 100) bounds the page; `total` counts the matching "
    "steps on all pages. The status of a plan over 200 steps lists only its active steps: "
    "page through all of them here. A plan that ended is answered from the store.",
    responses=READ,
)
async def get_steps(
    plan_id: PlanIdDep,
    gateway: GatewayDep,
    drafts: DraftsDep,
    store: StoreDep,
    status: Annotated[StepStatus | None, Query(description="only steps of this status")] = None,
    offset: Annotated[int, Query(ge=0, description="steps to skip")] = 0,
    limit: Annotated[int, Query(ge=1, le=1000, description="steps per page")] = 100,
) -> StepsPage:
    query = StepsQuery(status=status, offset=offset, limit=limit)
    run = await unless_store_down(draft_run(drafts, plan_id))
    if run is not None:
        return page_of(status_view(run), query)
    # An ended plan's steps are in the store: no replay of its whole history by a worker.
    ended = await unless_store_down(store.steps(plan_id, query, ended_only=True))
    if ended is not None:
        return ended
    return await temporal_or_store(
        lambda: gateway.steps(plan_id, query), lambda: store.steps(plan_id, query)
    )


async def find_step(services: ApiServices, plan_id: str, step_id: str) -> StepView:
    """The step as the plan's status shows it (a big plan's steps are paged through);
    404 when the plan has no such step."""
    status = await services.status(plan_id)
    if status.steps_complete:
        found = next((s for s in status.steps if s.id == step_id), None)
    else:
        found = None
        offset = 0
        while found is None and offset < status.total_steps:
            page = await get_steps(
                plan_id, services.temporal, services.drafts, services.store, None, offset, 1000
            )
            found = next((s for s in page.steps if s.id == step_id), None)
            offset += 1000
            if not page.steps:
                break
    if found is None:
        raise not_found(f"plan {plan_id} has no step {step_id!r}")
    return found


async def step_output(services: ApiServices, plan_id: str, step_id: str) -> Response:
    """The step's whole output as JSON: the one in its status, or the one kept in the
    store when it was too large for the workflow's history (``output_ref``)."""
    step = await find_step(services, plan_id, step_id)
    if step.output is None:
        raise not_found(f"step {step_id} of plan {plan_id} has no output ({step.status.value})")
    ref = as_output_ref(step.output)
    if ref is None:
        return JSONResponse(step.output)
    data = await services.store.blob(ref.output_ref)
    if data is None:
        raise not_found(f"the output of step {step_id} is no longer in the store")
    return Response(data, media_type="application/json")


@reads.get(
    "/{plan_id}/steps/{step_id}/output",
    response_model=None,
    summary="A step's whole output (also one kept in the store by reference)",
    description="The output as JSON. A large output (over `PLANSMITH_LARGE_OUTPUT_BYTES`) "
    "is kept in the store and the status shows only a reference to it (`output_ref`, its "
    "size and a preview): this answers the output itself. 404 for a step without output.",
    responses={
        200: {"content": {"application/json": {}}, "description": "the step's output"},
        **READ,
        **responses(409),  # a draft (not executed yet) has no outputs
    },
)
async def get_step_output(
    plan_id: PlanIdDep, step_id: StepIdDep, services: ServicesDep, drafts: DraftsDep
) -> Response:
    await unless_store_down(refuse_draft(drafts, plan_id, "a step's output"))
    return await step_output(services, plan_id, step_id)


@reads.get(
    "/{plan_id}/execution-state",
    response_model=ExecutionState,
    summary="The execution_state query (state, step_id, question, paused_at)",
    responses=READ,
)
async def get_execution_state(
    plan_id: PlanIdDep, gateway: GatewayDep, drafts: DraftsDep, store: StoreDep
) -> ExecutionState:
    run = await unless_store_down(draft_run(drafts, plan_id))
    if run is not None:
        return execution_state(run)
    return await temporal_or_store(
        lambda: open_or_recorded(
            lambda open_only: gateway.execution_state(plan_id, open_only),
            lambda: store.execution_state(plan_id),
            lambda: store.ended(plan_id),
        ),
        lambda: store.execution_state(plan_id),
    )


@reads.get(
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
    run = await unless_store_down(draft_run(drafts, plan_id))
    entries: list[LogEntry]
    if run is not None:
        entries = logs_view(run, query)
    else:
        entries = await temporal_or_store(
            lambda: open_or_recorded(
                lambda open_only: gateway.logs(plan_id, query, open_only),
                lambda: store.logs(plan_id, query),
                lambda: store.ended(plan_id),
            ),
            lambda: store.logs(plan_id, query),
        )
    return [LogLine(at=e.at, level=e.level, message=e.message, step_id=e.step_id) for e in entries]


@reads.get(
    "/{plan_id}/audit",
    response_model=list[AuditEntry],
    summary="The audit trail: every control, accepted or refused, with who, when and what",
    responses=READ,
)
async def get_audit(
    plan_id: PlanIdDep, gateway: GatewayDep, drafts: DraftsDep, store: StoreDep
) -> list[AuditEntry]:
    run = await unless_store_down(draft_run(drafts, plan_id))
    if run is not None:
        return audit_view(run)
    return await temporal_or_store(
        lambda: open_or_recorded(
            lambda open_only: gateway.audit(plan_id, open_only),
            lambda: store.audit(plan_id),
            lambda: store.ended(plan_id),
        ),
        lambda: store.audit(plan_id),
    )


@reads.get(
    "/{plan_id}/versions",
    response_model=list[PlanVersion],
    summary="The plan's versions: who changed which step, field by field",
    responses=READ,
)
async def get_versions(
    plan_id: PlanIdDep, gateway: GatewayDep, drafts: DraftsDep, store: StoreDep
) -> list[PlanVersion]:
    run = await unless_store_down(draft_run(drafts, plan_id))
    if run is not None:
        return [PlanVersion.model_validate(v) for v in plan_view(run).versions]

    async def ask(open_only: bool) -> list[PlanVersion]:
        view = await gateway.plan(plan_id, open_only)
        return [PlanVersion.model_validate(v) for v in view.versions]

    return await temporal_or_store(
        lambda: open_or_recorded(
            ask, lambda: store.versions(plan_id), lambda: store.ended(plan_id)
        ),
        lambda: store.versions(plan_id),
    )


@reads.get(
    "/{plan_id}/events",
    response_class=StreamingResponse,
    response_model=None,
    summary="Server-sent events: every plan and step change until the plan ends",
    description="`text/event-stream` with events `plan`, `step`, `resync`, `end` and `error`; "
    "the data of each is a JSON object (schema `EventsDoc` under `x-event`). A new watcher "
    "first gets a snapshot (a `plan` event and a `step` event per step), then every change "
    "the server sees: one reader per plan and API process, shared by all its watchers, reads "
    "the workflow's `changes` query every 0.25 s (the `status` query from older workers), so "
    "a client never polls. `step` events carry `seq`, the workflow's change number. Ids are "
    "`<feed>:<n>`, n growing by one; reconnect with `Last-Event-ID` to get exactly the events "
    "after it; if they are gone, a `resync` event (drop what you knew) and a fresh snapshot "
    "(an id of another process: the snapshot). The stream ends after `end` (the plan "
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
    services: ServicesDep,
    drafts: DraftsDep,
    hub: HubDep,
    last_event_id: Annotated[
        str | None,
        Header(alias="Last-Event-ID", max_length=200, description="resume after this event"),
    ] = None,
) -> Response:
    feed = await open_plan_feed(services, drafts, hub, plan_id)
    if feed.finished_for(last_event_id):
        return Response(status_code=204)
    return StreamingResponse(
        feed.stream(last_event_id),
        media_type="text/event-stream",
        headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
    )


async def open_plan_feed(
    services: ApiServices, drafts: DraftStore, hub: EventHub, plan_id: str
) -> Feed:
    """The plan's shared feed of events (made by the first watcher; 409 for a draft)."""
    await unless_store_down(refuse_draft(drafts, plan_id, "events"))
    gateway = services.temporal

    async def fetch() -> StatusView:
        return await services.status(plan_id)

    async def changes(since: int) -> ChangesView:
        # PlanClosed once the workflow closed: the feed then reads the end from the store
        return await gateway.changes(plan_id, ChangesQuery(since=since), open_only=True)

    async def steps(query: StepsQuery) -> StepsPage:
        # an ended plan's steps come from the store (no replay of its run by a worker)
        ended = await unless_store_down(services.store.steps(plan_id, query, ended_only=True))
        return ended if ended is not None else await gateway.steps(plan_id, query)

    return await hub.open(plan_id, fetch, changes, steps)

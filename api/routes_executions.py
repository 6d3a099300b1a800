"""``/api/v1/execute``: the nodes/edges execution API on top of ``PlanWorkflow``.

The request's ``definition`` (``{nodes, edges}``) is translated into a plan by
:mod:`plans.graph_import` (pure code; the mapping of every node type is documented there)
and run by the same workflow as any plan, under plan id
:func:`plans.graph_document.plan_id_for_execution` (the execution id when it is a valid
plan id), so ``/api/plans/{plan_id}/...`` works for it too. Statuses are told in this
API's words (pending, running, paused, completed, failed, stopped;
:mod:`plans.graph_views`); ``stop`` is Plansmith's ``cancel``.
"""

import asyncio
from typing import Annotated, Literal

from fastapi import APIRouter, Body, Depends, Path, Query
from pydantic import BaseModel, Field

from api.controls import ByBody
from api.deps import (
    ActorDep,
    DraftsDep,
    GatewayDep,
    ServicesDep,
    StoreDep,
    authorize_control,
    get_principal,
    reject_unknown_query,
)
from api.errors import conflict, invalid, responses
from api.limits import off_loop
from api.logs import plan_id_var
from api.store_reads import temporal_or_store
from contracts.tools import catalog
from plans.controls import CONTROL_MODELS, ControlResult
from plans.graph_document import ExecutionCreate, plan_id_for_execution
from plans.graph_import import node_id_of, translate, validate_translation
from plans.graph_views import ExecutionStatus, StatusWord, execution_status, status_word
from plans.models import PlanStatus, workflow_id_for
from plans.validation import PlanInvalid, Problem, too_many_steps
from plans.views import LogsQuery

router = APIRouter(
    prefix="/v1/execute",
    tags=["executions (nodes/edges)"],
    dependencies=[Depends(get_principal), Depends(reject_unknown_query)],
)


class ExecutionLog(BaseModel):
    timestamp: str = Field(description="ISO 8601, UTC")
    level: Literal["debug", "info", "warning", "error"]
    message: str
    node_id: str | None = None


class ExecutionLogs(BaseModel):
    execution_id: str
    logs: list[ExecutionLog]
    count: int


class ExecutionControl(BaseModel):
    execution_id: str
    action: Literal["stop", "pause", "resume"]
    status: StatusWord
    message: str


async def _execution_id(
    execution_id: Annotated[
        str, Path(min_length=1, max_length=200, pattern=r"^[^/]+$", examples=["exec-001"])
    ],
) -> str:
    plan_id_var.set(plan_id_for_execution(execution_id))
    return execution_id


ExecutionIdDep = Annotated[str, Depends(_execution_id)]


@router.post(
    "",
    status_code=202,
    response_model=ExecutionStatus,
    summary="Start an execution of a nodes/edges workflow definition",
    description="Translates `definition` into a plan (see `plans/graph_import.py` for the mapping "
    "of input, llm, condition, transform and output nodes), validates it fully (422 with "
    "every problem, located in the request) and starts it at once. Idempotent on "
    "`execution_id`: an execution already running is answered with its status and nothing "
    "new starts; one that already ended is a 409. `llm` nodes are translated into `llm` "
    "steps, which fail at run time until the LLM layer lands. With an agent key the plan's "
    "`agent_id` is the key's owner. An `execution_id` that is the id of a draft (a plan "
    "created with POST /api/plans, not executed) is a 409.",
    responses=responses(401, 403, 409, 422, 502, 503),
)
async def execute(
    request: ExecutionCreate,
    gateway: GatewayDep,
    drafts: DraftsDep,
    actor: ActorDep,
    services: ServicesDep,
) -> ExecutionStatus:
    plan_id_var.set(plan_id_for_execution(request.execution_id))
    max_steps = services.config.max_plan_steps
    nodes = len(request.definition.nodes)
    if too_many_steps(nodes, max_steps) is not None:  # each node becomes a step
        message = (
            f"a definition has at most {max_steps} nodes (PLANSMITH_MAX_PLAN_STEPS); "
            f"this one has {nodes}"
        )
        raise invalid(
            "definition is invalid (1 problem(s))",
            [Problem(location="definition.nodes", message=message)],
        )
    try:  # translation and validation grow with the definition: off the event loop
        tr = await off_loop(translate, request)
    except PlanInvalid as e:
        raise invalid(f"definition is invalid ({len(e.problems)} problem(s))", e.problems) from None
    problems = await off_loop(validate_translation, tr, catalog(), max_steps=max_steps)
    if problems:
        raise invalid(f"definition is invalid ({len(problems)} problem(s))", problems)
    assert tr.plan.id is not None
    # an agent key runs plans only as itself; an execution starts at once (its transform and
    # llm steps without tools act on nothing)
    plan = actor.claim(tr.plan, waivers=True)
    if await drafts.get(tr.plan.id) is not None:
        # a plan created with POST /api/plans (maybe approved) has this id: an execution
        # must not run under it, or executing the draft would start nothing of its own
        raise conflict(
            f"execution id {request.execution_id!r} is the id of plan {tr.plan.id}, a draft "
            "created with POST /api/plans and not executed yet; choose another execution_id",
            code="id_taken",
        )
    _, started = await gateway.start(plan, submitted_by=actor.owner)
    if started:
        return ExecutionStatus(
            execution_id=request.execution_id,
            status="pending",
            progress=0.0,
            message=f"started as workflow {workflow_id_for(tr.plan.id)}",
        )
    view = await gateway.status(tr.plan.id)
    return execution_status(request.execution_id, view)


@router.get(
    "/{execution_id}/status",
    response_model=ExecutionStatus,
    summary="An execution's status (pending, running, paused, completed, failed or stopped)",
    responses=responses(401, 404, 422, 502, 503),
)
async def get_status(
    execution_id: ExecutionIdDep, gateway: GatewayDep, store: StoreDep
) -> ExecutionStatus:
    plan_id = plan_id_for_execution(execution_id)
    view = await temporal_or_store(lambda: gateway.status(plan_id), lambda: store.status(plan_id))
    return execution_status(execution_id, view)


@router.get(
    "/{execution_id}/logs",
    response_model=ExecutionLogs,
    summary="An execution's logs",
    description="`level` keeps that level and above (debug < info < warning < error); "
    "`limit` keeps the newest entries.",
    responses=responses(401, 404, 422, 502, 503),
)
async def get_logs(
    execution_id: ExecutionIdDep,
    gateway: GatewayDep,
    store: StoreDep,
    level: Annotated[Literal["debug", "info", "warning", "error"] | None, Query()] = None,
    limit: Annotated[int | None, Query(ge=1, le=10000)] = None,
) -> ExecutionLogs:
    plan_id = plan_id_for_execution(execution_id)
    query = LogsQuery(level=level, limit=limit)
    entries, view = await asyncio.gather(
        temporal_or_store(lambda: gateway.logs(plan_id, query), lambda: store.logs(plan_id, query)),
        temporal_or_store(lambda: gateway.status(plan_id), lambda: store.status(plan_id)),
    )
    descriptions = {s.id: s.description for s in view.steps}
    logs = [
        ExecutionLog(
            timestamp=e.at.isoformat(),
            level=e.level,
            message=e.message,
            node_id=node_id_of(e.step_id, descriptions.get(e.step_id, "")) if e.step_id else None,
        )
        for e in entries
    ]
    return ExecutionLogs(execution_id=execution_id, logs=logs, count=len(logs))


_CONTROLS: dict[str, tuple[str, str | None]] = {
    # this API's action -> (Plansmith control, reason)
    "stop": ("cancel", "stopped through the nodes/edges execution API"),
    "pause": ("pause", "paused through the nodes/edges execution API"),
    "resume": ("resume", None),
}
assert {control for control, _ in _CONTROLS.values()} <= set(CONTROL_MODELS)


def _control_route(action: Literal["stop", "pause", "resume"]) -> None:
    control, reason = _CONTROLS[action]

    async def endpoint(
        execution_id: ExecutionIdDep,
        gateway: GatewayDep,
        drafts: DraftsDep,
        actor: ActorDep,
        body: Annotated[
            ByBody | None, Body(openapi_examples={"by": {"value": {"by": "alice"}}})
        ] = None,
    ) -> ExecutionControl:
        plan_id = plan_id_for_execution(execution_id)
        await authorize_control(actor, gateway, drafts, plan_id, control)
        by = actor.actor(body.by if body else None)
        arg: dict[str, str] = {"by": by}
        if reason:
            arg["reason"] = reason
        result: ControlResult = await gateway.control(plan_id, control, arg)
        return ExecutionControl(
            execution_id=execution_id,
            action=action,
            status=status_word(PlanStatus(result.status)),
            message=result.detail,
        )

    router.add_api_route(
        f"/{{execution_id}}/{action}",
        endpoint,
        methods=["POST"],
        response_model=ExecutionControl,
        name=f"execution_{action}",
        operation_id=f"execution_{action}",
        summary={
            "stop": "Stop an execution (Plansmith's cancel: running steps are cancelled)",
            "pause": "Pause an execution: no new node starts",
            "resume": "Resume a paused execution",
        }[action],
        description="Sent as an update: 409 with the reason when refused (e.g. pausing an "
        "execution that is not running, resuming one that is not paused). 403: an agent key "
        "may stop or pause only its own executions, and never resume one.",
        responses=responses(401, 403, 404, 409, 422, 502, 503),
    )


for _action in ("stop", "pause", "resume"):
    _control_route(_action)  # type: ignore[arg-type]

"""``/api/plans/{id}/{approve,reject,…}`` and ``…/steps/{step}/{approve,…}``: the
controls people send, each as a Temporal *update*, so the caller learns at once whether
it was accepted: a refused transition is a 409 with the workflow's reason, a malformed
argument a 422, and a draft (not executed yet) a 409.
"""

# No ``from __future__ import annotations`` here: the control routes are built in a
# loop, and FastAPI must see their body models as real objects in the annotations.

from typing import Annotated, Any

from fastapi import APIRouter, Body, Depends
from pydantic import BaseModel

from api.auth import Principal
from api.controls import (
    PLAN_BODIES,
    PLAN_ROUTES,
    STEP_BODIES,
    STEP_ROUTES,
    SUMMARIES,
    body_is_optional,
    payload,
)
from api.deps import (
    ActorDep,
    DraftsDep,
    GatewayDep,
    PlanIdDep,
    StepIdDep,
    authorize_control,
    get_principal,
    reject_unknown_query,
)
from api.drafts import DraftStore, approve_draft, refuse_draft
from api.errors import ApiError, api_error_of, forbidden, responses
from api.schemas import examples_of
from api.store_reads import StoreOrSkip
from plans.controls import ControlResult
from workflows.client import PlanClient
from workflows.errors import PlanNotFound

controls = APIRouter(
    prefix="/plans",
    tags=["controls"],
    dependencies=[Depends(get_principal), Depends(reject_unknown_query)],
)

CONTROL = responses(401, 403, 404, 409, 422, 502, 503)


# --- controls ------------------------------------------------------------------------


async def send_control(
    gateway: PlanClient,
    drafts: DraftStore,
    plan_id: str,
    control: str,
    body: BaseModel | None,
    actor: Principal,
    step_id: str | None = None,
) -> ControlResult:
    """Send ``control`` to the plan as ``actor``: the role check, the recorded ``by``,
    a draft's approval; the one path of the REST controls and the console's actions."""
    # While the database is down, a plan's workflow still takes controls: the draft
    # lookups are skipped, and only a plan Temporal does not know is then a 503 (it may
    # be a draft in the store that cannot be read).
    store = StoreOrSkip()
    await authorize_control(actor, gateway, store.tolerant(drafts), plan_id, control)
    if actor.is_agent and control == "retry_step" and step_id is not None:
        await _not_a_persons_skip(gateway, plan_id, step_id, actor)
    by = actor.actor(_by(body))
    if control == "apply_correction" and getattr(body, "approve", False):
        actor.may_approve_own_change()
    if control == "approve" and step_id is None:
        approved = await store.skip(approve_draft(drafts, plan_id, payload(body, by)))
        if approved is not None:
            return approved
    await store.skip(refuse_draft(drafts, plan_id, control))
    try:
        return await gateway.control(plan_id, control, payload(body, by, step_id))
    except (ApiError, PlanNotFound) as e:
        if store.error is not None and api_error_of(e).status == 404:
            raise store.error from None
        raise


# Skips a person decided (skip_step, reject_step or its timeout): an agent does not undo them.
PERSONS_SKIPS = ("operator", "rejected")


async def _not_a_persons_skip(
    gateway: PlanClient, plan_id: str, step_id: str, actor: Principal
) -> None:
    """403 when an agent key retries a step a person skipped or rejected: retrying it
    would run what a person decided should not run."""
    view = await gateway.status(plan_id)
    step = next((s for s in view.steps if s.id == step_id), None)
    if step is not None and step.status == "skipped" and step.skip_reason in PERSONS_SKIPS:
        raise forbidden(
            f"retry-step refused: step {step_id} was {step.skip_reason} "
            f"({step.skip_detail or 'by a person'}), and the API key of {actor.owner!r} is an "
            "agent key: only a person undoes a person's decision"
        )


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
            body: Annotated[model | None, Body(openapi_examples=examples_of(model))] = None,  # type: ignore[valid-type]
        ) -> ControlResult:
            return await send_control(gateway, drafts, plan_id, control, body, actor)

        return optional_body

    async def required_body(
        plan_id: PlanIdDep,
        gateway: GatewayDep,
        drafts: DraftsDep,
        actor: ActorDep,
        body: Annotated[model, Body(openapi_examples=examples_of(model))],  # type: ignore[valid-type]
    ) -> ControlResult:
        return await send_control(gateway, drafts, plan_id, control, body, actor)

    return required_body


def _step_control(control: str, model: type[BaseModel]) -> Any:
    if body_is_optional(model):

        async def optional_body(
            plan_id: PlanIdDep,
            step_id: StepIdDep,
            gateway: GatewayDep,
            drafts: DraftsDep,
            actor: ActorDep,
            body: Annotated[model | None, Body(openapi_examples=examples_of(model))] = None,  # type: ignore[valid-type]
        ) -> ControlResult:
            return await send_control(gateway, drafts, plan_id, control, body, actor, step_id)

        return optional_body

    async def required_body(
        plan_id: PlanIdDep,
        step_id: StepIdDep,
        gateway: GatewayDep,
        drafts: DraftsDep,
        actor: ActorDep,
        body: Annotated[model, Body(openapi_examples=examples_of(model))],  # type: ignore[valid-type]
    ) -> ControlResult:
        return await send_control(gateway, drafts, plan_id, control, body, actor, step_id)

    return required_body


_CONTROL_DESCRIPTION = (
    "Sent to the workflow as the `{control}` update, so the answer says at "
    "once whether it was accepted. 409: the transition is not allowed now (the workflow's "
    "reason; the refusal is also in the audit trail) or the plan is a draft. 422: the "
    "argument is malformed. 403: an agent key sends only pause, cancel, apply-correction and "
    "retry, to its own plans (and does not retry a step a person skipped or rejected). The recorded `by` is the API key's owner (or the body's `by`, "
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

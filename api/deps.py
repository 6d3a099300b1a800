"""Dependencies of the routes, as ``Annotated`` aliases (``GatewayDep``, ``ActorDep``…).

Everything a route needs lives on ``app.state.services`` (an :class:`ApiServices`), made
by :func:`api.app.create_app`; tests build the app with their own Temporal client and
settings.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Annotated, Any

from fastapi import Depends, Path, Request, Security
from fastapi.security import HTTPAuthorizationCredentials
from starlette.requests import HTTPConnection

from api.auth import AGENT_OWN_CONTROLS, ApiKeys, Principal, bearer_scheme, header_scheme
from api.coalesce import SingleFlight
from api.drafts import DraftStore
from api.errors import ApiError, invalid, unauthorized
from api.logs import actor_var, plan_id_var, step_id_var
from api.sse import EventHub
from api.store_reads import PlanStore
from config import ApiSettings, Settings
from plans.models import ID_PATTERN
from plans.validation import Problem
from plans.views import StatusView
from workflows.client import PlanClient
from workflows.errors import PlanClosed


@dataclass
class ApiServices:
    settings: Settings
    config: ApiSettings
    keys: ApiKeys
    temporal: PlanClient
    drafts: DraftStore
    hub: EventHub
    store: PlanStore
    # concurrent status reads of one plan share one workflow query (the API's and the
    # event feeds')
    status_reads: SingleFlight[StatusView] = field(default_factory=SingleFlight)

    async def status(self, plan_id: str) -> StatusView:
        """The workflow's status query, shared by the concurrent callers of one plan."""
        return await self.status_reads.run(plan_id, lambda: self._status(plan_id))

    async def _status(self, plan_id: str) -> StatusView:
        """The status of a closed workflow comes from the store (its last snapshot landed
        there before it closed): a query of it would have a worker replay the whole run,
        seconds for a big plan. The workflow is asked after all when the store cannot be
        read or has not recorded the end (a run ended from outside Temporal's code)."""
        try:
            return await self.temporal.status(plan_id, open_only=True)
        except PlanClosed:
            try:
                ended = await self.store.status(plan_id)
            except ApiError:
                ended = None
            if ended is not None and ended.status.terminal:
                return ended
            return await self.temporal.status(plan_id)


def get_services(request: HTTPConnection) -> ApiServices:
    services: ApiServices = request.app.state.services
    return services


ServicesDep = Annotated[ApiServices, Depends(get_services)]


def get_gateway(services: ServicesDep) -> PlanClient:
    """The API's gateway to Temporal: the plan client (its errors become HTTP answers in
    :func:`api.errors.api_error_of`)."""
    return services.temporal


GatewayDep = Annotated[PlanClient, Depends(get_gateway)]


def get_drafts(services: ServicesDep) -> DraftStore:
    return services.drafts


DraftsDep = Annotated[DraftStore, Depends(get_drafts)]


def get_hub(services: ServicesDep) -> EventHub:
    return services.hub


HubDep = Annotated[EventHub, Depends(get_hub)]


def get_store(services: ServicesDep) -> PlanStore:
    return services.store


StoreDep = Annotated[PlanStore, Depends(get_store)]


async def get_principal(
    services: ServicesDep,
    bearer: Annotated[HTTPAuthorizationCredentials | None, Security(bearer_scheme)],
    header_key: Annotated[str | None, Security(header_scheme)],
) -> Principal:
    """Who calls: the owner of a valid key, or nobody in particular without keys.

    Used by every router under ``/api``: with keys configured a missing or unknown key
    is a 401 before anything else happens.
    """
    return principal_for(services, (bearer.credentials if bearer else None) or header_key)


def principal_for(services: ApiServices, key: str | None) -> Principal:
    """The owner of ``key`` (401 when keys are on and it is missing or unknown)."""
    if not services.keys.enabled:
        return Principal()
    if not key:
        raise unauthorized("an API key is required: Authorization: Bearer <key> or X-API-Key")
    entry = services.keys.find(key)
    if entry is None:
        raise unauthorized("unknown API key")
    actor_var.set(entry.owner)
    return Principal(owner=entry.owner, role=entry.role)


# Who acts: the API key's owner and role (or nobody in particular without keys); a route
# turns it into the recorded ``by`` with ``actor.actor(body.by)``.
ActorDep = Annotated[Principal, Depends(get_principal)]


async def require_admin(request: Request, actor: ActorDep) -> None:
    """A route that changes the configuration: 403 for agent and operator keys."""
    actor.require_admin(f"{request.method} {request.url.path}")


async def plan_agent_id(gateway: PlanClient, drafts: DraftStore, plan_id: str) -> str | None:
    """Who proposed the plan: its draft's ``agent_id``, else the running workflow's
    (404 when neither knows the plan)."""
    draft = await drafts.get(plan_id)
    if draft is not None:
        return draft.plan.agent_id
    return (await gateway.plan(plan_id)).plan.agent_id


async def authorize_control(
    actor: Principal, gateway: PlanClient, drafts: DraftStore, plan_id: str, control: str
) -> None:
    """403 unless ``actor`` may send ``control`` to the plan. Only agent keys are limited:
    a person's control at once, their own plans' others after asking who proposed it."""
    if not actor.is_agent:
        return
    if control not in AGENT_OWN_CONTROLS:
        actor.may_control(control)  # raises: only a person sends it
    actor.may_control(control, await plan_agent_id(gateway, drafts, plan_id))


def _query_names(dependant: Any) -> set[str]:
    names = {p.alias for p in dependant.query_params}
    for sub in dependant.dependencies:
        names |= _query_names(sub)
    return names


async def reject_unknown_query(request: HTTPConnection) -> None:
    """A query parameter the route does not know is an error, not silently ignored
    (``?levle=error`` must not answer every log line)."""
    route = request.scope.get("route")
    dependant = getattr(route, "dependant", None)
    if dependant is None:
        return
    allowed: frozenset[str] | None = getattr(route, "_plansmith_query_names", None)
    if allowed is None:
        allowed = frozenset(_query_names(dependant))
        route._plansmith_query_names = allowed  # type: ignore[union-attr]
    unknown = [k for k in request.query_params if k not in allowed]
    if unknown:
        known = ", ".join(sorted(allowed)) or "none"
        raise invalid(
            f"unknown query parameter(s): {', '.join(map(repr, unknown))}; known: {known}",
            [Problem(location=f"query.{k}", message="unknown query parameter") for k in unknown],
        )


async def _plan_id(
    plan_id: Annotated[str, Path(pattern=ID_PATTERN, examples=["release-2-4"])],
) -> str:
    plan_id_var.set(plan_id)
    return plan_id


async def _step_id(
    step_id: Annotated[str, Path(pattern=ID_PATTERN, examples=["deploy-prod"])],
) -> str:
    step_id_var.set(step_id)
    return step_id


PlanIdDep = Annotated[str, Depends(_plan_id)]
StepIdDep = Annotated[str, Depends(_step_id)]

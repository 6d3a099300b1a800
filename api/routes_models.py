"""``/api/models``: the models the selector may pick, and which it picks for what.

Models come from ``PLANSMITH_MODELS`` (or the defaults) and from the store; ``PUT``
configures a model in the store, which wins over the settings by name (``enabled:
false`` hides a model of the settings), and ``DELETE`` removes the store's
configuration (a model of the settings is then back as the settings have it). Changes
apply to the next model call, without a restart. With API keys, ``PUT`` and ``DELETE`` need
an admin key (:mod:`api.auth`). Without ``ANTHROPIC_API_KEY`` the
offline model answers every call, whichever model is chosen (``offline: true``).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Annotated, Any, Literal, TypeVar

from fastapi import APIRouter, Body, Depends, Path, Response
from pydantic import BaseModel, ConfigDict, Field
from sqlmodel import Session

from api.deps import (
    ActorDep,
    ApiServices,
    ServicesDep,
    get_principal,
    reject_unknown_query,
    require_admin,
)
from api.errors import ApiError, ErrorBody, not_found, responses
from config import ModelConfig
from contracts.models import ModelSelector
from store import knowledge

log = logging.getLogger("plansmith.api")

router = APIRouter(
    prefix="/models",
    tags=["models"],
    dependencies=[Depends(get_principal), Depends(reject_unknown_query)],
)

MODEL_NAME = r"^[A-Za-z0-9][A-Za-z0-9._:@-]{0,199}$"
CAPABILITY = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$"
INT_BOUND = 1_000_000  # fits every database's INTEGER

T = TypeVar("T")


class ModelView(BaseModel):
    name: str
    capabilities: list[str]
    max_tokens: int
    priority: int = Field(description="lower is preferred")
    enabled: bool
    source: Literal["settings", "store"] = Field(
        description="settings: PLANSMITH_MODELS or the defaults; store: PUT /api/models/{name}"
    )


class ModelChoices(BaseModel):
    planning: str | None = Field(description='the model for "planning" (null: none fits)')
    code: str | None = Field(description='the model for "code_generation"')
    fast: str | None = Field(description='the model for "fast"')
    reasoning: str | None = Field(
        default=None, description='the model for "reasoning" (decisions, LLM judges)'
    )
    default: str | None = Field(description='the model for "general", the default')


class ModelList(BaseModel):
    models: list[ModelView] = Field(description="every configured model, by priority then name")
    choices: ModelChoices = Field(description="which model each kind of work gets")
    offline: bool = Field(
        description="true without ANTHROPIC_API_KEY: the offline deterministic model "
        "answers every call, whichever model is chosen"
    )


class ModelPut(BaseModel):
    """A model's configuration in the store (its name is in the path)."""

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [
                {"capabilities": ["fast", "general"], "max_tokens": 2048, "priority": 5},
                {"capabilities": ["planning"], "enabled": False},
            ]
        },
    )

    capabilities: list[Annotated[str, Field(pattern=CAPABILITY)]] = Field(
        description="planning, reasoning, code_generation, fast, general, or your own"
    )
    max_tokens: int = Field(default=4096, ge=1, le=INT_BOUND)
    priority: int = Field(default=100, ge=-INT_BOUND, le=INT_BOUND, description="lower first")
    enabled: bool = Field(default=True, description="false hides a model of the settings")


def _view(m: ModelConfig) -> ModelView:
    return ModelView(**m.model_dump())


def _listing(selector: ModelSelector, services: ApiServices) -> ModelList:
    return ModelList(
        models=[_view(m) for m in selector.models],
        choices=ModelChoices(**selector.roles()),
        offline=not services.settings.models.anthropic_api_key,
    )


async def _in_store(services: ApiServices, fn: Callable[[Session], T], *, write: bool = False) -> T:
    """Run ``fn`` in a store session (503 when the store fails)."""
    return await services.store.run(fn, write=write)


async def _selector(services: ApiServices) -> ModelSelector:
    rows = await _in_store(services, knowledge.list_model_configs)
    return ModelSelector.load(services.settings, rows)


NameDep = Annotated[
    str, Path(pattern=MODEL_NAME, description="the model id", examples=["claude-haiku-5-5"])
]


@router.get(
    "",
    response_model=ModelList,
    summary="The configured models and which one each kind of work gets",
    responses=responses(401, 422, 503),
)
async def list_models(services: ServicesDep) -> ModelList:
    return _listing(await _selector(services), services)


@router.put(
    "/{name}",
    response_model=ModelView,
    summary="Configure a model in the store (created: 201, replaced: 200)",
    description="Creates or replaces the store's configuration of the model. It wins over "
    "a model of the same name in PLANSMITH_MODELS; `enabled: false` hides that model "
    "from the selector. Applies to the next model call. Needs an admin key when "
    "PLANSMITH_API_KEYS is set (403 for agent and operator keys).",
    responses={
        201: {"model": ModelView, "description": "the model was not in the store before"},
        **responses(401, 403, 422, 503),
    },
    dependencies=[Depends(require_admin)],
)
async def put_model(
    name: NameDep,
    body: Annotated[ModelPut, Body()],
    services: ServicesDep,
    principal: ActorDep,
    response: Response,
) -> ModelView:
    def put(s: Session) -> tuple[dict[str, Any], bool]:
        existed = any(r["name"] == name for r in knowledge.list_model_configs(s))
        row = knowledge.put_model_config(
            s,
            name=name,
            capabilities=body.capabilities,
            max_tokens=body.max_tokens,
            priority=body.priority,
            enabled=body.enabled,
        )
        return row, not existed

    row, created = await _in_store(services, put, write=True)
    response.status_code = 201 if created else 200
    log.info(
        "model %s %s by %s",
        name,
        "configured" if created else "reconfigured",
        principal.owner or "api",
    )
    fields = {k: row[k] for k in ModelConfig.model_fields if k in row and k != "source"}
    return _view(ModelConfig(**fields, source="store"))


@router.delete(
    "/{name}",
    response_model=ModelList,
    summary="Remove a model's configuration from the store",
    description="Answers the models as configured afterwards: a model of PLANSMITH_MODELS "
    "is back as the settings have it. 404 when the store has no configuration of the "
    "model (a model of the settings alone cannot be deleted: PUT it with `enabled: false` "
    "to hide it). Needs an admin key when PLANSMITH_API_KEYS is set (403 for agent and "
    "operator keys).",
    dependencies=[Depends(require_admin)],
    responses={
        **responses(401, 403, 422, 503),
        404: {"model": ErrorBody, "description": "the store has no configuration of the model"},
    },
)
async def delete_model(name: NameDep, services: ServicesDep, principal: ActorDep) -> ModelList:
    deleted = await _in_store(
        services, lambda s: knowledge.delete_model_config(s, name), write=True
    )
    if not deleted:
        raise _not_in_store(name, await _selector(services))
    log.info("model %s removed from the store by %s", name, principal.owner or "api")
    return _listing(await _selector(services), services)


def _not_in_store(name: str, selector: ModelSelector) -> ApiError:
    in_settings = any(m.name == name and m.source == "settings" for m in selector.models)
    if in_settings:
        return not_found(
            f"model {name!r} is not configured in the store, only in the settings "
            "(PLANSMITH_MODELS); PUT it with enabled: false to hide it"
        )
    return not_found(f"model {name!r} is not configured in the store")

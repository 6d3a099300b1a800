"""``/api/models``: the models the selector may pick, and which it picks for what.

Models come from ``PLANSMITH_MODELS`` (or the defaults) and from the store; ``PUT``
configures a model in the store, which wins over the settings by name (``enabled:
false`` hides a model of the settings), and ``DELETE`` removes the store's
configuration (a model of the settings is then back as the settings have it). Changes
apply to the next model call, without a restart. With API keys, ``PUT`` and ``DELETE`` need
an admin key (:mod:`api.auth`). A model's ``provider`` says who answers it: ``anthropic``
(``ANTHROPIC_API_KEY``) or ``ollama`` (``PLANSMITH_OLLAMA_URL``); only the models of the
providers configured are chosen. With neither configured the offline model answers every
call, whichever model is chosen (``offline: true``).
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
from api.ollama_catalog import OllamaUnavailable, ollama_models
from config import ModelConfig
from config.models import PROVIDERS, Provider
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
    provider: Provider = Field(
        description="anthropic (ANTHROPIC_API_KEY) or ollama (PLANSMITH_OLLAMA_URL)"
    )
    reachable: bool = Field(
        description="false when its provider is not configured here, so the selector "
        "passes it over (every model is reachable offline)"
    )
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
    providers: list[Provider] = Field(
        description="the providers configured here (ANTHROPIC_API_KEY, PLANSMITH_OLLAMA_URL)"
    )
    offline: bool = Field(
        description="true with no provider configured: the offline deterministic model "
        "answers every call, whichever model is chosen"
    )


class ModelPut(BaseModel):
    """A model's configuration in the store (its name is in the path)."""

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [
                {"capabilities": ["fast", "general"], "max_tokens": 2048, "priority": 5},
                {"capabilities": ["planning", "general"], "provider": "ollama"},
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
    provider: Provider = Field(
        default="anthropic",
        description="anthropic, or ollama for a model of the Ollama server at "
        "PLANSMITH_OLLAMA_URL (its name as Ollama lists it, e.g. llama3.1:8b)",
    )


def _view(m: ModelConfig, selector: ModelSelector) -> ModelView:
    return ModelView(**m.model_dump(), reachable=selector.reachable(m))


def _listing(selector: ModelSelector, services: ApiServices) -> ModelList:
    providers = services.settings.models.providers()
    return ModelList(
        models=[_view(m, selector) for m in selector.models],
        choices=ModelChoices(**selector.roles()),
        providers=[p for p in PROVIDERS if p in providers],
        offline=not providers,
    )


async def _in_store(services: ApiServices, fn: Callable[[Session], T], *, write: bool = False) -> T:
    """Run ``fn`` in a store session (503 when the store fails)."""
    return await services.store.run(fn, write=write)


async def _selector(services: ApiServices) -> ModelSelector:
    rows = await _in_store(services, knowledge.list_model_configs)
    return ModelSelector.load(services.settings, rows)


class OllamaModelView(BaseModel):
    name: str = Field(description="the name to configure it by (PUT /api/models/{name})")
    size: int | None = Field(description="bytes on the Ollama host")
    family: str | None
    parameter_size: str | None = Field(examples=["8.0B"])
    quantization: str | None = Field(examples=["Q4_K_M"])
    capabilities: list[str] | None = Field(
        description="what /api/show says it can do (completion, tools, thinking, vision…); "
        "null when the server does not say"
    )
    tools: bool | None = Field(
        description="supports tool calling (otherwise tools are emulated with JSON answers); "
        "null when unknown"
    )
    configured: bool = Field(description='configured here with "provider": "ollama"')


class OllamaListing(BaseModel):
    url: str = Field(description="PLANSMITH_OLLAMA_URL")
    models: list[OllamaModelView]


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


@router.get(
    "/ollama",
    response_model=OllamaListing,
    summary="The models the Ollama server at PLANSMITH_OLLAMA_URL has, and what they can do",
    description="Asks the server's /api/tags and /api/show (nothing else is contacted; "
    "bounded to 10 s and 100 models). A model is chosen only once configured with "
    '`PUT /api/models/{name}` and `"provider": "ollama"` (or in PLANSMITH_MODELS). '
    "409 when PLANSMITH_OLLAMA_URL is not set here, 502 when the server cannot be read.",
    responses={
        **responses(401, 422, 503),
        409: {"model": ErrorBody, "description": "PLANSMITH_OLLAMA_URL is not set"},
        502: {"model": ErrorBody, "description": "the Ollama server cannot be read"},
    },
)
async def list_ollama_models(services: ServicesDep) -> OllamaListing:
    url = services.settings.models.ollama_url
    if not url:
        raise ApiError(
            409,
            "ollama_not_configured",
            "PLANSMITH_OLLAMA_URL is not set on the API's side: no Ollama server to ask",
        )
    try:
        found = await ollama_models(url)
    except OllamaUnavailable as e:
        raise ApiError(
            502, "ollama_unavailable", f"cannot list the models of Ollama at {url}: {e}"
        ) from None
    selector = await _selector(services)
    configured = {m.name for m in selector.models if m.provider == "ollama"}
    return OllamaListing(
        url=url,
        models=[OllamaModelView(**m, configured=m["name"] in configured) for m in found],
    )


@router.put(
    "/{name}",
    response_model=ModelView,
    summary="Configure a model in the store (created: 201, replaced: 200)",
    description="Creates or replaces the store's configuration of the model. "
    '`"provider": "ollama"` makes it a model of the Ollama server at PLANSMITH_OLLAMA_URL. '
    "It wins over "
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
            provider=body.provider,
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
    return _view(ModelConfig(**fields, source="store"), await _selector(services))


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

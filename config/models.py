"""The language models an operator configures (``PLANSMITH_MODELS``)."""

from __future__ import annotations

import json
from collections.abc import Iterable
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, ValidationError

ENV_VAR = "PLANSMITH_MODELS"

Provider = Literal["anthropic", "ollama"]
PROVIDERS: tuple[Provider, ...] = ("anthropic", "ollama")


class ModelConfig(BaseModel):
    """One model the selector may pick."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(min_length=1, max_length=200, description="the model id sent to the API")
    capabilities: list[str] = Field(
        description="what it is good for: planning, reasoning, code_generation, fast, general…"
    )
    max_tokens: int = Field(default=4096, ge=1, description="the most output tokens to ask for")
    priority: int = Field(default=100, description="lower is preferred")
    enabled: bool = True
    provider: Provider = Field(
        default="anthropic",
        description="who answers it: anthropic (ANTHROPIC_API_KEY) or ollama "
        "(PLANSMITH_OLLAMA_URL)",
    )
    source: Literal["settings", "store"] = "settings"

    def has(self, capabilities: Iterable[str]) -> bool:
        return set(capabilities) <= set(self.capabilities)

    def describe(self) -> str:
        off = ", disabled" if not self.enabled else ""
        via = ", ollama" if self.provider == "ollama" else ""
        return f"{self.name} [{', '.join(self.capabilities) or 'no capabilities'}]{via}{off}"


DEFAULT_MODELS: tuple[ModelConfig, ...] = (
    ModelConfig(
        name="claude-sonnet-5-5",
        capabilities=["planning", "reasoning", "code_generation", "general"],
        priority=10,
    ),
    ModelConfig(name="claude-haiku-5-5", capabilities=["fast", "general"], priority=20),
)

_MODELS = TypeAdapter(list[ModelConfig])


def parse_models(text: str) -> list[ModelConfig]:
    """``PLANSMITH_MODELS`` (a JSON list of model objects) as :class:`ModelConfig` s.

    Raises:
        ValueError: naming the variable and what is wrong with it.
    """
    try:
        raw = json.loads(text)
    except json.JSONDecodeError as e:
        raise ValueError(f"{ENV_VAR} is not valid JSON: {e}") from None
    if not isinstance(raw, list):
        raise ValueError(
            f"{ENV_VAR} must be a JSON list of models like "
            '[{"name": "...", "capabilities": ["general"]}], not a JSON '
            f"{type(raw).__name__}"
        )
    try:
        models = _MODELS.validate_python(raw)
    except ValidationError as e:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in err['loc']) or 'list'}: {err['msg']}" for err in e.errors()
        )
        raise ValueError(f"{ENV_VAR} is invalid: {problems}") from None
    names = [m.name for m in models]
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        raise ValueError(f"{ENV_VAR} names a model more than once: {', '.join(dupes)}")
    return [m.model_copy(update={"source": "settings"}) for m in models]

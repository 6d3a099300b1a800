"""Which model answers which kind of work (:class:`ModelSelector`).

Models are configured in two places: ``PLANSMITH_MODELS`` (a JSON list, read at start-up;
a sensible default when unset) and the store (``PUT /api/models/{name}``, changed at run
time). The store wins by name, and a store row with ``enabled: false`` hides the model of
the same name from the settings.

A caller asks for *capabilities* ("planning", "code_generation", "fast", "general"…) and
gets the enabled model that has all of them, the lowest ``priority`` first (then the
name, so the choice is stable). A step may name its model outright; that name must be
configured. When nothing fits, :class:`NoModelFits` says what was asked and lists every
configured model with its capabilities.

Each model has a *provider*: ``anthropic`` (the default) or ``ollama``. When the process
can reach some provider (``ANTHROPIC_API_KEY``, ``PLANSMITH_OLLAMA_URL``), only the models
of the providers it can reach are chosen: with Ollama alone, the Ollama models are picked
by capability exactly as the Anthropic ones would be. When it reaches none, every model
may be chosen and the offline stand-in answers for all of them.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from pydantic import ValidationError

from config import ModelConfig, Settings
from contracts.errors import NoModelFits

log = logging.getLogger("plansmith.llm")

PLANNING = "planning"
CODE = "code_generation"
FAST = "fast"
REASONING = "reasoning"
GENERAL = "general"

# what a process needs to reach each provider
_NEEDS = {"anthropic": "ANTHROPIC_API_KEY", "ollama": "PLANSMITH_OLLAMA_URL"}


class ModelSelector:
    """Picks a model by capability, or by name, from the configured models."""

    def __init__(self, models: Iterable[ModelConfig], providers: Iterable[str] | None = None):
        self.models: list[ModelConfig] = sorted(models, key=lambda m: (m.priority, m.name))
        # the providers this process reaches; empty: offline, every model answers
        self.providers: frozenset[str] = frozenset(providers or ())

    # --- loading ----------------------------------------------------------------------

    @classmethod
    def load(
        cls,
        settings: Settings,
        models_from_store: Iterable[Mapping[str, Any]] | None = None,
    ) -> ModelSelector:
        """The models of the settings (``PLANSMITH_MODELS`` or the defaults) merged with
        the store's rows (``store.knowledge.list_model_configs``): the store wins by name."""
        configured = settings.models.configured()
        merged = {m.name: m for m in configured}
        for row in models_from_store or ():
            fields = {k: row[k] for k in ModelConfig.model_fields if k in row and k != "source"}
            try:
                model = ModelConfig(**fields, source="store")
            except ValidationError as e:
                log.warning("ignoring the store's model %r: %s", row.get("name"), e)
                continue
            merged[model.name] = model
        return cls(merged.values(), settings.models.providers())

    # --- choosing ---------------------------------------------------------------------

    def reachable(self, model: ModelConfig) -> bool:
        """Whether this process can reach ``model``'s provider (always, offline)."""
        return not self.providers or model.provider in self.providers

    @property
    def enabled(self) -> list[ModelConfig]:
        return [m for m in self.models if m.enabled and self.reachable(m)]

    def _describe(self, m: ModelConfig) -> str:
        if self.reachable(m):
            return m.describe()
        return f"{m.describe()}, unreachable: {_NEEDS.get(m.provider, m.provider)} is not set"

    def _configured(self) -> str:
        if not self.models:
            return "no models are configured (PLANSMITH_MODELS, PUT /api/models/{name})"
        return "configured models: " + "; ".join(self._describe(m) for m in self.models)

    def find(self, capabilities: Iterable[str]) -> ModelConfig | None:
        """The enabled model with all ``capabilities`` (lowest priority, then name)."""
        wanted = list(capabilities)
        return next((m for m in self.enabled if m.has(wanted)), None)

    def model_for(self, capabilities: Iterable[str]) -> ModelConfig:
        """The enabled model with all ``capabilities``; :class:`NoModelFits` if none."""
        wanted = list(dict.fromkeys(capabilities))
        found = self.find(wanted)
        if found is None:
            raise NoModelFits(
                f"no enabled model has all of the capabilities {', '.join(wanted) or '(none)'}; "
                f"{self._configured()}",
                capabilities=wanted,
            )
        return found

    def get(self, name: str) -> ModelConfig:
        """The enabled model called ``name``; :class:`NoModelFits` if there is none."""
        for m in self.models:
            if m.name == name:
                if not m.enabled:
                    raise NoModelFits(
                        f"model {name!r} is disabled; {self._configured()}", name=name
                    )
                if not self.reachable(m):
                    raise NoModelFits(
                        f"model {name!r} is an {m.provider} model and "
                        f"{_NEEDS.get(m.provider, m.provider)} is not set on this side; "
                        f"{self._configured()}",
                        name=name,
                    )
                return m
        raise NoModelFits(f"model {name!r} is not configured; {self._configured()}", name=name)

    def planning_model(self) -> ModelConfig:
        return self.model_for([PLANNING])

    def code_model(self) -> ModelConfig:
        return self.model_for([CODE])

    def fast_model(self) -> ModelConfig:
        return self.model_for([FAST])

    def reasoning_model(self) -> ModelConfig:
        return self.model_for([REASONING])

    def default_model(self) -> ModelConfig:
        return self.model_for([GENERAL])

    def resolve(
        self,
        model: str | None = None,
        capabilities: Sequence[str] | None = None,
        default: str = GENERAL,
    ) -> ModelConfig:
        """The model of a step: its explicit ``model`` name, else the one with all its
        ``capabilities``, else the one with the ``default`` capability."""
        if model:
            return self.get(model)
        if capabilities:
            return self.model_for(capabilities)
        return self.model_for([default])

    def roles(self) -> dict[str, str | None]:
        """Which model each standard role gets (None when no model fits)."""
        out: dict[str, str | None] = {}
        for role, capability in (
            ("planning", PLANNING),
            ("code", CODE),
            ("fast", FAST),
            ("reasoning", REASONING),
            ("default", GENERAL),
        ):
            found = self.find([capability])
            out[role] = found.name if found else None
        return out

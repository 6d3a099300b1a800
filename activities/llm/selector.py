"""Which model answers which kind of work (seed 004 §1.1, ModelSelector).

Models are configured in two places: ``PLANSMITH_MODELS`` (a JSON list, read at start-up;
a sensible default when unset) and the store (``PUT /api/models/{name}``, changed at run
time). The store wins by name, and a store row with ``enabled: false`` hides the model of
the same name from the settings.

A caller asks for *capabilities* ("planning", "code_generation", "fast", "general"…) and
gets the enabled model that has all of them, the lowest ``priority`` first (then the
name, so the choice is stable). A step may name its model outright; that name must be
configured. When nothing fits, :class:`NoModelFits` says what was asked and lists every
configured model with its capabilities.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from pydantic import ValidationError

from config import ModelConfig, Settings, get_settings
from config.models import ENV_VAR
from contracts.errors import NoModelFits

log = logging.getLogger("plansmith.llm")

PLANNING = "planning"
CODE = "code_generation"
FAST = "fast"
GENERAL = "general"


class ModelSelector:
    """Picks a model by capability, or by name, from the configured models."""

    def __init__(self, models: Iterable[ModelConfig]):
        self.models: list[ModelConfig] = sorted(models, key=lambda m: (m.priority, m.name))

    # --- loading ----------------------------------------------------------------------

    @classmethod
    def load(
        cls,
        settings: Settings | None = None,
        models_from_store: Iterable[Mapping[str, Any]] | None = None,
    ) -> ModelSelector:
        """The models of the settings (``PLANSMITH_MODELS`` or the defaults) merged with
        the store's rows (``store.knowledge.list_model_configs``): the store wins by name."""
        configured = (settings or get_settings()).models.configured()
        merged = {m.name: m for m in configured}
        for row in models_from_store or ():
            fields = {k: row[k] for k in ModelConfig.model_fields if k in row and k != "source"}
            try:
                model = ModelConfig(**fields, source="store")
            except ValidationError as e:
                log.warning("ignoring the store's model %r: %s", row.get("name"), e)
                continue
            merged[model.name] = model
        return cls(merged.values())

    # --- choosing ---------------------------------------------------------------------

    @property
    def enabled(self) -> list[ModelConfig]:
        return [m for m in self.models if m.enabled]

    def _configured(self) -> str:
        if not self.models:
            return "no models are configured (PLANSMITH_MODELS, PUT /api/models/{name})"
        return "configured models: " + "; ".join(m.describe() for m in self.models)

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
                if m.enabled:
                    return m
                raise NoModelFits(f"model {name!r} is disabled; {self._configured()}", name=name)
        raise NoModelFits(f"model {name!r} is not configured; {self._configured()}", name=name)

    def planning_model(self) -> ModelConfig:
        return self.model_for([PLANNING])

    def code_model(self) -> ModelConfig:
        return self.model_for([CODE])

    def fast_model(self) -> ModelConfig:
        return self.model_for([FAST])

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
            ("default", GENERAL),
        ):
            found = self.find([capability])
            out[role] = found.name if found else None
        return out


def read_store_models(settings: Settings | None = None) -> list[dict[str, Any]]:
    """The store's model rows (``store.knowledge.list_model_configs``); raises when the
    store cannot be read."""
    from store import knowledge
    from store.db import ensure_migrated, get_engine, session_scope

    url = settings.store.database_url if settings is not None else None
    engine = ensure_migrated(get_engine(url))
    with session_scope(engine) as session:
        return knowledge.list_model_configs(session)


def load_selector(settings: Settings | None = None) -> ModelSelector:
    """The selector of this process: settings and store. When the store cannot be read
    the settings alone answer (and a warning says why). Blocking: call it from a thread
    (``asyncio.to_thread``) in async code."""
    settings = settings or get_settings()
    try:
        rows = read_store_models(settings)
    except Exception as e:
        log.warning(
            "cannot read the models configured in the store (%s: %s); using %s alone",
            type(e).__name__,
            str(e)[:300],
            ENV_VAR if settings.models.models else "the default models",
        )
        rows = []
    return ModelSelector.load(settings, rows)

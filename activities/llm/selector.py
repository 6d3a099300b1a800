"""The model selector of a process that may read the store: the settings' models merged
with those configured at run time (``PUT /api/models/{name}``); the choosing itself is
:class:`contracts.models.ModelSelector`."""

from __future__ import annotations

import logging
from typing import Any

from config import Settings, get_settings
from config.models import ENV_VAR
from contracts.models import ModelSelector

log = logging.getLogger("plansmith.llm")


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

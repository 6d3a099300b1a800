"""The model selector of a process that may read the store: the settings' models merged
with those configured at run time (``PUT /api/models/{name}``); the choosing itself is
:class:`contracts.models.ModelSelector`."""

from __future__ import annotations

import logging
from typing import Any

from sqlalchemy.engine import Engine

from config import Settings
from config.models import ENV_VAR
from contracts.models import ModelSelector
from store import knowledge
from store.db import ensure_migrated, session_scope

log = logging.getLogger("plansmith.llm")


def read_store_models(engine: Engine) -> list[dict[str, Any]]:
    """The store's model rows (``store.knowledge.list_model_configs``); raises when the
    store cannot be read."""

    with session_scope(ensure_migrated(engine)) as session:
        return knowledge.list_model_configs(session)


def load_selector(settings: Settings, engine: Engine) -> ModelSelector:
    """The selector of this process: ``settings`` and the store of ``engine``. When the
    store cannot be read the settings alone answer (and a warning says why). Blocking:
    call it from a thread (``asyncio.to_thread``) in async code."""
    try:
        rows = read_store_models(engine)
    except Exception as e:
        log.warning(
            "cannot read the models configured in the store (%s: %s); using %s alone",
            type(e).__name__,
            str(e)[:300],
            ENV_VAR if settings.models.models else "the default models",
        )
        rows = []
    return ModelSelector.load(settings, rows)

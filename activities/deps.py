"""What the activities are given: the settings, the language model and the store.

The worker (``worker.py``) builds one :class:`ActivityDeps` from its settings and hands
it to the activity classes (``StepActivities(deps)``, ``PlanningActivities(deps)``…);
the activities and the functions they call take what they need from it and read no
process-wide state. A test builds its own, with a scripted model or other settings.
"""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy.engine import Engine

from activities.llm.base import ChatModel
from activities.llm.factory import chat_model_from
from config import Settings
from store.db import get_engine


@dataclass(frozen=True)
class ActivityDeps:
    """The settings, the model every LLM call goes to, and the store's engine.

    The engine is not connected yet: the store's schema is migrated on first use
    (:func:`store.db.ensure_migrated`), so a worker starts even while the store is down.
    """

    settings: Settings
    chat_model: ChatModel
    engine: Engine

    @classmethod
    def from_settings(cls, settings: Settings, chat_model: ChatModel | None = None) -> ActivityDeps:
        """The dependencies ``settings`` describe: the store at ``DATABASE_URL`` and the
        model :func:`~activities.llm.factory.chat_model_from` picks, unless ``chat_model``
        is given."""
        return cls(
            settings=settings,
            chat_model=chat_model if chat_model is not None else chat_model_from(settings),
            engine=get_engine(settings.store.database_url),
        )

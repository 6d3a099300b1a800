"""Which model a worker talks to: Anthropic when a key is configured, else the offline
stand-in. The worker calls :func:`chat_model_from` once and hands the model to every
activity (:class:`activities.deps.ActivityDeps`)."""

from __future__ import annotations

from activities.llm.anthropic_model import AnthropicModel
from activities.llm.base import ChatModel
from activities.llm.offline.model import OfflineModel
from config import Settings


def chat_model_from(settings: Settings) -> ChatModel:
    """The model ``settings`` call for: Anthropic with a key (``ANTHROPIC_API_KEY``), else
    the offline stand-in."""
    if settings.models.anthropic_api_key:
        return AnthropicModel.from_settings(settings)
    return OfflineModel()

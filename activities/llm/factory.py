"""Which model a worker talks to. The worker calls :func:`chat_model_from` once and hands
the model to every activity (:class:`activities.deps.ActivityDeps`):

- only ``ANTHROPIC_API_KEY``: the Anthropic client;
- ``PLANSMITH_OLLAMA_URL`` (with or without a key): a :class:`ProviderRouter` that sends
  each request to the provider of the model the selector chose (``LLMRequest.provider``);
- neither: the offline stand-in, for every model.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from activities.llm.anthropic_model import AnthropicModel
from activities.llm.base import ChatModel, LLMRequest, LLMResponse
from activities.llm.offline.model import OfflineModel
from activities.llm.ollama_model import OllamaModel
from config import Settings
from contracts.errors import LLMError

if TYPE_CHECKING:
    import httpx


class ProviderRouter:
    """Answers each request with the model of its provider: ``ollama`` -> the Ollama
    server, ``anthropic`` -> Anthropic; a request without a provider (a model name the
    selector does not know) goes to Anthropic when there is a key, else to Ollama."""

    def __init__(self, *, anthropic: ChatModel | None, ollama: ChatModel | None):
        self.anthropic = anthropic
        self.ollama = ollama

    def __repr__(self) -> str:
        return f"ProviderRouter(anthropic={self.anthropic!r}, ollama={self.ollama!r})"

    def model_for(self, request: LLMRequest) -> ChatModel:
        wanted = request.provider
        if wanted == "ollama" or (wanted is None and self.anthropic is None):
            if self.ollama is not None:
                return self.ollama
            missing = "PLANSMITH_OLLAMA_URL"
        else:
            if self.anthropic is not None:
                return self.anthropic
            missing = "ANTHROPIC_API_KEY"
        raise LLMError(
            f"model {request.model!r} ({wanted or 'no provider'}) needs {missing}, which "
            "is not set on this worker",
            retryable=False,
            kind="LLMBadRequest",
        )

    async def complete(self, request: LLMRequest) -> LLMResponse:
        return await self.model_for(request).complete(request)


def chat_model_from(
    settings: Settings, *, ollama_http_client: httpx.AsyncClient | None = None
) -> ChatModel:
    """The model ``settings`` call for (module docstring). ``ollama_http_client`` is the
    HTTP client the Ollama model sends with (tests give one with a mock transport)."""
    key = settings.models.anthropic_api_key
    if settings.models.ollama_url:
        return ProviderRouter(
            anthropic=AnthropicModel.from_settings(settings) if key else None,
            ollama=OllamaModel.from_settings(settings, ollama_http_client),
        )
    if key:
        return AnthropicModel.from_settings(settings)
    return OfflineModel()

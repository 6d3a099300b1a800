"""The one interface every language model in Plansmith implements.

Callers (the llm/decision/validation steps, the planner) build an :class:`LLMRequest`,
ask a :class:`ChatModel` for a :class:`LLMResponse` and never know which model answered:
the Anthropic client when ``ANTHROPIC_API_KEY`` is set, an Ollama server's models when
``PLANSMITH_OLLAMA_URL`` is set (by the request's ``provider``), the offline deterministic
model when neither is (:func:`activities.llm.factory.chat_model_from`, called once by the
worker), or whatever a test gives the activities (:class:`activities.deps.ActivityDeps`).

Messages and content blocks follow the Anthropic Messages API shape (plain dicts), so a
conversation with tool calls can be fed back to the model as it is:

- ``{"role": "user", "content": "text"}``
- ``{"role": "assistant", "content": [{"type": "text", "text": ...},
  {"type": "tool_use", "id": ..., "name": ..., "input": {...}}]}``
- ``{"role": "user", "content": [{"type": "tool_result", "tool_use_id": ...,
  "content": "...", "is_error": false}]}``

Retries belong to Temporal: a model raises :class:`LLMError` with ``retryable`` set, and
the activity turns it into an ``ApplicationError`` whose ``non_retryable`` flag follows.
"""

from __future__ import annotations

from typing import Any, Protocol, runtime_checkable

from pydantic import BaseModel, Field

from contracts.planning import Usage

# an HTTP model API's 4xx status -> (retryable, the LLMError kind), for those with a name
# of their own (every provider's client names them alike)
CLIENT_ERRORS: dict[int, tuple[bool, str]] = {
    400: (False, "LLMBadRequest"),
    401: (False, "LLMAuthError"),
    403: (False, "LLMAuthError"),
    404: (False, "LLMNotFound"),
    408: (True, "LLMTimeout"),
    409: (True, "LLMConflict"),
    413: (False, "LLMRequestTooLarge"),
    429: (True, "LLMRateLimited"),
}


class ToolDef(BaseModel):
    """A tool offered to the model (Anthropic's tool definition)."""

    name: str
    description: str = ""
    input_schema: dict[str, Any]


class ToolCall(BaseModel):
    """A ``tool_use`` block of the model's answer."""

    id: str
    name: str
    input: dict[str, Any] = Field(default_factory=dict)


class LLMRequest(BaseModel):
    model: str
    system: str = ""
    messages: list[dict[str, Any]]
    tools: list[ToolDef] = Field(default_factory=list)
    # None = the model decides; {"type": "auto"|"any"} or {"type": "tool", "name": ...}
    tool_choice: dict[str, Any] | None = None
    max_tokens: int = Field(default=1024, ge=1)
    temperature: float | None = Field(default=None, ge=0, le=1)
    # mark the system prompt and the tool list for prompt caching (both must be stable)
    cache: bool = True
    # who answers: "anthropic" or "ollama" (the selected model's provider); None for a
    # model the selector does not know (activities.llm.factory.ProviderRouter decides)
    provider: str | None = None

    def forced_tool(self) -> ToolDef | None:
        """The tool the request forces the model to call, if it forces one."""
        if self.tool_choice and self.tool_choice.get("type") == "tool":
            for t in self.tools:
                if t.name == self.tool_choice.get("name"):
                    return t
        return None

    def last_user_text(self) -> str:
        """The text of the last user message (tool results excluded)."""
        for m in reversed(self.messages):
            if m.get("role") != "user":
                continue
            content = m.get("content")
            if isinstance(content, str):
                return content
            texts = [b.get("text", "") for b in content or [] if b.get("type") == "text"]
            if texts:
                return "\n".join(texts)
        return ""


class LLMResponse(BaseModel):
    model: str
    text: str = ""
    tool_calls: list[ToolCall] = Field(default_factory=list)
    # the assistant message's content blocks, to append to the conversation as they are
    content: list[dict[str, Any]] = Field(default_factory=list)
    stop_reason: str | None = None
    usage: Usage = Field(default_factory=Usage)
    latency_ms: float = 0.0
    offline: bool = False

    def call(self, name: str) -> ToolCall | None:
        return next((c for c in self.tool_calls if c.name == name), None)

    def record(self) -> dict[str, Any]:
        """What a step records about the call: model, tokens, latency, offline or not."""
        return {
            "model": self.model,
            "input_tokens": self.usage.input_tokens,
            "output_tokens": self.usage.output_tokens,
            "cache_read_input_tokens": self.usage.cache_read_input_tokens,
            "latency_ms": round(self.latency_ms, 1),
            "offline": self.offline,
        }


@runtime_checkable
class ChatModel(Protocol):
    """Anything that answers an :class:`LLMRequest`."""

    async def complete(self, request: LLMRequest) -> LLMResponse: ...

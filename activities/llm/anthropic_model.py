"""The Anthropic Messages API behind the :class:`~activities.llm.base.ChatModel` interface.

The SDK's own retries are off (``max_retries=0``): Temporal retries the activity, so a
failed call raises :class:`~activities.llm.base.LLMError` at once, ``retryable`` telling
Temporal whether to try again. The retryable statuses are the ones the SDK itself would
have retried: 408, 409, 429 and every 5xx (529 is "overloaded"), and connection errors
and timeouts; every other 4xx is a mistake that trying again cannot fix.

With ``request.cache`` the system prompt and the tool list are marked for prompt caching
(``cache_control: ephemeral`` on the system block and on the last tool): callers keep
both stable between calls, so later calls read them from the cache.

``request.temperature`` is not sent. The SDK (2.x) speaks API version 2026-10-21, which
answers 400 to any ``temperature``/``top_p``/``top_k``, even at their defaults, and the
SDK no longer has the parameters at all; the offline model may still use it.

The SDK itself (~40 MiB in the worker) is imported on first use: by the first call, or by
a model built around a given ``http_client``. A worker whose plans only wait for a person
never loads it.
"""

from __future__ import annotations

import asyncio
import functools
import importlib
import sys
import time
import weakref
from types import ModuleType
from typing import TYPE_CHECKING, Any

from activities.llm.base import CLIENT_ERRORS, LLMRequest, LLMResponse, ToolCall
from contracts.errors import LLMError
from contracts.planning import Usage

if TYPE_CHECKING:
    import anthropic
    import httpx2

    from config import Settings

EPHEMERAL = {"type": "ephemeral"}
DEFAULT_TIMEOUT_S = 120.0


def _sdk() -> ModuleType:
    """The ``anthropic`` package, imported the first time it is needed."""
    return importlib.import_module("anthropic")


async def _sdk_loaded() -> ModuleType:
    """:func:`_sdk` from an activity: the first import (about a second) runs in a thread,
    so the worker's event loop keeps answering meanwhile."""
    if "anthropic" not in sys.modules:
        await asyncio.to_thread(_sdk)
    return _sdk()


class AnthropicModel:
    """Answers :class:`LLMRequest` s with Anthropic's Messages API.

    Args:
        api_key: the Anthropic API key (never logged nor put in an error message).
        timeout_s: how long one call may take.
        http_client: an ``httpx2.AsyncClient`` to send requests with (tests give one with
            a mock transport); by default the SDK makes its own, one per event loop.
    """

    def __init__(
        self,
        api_key: str,
        *,
        timeout_s: float = DEFAULT_TIMEOUT_S,
        http_client: httpx2.AsyncClient | None = None,
    ):
        if not api_key:
            raise ValueError("AnthropicModel needs an API key (ANTHROPIC_API_KEY)")
        self._api_key = api_key
        self.timeout_s = timeout_s
        self._fixed: anthropic.AsyncAnthropic | None = (
            self._new_client(http_client) if http_client is not None else None
        )
        # an SDK client keeps a connection pool, which belongs to one event loop
        self._per_loop: weakref.WeakKeyDictionary[
            asyncio.AbstractEventLoop, anthropic.AsyncAnthropic
        ] = weakref.WeakKeyDictionary()

    @classmethod
    def from_settings(cls, settings: Settings) -> AnthropicModel:
        """The process's model for ``ANTHROPIC_API_KEY`` (one per key and timeout, so the
        connections are reused from call to call)."""
        if not settings.models.anthropic_api_key:
            raise ValueError("ANTHROPIC_API_KEY is not set")
        return _shared(settings.models.anthropic_api_key, settings.models.llm_timeout_s)

    def __repr__(self) -> str:
        return f"AnthropicModel(timeout_s={self.timeout_s:g})"

    def _new_client(
        self, http_client: httpx2.AsyncClient | None = None
    ) -> anthropic.AsyncAnthropic:
        return _sdk().AsyncAnthropic(
            api_key=self._api_key,
            max_retries=0,  # Temporal owns retries
            timeout=self.timeout_s,
            http_client=http_client,
        )

    @property
    def client(self) -> anthropic.AsyncAnthropic:
        """The SDK client for the running event loop."""
        if self._fixed is not None:
            return self._fixed
        loop = asyncio.get_running_loop()
        found = self._per_loop.get(loop)
        if found is None:
            found = self._per_loop[loop] = self._new_client()
        return found

    def request_params(self, request: LLMRequest) -> dict[str, Any]:
        """The Messages API parameters for ``request``."""
        params: dict[str, Any] = {
            "model": request.model,
            "messages": request.messages,
            "max_tokens": request.max_tokens,
        }
        if request.system:
            if request.cache:
                params["system"] = [
                    {"type": "text", "text": request.system, "cache_control": dict(EPHEMERAL)}
                ]
            else:
                params["system"] = request.system
        if request.tools:
            tools: list[dict[str, Any]] = []
            for t in request.tools:
                tool: dict[str, Any] = {"name": t.name, "input_schema": t.input_schema}
                if t.description:
                    tool["description"] = t.description
                tools.append(tool)
            if request.cache:
                tools[-1]["cache_control"] = dict(EPHEMERAL)
            params["tools"] = tools
        if request.tool_choice is not None:
            params["tool_choice"] = request.tool_choice
        # no temperature: API 2026-10-21 refuses sampling parameters (module docstring)
        return params

    async def complete(self, request: LLMRequest) -> LLMResponse:
        params = self.request_params(request)
        sdk = await _sdk_loaded()
        started = time.monotonic()
        try:
            message = await self.client.messages.create(**params)
        except sdk.APIError as e:
            raise self._error(e) from None
        latency_ms = (time.monotonic() - started) * 1000
        return parse_message(message, latency_ms)

    def _error(self, e: anthropic.APIError) -> LLMError:
        error = to_llm_error(e)
        if self._api_key in str(error):  # never show the key, whatever the API echoes
            error = LLMError(
                str(error).replace(self._api_key, "[redacted]"),
                retryable=error.retryable,
                kind=error.kind,
                status=error.status,
            )
        return error


@functools.lru_cache(maxsize=8)
def _shared(api_key: str, timeout_s: float) -> AnthropicModel:
    return AnthropicModel(api_key, timeout_s=timeout_s)


def parse_message(message: Any, latency_ms: float = 0.0) -> LLMResponse:
    """An SDK ``Message`` as an :class:`LLMResponse` (plain, JSON-ready content blocks)."""
    content: list[dict[str, Any]] = []
    texts: list[str] = []
    calls: list[ToolCall] = []
    for block in message.content:
        if block.type == "text":
            texts.append(block.text)
            content.append({"type": "text", "text": block.text})
        elif block.type == "tool_use":
            args = dict(block.input) if isinstance(block.input, dict) else {}
            calls.append(ToolCall(id=block.id, name=block.name, input=args))
            content.append({"type": "tool_use", "id": block.id, "name": block.name, "input": args})
    u = message.usage
    usage = Usage(
        input_tokens=u.input_tokens or 0,
        output_tokens=u.output_tokens or 0,
        cache_read_input_tokens=u.cache_read_input_tokens or 0,
        cache_creation_input_tokens=u.cache_creation_input_tokens or 0,
    )
    return LLMResponse(
        model=message.model,
        text="".join(texts),
        tool_calls=calls,
        content=content,
        stop_reason=message.stop_reason,
        usage=usage,
        latency_ms=latency_ms,
        offline=False,
    )


def to_llm_error(e: anthropic.APIError) -> LLMError:
    """An SDK error as an :class:`LLMError`: retryable or not, with a kind and the status."""
    sdk = _sdk()
    if isinstance(e, sdk.APIStatusError):
        status = e.status_code
        if status in CLIENT_ERRORS:
            retryable, kind = CLIENT_ERRORS[status]
        elif status == 529:
            retryable, kind = True, "LLMOverloaded"
        elif status >= 500:
            retryable, kind = True, "LLMServerError"
        else:
            retryable, kind = False, "LLMClientError"
        what = e.type or "error"
        said = e.api_message or _short(e.body) or "no message"
        retry_after = e.response.headers.get("retry-after")
        message = f"Anthropic API answered {status} ({what}): {said}"
        if retry_after:
            message += f"; retry after {retry_after}s"
        if e.request_id:
            message += f" [request {e.request_id}]"
        return LLMError(message, retryable=retryable, kind=kind, status=status)
    if isinstance(e, sdk.APITimeoutError):
        return LLMError(
            "the Anthropic API did not answer in time", retryable=True, kind="LLMConnectionError"
        )
    if isinstance(e, sdk.APIConnectionError):
        cause = e.__cause__
        why = f": {type(cause).__name__}: {cause}" if cause else ""
        return LLMError(
            f"cannot reach the Anthropic API{why}"[:500], retryable=True, kind="LLMConnectionError"
        )
    # e.g. a response the SDK could not read: the API's fault, perhaps passing
    return LLMError(
        f"unexpected answer from the Anthropic API: {type(e).__name__}: {e.message}"[:500],
        retryable=True,
        kind="LLMBadResponse",
    )


def _short(body: object) -> str:
    return str(body)[:300] if body else ""

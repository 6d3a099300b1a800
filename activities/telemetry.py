"""What the activities add to a trace, when the worker traces (``OTEL_*``: see
:mod:`workflows.telemetry`); when it does not, each of these costs a dictionary lookup
and imports nothing.

- :func:`annotate_step`: the step activity's span (Temporal's ``RunActivity:...``, opened
  by its ``TracingInterceptor``, the fast path's local activities included) gets
  ``plansmith.plan_id``, ``plansmith.step_id``, ``plansmith.version`` (the step's version:
  1, then one more per correction of it), ``plansmith.attempt`` and what the step runs.
- :func:`traced_model`: each model call is a child span ``chat <model>`` with the GenAI
  attributes (model, tokens, finish reason).
- :func:`instrument_http_clients`: every HTTP request of the worker (the ``http_request``
  tool through its guarded, pinned transport; the model SDK's calls) is a client span.
  Its URL is the one the step asked for (the host's name, not the checked address it was
  pinned to, which is ``network.peer.address``), with the worker's secret values and URL
  credentials redacted (:class:`activities.secrets.Redactor`).
"""

from __future__ import annotations

import dataclasses
import ipaddress
import sys
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from activities.llm.base import ChatModel, LLMRequest, LLMResponse
from activities.secrets import Redactor, SecretsFileError, load_secrets
from config import Settings
from config.telemetry import tracer_provider_installed
from contracts.steps import StepTask

if TYPE_CHECKING:
    from activities.deps import ActivityDeps

TRACER = "plansmith.activities"


def _trace() -> Any | None:
    """``opentelemetry.trace`` when it is loaded (the worker traces), else None."""
    return sys.modules.get("opentelemetry.trace")


def annotate_step(task: StepTask, attempt: int) -> None:
    """Put the step's identity on the current span (the step activity's), if it records."""
    trace = _trace()
    if trace is None:
        return
    span = trace.get_current_span()
    if not span.is_recording():
        return
    attributes: dict[str, Any] = {
        "plansmith.plan_id": task.plan_id,
        "plansmith.step_id": task.step_id,
        "plansmith.version": task.step_version,
        "plansmith.attempt": attempt,
        "plansmith.step_kind": task.kind.value,
    }
    if task.tool:
        attributes["plansmith.tool"] = task.tool
    span.set_attributes(attributes)


# --- model calls --------------------------------------------------------------------------


class TracedModel:
    """A :class:`ChatModel` whose calls are spans (``chat <model>``, kind client)."""

    def __init__(self, inner: ChatModel):
        self.inner = inner

    def __getattr__(self, name: str) -> Any:  # the wrapped model's other attributes
        return getattr(self.inner, name)

    def __repr__(self) -> str:
        return f"TracedModel({self.inner!r})"

    async def complete(self, request: LLMRequest) -> LLMResponse:
        # loaded: the model is wrapped only in a worker that traces (traced_model)
        from opentelemetry import trace

        tracer = trace.get_tracer(TRACER)
        with tracer.start_as_current_span(
            f"chat {request.model}",
            kind=trace.SpanKind.CLIENT,
            attributes={
                "gen_ai.operation.name": "chat",
                "gen_ai.request.model": request.model,
                "gen_ai.request.max_tokens": request.max_tokens,
                "plansmith.model_client": type(self.inner).__name__,
            },
        ) as span:
            response = await self.inner.complete(request)
            span.set_attributes(
                {
                    "gen_ai.response.model": response.model,
                    "gen_ai.usage.input_tokens": response.usage.input_tokens,
                    "gen_ai.usage.output_tokens": response.usage.output_tokens,
                    "gen_ai.response.finish_reasons": [response.stop_reason or ""],
                    "plansmith.offline": response.offline,
                    "plansmith.tool_calls": len(response.tool_calls),
                }
            )
            return response


def traced_model(model: ChatModel) -> ChatModel:
    """``model``, its calls traced when this process traces."""
    if isinstance(model, TracedModel) or not tracer_provider_installed():
        return model
    return TracedModel(model)


def traced_deps(deps: ActivityDeps) -> ActivityDeps:
    """``deps`` with a traced model (:func:`traced_model`) when this process traces."""
    model = traced_model(deps.chat_model)
    return deps if model is deps.chat_model else dataclasses.replace(deps, chat_model=model)


# --- HTTP clients -------------------------------------------------------------------------

URL_ATTRIBUTES = ("url.full", "http.url")  # the new and the old HTTP conventions


def _literal(host: str) -> bool:
    try:
        ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        return False
    return True


def url_hook(settings: Settings) -> Callable[[Any, Any], None]:
    """The request hook of the HTTP client spans: the URL as the step asked for it (the
    ``Host`` header's name where the guard pinned an address, that address kept as
    ``network.peer.address``), redacted of the worker's secrets and of URL credentials."""

    def hook(span: Any, request: Any) -> None:
        if not span.is_recording():
            return
        url, headers = request.url, request.headers
        host = headers.get("host") if headers is not None else None
        try:
            if host and _literal(url.host) and not _literal(host.rsplit(":", 1)[0]):
                span.set_attribute("network.peer.address", url.host)
                url = url.copy_with(netloc=host.encode("ascii"))
        except (AttributeError, UnicodeError, ValueError):
            pass
        try:
            values = list(load_secrets(settings).values())
        except SecretsFileError:
            values = []
        shown = Redactor(values).text(str(url))
        recorded = getattr(span, "attributes", None) or {}
        for key in URL_ATTRIBUTES:
            if key in recorded:
                span.set_attribute(key, shown)

    return hook


def instrument_http_clients(settings: Settings) -> None:
    """Trace every request of this process's httpx and httpx2 clients (client spans with
    the trace context sent along; see :func:`url_hook`)."""
    # deferred: loaded only in a worker that traces
    from opentelemetry.instrumentation.httpx import (
        HTTPX2ClientInstrumentor,
        HTTPXClientInstrumentor,
    )

    sync_hook = url_hook(settings)

    async def async_hook(span: Any, request: Any) -> None:
        sync_hook(span, request)

    for instrumentor in (HTTPXClientInstrumentor(), HTTPX2ClientInstrumentor()):
        if instrumentor._module is None:  # httpx2 (the model SDK's) is not installed
            continue
        instrumentor.instrument(request_hook=sync_hook, async_request_hook=async_hook)


def uninstrument_http_clients() -> None:
    """Undo :func:`instrument_http_clients`."""
    from opentelemetry.instrumentation.httpx import (
        HTTPX2ClientInstrumentor,
        HTTPXClientInstrumentor,
    )

    for instrumentor in (HTTPXClientInstrumentor(), HTTPX2ClientInstrumentor()):
        if instrumentor._module is not None:
            instrumentor.uninstrument()


__all__ = [
    "TracedModel",
    "annotate_step",
    "instrument_http_clients",
    "traced_deps",
    "traced_model",
    "uninstrument_http_clients",
]

"""The API's requests as spans, when the process traces (``OTEL_*``: see
:mod:`workflows.telemetry`).

Each request is a server span (``POST /api/plans/{plan_id}/execute``), continuing the
trace of a caller that sent ``traceparent``; what the route asks Temporal (start a plan,
a control, a query) is its child, and through Temporal's tracing interceptor the plan's
workflow and steps join the same trace. Health checks, ``/metrics`` and static files are
not traced (``OTEL_PYTHON_FASTAPI_EXCLUDED_URLS`` replaces that list), nor is each ASGI
message of a response (an event stream would make one per event). FastAPI's own
telemetry (0.165) sees the instrumentation in the middleware stack and makes no spans of
its own, so a request is one span.
"""

from __future__ import annotations

import contextvars
import os
import random
import sys

from fastapi import FastAPI

from workflows.telemetry import enable_tracing

SERVICE = "plansmith-api"
EXCLUDED_URLS = r"//[^/]+/(healthz|readyz|metrics)(\?|$),//[^/]+/static/"
EXCLUDED_URLS_ENV = ("OTEL_PYTHON_FASTAPI_EXCLUDED_URLS", "OTEL_PYTHON_EXCLUDED_URLS")


def install(app: FastAPI) -> bool:
    """Trace ``app``'s requests if this process traces; whether it does."""
    if not enable_tracing(SERVICE):
        return False
    # deferred: loaded only in a process that traces
    from opentelemetry.instrumentation.fastapi import FastAPIInstrumentor

    own_list = any(os.environ.get(name) for name in EXCLUDED_URLS_ENV)
    FastAPIInstrumentor.instrument_app(
        app,
        excluded_urls=None if own_list else EXCLUDED_URLS,
        exclude_spans=["receive", "send"],
    )
    return True


def untraced() -> contextvars.Context:
    """A copy of the current context in which nothing is traced: for a background loop
    started by a request (an event feed polls the workflow several times a second for as
    long as anyone watches), whose calls would otherwise all join that request's trace.
    Its spans have an unsampled parent, so the SDK's default sampler (parent-based) drops
    them, here and on the worker that answers."""
    ctx = contextvars.copy_context()
    if "opentelemetry.trace" not in sys.modules:  # not tracing: nothing to detach from
        return ctx
    from opentelemetry import context as otel_context
    from opentelemetry import trace

    def detach() -> None:
        unsampled = trace.SpanContext(
            trace_id=random.getrandbits(128) or 1,
            span_id=random.getrandbits(64) or 1,
            is_remote=False,
            trace_flags=trace.TraceFlags(trace.TraceFlags.DEFAULT),
        )
        otel_context.attach(trace.set_span_in_context(trace.NonRecordingSpan(unsampled)))

    ctx.run(detach)
    return ctx


__all__ = ["install", "untraced"]

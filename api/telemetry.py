"""The API's requests as spans, when the process traces (``OTEL_*``: see
:mod:`workflows.telemetry`).

Each request is a server span (``POST /api/plans/{plan_id}/execute``), continuing the
trace of a caller that sent ``traceparent``; what the route asks Temporal (start a plan,
a control, a query) is its child, and through Temporal's tracing interceptor the plan's
workflow and steps join the same trace. Health checks, ``/metrics`` and static files are
not traced (``OTEL_PYTHON_FASTAPI_EXCLUDED_URLS`` replaces that list), nor is each ASGI
message of a response (an event stream would make one per event).
"""

from __future__ import annotations

import os

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


__all__ = ["install"]

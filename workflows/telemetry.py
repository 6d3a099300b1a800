"""Tracing and the worker's metrics: OpenTelemetry for the processes that reach Temporal,
and the Temporal SDK's own metrics for Prometheus.

- **Tracing**, only when the ``OTEL_*`` variables ask for it (:mod:`config.telemetry`):
  :func:`enable_tracing` installs the SDK's tracer provider once per process (an OTLP/HTTP
  exporter, or the console's, batched; service name, resource, sampler and the exporter's
  endpoint, headers and timeout all read by the SDK from the variables), and
  :func:`client_interceptors` gives :func:`workflows.client.connect` Temporal's
  ``TracingInterceptor``: the client's calls (start, signal, update, query) carry the
  caller's trace to the workflow, and a worker built on that client opens a span for the
  run, each activity it starts and each activity it executes. Otherwise this module
  imports nothing of OpenTelemetry, and a client has no interceptor.
- **Worker metrics**: with ``PLANSMITH_WORKER_METRICS_PORT`` the worker's client is made
  on a Temporal :class:`~temporalio.runtime.Runtime` that serves the SDK's metrics
  (pollers, task latencies, slots, activity and workflow outcomes) for Prometheus on
  ``PLANSMITH_WORKER_METRICS_HOST`` (127.0.0.1 by default): :func:`metrics_runtime`.

The API instruments its FastAPI app and the worker its HTTP clients (httpx, the model
SDK's httpx2) when tracing is on: :mod:`api.app`, :mod:`activities.telemetry`.
"""

from __future__ import annotations

import logging
import os
import sys
import threading
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from config import TemporalSettings
from config.telemetry import (
    EXPORTERS,
    trace_exporters,
    tracer_provider_installed,
    tracing_configured,
)

if TYPE_CHECKING:  # Temporal's runtime is loaded only by a worker that serves metrics
    from temporalio.runtime import Runtime

log = logging.getLogger("plansmith.telemetry")

DEFAULT_SERVICE = "plansmith"


def enable_tracing(service: str = DEFAULT_SERVICE, environ: Mapping[str, str] = os.environ) -> bool:
    """Whether this process traces. The first call that finds tracing configured installs
    the SDK's tracer provider (``service`` is its ``service.name`` unless
    ``OTEL_SERVICE_NAME`` or ``OTEL_RESOURCE_ATTRIBUTES`` names one); a provider already
    installed (by an earlier call, or by the program itself) is kept."""
    if tracer_provider_installed():
        return True
    if not tracing_configured(environ):
        return False
    _install_provider(service, environ)
    return True


def _install_provider(service: str, environ: Mapping[str, str]) -> None:
    # deferred: OpenTelemetry's SDK loads only in a process asked to trace
    from opentelemetry import trace
    from opentelemetry.sdk.resources import SERVICE_NAME, Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import (
        BatchSpanProcessor,
        ConsoleSpanExporter,
        SpanExporter,
    )

    resource = Resource.create()
    if str(resource.attributes.get(SERVICE_NAME, "")).startswith("unknown_service"):
        resource = resource.merge(Resource({SERVICE_NAME: service}))
    provider = TracerProvider(resource=resource)
    names = trace_exporters(environ)
    for name in names:
        exporter: SpanExporter
        if name == "otlp":
            protocol = environ.get(
                "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL", environ.get("OTEL_EXPORTER_OTLP_PROTOCOL", "")
            ).strip()
            if protocol and protocol != "http/protobuf":
                log.warning(
                    "OTEL_EXPORTER_OTLP_PROTOCOL=%s: only http/protobuf is shipped, spans are "
                    "sent with it",
                    protocol,
                )
            from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

            exporter = OTLPSpanExporter()  # endpoint, headers, timeout: OTEL_EXPORTER_OTLP_*
        elif name == "console":  # stderr: the CLI's stdout is its answer (--json...)
            exporter = ConsoleSpanExporter(out=sys.stderr)
        else:
            log.warning(
                "OTEL_TRACES_EXPORTER names %r, which Plansmith does not ship (it has %s); ignored",
                name,
                ", ".join(EXPORTERS),
            )
            continue
        provider.add_span_processor(BatchSpanProcessor(exporter))
    trace.set_tracer_provider(provider)  # flushed and shut down at exit by the SDK
    log.info(
        "tracing as %s to %s",
        resource.attributes.get(SERVICE_NAME),
        ", ".join(n for n in names if n in EXPORTERS) or "nothing",
    )


def shutdown_tracing(timeout_s: float = 3.0) -> bool:
    """Send the spans still batched and stop the provider, waiting at most ``timeout_s``
    (a receiver that does not answer would hold the exit through the exporter's retries).
    For a process that ends with ``os._exit``, as the CLI does, which skips the SDK's own
    flush at exit. Whether it finished in time."""
    if not tracer_provider_installed():
        return True
    from opentelemetry import trace

    provider = trace.get_tracer_provider()

    def flush_and_stop() -> None:
        flush = getattr(provider, "force_flush", None)
        if flush is not None:
            flush(int(timeout_s * 1000))
        shutdown = getattr(provider, "shutdown", None)
        if shutdown is not None:
            shutdown()

    stopping = threading.Thread(target=flush_and_stop, name="tracing-shutdown", daemon=True)
    stopping.start()
    stopping.join(timeout_s)
    return not stopping.is_alive()


def client_interceptors(service: str = DEFAULT_SERVICE) -> list[Any]:
    """The interceptors of a Temporal client of this process: Temporal's
    ``TracingInterceptor`` when it traces (:func:`enable_tracing`), else none."""
    if not enable_tracing(service):
        return []
    # deferred: loaded only when tracing
    from temporalio.contrib.opentelemetry import TracingInterceptor

    return [TracingInterceptor()]


class MetricsUnavailable(RuntimeError):
    """The worker's metrics endpoint cannot be served where the settings say."""


def metrics_runtime(settings: TemporalSettings) -> Runtime | None:
    """A Temporal runtime that serves the SDK's metrics for Prometheus at
    ``PLANSMITH_WORKER_METRICS_HOST:PLANSMITH_WORKER_METRICS_PORT`` (bound now), or None
    when no port is set (the default runtime, no metrics endpoint).

    Raises:
        MetricsUnavailable: the address cannot be bound (taken, or not one of this
            machine's); the message names the variables.
    """
    address = settings.worker_metrics_address
    if address is None:
        return None
    from temporalio.runtime import PrometheusConfig, Runtime, TelemetryConfig

    try:
        return Runtime(telemetry=TelemetryConfig(metrics=PrometheusConfig(bind_address=address)))
    except Exception as e:  # the SDK's core: "Failed initializing telemetry: ..."
        raise MetricsUnavailable(
            f"cannot serve the worker's metrics on {address} "
            f"(PLANSMITH_WORKER_METRICS_HOST, PLANSMITH_WORKER_METRICS_PORT): {e}"
        ) from None


__all__ = [
    "MetricsUnavailable",
    "client_interceptors",
    "enable_tracing",
    "metrics_runtime",
    "shutdown_tracing",
]

"""Tracing into memory for a test: a tracer provider of the process's own (as a program
that embeds Plansmith may install), the worker's HTTP clients instrumented, and all of
it undone afterwards so the tests after run untraced, as they were written."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.util._once import Once

from activities.telemetry import instrument_http_clients, uninstrument_http_clients
from config import Settings, get_settings


def reset_tracing() -> None:
    """Forget the process's tracer provider, as OpenTelemetry's own test utilities do."""
    trace._TRACER_PROVIDER_SET_ONCE = Once()  # type: ignore[attr-defined]
    trace._TRACER_PROVIDER = None  # type: ignore[attr-defined]


@contextlib.contextmanager
def traced_in_memory(settings: Settings | None = None) -> Iterator[InMemorySpanExporter]:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    trace.set_tracer_provider(provider)
    instrument_http_clients(settings or get_settings())
    try:
        yield exporter
    finally:
        uninstrument_http_clients()
        provider.shutdown()
        reset_tracing()

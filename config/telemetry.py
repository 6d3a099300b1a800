"""Whether a process traces: read from the standard ``OTEL_*`` variables, and from
whether OpenTelemetry is already loaded with a tracer provider of its own.

Plansmith declares none of these variables (:mod:`config.settings` holds only its own);
the OpenTelemetry SDK reads them (service name, exporter endpoint, headers, sampler,
batching...). This module only decides, without importing OpenTelemetry, whether tracing
is on at all, so Plansmith's code loads none of it in a process not asked to trace
(:mod:`workflows.telemetry` installs the SDK when it is asked).

Tracing is on when

- ``OTEL_EXPORTER_OTLP_ENDPOINT`` or ``OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`` is set (spans
  go to that OTLP/HTTP receiver), or ``OTEL_TRACES_EXPORTER`` names an exporter
  (``otlp``, ``console``);
- and neither ``OTEL_SDK_DISABLED=true`` nor ``OTEL_TRACES_EXPORTER=none`` says otherwise.

A program that installed a tracer provider itself before Plansmith's code ran (a test,
``opentelemetry-instrument``) is traced to that provider:
:func:`tracer_provider_installed`.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Mapping

OTLP_ENDPOINTS = ("OTEL_EXPORTER_OTLP_ENDPOINT", "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")
EXPORTERS = ("otlp", "console")


def _set(environ: Mapping[str, str], name: str) -> str:
    return environ.get(name, "").strip()


def sdk_disabled(environ: Mapping[str, str] = os.environ) -> bool:
    """``OTEL_SDK_DISABLED=true`` (case-insensitive): no SDK, whatever else is set."""
    return _set(environ, "OTEL_SDK_DISABLED").lower() == "true"


def trace_exporters(environ: Mapping[str, str] = os.environ) -> list[str]:
    """The span exporters the variables ask for, in order: ``OTEL_TRACES_EXPORTER``
    (comma-separated; ``none`` drops every other), else ``otlp`` when an OTLP endpoint
    is set, else none. Names Plansmith does not ship stay in the list (the caller warns)."""
    if sdk_disabled(environ):
        return []
    named = [n.strip().lower() for n in _set(environ, "OTEL_TRACES_EXPORTER").split(",")]
    named = [n for n in named if n]
    if "none" in named:
        return []
    if named:
        return list(dict.fromkeys(named))
    if any(_set(environ, name) for name in OTLP_ENDPOINTS):
        return ["otlp"]
    return []


def tracing_configured(environ: Mapping[str, str] = os.environ) -> bool:
    """Whether the ``OTEL_*`` variables ask this process to export spans."""
    return bool(trace_exporters(environ))


def tracer_provider_installed() -> bool:
    """Whether OpenTelemetry is loaded with a tracer provider (the SDK's, or any but the
    API's default stand-in). Imports nothing: a process that never loaded OpenTelemetry
    has none."""
    trace = sys.modules.get("opentelemetry.trace")
    if trace is None:
        return False
    provider = trace.get_tracer_provider()
    return not isinstance(provider, (trace.ProxyTracerProvider, trace.NoOpTracerProvider))


__all__ = [
    "EXPORTERS",
    "OTLP_ENDPOINTS",
    "sdk_disabled",
    "trace_exporters",
    "tracer_provider_installed",
    "tracing_configured",
]

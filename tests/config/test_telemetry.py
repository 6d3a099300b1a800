"""Which ``OTEL_*`` variables turn tracing on, and which keep it off."""

from __future__ import annotations

import pytest

from config.telemetry import trace_exporters, tracing_configured


@pytest.mark.parametrize(
    ("environ", "exporters"),
    [
        ({}, []),
        ({"OTEL_SERVICE_NAME": "plansmith"}, []),  # a name alone exports nothing
        ({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:4318"}, ["otlp"]),
        ({"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "http://127.0.0.1:4318/v1/traces"}, ["otlp"]),
        ({"OTEL_EXPORTER_OTLP_ENDPOINT": "  "}, []),
        ({"OTEL_TRACES_EXPORTER": "console"}, ["console"]),
        ({"OTEL_TRACES_EXPORTER": "OTLP, console,otlp"}, ["otlp", "console"]),
        (
            {
                "OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:4318",
                "OTEL_TRACES_EXPORTER": "none",
            },
            [],
        ),
        (
            {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:4318", "OTEL_SDK_DISABLED": "TRUE"},
            [],
        ),
        (
            {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:4318", "OTEL_SDK_DISABLED": "false"},
            ["otlp"],
        ),
        ({"OTEL_TRACES_EXPORTER": "zipkin"}, ["zipkin"]),  # named: the SDK set-up warns
    ],
)
def test_the_variables_decide_whether_and_where_spans_go(
    environ: dict[str, str], exporters: list[str]
) -> None:
    assert trace_exporters(environ) == exporters
    assert tracing_configured(environ) == bool(exporters)

"""The ``http_request`` tool's calls as spans, when the worker traces: the guard's pinned
connection is a client span that shows the URL the step asked for (the name, not the
checked address it connected to, which is ``network.peer.address``), with the worker's
secret values and URL credentials redacted, and the trace context goes along to the
host. A local server and a resolver of the test's own: nothing leaves the machine."""

from __future__ import annotations

import ipaddress
from collections.abc import Iterator, Sequence

import pytest
from opentelemetry import trace
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind

from activities.http_guard import GuardedTransport, exchange
from config import get_settings
from config.http import IPAddress, UrlPolicy
from tests.echo_server import EchoServer
from tests.tracing_helpers import traced_in_memory

SECRET = "s3cr3t-value-for-tracing"


@pytest.fixture
def spans(monkeypatch: pytest.MonkeyPatch) -> Iterator[InMemorySpanExporter]:
    monkeypatch.setenv("PLANSMITH_SECRET_TRACE_DEMO", SECRET)  # a secret this worker has
    with traced_in_memory(get_settings()) as exporter:
        yield exporter


async def to_loopback(host: str, port: int) -> Sequence[IPAddress]:
    return [ipaddress.ip_address("127.0.0.1")]


async def test_a_pinned_request_is_a_span_of_the_name_asked_with_secrets_redacted(
    spans: InMemorySpanExporter,
) -> None:
    with EchoServer() as server:
        url = f"http://api.plans.test:{server.server.server_address[1]}/v1/items"
        tracer = trace.get_tracer("test")
        with tracer.start_as_current_span("step") as step:
            got = await exchange(
                "GET",
                f"{url}?q={SECRET}&access_token=tok123&page=2",
                headers={},
                query=None,
                body={},
                timeout_s=10,
                max_redirects=0,
                max_response_bytes=100_000,
                transport=GuardedTransport(UrlPolicy(), resolve=to_loopback),
            )
        assert got.status == 200
    [call] = [s for s in spans.get_finished_spans() if s.kind == SpanKind.CLIENT]
    attrs = dict(call.attributes or {})
    shown = attrs.get("url.full") or attrs.get("http.url")
    assert shown == f"{url}?q=***&access_token=***&page=2"
    assert attrs["network.peer.address"] == "127.0.0.1"
    assert call.parent is not None and call.parent.span_id == step.get_span_context().span_id
    assert SECRET not in repr(attrs) and "tok123" not in repr(attrs)
    [asked] = server.requests
    headers = {k.lower(): v for k, v in asked["headers"].items()}
    assert headers["traceparent"].split("-")[1] == f"{call.context.trace_id:032x}"  # type: ignore[union-attr]
    assert headers["host"] == f"api.plans.test:{server.server.server_address[1]}"

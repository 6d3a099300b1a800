"""A model call, when the worker traces: a ``chat <model>`` span with the GenAI
attributes, and under it the HTTP request the Anthropic SDK sends (its ``httpx2`` client
instrumented like the worker's). The "API" is a local server: the test's transport sends
every request there, whatever host the SDK names, so nothing leaves the machine."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import httpx2
import pytest
from opentelemetry.trace import SpanKind

from activities.llm.anthropic_model import AnthropicModel
from activities.llm.base import LLMRequest
from activities.telemetry import TracedModel, traced_model
from tests.tracing_helpers import traced_in_memory

KEY = "sk-ant-test-tracing-0123456789"


@pytest.fixture
def messages_api() -> Iterator[tuple[int, list[str]]]:
    """A Messages API on 127.0.0.1 answering every POST with one text message."""
    paths: list[str] = []

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            self.rfile.read(int(self.headers.get("Content-Length") or 0))
            paths.append(self.path)
            body = json.dumps(
                {
                    "id": "msg_01",
                    "type": "message",
                    "role": "assistant",
                    "model": "claude-sonnet-5-5-20260101",
                    "content": [{"type": "text", "text": "twelve"}],
                    "stop_reason": "end_turn",
                    "stop_sequence": None,
                    "usage": {"input_tokens": 11, "output_tokens": 3},
                }
            ).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: Any) -> None:
            pass

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    yield httpd.server_address[1], paths
    httpd.shutdown()
    httpd.server_close()


class ToLocal(httpx2.AsyncHTTPTransport):
    """A real transport (the instrumented class) that sends every request to ``port``."""

    def __init__(self, port: int) -> None:
        super().__init__()
        self.port = port

    async def handle_async_request(self, request: httpx2.Request) -> httpx2.Response:
        request.url = request.url.copy_with(scheme="http", host="127.0.0.1", port=self.port)
        return await super().handle_async_request(request)


async def test_a_model_call_is_a_chat_span_over_its_http_request(
    messages_api: tuple[int, list[str]],
) -> None:
    port, paths = messages_api
    with traced_in_memory() as spans:
        async with httpx2.AsyncClient(transport=ToLocal(port)) as http:
            model = traced_model(AnthropicModel(KEY, timeout_s=10, http_client=http))
            assert isinstance(model, TracedModel)
            answer = await model.complete(
                LLMRequest(
                    model="claude-sonnet-5-5",
                    messages=[{"role": "user", "content": "7 + 5?"}],
                    max_tokens=50,
                )
            )
    assert answer.text == "twelve"
    assert paths == ["/v1/messages"]
    finished = spans.get_finished_spans()
    [chat] = [s for s in finished if s.name == "chat claude-sonnet-5-5"]
    [call] = [s for s in finished if s.name == "POST"]
    assert chat.kind == call.kind == SpanKind.CLIENT
    # the request is under the chat span (the SDK's own anthropic.messages.create between)
    by_id = {s.context.span_id: s for s in finished if s.context}
    chain, span = [], call
    while span.parent is not None:
        span = by_id[span.parent.span_id]
        chain.append(span.name)
    assert chain[-1] == chat.name, chain
    attrs = dict(chat.attributes or {})
    assert attrs["gen_ai.request.model"] == "claude-sonnet-5-5"
    assert attrs["gen_ai.response.model"] == "claude-sonnet-5-5-20260101"
    assert (attrs["gen_ai.usage.input_tokens"], attrs["gen_ai.usage.output_tokens"]) == (11, 3)
    assert attrs["gen_ai.response.finish_reasons"] == ("end_turn",)
    assert KEY not in repr([dict(s.attributes or {}) for s in finished])


def test_without_tracing_the_model_is_not_wrapped() -> None:
    model = AnthropicModel(KEY, timeout_s=10)
    assert traced_model(model) is model

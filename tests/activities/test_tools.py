"""The built-in tools (http_request, wait, transform), the tool registry, and the
execute_step activity, exercised the way a plan author would notice them.

http_request only ever talks to a server this module starts on 127.0.0.1.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import socket
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
from temporalio.exceptions import ApplicationError
from temporalio.testing import ActivityEnvironment

from activities.steps import StepActivities
from activities.tools import ToolContext, ToolError, get_tool, tool
from contracts.steps import StepOutcome, StepTask
from contracts.tools import catalog
from plans.models import StepKind, ToolSpec
from tests.helpers import activity_deps

# --- a local HTTP server -------------------------------------------------------------


@dataclasses.dataclass
class Seen:
    method: str
    path: str
    headers: dict[str, str]
    body: bytes


class LocalServer:
    """A threaded HTTP server on 127.0.0.1 that records every request it gets.

    Routes: ``/json`` (200, JSON), ``/text`` (200, plain text), ``/status/<code>``
    (that status, JSON error body), ``/echo`` (200, echoes method, query and body).
    """

    def __init__(self) -> None:
        self.requests: list[Seen] = []
        self._lock = threading.Lock()
        outer = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: Any) -> None:
                pass

            def _handle(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else b""
                seen = Seen(self.command, self.path, dict(self.headers.items()), body)
                with outer._lock:
                    outer.requests.append(seen)
                path, _, query = self.path.partition("?")
                if path == "/json":
                    self._send(200, {"ok": True, "items": [1, 2, 3]})
                elif path == "/text":
                    self._send_raw(200, b"plain words", "text/plain")
                elif path.startswith("/status/"):
                    code = int(path.rsplit("/", 1)[1])
                    self._send(code, {"error": f"status {code}"})
                elif path == "/echo":
                    self._send(
                        200,
                        {
                            "method": self.command,
                            "query": query,
                            "content_type": self.headers.get("Content-Type"),
                            "body": body.decode(),
                        },
                    )
                else:
                    self._send(404, {"error": "no such route"})

            def _send(self, code: int, payload: Any) -> None:
                self._send_raw(code, json.dumps(payload).encode(), "application/json")

            def _send_raw(self, code: int, data: bytes, ctype: str) -> None:
                self.send_response(code)
                self.send_header("Content-Type", ctype)
                self.send_header("Content-Length", str(len(data)))
                self.send_header("X-Test-Server", "yes")
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(data)

            do_GET = _handle
            do_POST = _handle
            do_PUT = _handle
            do_PATCH = _handle
            do_DELETE = _handle
            do_HEAD = _handle

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.port = self.httpd.server_address[1]
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def last(self) -> Seen:
        with self._lock:
            return self.requests[-1]


@pytest.fixture(scope="module")
def server() -> Iterator[LocalServer]:
    srv = LocalServer()
    srv.thread.start()
    try:
        yield srv
    finally:
        srv.httpd.shutdown()
        srv.httpd.server_close()
        srv.thread.join(timeout=5)


@pytest.fixture
def refused_port() -> Iterator[int]:
    """A port on 127.0.0.1 that is bound but not listening: connecting is refused."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    try:
        yield sock.getsockname()[1]
    finally:
        sock.close()


def ctx(key: str = "plan-1:step-a:v1", **kw: Any) -> ToolContext:
    return ToolContext(plan_id="plan-1", step_id="step-a", idempotency_key=key, **kw)


async def http(params: dict[str, Any], context: ToolContext | None = None) -> Any:
    return await get_tool("http_request").fn(params, context or ctx())


# --- http_request --------------------------------------------------------------------


async def test_http_2xx_returns_status_headers_and_parsed_json(server: LocalServer) -> None:
    result = await http({"url": server.url("/json")})
    assert set(result) == {"status", "headers", "body"}
    assert result["status"] == 200
    assert result["body"] == {"ok": True, "items": [1, 2, 3]}
    assert result["headers"]["x-test-server"] == "yes"
    assert result["headers"]["content-type"] == "application/json"
    assert server.last().method == "GET"
    assert server.last().path == "/json"


async def test_http_non_json_body_is_text(server: LocalServer) -> None:
    result = await http({"url": server.url("/text")})
    assert result["status"] == 200
    assert result["body"] == "plain words"


async def test_http_sends_the_same_idempotency_key_on_every_call(server: LocalServer) -> None:
    context = ctx(key="plan-7:deploy:v3")
    await http({"url": server.url("/json")}, context)
    first = server.last().headers
    await http({"url": server.url("/json")}, context)
    second = server.last().headers
    assert first["Idempotency-Key"] == "plan-7:deploy:v3"
    assert second["Idempotency-Key"] == first["Idempotency-Key"]


async def test_http_sends_query_and_custom_headers(server: LocalServer) -> None:
    result = await http(
        {"url": server.url("/echo"), "query": {"q": "x y", "n": 2}, "headers": {"X-Trace": "t1"}}
    )
    assert result["body"]["query"] in ("q=x+y&n=2", "q=x%20y&n=2")
    assert server.last().headers["X-Trace"] == "t1"
    assert server.last().headers["Idempotency-Key"] == "plan-1:step-a:v1"


async def test_http_post_json_arrives_at_the_server(server: LocalServer) -> None:
    payload = {"name": "widget", "tags": ["a", "b"], "n": 3}
    result = await http({"url": server.url("/echo"), "method": "POST", "json": payload})
    seen = server.last()
    assert seen.method == "POST"
    assert json.loads(seen.body) == payload
    assert seen.headers["Content-Type"] == "application/json"
    assert result["body"]["method"] == "POST"
    assert json.loads(result["body"]["body"]) == payload


async def test_http_put_raw_body_arrives_at_the_server(server: LocalServer) -> None:
    await http({"url": server.url("/echo"), "method": "PUT", "body": "raw text"})
    assert server.last().method == "PUT"
    assert server.last().body == b"raw text"


@pytest.mark.parametrize(
    ("code", "request_params"), [(404, {}), (400, {"method": "POST", "json": {}})]
)
async def test_http_4xx_is_a_non_retryable_client_error(
    server: LocalServer, code: int, request_params: dict[str, Any]
) -> None:
    with pytest.raises(ToolError) as info:
        await http({"url": server.url(f"/status/{code}"), **request_params})
    assert info.value.retryable is False
    assert info.value.kind == "HttpClientError"
    assert str(code) in str(info.value)


@pytest.mark.parametrize("code", [429, 500, 503])
async def test_http_429_and_5xx_are_retryable(server: LocalServer, code: int) -> None:
    with pytest.raises(ToolError) as info:
        await http({"url": server.url(f"/status/{code}")})
    assert info.value.retryable is True
    assert info.value.kind == "HttpServerError"
    assert str(code) in str(info.value)


async def test_http_expect_status_lets_a_404_succeed(server: LocalServer) -> None:
    result = await http({"url": server.url("/status/404"), "expect_status": [404]})
    assert result["status"] == 404
    assert result["body"] == {"error": "status 404"}


async def test_http_expect_status_does_not_cover_other_codes(server: LocalServer) -> None:
    with pytest.raises(ToolError) as info:
        await http({"url": server.url("/status/503"), "expect_status": [404]})
    assert info.value.retryable is True


async def test_http_connection_refused_is_retryable(refused_port: int) -> None:
    with pytest.raises(ToolError) as info:
        await http({"url": f"http://127.0.0.1:{refused_port}/x", "timeout_s": 5})
    assert info.value.retryable is True
    assert info.value.kind == "ConnectionError"


@pytest.mark.parametrize(
    "url",
    [
        "not a url",
        "ftp://127.0.0.1/file",
        "http://127.0.0.1:notaport/",
        "http://[::1",
        "http://127.0.0.1:99999/",
    ],
)
async def test_http_invalid_url_is_not_retryable(url: str) -> None:
    with pytest.raises(ToolError) as info:
        await http({"url": url})
    assert info.value.retryable is False
    assert info.value.kind == "BadRequest"


# --- wait ----------------------------------------------------------------------------


async def test_wait_returns_waited_seconds_and_result_and_heartbeats() -> None:
    beats: list[tuple[Any, ...]] = []
    start = time.monotonic()
    out = await get_tool("wait").fn(
        {"seconds": 1.2, "result": {"done": 1}}, ctx(heartbeat=lambda *a: beats.append(a))
    )
    elapsed = time.monotonic() - start
    assert out["result"] == {"done": 1}
    assert 1.2 <= out["waited_s"] <= elapsed + 0.01
    assert elapsed < 3
    assert len(beats) >= 1
    assert all("waited_s" in b[0] for b in beats)
    assert beats[-1][0]["waited_s"] >= 1.0


async def test_wait_zero_returns_at_once() -> None:
    out = await get_tool("wait").fn({"seconds": 0}, ctx())
    assert out == {"waited_s": 0.0, "result": None}


async def test_wait_is_cancelled_promptly() -> None:
    task = asyncio.create_task(get_tool("wait").fn({"seconds": 30}, ctx()))
    await asyncio.sleep(0.2)
    start = time.monotonic()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await asyncio.wait_for(task, timeout=5)
    assert time.monotonic() - start < 1.0
    assert task.cancelled()


# --- transform -----------------------------------------------------------------------

DATA = {"items": [{"name": "a", "n": 1}, {"name": "b", "n": 2}, {"name": "c", "n": 3}]}


async def transform(params: dict[str, Any]) -> Any:
    return await get_tool("transform").fn(params, ctx())


async def test_transform_expression() -> None:
    assert await transform({"data": DATA, "expression": "items[?n > `1`].name"}) == ["b", "c"]


async def test_transform_fields_mapping() -> None:
    out = await transform(
        {"data": DATA, "fields": {"names": "items[].name", "total": "sum(items[].n)", "x": "nope"}}
    )
    assert out == {"names": ["a", "b", "c"], "total": 6, "x": None}


@pytest.mark.parametrize(
    "params",
    [
        {"data": DATA, "expression": "items[?"},
        {"data": DATA, "fields": {"ok": "items", "bad": "items[?n >"}},
        {"data": DATA, "expression": "sum(items)"},  # a type error at run time
    ],
)
async def test_transform_bad_expression_is_not_retryable(params: dict[str, Any]) -> None:
    with pytest.raises(ToolError) as info:
        await transform(params)
    assert info.value.retryable is False
    assert info.value.kind == "BadExpression"


# --- registry ------------------------------------------------------------------------


def test_catalog_is_sorted_and_describes_the_builtins() -> None:
    cat = catalog()
    assert list(cat) == sorted(cat)
    assert {"http_request", "wait", "transform"} <= set(cat)
    for name, spec in cat.items():
        assert isinstance(spec, ToolSpec)
        assert spec.name == name
    expected = {"http_request": ("medium", ["url"]), "wait": ("low", ["seconds"])}
    expected["transform"] = ("low", ["data"])
    for name, (risk, required) in expected.items():
        spec = cat[name]
        assert spec.risk == risk
        assert spec.idempotent is True
        assert spec.description
        assert spec.params_schema["type"] == "object"
        assert spec.params_schema["additionalProperties"] is False
        assert spec.params_schema["required"] == required
    assert "expect_status" in cat["http_request"].params_schema["properties"]
    assert cat["http_request"].params_schema["properties"]["method"]["enum"][:2] == ["GET", "POST"]


def test_registering_a_name_twice_with_another_function_raises() -> None:
    original = get_tool("wait")

    async def impostor(params: dict[str, Any], c: ToolContext) -> Any:
        return None

    with pytest.raises(ValueError, match="registered twice"):
        tool(name="wait", description="not the real wait", params_schema={})(impostor)
    assert get_tool("wait") is original
    assert catalog()["wait"] is original.spec


def test_unknown_tool_lookup_is_a_non_retryable_error() -> None:
    with pytest.raises(ToolError) as info:
        get_tool("no-such-tool")
    assert info.value.retryable is False
    assert info.value.kind == "UnknownTool"


# --- execute_step through ActivityEnvironment ---------------------------------------


def task(**kw: Any) -> StepTask:
    base: dict[str, Any] = {
        "plan_id": "plan-1",
        "step_id": "step-a",
        "kind": StepKind.TOOL,
        "idempotency_key": "plan-1:step-a:v1",
    }
    return StepTask(**{**base, **kw})


async def execute_step(t: StepTask) -> StepOutcome:
    """The worker's ``execute_step``, with the tests' settings and store."""
    return await StepActivities(activity_deps()).execute_step(t)


def activity_env(attempt: int = 1) -> tuple[ActivityEnvironment, list[tuple[Any, ...]]]:
    env = ActivityEnvironment()
    env.info = dataclasses.replace(env.info, attempt=attempt)
    beats: list[tuple[Any, ...]] = []
    env.on_heartbeat = lambda *a: beats.append(a)
    return env, beats


async def run_step(t: StepTask, attempt: int = 1) -> StepOutcome:
    env, _ = activity_env(attempt)
    return await env.run(execute_step, t)


async def step_error(t: StepTask, attempt: int = 1) -> ApplicationError:
    with pytest.raises(ApplicationError) as info:
        await run_step(t, attempt)
    return info.value


async def test_execute_step_runs_a_tool_and_returns_its_outcome() -> None:
    t = task(tool="transform", params={"data": DATA, "expression": "items[0].name"})
    out = await run_step(t, attempt=3)
    assert isinstance(out, StepOutcome)
    assert out.output == "a"
    assert out.attempt == 3


async def test_execute_step_http_sends_the_step_idempotency_key(server: LocalServer) -> None:
    t = task(tool="http_request", params={"url": server.url("/json")}, idempotency_key="k-42")
    out = await run_step(t)
    assert out.output["status"] == 200
    assert out.output["body"]["ok"] is True
    assert server.last().headers["Idempotency-Key"] == "k-42"


async def test_execute_step_tool_errors_keep_retryability_kind_and_attempt(
    server: LocalServer,
) -> None:
    err = await step_error(task(tool="http_request", params={"url": server.url("/status/503")}), 2)
    assert err.type == "HttpServerError"
    assert err.non_retryable is False
    assert err.details == ({"attempt": 2},)

    err = await step_error(task(tool="http_request", params={"url": server.url("/status/404")}))
    assert err.type == "HttpClientError"
    assert err.non_retryable is True


@pytest.mark.parametrize(
    ("tool_name", "params", "where"),
    [
        ("wait", {"seconds": "five"}, "params.seconds"),
        ("wait", {"seconds": -1}, "params.seconds"),
        ("wait", {}, "seconds"),
        ("wait", {"seconds": 1, "sconds": 2}, "sconds"),
        ("http_request", {"url": "http://127.0.0.1:1/", "method": "FETCH"}, "params.method"),
        ("transform", {"data": {}, "expression": "a", "fields": {"b": "b"}}, "params"),
        # a literal "{{" left in a rendered value is still a wrong type
        ("wait", {"seconds": "{{ not rendered"}, "params.seconds"),
    ],
)
async def test_execute_step_rejects_params_failing_the_schema(
    tool_name: str, params: dict[str, Any], where: str
) -> None:
    err = await step_error(task(tool=tool_name, params=params))
    assert err.type == "InvalidParams"
    assert err.non_retryable is True
    assert tool_name in err.message
    assert where in err.message


async def test_execute_step_unknown_tool_is_non_retryable() -> None:
    err = await step_error(task(tool="no-such-tool", params={}))
    assert err.non_retryable is True
    assert err.type == "UnknownTool"
    assert "no-such-tool" in err.message


def validation_task(checks: list[dict[str, Any]]) -> StepTask:
    context = {
        "inputs": {"min_items": 2, "env": "prod"},
        "steps": {"fetch": {"status": "completed", "output": {"items": [1, 2, 3], "ok": True}}},
    }
    return task(kind=StepKind.VALIDATION, params={"checks": checks}, context=context)


async def test_validation_step_that_passes() -> None:
    out = await run_step(
        validation_task(
            [
                {"name": "enough", "expr": "len(steps.fetch.output['items']) >= inputs.min_items"},
                {"name": "ok", "expr": "steps.fetch.output.ok == true"},
            ]
        )
    )
    assert out.output["passed"] is True
    assert [c["name"] for c in out.output["checks"]] == ["enough", "ok"]
    assert all(c["passed"] for c in out.output["checks"])


async def test_validation_step_names_every_failing_check() -> None:
    err = await step_error(
        validation_task(
            [
                {"name": "is-ok", "expr": "steps.fetch.output.ok"},
                {"name": "too-many", "expr": "len(steps.fetch.output['items']) > 10"},
                {"name": "is-staging", "expr": "inputs.env == 'staging'"},
            ]
        )
    )
    assert err.type == "ValidationFailed"
    assert err.non_retryable is True
    assert "2 check(s) failed" in err.message
    assert "too-many" in err.message
    assert "is-staging" in err.message
    assert "is-ok" not in err.message


async def test_validation_check_that_cannot_be_evaluated_fails_with_the_reason() -> None:
    err = await step_error(validation_task([{"name": "missing", "expr": "steps.nope.output"}]))
    assert err.type == "ValidationFailed"
    assert "missing" in err.message
    assert "nope" in err.message


async def test_execute_step_heartbeats_while_a_tool_runs() -> None:
    env, beats = activity_env()
    out = await env.run(execute_step, task(tool="wait", params={"seconds": 1.1}))
    assert out.output["waited_s"] >= 1.1
    assert () in beats  # the background keep-alive
    assert any(b and "waited_s" in b[0] for b in beats)  # the tool's own heartbeats


async def test_execute_step_cancel_stops_a_long_wait_promptly() -> None:
    env, _ = activity_env()
    running = asyncio.create_task(env.run(execute_step, task(tool="wait", params={"seconds": 30})))
    await asyncio.sleep(0.3)
    start = time.monotonic()
    env.cancel()
    with pytest.raises(asyncio.CancelledError):
        await asyncio.wait_for(running, timeout=5)
    assert time.monotonic() - start < 1.0

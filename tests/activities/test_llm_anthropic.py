"""The Anthropic model through the real SDK, against a mocked Messages API.

``anthropic`` 2.x sends with ``httpx2``, which respx does not patch (it patches
``httpx``): a plain ``respx.mock`` would let the SDK's requests reach the real API. So the
model is given an ``httpx2`` client whose transport hands every request to a respx
router and its answer back: the SDK builds, sends and parses for real, and nothing
leaves the process (an unmocked request fails the test).
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from typing import Any

import httpx
import httpx2
import pytest
import pytest_asyncio
import respx

from activities.llm import factory
from activities.llm.anthropic_model import AnthropicModel
from activities.llm.base import LLMRequest, ToolDef
from config import get_settings
from contracts.errors import LLMError
from tests.llm_fakes import RespxTransport

KEY = "sk-ant-test-0123456789abcdef"
API = "https://api.anthropic.com"


@pytest.fixture
def api() -> respx.Router:
    return respx.Router(base_url=API, assert_all_mocked=True)


@pytest_asyncio.fixture
async def model(api: respx.Router) -> AsyncIterator[AnthropicModel]:
    async with httpx2.AsyncClient(transport=RespxTransport(api)) as http:
        yield AnthropicModel(KEY, timeout_s=5, http_client=http)


def message(content: list[dict[str, Any]], **kw: Any) -> dict[str, Any]:
    usage = {"input_tokens": 10, "output_tokens": 5}
    usage.update(kw.pop("usage", {}))
    return {
        "id": "msg_01",
        "type": "message",
        "role": "assistant",
        "model": kw.pop("model", "claude-sonnet-5-5-20260101"),
        "content": content,
        "stop_reason": kw.pop("stop_reason", "end_turn"),
        "stop_sequence": None,
        "usage": usage,
        **kw,
    }


def error(status: int, kind: str, text: str, **headers: str) -> httpx.Response:
    return httpx.Response(
        status,
        json={"type": "error", "error": {"type": kind, "message": text}},
        headers={"request-id": "req_42", **headers},
    )


TOOLS = [
    ToolDef(
        name="search",
        description="search the docs",
        input_schema={"type": "object", "properties": {"q": {"type": "string"}}},
    ),
    ToolDef(
        name="submit_plan",
        description="hand in the plan",
        input_schema={"type": "object", "properties": {"plan": {"type": "object"}}},
    ),
]


def sent(route: respx.Route, i: int = -1) -> dict[str, Any]:
    body: dict[str, Any] = json.loads(route.calls[i].request.content)
    return body


async def test_the_request_has_caching_tools_and_no_temperature_and_tool_use_is_parsed(
    api: respx.Router, model: AnthropicModel
):
    route = api.post("/v1/messages").respond(
        json=message(
            [
                {"type": "text", "text": "Here is the plan."},
                {
                    "type": "tool_use",
                    "id": "toolu_01",
                    "name": "submit_plan",
                    "input": {"plan": {"title": "Release", "steps": []}},
                },
            ],
            stop_reason="tool_use",
            usage={
                "input_tokens": 120,
                "output_tokens": 40,
                "cache_read_input_tokens": 900,
                "cache_creation_input_tokens": 300,
            },
        )
    )
    request = LLMRequest(
        model="claude-sonnet-5-5",
        system="You write plans.",
        messages=[{"role": "user", "content": "release 2.4"}],
        tools=TOOLS,
        tool_choice={"type": "tool", "name": "submit_plan"},
        max_tokens=2000,
    )
    response = await model.complete(request)

    assert route.call_count == 1
    call = route.calls.last.request
    assert call.headers["authorization"] == f"Bearer {KEY}"
    assert call.headers["anthropic-version"] == "2026-10-21"
    body = sent(route)
    assert body["model"] == "claude-sonnet-5-5"
    assert body["max_tokens"] == 2000
    assert body["messages"] == [{"role": "user", "content": "release 2.4"}]
    assert body["system"] == [
        {"type": "text", "text": "You write plans.", "cache_control": {"type": "ephemeral"}}
    ]
    assert [t["name"] for t in body["tools"]] == ["search", "submit_plan"]
    assert "cache_control" not in body["tools"][0]
    assert body["tools"][-1] == {
        "name": "submit_plan",
        "description": "hand in the plan",
        "input_schema": {"type": "object", "properties": {"plan": {"type": "object"}}},
        "cache_control": {"type": "ephemeral"},
    }
    assert body["tool_choice"] == {"type": "tool", "name": "submit_plan"}
    assert "temperature" not in body

    assert response.model == "claude-sonnet-5-5-20260101"
    assert response.offline is False
    assert response.stop_reason == "tool_use"
    assert response.text == "Here is the plan."
    call_ = response.call("submit_plan")
    assert call_ is not None
    assert call_.id == "toolu_01" and call_.input == {"plan": {"title": "Release", "steps": []}}
    assert response.content == [
        {"type": "text", "text": "Here is the plan."},
        {
            "type": "tool_use",
            "id": "toolu_01",
            "name": "submit_plan",
            "input": {"plan": {"title": "Release", "steps": []}},
        },
    ]
    json.dumps(response.content)  # plain data, ready for Temporal and the store
    assert response.usage.input_tokens == 120 and response.usage.output_tokens == 40
    assert response.usage.cache_read_input_tokens == 900
    assert response.usage.cache_creation_input_tokens == 300
    assert response.record()["cache_read_input_tokens"] == 900

    # the answer's content goes back into the conversation as it is, with the result
    follow_up = request.model_copy(
        update={
            "messages": [
                *request.messages,
                {"role": "assistant", "content": response.content},
                {
                    "role": "user",
                    "content": [
                        {"type": "tool_result", "tool_use_id": "toolu_01", "content": "ok"}
                    ],
                },
            ]
        }
    )
    await model.complete(follow_up)
    assert route.call_count == 2
    assert sent(route)["messages"][1] == {"role": "assistant", "content": response.content}
    # the cached prefix (system and tools) is sent unchanged
    assert sent(route, 0)["system"] == sent(route)["system"]
    assert sent(route, 0)["tools"] == sent(route)["tools"]


async def test_a_text_answer_without_caching_leaves_the_temperature_out_and_records_latency(
    api: respx.Router, model: AnthropicModel
):
    async def slow(request: httpx.Request) -> httpx.Response:
        await asyncio.sleep(0.05)
        return httpx.Response(
            200,
            json=message(
                [{"type": "text", "text": "Hello, "}, {"type": "text", "text": "world."}],
                usage={"cache_read_input_tokens": None, "cache_creation_input_tokens": None},
            ),
        )

    route = api.post("/v1/messages").mock(side_effect=slow)
    response = await model.complete(
        LLMRequest(
            model="claude-haiku-5-5",
            system="Be brief.",
            messages=[{"role": "user", "content": "hi"}],
            tools=TOOLS,
            temperature=0.2,
            cache=False,
        )
    )
    body = sent(route)
    assert body["system"] == "Be brief."
    assert all("cache_control" not in t for t in body["tools"])
    # API version 2026-10-21 answers 400 to any temperature: it is never sent
    assert "temperature" not in body and "top_p" not in body
    assert "tool_choice" not in body

    assert response.text == "Hello, world."
    assert response.tool_calls == []
    assert response.stop_reason == "end_turn"
    assert response.usage.model_dump() == {
        "input_tokens": 10,
        "output_tokens": 5,
        "cache_read_input_tokens": 0,
        "cache_creation_input_tokens": 0,
    }
    assert response.latency_ms >= 50
    assert response.record()["latency_ms"] >= 50


async def test_no_system_prompt_and_no_tools_sends_neither(
    api: respx.Router, model: AnthropicModel
):
    route = api.post("/v1/messages").respond(json=message([{"type": "text", "text": "ok"}]))
    await model.complete(
        LLMRequest(model="claude-haiku-5-5", messages=[{"role": "user", "content": "hi"}])
    )
    body = sent(route)
    assert "system" not in body and "tools" not in body and "tool_choice" not in body
    assert body["max_tokens"] == 1024


@pytest.mark.parametrize(
    ("status", "api_type", "retryable", "kind"),
    [
        (429, "rate_limit_error", True, "LLMRateLimited"),
        (529, "overloaded_error", True, "LLMOverloaded"),
        (500, "api_error", True, "LLMServerError"),
        (503, "api_error", True, "LLMServerError"),
        (400, "invalid_request_error", False, "LLMBadRequest"),
        (401, "authentication_error", False, "LLMAuthError"),
        (403, "permission_error", False, "LLMAuthError"),
        (404, "not_found_error", False, "LLMNotFound"),
        (413, "request_too_large", False, "LLMRequestTooLarge"),
        (422, "invalid_request_error", False, "LLMClientError"),
    ],
)
async def test_api_errors_say_whether_temporal_may_retry_after_exactly_one_call(
    api: respx.Router,
    model: AnthropicModel,
    status: int,
    api_type: str,
    retryable: bool,
    kind: str,
):
    route = api.post("/v1/messages").mock(
        return_value=error(
            status, api_type, f"the API says no ({api_type})", **{"retry-after": "7"}
        )
    )
    with pytest.raises(LLMError) as raised:
        await model.complete(
            LLMRequest(model="claude-sonnet-5-5", messages=[{"role": "user", "content": "hi"}])
        )
    e = raised.value
    assert route.call_count == 1  # the SDK does not retry: Temporal does
    assert e.retryable is retryable
    assert e.kind == kind
    assert e.status == status
    text = str(e)
    assert str(status) in text and f"the API says no ({api_type})" in text
    assert "req_42" in text and "retry after 7s" in text
    assert KEY not in text


async def test_the_api_key_never_shows_in_an_error(api: respx.Router, model: AnthropicModel):
    api.post("/v1/messages").mock(
        return_value=error(401, "authentication_error", f"invalid x-api-key: {KEY}")
    )
    with pytest.raises(LLMError) as raised:
        await model.complete(
            LLMRequest(model="claude-sonnet-5-5", messages=[{"role": "user", "content": "hi"}])
        )
    assert KEY not in str(raised.value) and "[redacted]" in str(raised.value)
    assert raised.value.retryable is False and raised.value.kind == "LLMAuthError"


@pytest.mark.parametrize(
    "failure", [httpx.ConnectError("connection refused"), httpx.ReadTimeout("timed out")]
)
async def test_connection_errors_and_timeouts_are_retryable(
    api: respx.Router, model: AnthropicModel, failure: Exception
):
    route = api.post("/v1/messages").mock(side_effect=failure)
    with pytest.raises(LLMError) as raised:
        await model.complete(
            LLMRequest(model="claude-sonnet-5-5", messages=[{"role": "user", "content": "hi"}])
        )
    assert route.call_count == 1
    assert raised.value.retryable is True
    assert raised.value.kind == "LLMConnectionError"
    assert raised.value.status is None
    assert KEY not in str(raised.value)


async def test_from_settings_turns_the_sdk_retries_off_and_shares_one_client():
    settings = get_settings().replace(models={"anthropic_api_key": KEY, "llm_timeout_s": 7.5})
    model = AnthropicModel.from_settings(settings)
    assert model.client.max_retries == 0
    assert model.client.timeout == 7.5
    assert AnthropicModel.from_settings(settings) is model
    assert model.client is model.client  # one connection pool per event loop
    assert KEY not in repr(model)

    # the worker's model is Anthropic when a key is set
    assert isinstance(factory.chat_model_from(settings), AnthropicModel)

    with pytest.raises(ValueError, match="ANTHROPIC_API_KEY"):
        AnthropicModel.from_settings(settings.replace(models={"anthropic_api_key": None}))

"""The Ollama model against a mocked Ollama server (respx): tool calling, the JSON
emulation for models without tools, hostile answers, errors -- and the planner handing
in a plan through it. Every request goes to a respx router (``assert_all_mocked``), so
nothing leaves the process, and each test checks that only the configured URL was asked.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
import pytest_asyncio
import respx

from activities.llm import factory
from activities.llm.anthropic_model import AnthropicModel
from activities.llm.base import LLMRequest, ToolDef
from activities.llm.offline.model import OfflineModel
from activities.llm.ollama_model import OllamaModel
from activities.llm.planner import SUBMIT_PLAN, generate_plan
from config import ConfigError, get_settings, load_settings
from contracts.errors import LLMError
from contracts.planning import PlanRequest
from contracts.tools import catalog
from plans.validation import parse_plan, validate_plan
from tests.activities.test_planner import FIXED
from tests.llm_fakes import ScriptedModel, text

OLLAMA = "http://127.0.0.1:11434"
MODEL = "qwen3:8b"

SEARCH = ToolDef(
    name="search",
    description="search the docs",
    input_schema={
        "type": "object",
        "properties": {"q": {"type": "string"}},
        "required": ["q"],
    },
)
RESPOND = ToolDef(
    name="respond",
    description="the final answer",
    input_schema={
        "type": "object",
        "properties": {
            "answer": {"type": "string"},
            "items": {"type": "array", "items": {"type": "string"}},
        },
        "required": ["answer"],
    },
)


@pytest.fixture
def server() -> respx.Router:
    return respx.Router(base_url=OLLAMA, assert_all_mocked=True)


def http_for(router: respx.Router) -> httpx.AsyncClient:
    return httpx.AsyncClient(transport=httpx.MockTransport(router.async_handler))


@pytest_asyncio.fixture
async def model(server: respx.Router) -> AsyncIterator[OllamaModel]:
    async with http_for(server) as http:
        yield OllamaModel(OLLAMA, timeout_s=5, http_client=http)


def capabilities(server: respx.Router, *caps: str) -> respx.Route:
    return server.post("/api/show").respond(
        json={"capabilities": list(caps), "details": {"family": "qwen3"}}
    )


def chat(content: str = "", calls: list[dict[str, Any]] | None = None, **kw: Any) -> dict:
    message: dict[str, Any] = {"role": "assistant", "content": content}
    if calls is not None:
        message["tool_calls"] = calls
    return {
        "model": kw.pop("model", MODEL),
        "created_at": "2026-12-03T20:00:00Z",
        "message": message,
        "done": True,
        "done_reason": kw.pop("done_reason", "stop"),
        "prompt_eval_count": kw.pop("prompt_eval_count", 50),
        "eval_count": kw.pop("eval_count", 7),
        **kw,
    }


def fn(name: str, arguments: Any) -> dict[str, Any]:
    return {"function": {"name": name, "arguments": arguments}}


def sent(route: respx.Route, i: int = -1) -> dict[str, Any]:
    body: dict[str, Any] = json.loads(route.calls[i].request.content)
    return body


def only_ollama_was_asked(server: respx.Router) -> None:
    assert server.calls, "nothing was asked"
    for call in server.calls:
        assert str(call.request.url).startswith(f"{OLLAMA}/api/"), call.request.url


def forced(tool: ToolDef, prompt: str = "go", **kw: Any) -> LLMRequest:
    return LLMRequest(
        model=MODEL,
        system="You help.",
        messages=[{"role": "user", "content": prompt}],
        tools=[tool],
        tool_choice={"type": "tool", "name": tool.name},
        max_tokens=300,
        **kw,
    )


# --- tool calling ---------------------------------------------------------------------


async def test_a_tool_capable_model_gets_the_tools_and_its_calls_come_back_as_tool_use(
    server: respx.Router, model: OllamaModel
):
    show = capabilities(server, "completion", "tools")
    route = server.post("/api/chat").respond(
        json=chat("Looking it up.", [fn("search", {"q": "release notes"})], eval_count=12)
    )
    request = LLMRequest(
        model=MODEL,
        system="You help.",
        messages=[{"role": "user", "content": "find the notes"}],
        tools=[SEARCH],
        tool_choice={"type": "auto"},
        max_tokens=300,
        temperature=0.2,
    )
    response = await model.complete(request)

    body = sent(route)
    assert body["model"] == MODEL and body["stream"] is False
    assert body["options"] == {"num_predict": 300, "temperature": 0.2}
    assert body["messages"] == [
        {"role": "system", "content": "You help."},
        {"role": "user", "content": "find the notes"},
    ]
    assert body["tools"] == [
        {
            "type": "function",
            "function": {
                "name": "search",
                "description": "search the docs",
                "parameters": SEARCH.input_schema,
            },
        }
    ]
    assert sent(show) == {"model": MODEL}
    assert response.offline is False and response.model == MODEL
    assert response.stop_reason == "tool_use"
    assert response.text == "Looking it up."
    call = response.call("search")
    assert call is not None and call.input == {"q": "release notes"}
    assert response.content[1] == {
        "type": "tool_use",
        "id": call.id,
        "name": "search",
        "input": {"q": "release notes"},
    }
    assert response.usage.input_tokens == 50 and response.usage.output_tokens == 12

    # the conversation goes back with the call and its result in Ollama's shape
    route.respond(json=chat("The notes say 2.4 is out."))
    follow_up = request.model_copy(
        update={
            "messages": [
                *request.messages,
                {"role": "assistant", "content": response.content},
                {
                    "role": "user",
                    "content": [
                        {"type": "tool_result", "tool_use_id": call.id, "content": "2.4 is out"}
                    ],
                },
            ]
        }
    )
    again = await model.complete(follow_up)
    assert again.text == "The notes say 2.4 is out." and again.tool_calls == []
    assert again.stop_reason == "end_turn"
    assert sent(route)["messages"][2:] == [
        {
            "role": "assistant",
            "content": "Looking it up.",
            "tool_calls": [fn("search", {"q": "release notes"})],
        },
        {"role": "tool", "content": "2.4 is out", "tool_name": "search"},
    ]
    assert show.call_count == 1  # what the model can do is asked once
    only_ollama_was_asked(server)


async def test_the_planner_hands_in_a_plan_through_a_tool_capable_ollama_model(
    server: respx.Router, model: OllamaModel
):
    capabilities(server, "completion", "tools")
    route = server.post("/api/chat").respond(json=chat("", [fn(SUBMIT_PLAN, FIXED)]))
    result = await generate_plan(
        PlanRequest(task="release 2.4"),
        model=model,
        model_name=MODEL,
        catalog=catalog(),
        provider="ollama",
    )
    assert result.rounds == 1 and result.offline is False and result.model == MODEL
    assert [s["id"] for s in result.plan["steps"]] == ["fetch", "build", "deploy"]
    assert validate_plan(parse_plan(result.plan), catalog()) == []
    body = sent(route)
    assert [t["function"]["name"] for t in body["tools"]] == [SUBMIT_PLAN]
    assert body["messages"][0]["role"] == "system"
    assert "release 2.4" in body["messages"][1]["content"]
    only_ollama_was_asked(server)


async def test_a_model_that_ignores_a_forced_tool_is_asked_again_for_json(
    server: respx.Router, model: OllamaModel
):
    capabilities(server, "completion", "tools")
    route = server.post("/api/chat")
    route.side_effect = [
        httpx.Response(200, json=chat("Sure! I think the answer is yes.")),
        httpx.Response(200, json=chat('{"answer": "yes"}', eval_count=3)),
    ]
    response = await model.complete(forced(RESPOND))
    assert route.call_count == 2
    first, second = sent(route, 0), sent(route, 1)
    assert "tools" in first and "format" not in first
    assert second["format"] == "json" and "tools" not in second
    assert "respond" in second["messages"][0]["content"]
    assert '"required": ["answer"]' in second["messages"][0]["content"]  # the schema
    call = response.call("respond")
    assert call is not None and call.input == {"answer": "yes"}
    assert response.stop_reason == "tool_use"
    assert response.usage.output_tokens == 7 + 3  # both calls counted


async def test_a_forced_tool_answered_as_json_text_becomes_the_call_without_asking_again(
    server: respx.Router, model: OllamaModel
):
    capabilities(server, "completion", "tools")
    route = server.post("/api/chat").respond(
        json=chat('```json\n{"name": "respond", "arguments": {"answer": "42"}}\n```')
    )
    response = await model.complete(forced(RESPOND))
    assert route.call_count == 1
    call = response.call("respond")
    assert call is not None and call.input == {"answer": "42"}


# --- a model without tool support ---------------------------------------------------------


async def test_a_model_without_tools_answers_a_forced_tool_in_json_mode(
    server: respx.Router, model: OllamaModel
):
    capabilities(server, "completion")
    route = server.post("/api/chat").respond(
        json=chat('Here it is: {"answer": "ok", "items": ["a", "b"]} Hope that helps.')
    )
    response = await model.complete(forced(RESPOND))
    assert route.call_count == 1
    body = sent(route)
    assert "tools" not in body and body["format"] == "json"
    call = response.call("respond")
    assert call is not None and call.input == {"answer": "ok", "items": ["a", "b"]}
    assert response.content == [
        {"type": "tool_use", "id": call.id, "name": "respond", "input": call.input}
    ]


async def test_a_reasoning_models_musings_are_not_taken_for_the_answer(
    server: respx.Router, model: OllamaModel
):
    capabilities(server, "completion", "thinking")
    server.post("/api/chat").respond(
        json=chat('<think>maybe {"answer": "no"}? </think>\n{"answer": "yes"}')
    )
    call = (await model.complete(forced(RESPOND))).call("respond")
    assert call is not None and call.input == {"answer": "yes"}


async def test_a_model_without_tools_calls_an_offered_tool_by_writing_json(
    server: respx.Router, model: OllamaModel
):
    capabilities(server, "completion")
    route = server.post("/api/chat").respond(json=chat('{"tool": "search", "input": {"q": "x"}}'))
    request = LLMRequest(
        model=MODEL,
        messages=[{"role": "user", "content": "look for x"}],
        tools=[SEARCH],
        tool_choice={"type": "auto"},
    )
    response = await model.complete(request)
    call = response.call("search")
    assert call is not None and call.input == {"q": "x"}
    body = sent(route)
    assert "tools" not in body and "format" not in body
    assert "search" in body["messages"][0]["content"] and body["messages"][0]["role"] == "system"

    # the call and its result go back as text the model can read
    route.respond(json=chat("x is in chapter 2"))
    follow = request.model_copy(
        update={
            "messages": [
                *request.messages,
                {"role": "assistant", "content": response.content},
                {
                    "role": "user",
                    "content": [
                        {
                            "type": "tool_result",
                            "tool_use_id": call.id,
                            "content": [{"type": "text", "text": "chapter 2"}],
                            "is_error": False,
                        }
                    ],
                },
            ]
        }
    )
    again = await model.complete(follow)
    assert again.text == "x is in chapter 2" and not again.tool_calls
    assert sent(route)["messages"][2:] == [
        {"role": "assistant", "content": '{"tool": "search", "input": {"q": "x"}}'},
        {"role": "user", "content": "Result of the tool search: chapter 2"},
    ]


async def test_a_server_that_refuses_tools_for_the_model_switches_to_the_emulation(
    server: respx.Router, model: OllamaModel
):
    server.post("/api/show").respond(json={"details": {}})  # an older server: no capabilities
    route = server.post("/api/chat")
    route.side_effect = [
        httpx.Response(
            400, json={"error": f"registry.ollama.ai/library/{MODEL} does not support tools"}
        ),
        httpx.Response(200, json=chat('{"answer": "fine"}')),
    ]
    response = await model.complete(forced(RESPOND))
    assert response.call("respond") is not None
    assert "tools" in sent(route, 0) and sent(route, 1)["format"] == "json"
    assert model.tool_support[MODEL] is False  # remembered: no more tools sent
    route.side_effect = None
    route.respond(json=chat('{"answer": "again"}'))
    await model.complete(forced(RESPOND))
    assert "tools" not in sent(route)


# --- hostile answers ------------------------------------------------------------------------


async def test_tool_arguments_are_parsed_repaired_or_refused(
    server: respx.Router, model: OllamaModel
):
    capabilities(server, "completion", "tools")
    route = server.post("/api/chat")
    route.respond(
        json=chat(
            "",
            [
                fn("search", '{"q": "as a JSON string"}'),  # parsed
                fn("search", {"input": {"q": "wrapped"}}),  # unwrapped
                fn("search", "not json at all"),  # refused
                fn("search", ["a", "list"]),  # refused
                fn("rm_rf", {"path": "/"}),  # not offered: refused
                {"function": "garbage"},  # refused
                "garbage",  # refused
            ],
        )
    )
    request = LLMRequest(
        model=MODEL,
        messages=[{"role": "user", "content": "go"}],
        tools=[SEARCH, RESPOND],
        tool_choice={"type": "auto"},
    )
    response = await model.complete(request)
    assert [(c.name, c.input) for c in response.tool_calls] == [
        ("search", {"q": "as a JSON string"}),
        ("search", {"q": "wrapped"}),
    ]

    # a JSON string where the schema wants a list is parsed; what cannot be fixed is
    # handed over as it is, for the caller to check and send back (as for Anthropic)
    route.respond(json=chat("", [fn("respond", {"answer": "a", "items": '["x", "y"]'})]))
    call = (await model.complete(forced(RESPOND))).call("respond")
    assert call is not None and call.input == {"answer": "a", "items": ["x", "y"]}
    route.respond(json=chat("", [fn("respond", {"answer": 3})]))
    call = (await model.complete(forced(RESPOND))).call("respond")
    assert call is not None and call.input == {"answer": 3}


async def test_a_forced_call_with_unusable_arguments_is_refused_and_asked_again_as_json(
    server: respx.Router, model: OllamaModel
):
    capabilities(server, "completion", "tools")
    route = server.post("/api/chat")
    route.side_effect = [
        httpx.Response(200, json=chat("", [fn("respond", "{broken")])),
        httpx.Response(200, json=chat("no JSON here either")),
    ]
    response = await model.complete(forced(RESPOND))
    assert route.call_count == 2
    assert response.tool_calls == [] and response.text == "no JSON here either"
    assert response.stop_reason == "end_turn"  # the caller sees no call and says so


@pytest.mark.parametrize(
    ("answer", "expected"),
    [
        (httpx.Response(200, text="<html>proxy error</html>"), "not JSON"),
        (httpx.Response(200, json=["a", "list"]), "not a JSON object"),
        (httpx.Response(200, json={"model": MODEL, "done": True}), "no message"),
        (httpx.Response(200, json=chat(calls={"not": "a list"})), "tool_calls is not a list"),  # type: ignore[arg-type]
        (httpx.Response(200, json={"message": {"content": {"x": 1}}}), "content is not text"),
    ],
)
async def test_a_malformed_answer_is_a_retryable_bad_response(
    server: respx.Router, model: OllamaModel, answer: httpx.Response, expected: str
):
    server.post("/api/chat").mock(return_value=answer)
    with pytest.raises(LLMError) as raised:
        await model.complete(LLMRequest(model=MODEL, messages=[{"role": "user", "content": "hi"}]))
    assert raised.value.kind == "LLMBadResponse" and raised.value.retryable
    assert expected in str(raised.value)


async def test_an_oversized_answer_is_not_read(server: respx.Router):
    big = json.dumps(chat("x" * 5000)).encode()
    server.post("/api/chat").respond(200, content=big)
    async with http_for(server) as http:
        small = OllamaModel(OLLAMA, timeout_s=5, http_client=http, max_response_bytes=1000)
        with pytest.raises(LLMError) as raised:
            await small.complete(
                LLMRequest(model=MODEL, messages=[{"role": "user", "content": "hi"}])
            )
    assert raised.value.kind == "LLMResponseTooLarge" and not raised.value.retryable
    assert "1000 bytes" in str(raised.value)


# --- errors --------------------------------------------------------------------------------


async def test_a_model_that_is_not_pulled_is_not_retried_and_says_how_to_get_it(
    server: respx.Router, model: OllamaModel
):
    server.post("/api/chat").respond(
        404, json={"error": f'model "{MODEL}" not found, try pulling it first'}
    )
    server.get("/api/tags").respond(
        json={"models": [{"name": "llama3.1:8b", "size": 1}, {"name": "phi4:latest"}]}
    )
    with pytest.raises(LLMError) as raised:
        await model.complete(LLMRequest(model=MODEL, messages=[{"role": "user", "content": "hi"}]))
    e = raised.value
    assert e.kind == "LLMNotFound" and e.status == 404 and not e.retryable
    assert f"`ollama pull {MODEL}`" in str(e)
    assert f"has no model '{MODEL}'" in str(e)
    assert "it has: llama3.1:8b, phi4:latest" in str(e)

    # /api/show says it first when tools are involved
    server.post("/api/show").respond(404, json={"error": f"model '{MODEL}' not found"})
    with pytest.raises(LLMError, match="ollama pull") as raised:
        await model.complete(forced(RESPOND))
    assert raised.value.kind == "LLMNotFound"
    only_ollama_was_asked(server)


@pytest.mark.parametrize(
    ("status", "kind", "retryable"),
    [
        (500, "LLMServerError", True),
        (503, "LLMServerError", True),
        (429, "LLMRateLimited", True),
        (400, "LLMBadRequest", False),
        (413, "LLMRequestTooLarge", False),
        (418, "LLMClientError", False),
    ],
)
async def test_status_errors_map_onto_the_llm_error_kinds(
    server: respx.Router, model: OllamaModel, status: int, kind: str, retryable: bool
):
    server.post("/api/chat").respond(status, json={"error": "something went wrong " * 100})
    with pytest.raises(LLMError) as raised:
        await model.complete(LLMRequest(model=MODEL, messages=[{"role": "user", "content": "hi"}]))
    assert (raised.value.kind, raised.value.retryable, raised.value.status) == (
        kind,
        retryable,
        status,
    )
    assert f"answered {status}: something went wrong" in str(raised.value)
    assert len(str(raised.value)) < 500  # the server's words are cut short


@pytest.mark.parametrize(
    "failure",
    [httpx.ConnectError("Connection refused"), httpx.ReadTimeout("timed out")],
)
async def test_connection_failures_and_timeouts_are_retryable(
    server: respx.Router, model: OllamaModel, failure: Exception
):
    server.post("/api/chat").mock(side_effect=failure)
    with pytest.raises(LLMError) as raised:
        await model.complete(LLMRequest(model=MODEL, messages=[{"role": "user", "content": "hi"}]))
    assert raised.value.retryable and raised.value.kind == "LLMConnectionError"
    assert OLLAMA in str(raised.value)


async def test_a_server_that_never_finishes_is_cut_off_by_the_timeout(server: respx.Router):
    never = asyncio.Event()

    async def hang(request: httpx.Request) -> httpx.Response:
        await never.wait()
        return httpx.Response(200, json=chat("too late"))

    server.post("/api/chat").mock(side_effect=hang)
    async with http_for(server) as http:
        quick = OllamaModel(OLLAMA, timeout_s=0.2, http_client=http)
        with pytest.raises(LLMError) as raised:
            await quick.complete(
                LLMRequest(model=MODEL, messages=[{"role": "user", "content": "hi"}])
            )
    assert raised.value.retryable and "did not answer /api/chat within 0.2s" in str(raised.value)


async def test_a_redirect_is_not_followed(server: respx.Router, model: OllamaModel):
    server.post("/api/chat").respond(307, headers={"location": "http://127.0.0.2/latest/meta-data"})
    with pytest.raises(LLMError, match="redirects are not followed") as raised:
        await model.complete(LLMRequest(model=MODEL, messages=[{"role": "user", "content": "hi"}]))
    assert not raised.value.retryable
    assert len(server.calls) == 1
    only_ollama_was_asked(server)


async def test_list_models_reads_the_servers_tags(server: respx.Router, model: OllamaModel):
    server.get("/api/tags").respond(json={"models": [{"name": "a:1"}, {"nope": 1}, "x"]})
    assert await model.list_models() == ["a:1"]
    server.get("/api/tags").respond(json={"models": "many"})
    with pytest.raises(LLMError, match="no list of models"):
        await model.list_models()


# --- the worker's model ---------------------------------------------------------------------


def test_the_ollama_url_must_be_a_plain_http_url(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("PLANSMITH_OLLAMA_URL", "http://127.0.0.1:11434/")
    assert load_settings().models.ollama_url == OLLAMA
    for bad in ("ftp://host", "127.0.0.1:11434", "http://user:pw@host:1", "http://h/?x=1"):
        monkeypatch.setenv("PLANSMITH_OLLAMA_URL", bad)
        with pytest.raises(ConfigError, match="PLANSMITH_OLLAMA_URL"):
            load_settings()
    monkeypatch.setenv("PLANSMITH_OLLAMA_URL", "  ")
    assert load_settings().models.ollama_url is None


async def test_the_worker_routes_each_request_to_its_models_provider(server: respx.Router):
    base = get_settings()
    assert isinstance(factory.chat_model_from(base), OfflineModel)
    keyed = base.replace(models={"anthropic_api_key": "sk-ant-x"})
    assert isinstance(factory.chat_model_from(keyed), AnthropicModel)

    async with http_for(server) as http:
        both = keyed.replace(models={"ollama_url": OLLAMA})
        router = factory.chat_model_from(both, ollama_http_client=http)
        assert isinstance(router, factory.ProviderRouter)
        assert isinstance(router.anthropic, AnthropicModel)
        assert isinstance(router.ollama, OllamaModel) and router.ollama.base_url == OLLAMA

        fake_anthropic = ScriptedModel(text("from anthropic"))
        router.anthropic = fake_anthropic
        server.post("/api/chat").respond(json=chat("from ollama"))
        ask = LLMRequest(model=MODEL, messages=[{"role": "user", "content": "hi"}])
        assert (await router.complete(ask.model_copy(update={"provider": "ollama"}))).text == (
            "from ollama"
        )
        anth = ask.model_copy(update={"model": "claude-x", "provider": "anthropic"})
        assert (await router.complete(anth)).text == "from anthropic"
        assert (await router.complete(ask)).text == "from anthropic"  # no provider: the key

        only_ollama = factory.chat_model_from(
            base.replace(models={"ollama_url": OLLAMA}), ollama_http_client=http
        )
        assert isinstance(only_ollama, factory.ProviderRouter)
        assert (await only_ollama.complete(ask)).text == "from ollama"
        with pytest.raises(LLMError, match="needs ANTHROPIC_API_KEY") as raised:
            await only_ollama.complete(anth)
        assert not raised.value.retryable

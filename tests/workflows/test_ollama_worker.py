"""A worker configured with ``PLANSMITH_OLLAMA_URL`` (and no Anthropic key), end to end:
the GeneratePlan workflow plans through the selector's Ollama planning model, and the
plan it made runs, its llm step answered by the Ollama fast model. The Ollama server is a
respx router behind the worker's HTTP client (``chat_model_from(...,
ollama_http_client=...)``): nothing leaves the process."""

from __future__ import annotations

import json
import uuid
from typing import Any

import httpx
import pytest
import respx
from temporalio.client import Client

from activities.llm.factory import ProviderRouter, chat_model_from
from config import Settings, get_settings
from contracts.errors import LLMError
from contracts.planning import PlanRequest
from plans.models import Plan, PlanStatus
from tests.helpers import StartWorker, start, status
from workflows.planner_workflow import run_planner

OLLAMA = "http://127.0.0.1:11434"
PLANNER, FAST = "qwen3:14b", "llama3.2:3b"
MODELS = [
    {"name": PLANNER, "capabilities": ["planning", "reasoning"], "provider": "ollama"},
    {"name": FAST, "capabilities": ["fast", "general"], "provider": "ollama"},
    # configured, but without ANTHROPIC_API_KEY the selector passes it over
    {"name": "claude-sonnet-5-5", "capabilities": ["planning", "general"], "priority": 1},
]
PLAN = {
    "title": "Release notes",
    "description": "wait, then summarise",
    "steps": [
        {"id": "pause", "kind": "tool", "tool": "wait", "params": {"seconds": 0}},
        {
            "id": "summary",
            "kind": "llm",
            "params": {"prompt": "Summarise release 2.4", "capabilities": ["fast"]},
            "depends_on": ["pause"],
        },
    ],
    "constraints_met": [{"constraint": "keep it short", "how": "one llm step"}],
}


def ollama_settings() -> Settings:
    return get_settings().replace(
        models={"anthropic_api_key": None, "ollama_url": OLLAMA, "models": json.dumps(MODELS)}
    )


def ollama_server(asked: list[dict[str, Any]]) -> respx.Router:
    router = respx.Router(base_url=OLLAMA, assert_all_mocked=True)
    router.post("/api/show").respond(json={"capabilities": ["completion", "tools"]})

    def chat(request: httpx.Request) -> httpx.Response:
        body = json.loads(request.content)
        asked.append(body)
        if body["model"] == PLANNER:
            (tool,) = body["tools"]
            call = {"function": {"name": tool["function"]["name"], "arguments": PLAN}}
            message = {"role": "assistant", "content": "", "tool_calls": [call]}
        else:
            message = {"role": "assistant", "content": "2.4 fixes the login bug."}
        return httpx.Response(
            200,
            json={
                "model": body["model"],
                "message": message,
                "done": True,
                "done_reason": "stop",
                "prompt_eval_count": 200,
                "eval_count": 20,
            },
        )

    router.post("/api/chat").mock(side_effect=chat)
    return router


async def test_a_worker_with_only_ollama_plans_and_runs_with_ollama_models(
    client: Client, start_worker: StartWorker, task_queue: str
) -> None:
    asked: list[dict[str, Any]] = []
    server = ollama_server(asked)
    settings = ollama_settings()
    async with httpx.AsyncClient(transport=httpx.MockTransport(server.async_handler)) as http:
        model = chat_model_from(settings, ollama_http_client=http)
        assert isinstance(model, ProviderRouter) and model.anthropic is None
        await start_worker(model, settings)

        result = await run_planner(
            client,
            PlanRequest(task="summarise release 2.4", constraints=["keep it short"]),
            task_queue,
        )
        assert result.model == PLANNER and result.offline is False and result.rounds == 1
        assert [s["id"] for s in result.plan["steps"]] == ["pause", "summary"]
        assert result.usage.input_tokens == 200 and result.usage.output_tokens == 20
        (planning,) = asked
        assert [t["function"]["name"] for t in planning["tools"]] == ["submit_plan"]

        plan = Plan.model_validate(
            {
                **result.plan,
                "id": f"ollama-{uuid.uuid4().hex[:8]}",
                "options": {**result.plan.get("options", {}), "require_approval": False},
            }
        )
        handle = await start(client, plan, task_queue)
        assert (await handle.result()).status == PlanStatus.COMPLETED
    summary = next(s for s in (await status(handle)).steps if s.id == "summary")
    assert summary.output["text"] == "2.4 fixes the login bug."
    assert summary.output["model"] == FAST and summary.output["offline"] is False
    assert [b["model"] for b in asked] == [PLANNER, FAST]
    for call in server.calls:
        assert str(call.request.url).startswith(f"{OLLAMA}/api/")


async def test_a_planning_model_that_is_not_pulled_fails_at_once_naming_it(
    client: Client, start_worker: StartWorker, task_queue: str
) -> None:
    server = respx.Router(base_url=OLLAMA, assert_all_mocked=True)
    show = server.post("/api/show").respond(404, json={"error": f"model '{PLANNER}' not found"})
    server.get("/api/tags").respond(json={"models": [{"name": FAST}]})
    settings = ollama_settings()
    async with httpx.AsyncClient(transport=httpx.MockTransport(server.async_handler)) as http:
        await start_worker(chat_model_from(settings, ollama_http_client=http), settings)
        with pytest.raises(LLMError) as raised:
            await run_planner(client, PlanRequest(task="anything"), task_queue)
    assert f"ollama pull {PLANNER}" in str(raised.value) and FAST in str(raised.value)
    assert show.call_count == 1  # not retried

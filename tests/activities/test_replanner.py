"""The replanner (``on_error: replan``): the offline model's rules, and the Anthropic
client against a mocked Messages API (a forced ``propose_replan`` call)."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

import httpx
import httpx2
import pytest
import pytest_asyncio
import respx

from activities.llm.anthropic_model import AnthropicModel
from activities.llm.offline.model import OfflineModel
from activities.llm.replanner import propose
from contracts.replan import PROPOSE_REPLAN_TOOL, ReplanRequest
from plans.models import Plan
from tests.llm_fakes import RespxTransport


def request(error: str, **fetch: Any) -> ReplanRequest:
    plan = Plan.model_validate(
        {
            "id": "p1",
            "options": {"on_error": "replan", "step_timeout_s": 20},
            "steps": [
                {"id": "up", "tool": "wait", "params": {"seconds": 0}},
                {
                    "id": "fetch",
                    "tool": "http_request",
                    "params": {"url": "http://127.0.0.1:9/x", "verbose": True},
                    "depends_on": ["up"],
                    **fetch,
                },
            ],
        }
    )
    return ReplanRequest(
        plan=plan,
        step_id="fetch",
        error=error,
        attempts=1,
        round=1,
        steps={"up": {"status": "completed", "output": {"slept": 0}}},
        replaceable=["fetch"],
    )


@pytest.mark.parametrize(
    "error",
    [
        "GET http://127.0.0.1:500/x answered 503: busy",
        "HTTP 429 Too Many Requests",
        "connection refused",
    ],
)
async def test_offline_a_transient_error_gets_more_retries(error: str):
    ans = await propose(request(error, max_retries=1), model=OfflineModel(), model_name="m")
    assert ans.offline is True
    assert ans.proposal["kind"] == "correction"
    assert ans.proposal["updated_step"] == {"max_retries": 4, "retry_delay_s": 0.5}


async def test_offline_a_timeout_gets_a_longer_timeout_too():
    ans = await propose(
        request("activity timed out after 20s"), model=OfflineModel(), model_name="m"
    )
    assert ans.proposal["updated_step"] == {
        "max_retries": 3,
        "retry_delay_s": 0.5,
        "timeout_s": 60.0,
    }
    assert "longer timeout" in ans.proposal["reason"]


async def test_offline_an_http_timeout_gets_a_longer_timeout_s_param():
    error = "GET http://127.0.0.1:9/x: no complete answer within timeout_s=10 seconds"
    ans = await propose(request(error), model=OfflineModel(), model_name="m")
    updated = ans.proposal["updated_step"]
    assert updated["params"] == {"timeout_s": 30.0} and updated["timeout_s"] == 60.0


async def test_offline_a_port_or_a_path_with_5xx_digits_is_no_server_error():
    error = "GET http://127.0.0.1:500/x answered 404: not here"
    ans = await propose(request(error), model=OfflineModel(), model_name="m")
    assert ans.proposal["kind"] == "none"


async def test_offline_an_unexpected_parameter_named_by_the_error_is_removed():
    ans = await propose(
        request("invalid params: unexpected parameter 'verbose'"),
        model=OfflineModel(),
        model_name="m",
    )
    assert ans.proposal["updated_step"] == {"params": {"verbose": None}}


async def test_offline_says_when_it_has_nothing_to_propose():
    ans = await propose(request("HTTP 404 Not Found"), model=OfflineModel(), model_name="m")
    assert ans.proposal["kind"] == "none" and "a person decides" in ans.proposal["reason"]


# --- the Anthropic client against a mocked Messages API --------------------------------

KEY = "sk-ant-test-replanner-0123456789"


@pytest.fixture
def api() -> respx.Router:
    return respx.Router(base_url="https://api.anthropic.com", assert_all_mocked=True)


@pytest_asyncio.fixture
async def anthropic_model(api: respx.Router) -> AsyncIterator[AnthropicModel]:
    async with httpx2.AsyncClient(transport=RespxTransport(api)) as http:
        yield AnthropicModel(KEY, timeout_s=5, http_client=http)


async def test_anthropic_replanner_forces_propose_replan_and_returns_its_input(
    api, anthropic_model
):
    proposal = {"kind": "correction", "reason": "flaky host", "updated_step": {"max_retries": 5}}
    route = api.post("/v1/messages").mock(
        return_value=httpx.Response(
            200,
            json={
                "id": "msg_1",
                "type": "message",
                "role": "assistant",
                "model": "claude-sonnet-5-5-20260101",
                "content": [
                    {
                        "type": "tool_use",
                        "id": "toolu_01",
                        "name": PROPOSE_REPLAN_TOOL,
                        "input": proposal,
                    }
                ],
                "stop_reason": "tool_use",
                "stop_sequence": None,
                "usage": {"input_tokens": 900, "output_tokens": 40},
            },
        )
    )
    lessons = [{"id": 7, "summary": "the billing host needs retries"}]
    ans = await propose(
        request("HTTP 503"), model=anthropic_model, model_name="claude-sonnet-5-5", lessons=lessons
    )
    assert ans.proposal == proposal and ans.offline is False
    assert ans.lessons_applied == ["lesson 7"]
    sent = json.loads(route.calls[0].request.content)
    assert sent["tool_choice"] == {"type": "tool", "name": PROPOSE_REPLAN_TOOL}
    blocks = [b["text"] for b in sent["messages"][0]["content"]]
    assert "[lesson 7] the billing host needs retries" in blocks[0]
    assert '"error": "HTTP 503"' in blocks[1] and '"slept": 0' in blocks[1]

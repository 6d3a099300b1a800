"""The planner: a valid plan or the problems, never an invalid plan — with a scripted
model, the offline model, and the Anthropic client against a mocked Messages API."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Callable
from typing import Any

import httpx
import httpx2
import jsonschema
import pytest
import pytest_asyncio
import respx

from activities.llm.anthropic_model import AnthropicModel
from activities.llm.base import LLMRequest, LLMResponse, ToolCall
from activities.llm.offline.model import OfflineModel
from activities.llm.planner import SUBMIT_PLAN, generate_plan
from contracts.errors import LLMError
from contracts.planning import GeneratedPlan, PlanningFailed, PlanRequest, Usage
from contracts.tools import catalog
from plans.validation import parse_plan, validate_plan
from tests.llm_fakes import RespxTransport

CYCLE_AND_UNKNOWN_TOOL = {
    "title": "Release",
    "steps": [
        {"id": "fetch", "kind": "tool", "tool": "htp_request", "params": {"url": "http://x"}},
        {
            "id": "build",
            "kind": "tool",
            "tool": "wait",
            "params": {"seconds": 0},
            "depends_on": ["deploy"],
        },
        {
            "id": "deploy",
            "kind": "tool",
            "tool": "wait",
            "params": {"seconds": 0},
            "depends_on": ["build"],
        },
    ],
    "constraints_met": [],
}
FIXED = {
    "title": "Release",
    "description": "fetch, build, deploy",
    "steps": [
        {"id": "fetch", "kind": "tool", "tool": "http_request", "params": {"url": "http://x"}},
        {
            "id": "build",
            "kind": "tool",
            "tool": "wait",
            "params": {"seconds": 0},
            "depends_on": ["fetch"],
        },
        {
            "id": "deploy",
            "kind": "tool",
            "tool": "wait",
            "params": {"seconds": 0},
            "depends_on": ["build"],
        },
    ],
    "constraints_met": [],
}


def answer(plan: dict[str, Any] | None, n: int = 0, text: str = "") -> LLMResponse:
    calls = [ToolCall(id=f"toolu_{n}", name=SUBMIT_PLAN, input=plan)] if plan is not None else []
    content: list[dict[str, Any]] = [{"type": "text", "text": text}] if text else []
    content += [{"type": "tool_use", "id": c.id, "name": c.name, "input": c.input} for c in calls]
    return LLMResponse(
        model="scripted-1",
        text=text,
        tool_calls=calls,
        content=content,
        stop_reason="tool_use" if calls else "end_turn",
        usage=Usage(input_tokens=100, output_tokens=10 + n),
        latency_ms=5.0,
    )


class Scripted:
    """Answers in order (the last one repeats); keeps every request."""

    def __init__(self, *answers: LLMResponse | Callable[[LLMRequest], LLMResponse]):
        self.answers = list(answers)
        self.requests: list[LLMRequest] = []

    async def complete(self, request: LLMRequest) -> LLMResponse:
        self.requests.append(request.model_copy(deep=True))
        a = self.answers[min(len(self.requests), len(self.answers)) - 1]
        return a(request) if callable(a) else a


async def plan(model: Any, **kw: Any) -> GeneratedPlan:
    lessons = kw.pop("lessons", [])
    return await generate_plan(
        PlanRequest(**{"task": "release 2.4", **kw}),
        model=model,
        model_name="claude-planner",
        catalog=catalog(),
        lessons=lessons,
    )


def assert_valid(doc: dict[str, Any]) -> None:
    assert validate_plan(parse_plan(doc), catalog()) == []


# --- the repair loop -------------------------------------------------------------------


async def test_a_cycle_and_an_unknown_tool_are_sent_back_and_the_fixed_plan_returned():
    model = Scripted(answer(CYCLE_AND_UNKNOWN_TOOL, 1), answer(FIXED, 2))
    result = await plan(model)
    assert_valid(result.plan)
    assert [s["id"] for s in result.plan["steps"]] == ["fetch", "build", "deploy"]
    assert result.plan["steps"][0]["tool"] == "http_request"
    assert result.rounds == 2 and len(model.requests) == 2
    (sent_back,) = result.repairs
    assert any(
        line.startswith("steps[0].tool: unknown tool 'htp_request' (did you mean 'http_request'?)")
        for line in sent_back
    ), sent_back
    assert any("dependency cycle" in line and "build" in line for line in sent_back)
    # the second request carries the answer and every problem as an error tool result
    second = model.requests[1].messages
    assert second[1] == {"role": "assistant", "content": answer(CYCLE_AND_UNKNOWN_TOOL, 1).content}
    (result_block,) = second[2]["content"]
    assert result_block["type"] == "tool_result" and result_block["is_error"] is True
    assert result_block["tool_use_id"] == "toolu_1"
    for line in sent_back:
        assert f"- {line}" in result_block["content"]
    assert result.usage.input_tokens == 200 and result.usage.output_tokens == 23
    assert result.model == "scripted-1" and result.offline is False


async def test_a_model_that_never_fixes_it_fails_with_the_problems_and_no_plan():
    model = Scripted(answer(CYCLE_AND_UNKNOWN_TOOL))
    with pytest.raises(PlanningFailed) as caught:
        await plan(model, max_repair_rounds=2)
    failed = caught.value
    assert failed.rounds == 3 and len(model.requests) == 3
    assert len(failed.repairs) == 2
    text = [str(p) for p in failed.problems]
    assert any("unknown tool 'htp_request'" in t for t in text)
    assert any("dependency cycle: deploy -> build -> deploy" in t for t in text)
    assert "could not make a valid plan in 3 round(s)" in str(failed)
    assert PlanningFailed.from_details(failed.details()).problems == failed.problems


async def test_zero_repair_rounds_means_one_call():
    model = Scripted(answer(CYCLE_AND_UNKNOWN_TOOL))
    with pytest.raises(PlanningFailed) as caught:
        await plan(model, max_repair_rounds=0)
    assert caught.value.rounds == 1 and len(model.requests) == 1 and caught.value.repairs == []


async def test_an_answer_without_submit_plan_is_a_problem_sent_back():
    model = Scripted(answer(None, text="Here is my plan: first fetch..."), answer(FIXED, 2))
    result = await plan(model)
    assert result.rounds == 2
    assert result.repairs == [
        ["(answer): no submit_plan call: hand in the whole plan with the submit_plan tool"]
    ]
    follow_up = model.requests[1].messages[2]
    assert follow_up["role"] == "user" and isinstance(follow_up["content"], str)
    assert "no submit_plan call" in follow_up["content"]


async def test_shape_errors_are_located_and_sent_back():
    broken = {
        "title": "x",
        "steps": [
            {
                "id": "Bad Id",
                "kind": "tool",
                "tool": "wait",
                "params": {"seconds": -1},
                "retries": 3,
            }
        ],
        "constraints_met": [],
    }
    model = Scripted(answer(broken), answer(FIXED, 2))
    result = await plan(model)
    (sent_back,) = result.repairs
    assert any(line.startswith("steps[0].id:") for line in sent_back), sent_back
    assert "steps[0].retries: unknown field" in sent_back


# --- constraints, lessons, the request -------------------------------------------------


async def test_every_constraint_must_be_answered():
    constraints = ["production needs a person's approval", "no downtime"]
    partly = {**FIXED, "constraints_met": [{"constraint": constraints[0], "how": "gate"}]}
    fully = {
        **FIXED,
        "options": {"require_approval": True},
        "constraints_met": [
            {"constraint": "Production needs a person's  approval", "how": "require_approval"},
            {"constraint": "no downtime", "how": "steps are idempotent and retried"},
        ],
    }
    model = Scripted(answer(partly), answer(fully, 2))
    result = await plan(model, constraints=constraints)
    assert result.repairs == [
        [
            "constraints_met: constraint 'no downtime' is not listed: quote it and say how "
            "the plan meets it (or why it cannot)"
        ]
    ]
    assert [c.model_dump() for c in result.constraints] == [
        {"constraint": constraints[0], "how": "require_approval"},
        {"constraint": "no downtime", "how": "steps are idempotent and retried"},
    ]
    assert result.plan.get("options", {}).get("require_approval", True) is True
    first_prompt = model.requests[0].messages[0]["content"][-1]["text"]
    assert (
        "<constraints>\n- production needs a person's approval\n- no downtime\n</constraints>"
        in first_prompt
    )


async def test_lessons_go_into_the_prompt_as_their_own_block_and_are_reported():
    lessons = [
        {
            "id": 7,
            "summary": "rejection: deploying without a health check. Do instead: add a verify step",
            "what_wrong": "no health check",
            "fix": "add a verify step",
            "tools": ["http_request"],
            "task": "release",
        },
        {"id": 9, "what_wrong": "waited too long", "fix": "wait at most 10 s"},
    ]
    model = Scripted(answer(FIXED))
    result = await plan(model, lessons=lessons)
    assert [x.model_dump() for x in result.lessons_applied] == [
        {"id": 7, "summary": lessons[0]["summary"]},
        {"id": 9, "summary": "waited too long. Do instead: wait at most 10 s"},
    ]
    content = model.requests[0].messages[0]["content"]
    assert len(content) == 2
    assert content[0]["text"].startswith("<lessons>")
    assert "- [lesson 7] rejection: deploying without a health check" in content[0]["text"]
    assert "- [lesson 9] waited too long. Do instead: wait at most 10 s" in content[0]["text"]
    assert "<task>\nrelease 2.4\n</task>" in content[1]["text"]
    assert "lesson 7" not in model.requests[0].system  # the cached prefix stays the same


async def test_the_request_forces_submit_plan_with_a_stable_cached_prefix():
    model = Scripted(answer(FIXED))
    await plan(model, task="release 2.4", context={"service": "shop"})
    await plan(model, task="something else entirely", inputs={"n": 1})
    first, second = model.requests
    assert first.tool_choice == {"type": "tool", "name": SUBMIT_PLAN}
    assert first.cache is True
    assert [t.name for t in first.tools] == [SUBMIT_PLAN]
    assert first.system == second.system and first.tools == second.tools
    names = sorted(catalog())
    positions = [first.system.index(f"## {n}\n") for n in names]
    assert positions == sorted(positions)
    schema = first.tools[0].input_schema
    jsonschema.Draft202012Validator.check_schema(schema)
    step = schema["properties"]["steps"]["items"]
    assert step["properties"]["tool"]["enum"] == names
    assert step["properties"]["kind"]["enum"] == [
        "tool",
        "llm",
        "decision",
        "validation",
        "approval",
        "code",
    ]
    assert schema["$defs"]["tool_http_request"]["properties"]["url"] == {
        "type": "string",
        "minLength": 1,
    }
    for n in names:
        assert catalog()[n].description in first.system
    assert '"service": "shop"' in first.messages[0]["content"][-1]["text"]


async def test_agent_and_inputs_of_the_request_are_in_the_plan():
    with_inputs = {**FIXED, "inputs": {"n": 5, "env": "staging"}}
    result = await plan(Scripted(answer(with_inputs)), agent_id="agent-7", inputs={"env": "prod"})
    assert result.plan["agent_id"] == "agent-7"
    assert result.plan["inputs"] == {"n": 5, "env": "prod"}
    assert result.plan["options"] == {"require_approval": "auto"}
    assert "id" not in result.plan


async def test_model_errors_propagate():
    async def fail(request: LLMRequest) -> LLMResponse:
        raise LLMError("overloaded", retryable=True, kind="LLMOverloaded", status=529)

    class Failing:
        complete = staticmethod(fail)

    with pytest.raises(LLMError) as caught:
        await plan(Failing())
    assert caught.value.kind == "LLMOverloaded"


# --- with the offline model --------------------------------------------------------------


async def test_offline_model_plans_the_acceptance_task():
    result = await plan(OfflineModel(), task="fetch the release notes and summarise them")
    assert_valid(result.plan)
    assert result.offline is True and result.model == "offline:claude-planner"
    assert [s["kind"] for s in result.plan["steps"]] == ["llm", "llm"]
    assert result.rounds == 1 and result.repairs == []
    assert result.usage.input_tokens > 0


async def test_offline_model_repairs_another_models_broken_plan():
    class FirstThenOffline:
        def __init__(self) -> None:
            self.calls = 0

        async def complete(self, request: LLMRequest) -> LLMResponse:
            self.calls += 1
            if self.calls == 1:
                return answer(CYCLE_AND_UNKNOWN_TOOL, 1)
            return await OfflineModel().complete(request)

    result = await plan(FirstThenOffline())
    assert_valid(result.plan)
    assert result.rounds == 2 and result.offline is True
    by_id = {s["id"]: s for s in result.plan["steps"]}
    assert by_id["fetch"]["kind"] == "llm"  # the unknown tool became an llm step
    assert by_id["deploy"]["depends_on"] == ["build"] and "depends_on" not in by_id["build"]


# --- the Anthropic client against a mocked Messages API --------------------------------

KEY = "sk-ant-test-planner-0123456789"


@pytest.fixture
def api() -> respx.Router:
    return respx.Router(base_url="https://api.anthropic.com", assert_all_mocked=True)


@pytest_asyncio.fixture
async def anthropic_model(api: respx.Router) -> AsyncIterator[AnthropicModel]:
    async with httpx2.AsyncClient(transport=RespxTransport(api)) as http:
        yield AnthropicModel(KEY, timeout_s=5, http_client=http)


def message(plan_input: dict[str, Any], n: int) -> httpx.Response:
    return httpx.Response(
        200,
        json={
            "id": f"msg_{n}",
            "type": "message",
            "role": "assistant",
            "model": "claude-sonnet-5-5-20260101",
            "content": [
                {"type": "tool_use", "id": f"toolu_0{n}", "name": SUBMIT_PLAN, "input": plan_input}
            ],
            "stop_reason": "tool_use",
            "stop_sequence": None,
            "usage": {"input_tokens": 1000, "output_tokens": 200, "cache_read_input_tokens": 900},
        },
    )


async def test_anthropic_planner_repairs_a_cycle_and_an_unknown_tool(api, anthropic_model):
    route = api.post("/v1/messages").mock(
        side_effect=[message(CYCLE_AND_UNKNOWN_TOOL, 1), message(FIXED, 2)]
    )
    result = await generate_plan(
        PlanRequest(task="release 2.4"),
        model=anthropic_model,
        model_name="claude-sonnet-5-5",
        catalog=catalog(),
    )
    assert_valid(result.plan)
    assert result.rounds == 2 and route.call_count == 2
    assert result.model == "claude-sonnet-5-5-20260101" and result.offline is False
    assert result.usage.input_tokens == 2000 and result.usage.cache_read_input_tokens == 1800
    first = json.loads(route.calls[0].request.content)
    assert first["tool_choice"] == {"type": "tool", "name": SUBMIT_PLAN}
    assert first["system"][0]["cache_control"] == {"type": "ephemeral"}
    assert first["tools"][-1]["cache_control"] == {"type": "ephemeral"}
    second = json.loads(route.calls[1].request.content)
    assert second["messages"][1]["role"] == "assistant"
    (fed_back,) = second["messages"][2]["content"]
    assert fed_back["type"] == "tool_result" and fed_back["is_error"] is True
    assert fed_back["tool_use_id"] == "toolu_01"
    assert "unknown tool 'htp_request'" in fed_back["content"]
    assert "dependency cycle" in fed_back["content"]
    assert second["system"] == first["system"] and second["tools"] == first["tools"]


async def test_anthropic_planner_that_keeps_the_bad_plan_fails_listing_both_problems(
    api, anthropic_model
):
    route = api.post("/v1/messages").mock(return_value=message(CYCLE_AND_UNKNOWN_TOOL, 1))
    with pytest.raises(PlanningFailed) as caught:
        await generate_plan(
            PlanRequest(task="release 2.4", max_repair_rounds=1),
            model=anthropic_model,
            model_name="claude-sonnet-5-5",
            catalog=catalog(),
        )
    assert route.call_count == 2 and caught.value.rounds == 2
    text = "\n".join(str(p) for p in caught.value.problems)
    assert "steps[0].tool: unknown tool 'htp_request'" in text
    assert "dependency cycle: deploy -> build -> deploy" in text

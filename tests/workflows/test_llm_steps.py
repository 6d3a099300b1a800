"""llm, decision and validation steps: in the activity and end to end through Temporal.

The model is scripted (:mod:`tests.llm_fakes`) and given to the in-process worker
(``start_worker``); the Anthropic wire format itself is tested in
tests/activities/test_llm_anthropic.py.
"""

from __future__ import annotations

import asyncio
import json
import uuid
from typing import Any

import httpx
import httpx2
import pytest
import respx
from temporalio.client import Client

from activities.llm.anthropic_model import AnthropicModel
from activities.llm.base import LLMResponse, ToolCall
from activities.llm.steps import CHOOSE, RESPOND, VERDICT, run_decision, run_llm
from activities.tools import ToolContext, ToolError, tool
from config import get_settings
from contracts.models import ModelSelector
from contracts.tools import catalog
from plans.models import PlanStatus, StepStatus
from plans.validation import validate_plan
from tests import tools_for_tests
from tests.activities.test_llm_anthropic import message
from tests.helpers import StartWorker, make_plan, start, status, wait_for
from tests.llm_fakes import RespxTransport, ScriptedModel, text, tool_use

# --- in the activity ------------------------------------------------------------------

SELECTOR = ModelSelector.load(get_settings())  # the configured models, none from a store


async def test_llm_step_records_model_tokens_latency_and_sees_feedback() -> None:
    model = ScriptedModel(text("Paris", tokens=(42, 3)))
    result = await run_llm(
        {"prompt": "Capital of France?", "input": {"country": "France"}},
        {"feedback": ["answer in one word"], "answer": "be brief"},
        model,
        SELECTOR,
    )
    out = result.output
    assert out["text"] == "Paris"
    assert out["input_tokens"] == 42 and out["output_tokens"] == 3
    assert out["latency_ms"] == 3.0 and out["model"] == "scripted" and out["offline"] is False
    req = model.requests[0]
    assert "answer in one word" in req.system  # resume feedback reaches later LLM steps
    user = req.messages[0]["content"]
    assert "Capital of France?" in user and '"country": "France"' in user and "be brief" in user
    assert req.tools == [] and req.tool_choice is None


async def test_output_schema_answer_is_checked_and_sent_back_with_the_problem() -> None:
    schema = {
        "type": "object",
        "properties": {"score": {"type": "integer", "minimum": 0, "maximum": 10}},
        "required": ["score"],
    }
    model = ScriptedModel(tool_use(RESPOND, {"score": 99}), tool_use(RESPOND, {"score": 7}))
    result = await run_llm({"prompt": "rate it", "output_schema": schema}, {}, model, SELECTOR)
    assert result.output["json"] == {"score": 7}
    assert result.output["input_tokens"] == 40  # both calls counted
    first, second = model.requests
    assert first.tool_choice == {"type": "tool", "name": RESPOND}
    assert first.tools[0].input_schema == schema
    feedback = second.messages[-1]["content"][0]
    assert (
        feedback["is_error"] is True and "answer.score: 99 is greater than" in feedback["content"]
    )


async def test_output_schema_never_met_fails_without_retry() -> None:
    schema = {"type": "object", "required": ["x"]}
    model = ScriptedModel(tool_use(RESPOND, {}))
    with pytest.raises(ToolError) as e:
        await run_llm(
            {"prompt": "p", "output_schema": schema, "max_invalid_calls": 1}, {}, model, SELECTOR
        )
    assert e.value.kind == "InvalidModelOutput" and not e.value.retryable
    assert "after 2 tries" in str(e.value) and "'x' is a required property" in str(e.value)
    assert len(model.requests) == 2


async def test_llm_step_with_tools_returns_calls_for_the_workflow() -> None:
    model = ScriptedModel(tool_use("count", {"key": "k"}))
    result = await run_llm(
        {"prompt": "count k", "tools": ["count", "transform"]}, {}, model, SELECTOR
    )
    assert result.output is None and result.calls[0]["name"] == "count"
    req = model.requests[0]
    assert [t.name for t in req.tools] == ["count", "transform"]  # stable order
    assert req.tools[0].input_schema["required"] == ["key"]
    assert req.tool_choice == {"type": "auto"}
    assert result.conversation[-1]["role"] == "assistant"


async def test_decision_must_choose_a_declared_option() -> None:
    model = ScriptedModel(
        tool_use(CHOOSE, {"choice": "maybe", "reason": "unsure"}),
        tool_use(CHOOSE, {"choice": "ship", "reason": "tests pass"}),
    )
    out = await run_decision(
        {"question": "Ship?", "options": ["ship", "hold"], "context": {"tests": "green"}},
        {},
        model,
        SELECTOR,
    )
    assert out["choice"] == "ship" and out["reason"] == "tests pass"
    assert out["options"] == ["ship", "hold"] and out["model_calls"] == 2
    assert "'maybe' is not one of ['ship', 'hold']" in str(model.requests[1].messages[-1])
    assert '"tests": "green"' in model.requests[0].messages[0]["content"]


# --- through Temporal -----------------------------------------------------------------


def _key() -> str:
    return f"k-{uuid.uuid4().hex[:8]}"


async def test_decision_runs_the_chosen_branch_and_skips_the_other(
    client: Client, start_worker: StartWorker, task_queue: str
) -> None:
    a, b = _key(), _key()
    model = ScriptedModel(tool_use(CHOOSE, {"choice": "A", "reason": "A is cheaper"}))
    plan = make_plan(
        [
            {
                "id": "choose",
                "kind": "decision",
                "params": {
                    "question": "Which way?",
                    "options": ["A", "B"],
                    "branches": {"A": ["a1"], "B": ["b1"]},
                },
            },
            {"id": "a1", "tool": "count", "params": {"key": a}, "depends_on": ["choose"]},
            {"id": "b1", "tool": "count", "params": {"key": b}, "depends_on": ["choose"]},
            {"id": "b2", "tool": "count", "params": {"key": b}, "depends_on": ["b1"]},
            {
                "id": "b3",
                "tool": "count",
                "params": {"key": b},
                "depends_on": ["choose"],
                "when": "steps.choose.output.choice == 'B'",
            },
            {"id": "end", "tool": "count", "params": {"key": a}, "depends_on": ["a1", "b2"]},
        ]
    )
    await start_worker(model)
    h = await start(client, plan, task_queue)
    result = await h.result()
    assert result.status == PlanStatus.COMPLETED
    st = await status(h)
    steps = {s.id: s for s in st.steps}
    assert steps["choose"].output["choice"] == "A"
    assert steps["choose"].output["reason"] == "A is cheaper"  # the reason is in status
    assert (
        steps["a1"].status == StepStatus.COMPLETED and steps["end"].status == StepStatus.COMPLETED
    )
    for sid in ("b1", "b2", "b3"):
        assert steps[sid].status == StepStatus.SKIPPED, sid
    assert "branch 'B' not taken: choose chose 'A'" in (steps["b1"].skip_detail or "")
    assert tools_for_tests.CALLS[a] == 2 and tools_for_tests.CALLS[b] == 0
    logs = await h.query("logs")
    assert any("chose 'A': A is cheaper" in entry["message"] for entry in logs)


async def test_validation_names_every_failing_check_and_criterion(
    client: Client, start_worker: StartWorker, task_queue: str
) -> None:
    model = ScriptedModel(
        tool_use(
            VERDICT,
            {
                "verdicts": [
                    {"criterion": "is polite", "passed": True, "reason": "fine"},
                    {"criterion": "cites a source", "passed": False, "reason": "no link"},
                ]
            },
        )
    )
    plan = make_plan(
        [
            {"id": "make", "tool": "count", "params": {"key": _key(), "value": 3}},
            {
                "id": "check",
                "kind": "validation",
                "depends_on": ["make"],
                "params": {
                    "checks": [
                        {"name": "enough", "expr": "steps.make.output.value >= 5"},
                        {"name": "first call", "expr": "steps.make.output.calls == 1"},
                        {"name": "even", "expr": "steps.make.output.value % 2 == 0"},
                    ],
                    "judge": {
                        "criteria": ["is polite", "cites a source"],
                        "subject": "{{ steps.make.output }}",
                    },
                },
            },
        ]
    )
    await start_worker(model)
    h = await start(client, plan, task_queue)
    result = await h.result()
    assert result.status == PlanStatus.FAILED
    check = next(s for s in (await status(h)).steps if s.id == "check")
    assert check.attempts == 1  # a failed check is not retried
    error = check.error or ""
    assert "3 check(s) failed" in error
    assert "enough (steps.make.output.value >= 5)" in error
    assert "even (steps.make.output.value % 2 == 0)" in error
    assert "judge: cites a source (no link)" in error
    assert "first call" not in error and "is polite" not in error
    assert '"calls": 1' in model.requests[0].messages[0]["content"]  # the judge saw the subject


async def test_function_calling_validates_runs_child_steps_and_feeds_results_back(
    client: Client, start_worker: StartWorker, task_queue: str
) -> None:
    key = _key()
    model = ScriptedModel(
        tool_use("count", {"kee": key}, call_id="c1"),  # invalid: returned to the model
        tool_use("count", {"key": key, "value": "hi"}, call_id="c2"),
        text("counted once"),
    )
    plan = make_plan(
        [
            {
                "id": "agent",
                "kind": "llm",
                "params": {"prompt": f"count {key}", "tools": ["count"], "max_invalid_calls": 1},
            }
        ]
    )
    await start_worker(model)
    h = await start(client, plan, task_queue)
    result = await h.result()
    assert result.status == PlanStatus.COMPLETED
    assert tools_for_tests.CALLS[key] == 1  # the invalid call never ran
    step = (await status(h)).steps[0]
    first, second = step.calls
    assert first["status"] == "invalid" and "input: 'key' is a required property" in first["error"]
    assert second["status"] == "completed" and second["tool"] == "count"
    assert second["output"] == {"key": key, "calls": 1, "value": "hi"}
    assert step.output["text"] == "counted once" and step.output["tool_calls"] == 1
    assert step.output["model_calls"] == 3
    assert step.output["input_tokens"] == 20 + 20 + 10
    # the model saw the validation problem, then the tool's result
    assert model.requests[1].messages[-1]["content"][0]["is_error"] is True
    fed = model.requests[2].messages[-1]["content"][0]
    assert fed["tool_use_id"] == "c2" and '"calls": 1' in fed["content"]


async def test_function_calling_budget_of_invalid_calls_fails_the_step(
    client: Client, start_worker: StartWorker, task_queue: str
) -> None:
    model = ScriptedModel(tool_use("transform", {"data": 1}))  # offered only count
    plan = make_plan(
        [
            {
                "id": "agent",
                "kind": "llm",
                "params": {"prompt": "go", "tools": ["count"], "max_invalid_calls": 2},
            }
        ]
    )
    await start_worker(model)
    h = await start(client, plan, task_queue)
    result = await h.result()
    assert result.status == PlanStatus.FAILED
    step = (await status(h)).steps[0]
    assert "3 invalid tool calls (max_invalid_calls is 2)" in (step.error or "")
    assert "tool 'transform' is not offered to this step; offered: count" in (step.error or "")
    assert [c["status"] for c in step.calls] == ["invalid"] * 3


# --- function calling: cancels, templated budgets, large results ----------------------

STUBBORN: list[str] = []


@tool(
    name="stubborn",
    description="Sleeps 3 s and finishes even when cancelled (a tool that cannot stop).",
    params_schema={"properties": {"tag": {"type": "string"}}},
)
async def stubborn(params: dict[str, Any], ctx: ToolContext) -> Any:
    try:
        await asyncio.sleep(3)
    except asyncio.CancelledError:
        await asyncio.sleep(0.5)
    STUBBORN.append(params.get("tag", "?"))
    return {"ok": True}


def calls(*wanted: tuple[str, dict[str, Any]]) -> LLMResponse:
    tcs = [ToolCall(id=f"c{i}", name=n, input=inp) for i, (n, inp) in enumerate(wanted)]
    return LLMResponse(
        model="scripted",
        tool_calls=tcs,
        content=[{"type": "tool_use", "id": c.id, "name": c.name, "input": c.input} for c in tcs],
        stop_reason="tool_use",
    )


async def test_a_cancel_stops_an_llm_steps_tool_calls_and_rounds(
    client: Client, start_worker: StartWorker, task_queue: str
) -> None:
    tag = _key()
    model = ScriptedModel(
        calls(("stubborn", {"tag": f"{tag}-a"}), ("stubborn", {"tag": f"{tag}-b"})),
        calls(("stubborn", {"tag": f"{tag}-c"})),
        text("done"),
    )
    plan = make_plan(
        [{"id": "agent", "kind": "llm", "params": {"prompt": "go", "tools": ["stubborn"]}}]
    )
    await start_worker(model)
    h = await start(client, plan, task_queue)
    await wait_for(h, lambda st: bool(st.steps[0].calls))
    await h.execute_update("cancel", {"by": "alice", "reason": "stop"})
    result = await h.result()
    assert result.status == PlanStatus.CANCELLED
    step = (await status(h)).steps[0]
    assert step.status == StepStatus.CANCELLED
    # the first call finished (the tool would not stop); no other call was made
    assert [(c["params"]["tag"], c["status"]) for c in step.calls] == [(f"{tag}-a", "completed")]
    await asyncio.sleep(1)  # the stubborn tool finishes its first call regardless
    assert [t for t in STUBBORN if t.startswith(tag)] == [f"{tag}-a"]  # b and c never ran
    assert len(model.requests) == 1  # and the model was not asked again


async def test_templated_budget_and_tools_are_read_rendered(
    client: Client, start_worker: StartWorker, task_queue: str
) -> None:
    key = _key()
    model = ScriptedModel(tool_use("count", {"key": key}), tool_use("count", {"key": key}))
    plan = make_plan(
        [
            {
                "id": "agent",
                "kind": "llm",
                "params": {
                    "prompt": "go",
                    "tools": "{{ inputs.tools }}",
                    "max_tool_calls": "{{ inputs.n }}",
                },
            }
        ]
    ).model_copy(update={"inputs": {"n": 2, "tools": ["count"]}})
    assert validate_plan(plan, catalog()) == []
    await start_worker(model)
    h = await start(client, plan, task_queue)
    result = await asyncio.wait_for(h.result(), 30)
    assert result.status == PlanStatus.FAILED  # the model never stops calling
    step = (await status(h)).steps[0]
    assert "more than 2 tool calls (max_tool_calls)" in (step.error or "")
    assert tools_for_tests.CALLS[key] == 2


async def test_a_large_tool_result_reaches_the_model_as_data(
    client: Client, start_worker: StartWorker, task_queue: str
) -> None:
    every_output_by_reference = get_settings().replace(store={"large_output_bytes": 20})
    key = _key()
    model = ScriptedModel(tool_use("count", {"key": key, "value": "x" * 50}), text("done"))
    plan = make_plan(
        [{"id": "agent", "kind": "llm", "params": {"prompt": "go", "tools": ["count"]}}]
    )
    await start_worker(model, every_output_by_reference)
    h = await start(client, plan, task_queue)
    assert (await h.result()).status == PlanStatus.COMPLETED
    fed = model.requests[1].messages[-1]["content"][0]["content"]
    assert isinstance(fed, str) and "x" * 50 in fed and "output_ref" not in fed


async def test_a_cancelled_tool_call_is_not_left_running(
    client: Client, start_worker: StartWorker, task_queue: str
) -> None:
    key = _key()
    model = ScriptedModel(tool_use("count", {"key": key, "sleep_s": 30}))
    plan = make_plan(
        [{"id": "agent", "kind": "llm", "params": {"prompt": "go", "tools": ["count"]}}]
    )
    await start_worker(model)
    h = await start(client, plan, task_queue)
    await wait_for(h, lambda st: bool(st.steps[0].calls))
    await h.execute_update("cancel", {"by": "alice", "reason": "enough"})
    assert (await h.result()).status == PlanStatus.CANCELLED
    (call,) = (await status(h)).steps[0].calls
    assert call["status"] == "cancelled" and "enough" in call["error"]


async def test_function_calling_through_the_real_anthropic_client(
    client: Client, start_worker: StartWorker, task_queue: str
) -> None:
    """The conversation the workflow builds is what the Messages API takes: the SDK sends
    the tool_use answer back with the tool's result under the same id, then the text."""
    key = _key()
    sent: list[dict[str, Any]] = []
    answers = [
        message(
            [{"type": "tool_use", "id": "toolu_1", "name": "count", "input": {"key": key}}],
            stop_reason="tool_use",
        ),
        message([{"type": "text", "text": "counted"}], usage={"input_tokens": 30}),
    ]

    def reply(request: httpx.Request) -> httpx.Response:
        sent.append(json.loads(request.content))
        return httpx.Response(200, json=answers[len(sent) - 1])

    router = respx.Router(base_url="https://api.anthropic.com", assert_all_mocked=True)
    router.post("/v1/messages").mock(side_effect=reply)
    plan = make_plan(
        [{"id": "agent", "kind": "llm", "params": {"prompt": "count", "tools": ["count"]}}]
    )
    async with httpx2.AsyncClient(transport=RespxTransport(router)) as http:
        await start_worker(AnthropicModel("sk-ant-test-steps", http_client=http))
        h = await start(client, plan, task_queue)
        assert (await h.result()).status == PlanStatus.COMPLETED
    step = (await status(h)).steps[0]
    assert step.output["text"] == "counted" and step.output["input_tokens"] == 40
    assert step.output["offline"] is False and step.calls[0]["status"] == "completed"
    first, second = sent
    assert [t["name"] for t in first["tools"]] == ["count"]
    assert first["tool_choice"] == {"type": "auto"}
    assistant, result = second["messages"][1:]
    assert assistant == {
        "role": "assistant",
        "content": [{"type": "tool_use", "id": "toolu_1", "name": "count", "input": {"key": key}}],
    }
    (block,) = result["content"]
    assert block["type"] == "tool_result" and block["tool_use_id"] == "toolu_1"
    assert json.loads(block["content"]) == {"key": key, "calls": 1, "value": None}

"""The offline model: deterministic, labelled offline, and answering every kind of call
from the request itself (no network, no key)."""

from __future__ import annotations

import itertools
import json
from typing import Any

import jsonschema
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from activities.llm import base, factory
from activities.llm.base import LLMRequest, ToolDef
from activities.llm.offline.model import OfflineModel
from activities.llm.offline.planner import split_clauses
from activities.llm.offline.schema_instance import minimal_instance
from activities.llm.planner import submit_plan_tool, system_prompt, user_content
from activities.llm.steps import judge_prompt, judge_tool
from config import load_settings
from contracts.planning import PlanRequest
from contracts.tools import catalog
from plans.validation import parse_plan, validate_plan

MODEL = OfflineModel()


def plan_request(req: PlanRequest, messages: list[dict[str, Any]] | None = None) -> LLMRequest:
    cat = catalog()
    return LLMRequest(
        model="claude-test",
        system=system_prompt(cat),
        messages=messages or [{"role": "user", "content": user_content(req)}],
        tools=[submit_plan_tool(cat)],
        tool_choice={"type": "tool", "name": "submit_plan"},
    )


async def submitted(request: LLMRequest) -> dict[str, Any]:
    resp = await MODEL.complete(request)
    call = resp.call("submit_plan")
    assert call is not None, resp
    return call.input


def valid_document(args: dict[str, Any]) -> dict[str, Any]:
    doc = {k: args[k] for k in ("title", "description", "inputs", "options", "steps") if k in args}
    problems = validate_plan(parse_plan(doc), catalog())
    assert problems == [], problems
    return doc


# --- identity: offline, labelled, deterministic ------------------------------------------


async def test_same_request_same_answer_labelled_offline():
    request = LLMRequest(
        model="claude-sonnet-x",
        system="You are terse.",
        messages=[{"role": "user", "content": "Summarise the release notes of 2.4"}],
    )
    first, second = await MODEL.complete(request), await MODEL.complete(request)
    assert first.model_dump(exclude={"latency_ms"}) == second.model_dump(exclude={"latency_ms"})
    assert first.offline is True and first.model == "offline:claude-sonnet-x"
    assert first.text.startswith("[offline]")
    assert "Summarise the release notes of 2.4" in first.text
    assert first.content == [{"type": "text", "text": first.text}]
    assert first.stop_reason == "end_turn"
    assert first.usage.input_tokens > 0 and first.usage.output_tokens > 0
    assert first.record()["offline"] is True


async def test_text_answer_mentions_feedback_from_the_system_prompt():
    request = LLMRequest(
        model="m",
        system="Be brief.\n\nPeople's feedback on this plan so far (oldest first):\n- use metric units",
        messages=[{"role": "user", "content": "How far is it?"}],
    )
    resp = await MODEL.complete(request)
    assert resp.text.startswith("[offline] answer to: How far is it?")
    assert "use metric units" in resp.text


def test_without_a_key_the_process_model_is_the_offline_model(monkeypatch):
    monkeypatch.delenv("ANTHROPIC_API_KEY", raising=False)
    settings = load_settings()
    assert settings.models.anthropic_api_key is None
    assert isinstance(factory.chat_model_from(settings), OfflineModel)
    assert isinstance(factory.chat_model_from(settings), base.ChatModel)


# --- submit_plan --------------------------------------------------------------------------


def test_tasks_split_into_clauses_without_breaking_urls_or_json():
    assert split_clauses("fetch the release notes and summarise them") == [
        "fetch the release notes",
        "summarise them",
    ]
    assert split_clauses(
        "First fetch https://example.com/v2.4/notes.txt. Then use transform with "
        '{"data": [1, 2], "expression": "a and b"}; finally wait 2 seconds'
    ) == [
        "fetch https://example.com/v2.4/notes.txt",
        'use transform with {"data": [1, 2], "expression": "a and b"}',
        "wait 2 seconds",
    ]


async def test_plan_from_the_task_uses_tools_it_can_fill_and_llm_steps_otherwise():
    req = PlanRequest(
        task="Download the release notes, then summarise them. Wait 3 seconds and use "
        'transform with {"data": {"n": 1}, "expression": "n"}',
        context="The notes are published at https://example.com/notes/2.4.md",
        constraints=["production needs a person's approval", "keep it under a minute"],
    )
    args = await submitted(plan_request(req))
    doc = valid_document(args)
    steps = doc["steps"]
    assert [(s["kind"], s.get("tool")) for s in steps] == [
        ("tool", "http_request"),
        ("llm", None),
        ("tool", "wait"),
        ("tool", "transform"),
    ]
    assert steps[0]["params"] == {"url": "https://example.com/notes/2.4.md"}
    assert "{{ steps." + steps[0]["id"] + ".output.body }}" in steps[1]["params"]["prompt"]
    assert steps[1]["params"]["prompt"].startswith("Summarise them")
    assert steps[2]["params"] == {"seconds": 3}
    assert steps[3]["params"] == {"data": {"n": 1}, "expression": "n"}
    # a linear chain
    for before, after in itertools.pairwise(steps):
        assert after["depends_on"] == [before["id"]]
    assert doc["title"].startswith("Download the release notes")
    assert doc["description"].startswith("[offline]")
    assert doc["options"] == {"require_approval": True}
    assert args["constraints_met"] == [
        {
            "constraint": "production needs a person's approval",
            "how": "[offline] options.require_approval is true: the plan waits for a "
            "person's approval before any step runs",
        },
        {
            "constraint": "keep it under a minute",
            "how": "[offline] noted; the offline model cannot reason about it",
        },
    ]


async def test_without_a_url_fetching_is_an_llm_step_and_a_url_input_is_used_by_template():
    args = await submitted(
        plan_request(PlanRequest(task="fetch the release notes and summarise them"))
    )
    steps = valid_document(args)["steps"]
    assert [s["kind"] for s in steps] == ["llm", "llm"]
    assert steps[0]["params"]["prompt"] == "Fetch the release notes"
    assert "{{ steps." + steps[0]["id"] + ".output.text }}" in steps[1]["params"]["prompt"]

    req = PlanRequest(
        task="fetch the release notes and summarise them",
        inputs={"notes_url": "https://example.com/rn.md"},
    )
    steps = valid_document(await submitted(plan_request(req)))["steps"]
    assert steps[0]["tool"] == "http_request"
    assert steps[0]["params"] == {"url": "{{ inputs.notes_url }}"}


async def test_text_that_looks_like_a_template_is_not_one():
    req = PlanRequest(task="explain {{ inputs.secret }} and {{{ steps.x }}}", context="{{ x }}")
    args = await submitted(plan_request(req))
    doc = valid_document(args)
    assert all("{{ inputs.secret" not in s["params"]["prompt"] for s in doc["steps"])


async def test_repair_feedback_fixes_unknown_tools_cycles_and_missing_constraints():
    req = PlanRequest(task="build and deploy", constraints=["no downtime"])
    bad = {
        "title": "Deploy",
        "steps": [
            {
                "id": "build",
                "kind": "tool",
                "tool": "compile_code",
                "params": {"x": 1},
                "description": "compile the app",
                "depends_on": ["deploy"],
            },
            {
                "id": "deploy",
                "kind": "tool",
                "tool": "wait",
                "params": {"seconds": 1},
                "depends_on": ["build"],
            },
            {
                "id": "report",
                "kind": "llm",
                "params": {
                    "prompt": "say {{ steps.deploy.output }} and {{ steps.nowhere.output }}"
                },
            },
        ],
        "constraints_met": [],
    }
    messages = [
        {"role": "user", "content": user_content(req)},
        {
            "role": "assistant",
            "content": [{"type": "tool_use", "id": "toolu_1", "name": "submit_plan", "input": bad}],
        },
        {
            "role": "user",
            "content": [
                {
                    "type": "tool_result",
                    "tool_use_id": "toolu_1",
                    "is_error": True,
                    "content": "steps[0].tool: unknown tool 'compile_code'\n"
                    "steps[0].depends_on: dependency cycle: deploy -> build -> deploy",
                }
            ],
        },
    ]
    fixed = await submitted(plan_request(req, messages))
    doc = valid_document(fixed)
    by_id = {s["id"]: s for s in doc["steps"]}
    assert by_id["build"]["kind"] == "llm" and "tool" not in by_id["build"]
    assert by_id["build"]["params"] == {"prompt": "compile the app"}
    assert "depends_on" not in by_id["build"]  # the back edge of the cycle is gone
    assert by_id["deploy"]["depends_on"] == ["build"]
    assert by_id["report"]["depends_on"] == ["deploy"]
    assert "(not available)" in by_id["report"]["params"]["prompt"]
    assert fixed["constraints_met"][0]["constraint"] == "no downtime"
    # the same conversation gets the same repair
    assert await submitted(plan_request(req, messages)) == fixed


# --- decisions, verdicts, other forced tools ----------------------------------------------


def choose_tool(options: list[str]) -> ToolDef:
    return ToolDef(
        name="choose_option",
        input_schema={
            "type": "object",
            "properties": {
                "choice": {"type": "string", "enum": options},
                "reason": {"type": "string", "minLength": 1},
            },
            "required": ["choice", "reason"],
        },
    )


async def decide(question: str, options: list[str], context: str = "") -> dict[str, Any]:
    text = f"Question: {question}\nOptions:\n" + "\n".join(f"- {o}" for o in options)
    if context:
        text += f"\n\nContext:\n{context}"
    tool = choose_tool(options)
    resp = await MODEL.complete(
        LLMRequest(
            model="m",
            messages=[{"role": "user", "content": text}],
            tools=[tool],
            tool_choice={"type": "tool", "name": tool.name},
        )
    )
    call = resp.call("choose_option")
    assert call is not None and resp.offline
    jsonschema.validate(call.input, tool.input_schema)
    return call.input


async def test_decision_picks_the_option_sharing_most_words_first_on_a_tie():
    answer = await decide(
        "The integration tests failed on staging. Roll back or ship the release?",
        ["ship it anyway", "roll back the release"],
        '{"tests": "failed", "env": "staging"}',
    )
    assert answer["choice"] == "roll back the release"
    assert answer["reason"].startswith("[offline]") and "roll" in answer["reason"]
    tie = await decide("Which colour?", ["red", "blue"])
    assert tie["choice"] == "red"
    assert "first" in tie["reason"]


async def test_verdicts_check_quoted_terms_in_the_subject():
    criteria = [
        "mentions 'release' and \"2.4\"",
        "is written politely",
        "names the 'rollback plan'",
    ]
    tool = judge_tool(criteria)  # the request a validation step's judge sends
    text = judge_prompt(criteria, "The Release of 2.4 went out today.")
    resp = await MODEL.complete(
        LLMRequest(
            model="m",
            messages=[{"role": "user", "content": text}],
            tools=[tool],
            tool_choice={"type": "tool", "name": "record_verdict"},
        )
    )
    call = resp.call("record_verdict")
    assert call is not None
    jsonschema.validate(call.input, tool.input_schema)
    verdicts = {v["criterion"]: v for v in call.input["verdicts"]}
    assert verdicts[criteria[0]]["passed"] is True
    assert verdicts[criteria[1]] == {  # nothing to look for: not judged, never passed
        "criterion": criteria[1],
        "passed": False,
        "assessed": False,
        "reason": "[offline] not assessed: no quoted terms to look for",
    }
    assert verdicts[criteria[0]].get("assessed", True) and verdicts[criteria[2]].get(
        "assessed", True
    )
    assert verdicts[criteria[2]]["passed"] is False
    assert "rollback plan" in verdicts[criteria[2]]["reason"]
    assert all(v["reason"].startswith("[offline]") for v in verdicts.values())


SCHEMAS: list[dict[str, Any]] = [
    {
        "type": "object",
        "properties": {
            "summary": {"type": "string", "minLength": 20, "maxLength": 40},
            "severity": {"enum": ["low", "high"]},
            "version": {"const": "2.4"},
            "score": {"type": "number", "exclusiveMinimum": 0, "maximum": 0.5},
            "count": {"type": "integer", "minimum": 3, "multipleOf": 2},
            "tags": {
                "type": "array",
                "items": {"type": "string"},
                "minItems": 2,
                "uniqueItems": True,
            },
            "owner": {"$ref": "#/$defs/person"},
            "when": {"type": "string", "format": "date-time"},
            "code": {"type": "string", "pattern": "^[a-z]+$"},
            "maybe": {"type": ["null", "boolean"]},
            "either": {"anyOf": [{"type": "integer", "minimum": 10}, {"type": "string"}]},
            "optional": {"type": "string"},
        },
        "required": [
            "summary",
            "severity",
            "version",
            "score",
            "count",
            "tags",
            "owner",
            "when",
            "code",
            "maybe",
            "either",
        ],
        "additionalProperties": False,
        "$defs": {
            "person": {
                "type": "object",
                "properties": {
                    "name": {"type": "string"},
                    "age": {"type": "integer", "exclusiveMinimum": 17},
                },
                "required": ["name", "age"],
            }
        },
    },
    {
        "type": "array",
        "items": {"type": "number", "minimum": -5, "exclusiveMaximum": -1},
        "minItems": 1,
    },
    {"allOf": [{"type": "object", "required": ["a"]}, {"properties": {"a": {"type": "integer"}}}]},
    {"type": "object", "oneOf": [{"required": ["x"], "properties": {"x": {"type": "string"}}}]},
]


@pytest.mark.parametrize("schema", SCHEMAS, ids=range(len(SCHEMAS)))
def test_minimal_instances_are_valid(schema):
    jsonschema.validate(minimal_instance(schema), schema)


async def test_any_other_forced_tool_gets_a_small_valid_value_labelled_offline():
    schema = SCHEMAS[0]
    tool = ToolDef(name="respond", input_schema=schema)
    request = LLMRequest(
        model="m",
        messages=[{"role": "user", "content": "Report on the release"}],
        tools=[tool],
        tool_choice={"type": "tool", "name": "respond"},
    )
    resp = await MODEL.complete(request)
    call = resp.call("respond")
    assert call is not None and resp.offline and resp.text.startswith("[offline]")
    jsonschema.validate(call.input, schema)
    assert call.input["summary"].startswith("[offline]")
    assert call.input["severity"] == "low" and call.input["version"] == "2.4"
    again = await MODEL.complete(request)
    assert again.tool_calls == resp.tool_calls


# --- tools offered, not forced -----------------------------------------------------------

SEARCH = ToolDef(
    name="search",
    description="search the docs",
    input_schema={
        "type": "object",
        "properties": {"q": {"type": "string"}},
        "required": ["q"],
    },
)


async def test_a_named_tool_with_a_json_object_is_called_then_the_result_is_answered():
    ask = {"role": "user", "content": 'Use search with {"q": "temporal retries"} and tell me.'}
    resp = await MODEL.complete(
        LLMRequest(model="m", messages=[ask], tools=[SEARCH], tool_choice={"type": "auto"})
    )
    assert [(c.name, c.input) for c in resp.tool_calls] == [("search", {"q": "temporal retries"})]
    assert resp.stop_reason == "tool_use"
    follow = [
        ask,
        {"role": "assistant", "content": resp.content},
        {
            "role": "user",
            "content": [
                {
                    "type": "tool_result",
                    "tool_use_id": resp.tool_calls[0].id,
                    "content": json.dumps({"hits": ["Temporal retries activities"]}),
                }
            ],
        },
    ]
    final = await MODEL.complete(LLMRequest(model="m", messages=follow, tools=[SEARCH]))
    assert final.tool_calls == []
    assert final.text.startswith("[offline]") and "Temporal retries activities" in final.text
    plain = await MODEL.complete(
        LLMRequest(
            model="m", messages=[{"role": "user", "content": "search for it"}], tools=[SEARCH]
        )
    )
    assert plain.tool_calls == [] and plain.text.startswith("[offline] answer to:")


async def test_an_llm_step_with_tools_and_an_output_schema_ends_with_respond():
    respond = ToolDef(
        name="respond",
        input_schema={
            "type": "object",
            "properties": {"answer": {"type": "string"}},
            "required": ["answer"],
        },
    )
    resp = await MODEL.complete(
        LLMRequest(
            model="m",
            messages=[{"role": "user", "content": "What is new?"}],
            tools=[SEARCH, respond],
            tool_choice={"type": "auto"},
        )
    )
    assert [(c.name, c.input) for c in resp.tool_calls] == [("respond", {"answer": "[offline]"})]


# --- whatever the task, the offline planner's plan is valid ---------------------------------

_text = st.text(
    alphabet=st.characters(blacklist_categories=("Cs",)), min_size=1, max_size=300
).filter(lambda t: t.strip() != "")
_phrases = st.lists(
    st.sampled_from(
        [
            "fetch",
            "https://example.com/a.txt",
            "and",
            "then",
            ";",
            ".",
            "wait 5 seconds",
            "{{",
            "}}",
            "{{ inputs.x }}",
            "steps.a.output",
            '{"data": 1, "expression": "@"}',
            "use transform with",
            "approval",
            "summarise",
            "\n",
            "'quoted'",
            "日本",
        ]
    ),
    min_size=1,
    max_size=12,
).map(" ".join)


@settings(max_examples=150, deadline=None, derandomize=True)
@given(
    task=st.one_of(_text, _phrases).filter(lambda t: t.strip() != ""),
    context=st.one_of(st.none(), _text, st.dictionaries(st.text(max_size=5), _text, max_size=3)),
    constraints=st.lists(_text, max_size=3),
    inputs=st.dictionaries(
        st.from_regex(r"[a-z_]{1,6}", fullmatch=True),
        st.one_of(_text, st.just("https://example.com/x")),
        max_size=2,
    ),
)
def test_the_offline_planner_always_hands_in_a_valid_plan(task, context, constraints, inputs):
    import asyncio

    from activities.llm.planner import generate_plan

    req = PlanRequest(task=task, context=context, constraints=constraints, inputs=inputs)
    result = asyncio.run(
        generate_plan(req, model=MODEL, model_name="m", catalog=catalog(), lessons=[])
    )
    assert result.rounds == 1, result.repairs
    assert validate_plan(parse_plan(result.plan), catalog()) == []
    assert [c.constraint for c in result.constraints] == req.constraints

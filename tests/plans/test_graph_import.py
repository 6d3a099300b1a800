"""Workflow definitions of the nodes/edges execution API translated into plans (pure
code, no Temporal).

Each translated plan is also *run* here: the pure engine schedules it and the real
``transform`` tool computes each step, so the tests check what a translation does, not
only what it looks like.
"""

from __future__ import annotations

import asyncio
import itertools
from datetime import UTC, datetime
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from activities.tools import ToolContext, transform
from contracts.tools import catalog
from plans.expressions import render
from plans.graph_document import ExecutionCreate, clean_id, plan_id_for_execution
from plans.graph_import import node_id_of, translate, validate_translation
from plans.graph_params import path_to_jmespath
from plans.graph_views import execution_status, status_word
from plans.models import ID_RE, PlanStatus, StepKind
from plans.run_state import Approval, PlanRun, new_run
from plans.scheduler import advance, context, finish, is_finished, record_failure, record_success
from plans.validation import PlanInvalid
from plans.views import status_view

NOW = datetime(2026, 1, 1, tzinfo=UTC)


def request(nodes: list[dict], edges: list[dict] | None = None, **inputs: Any) -> ExecutionCreate:
    return ExecutionCreate.model_validate(
        {
            "execution_id": "exec-1",
            "workflow_id": "wf-1",
            "definition": {"nodes": nodes, "edges": edges or []},
            "input_data": inputs,
        }
    )


def chain(*ids: str, **handles: str) -> list[dict]:
    out = []
    for a, b in itertools.pairwise(ids):
        edge = {"source": a, "target": b}
        if f"{a}__{b}" in handles:
            edge["sourceHandle"] = handles[f"{a}__{b}"]
        out.append(edge)
    return out


def run_plan(req: ExecutionCreate) -> PlanRun:
    """Translate, validate and run ``req`` with the pure engine and the real tools."""
    tr = translate(req)
    assert validate_translation(tr, catalog()) == []
    run = new_run(tr.plan, NOW)
    run.approval = Approval(by="policy", at=NOW, version=1)
    for _ in range(100):
        started = advance(run, NOW)
        for sid in started:
            step = run.plan.step(sid)
            params = render(step.params, context(run, sid))
            if step.kind == StepKind.LLM:
                record_failure(run, sid, "UnsupportedStep: no LLM layer", 1, NOW)
                continue
            ctx = ToolContext(plan_id=run.plan.id or "", step_id=sid, idempotency_key="k")
            out = asyncio.run(transform(params, ctx))
            record_success(run, sid, out, 1, NOW)
        if is_finished(run):
            finish(run, NOW)
            return run
    raise AssertionError("the plan did not finish")


def outputs(run: PlanRun) -> dict[str, Any]:
    return {sid: s.output for sid, s in run.steps.items() if s.status.value == "completed"}


def statuses(run: PlanRun) -> dict[str, str]:
    return {sid: s.status.value for sid, s in run.steps.items()}


def problems_of(req: ExecutionCreate) -> dict[str, str]:
    """Every problem by location (several at one location joined with ' | ')."""
    try:
        tr = translate(req)
        problems = validate_translation(tr, catalog())
    except PlanInvalid as e:
        problems = e.problems
    out: dict[str, str] = {}
    for p in problems:
        out[p.location] = f"{out[p.location]} | {p.message}" if p.location in out else p.message
    return out


# --- the example of the API's documentation -------------------------------------------


def test_documented_example_runs_both_ways():
    example = ExecutionCreate.model_json_schema()["examples"][0]
    run = run_plan(ExecutionCreate.model_validate(example))
    assert run.final_status == PlanStatus.COMPLETED
    assert outputs(run)["done"] == "Hello!"
    short = dict(example, input_data={"message": "Hi"})
    run = run_plan(ExecutionCreate.model_validate(short))
    assert run.final_status == PlanStatus.COMPLETED
    assert statuses(run) == {"start": "completed", "shout": "skipped", "done": "skipped"}


def test_plan_shape_ids_and_options():
    tr = translate(
        request(
            [{"id": "In put!", "type": "InputNode"}, {"id": "out", "type": "end"}],
            [{"source": "In put!", "target": "out"}],
        )
    )
    plan = tr.plan
    assert plan.id == "exec-1" and plan.title == "wf-1"
    assert plan.options.require_approval is False
    sid = tr.step_of_node["In put!"]
    assert ID_RE.match(sid) and sid.startswith("in-put-") and sid != "in-put"
    assert plan.step("out").depends_on == [sid]
    assert node_id_of(sid, plan.step(sid).description) == "In put!"
    assert tr.node_of_step[sid] == "In put!"


@given(st.text(min_size=1, max_size=120))
@settings(max_examples=200, deadline=None)
def test_clean_ids_are_valid_and_distinct(raw: str):
    cleaned = clean_id(raw)
    assert ID_RE.fullmatch(cleaned) and len(cleaned) <= 64
    if ID_RE.fullmatch(raw) and len(raw) <= 64:
        assert cleaned == raw
    else:
        assert cleaned != clean_id(raw + "x")
    assert plan_id_for_execution(raw) == cleaned


# --- input ----------------------------------------------------------------------------


def test_input_fields_defaults_and_required():
    nodes = [
        {
            "id": "in",
            "type": "input",
            "data": {
                "fields": [
                    "name",
                    {"name": "lang", "default": "en"},
                    {"name": "topic", "required": True},
                ]
            },
        },
        {"id": "out", "type": "output"},
    ]
    run = run_plan(request(nodes, chain("in", "out"), name="Ada", topic="maths", other=1))
    assert outputs(run)["out"] == {"name": "Ada", "lang": "en", "topic": "maths"}
    assert problems_of(request(nodes, chain("in", "out"), name="Ada")) == {
        "input_data.topic": "required by input node 'in'"
    }
    whole = run_plan(request([{"id": "in", "type": "input"}], [], a=1, b=[2]))
    assert outputs(whole)["in"] == {"a": 1, "b": [2]}


# --- transform ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("config", "expected"),
    [
        ({"expression": "items[?price > `2`].name"}, ["pear"]),
        ({"path": "$.items[0].name"}, "apple"),
        ({"path": "input.items.1.price"}, 3),
        ({"mapping": {"first": "items[0].name", "n": "count"}}, {"first": "apple", "n": 2}),
        (
            {
                "mappings": [
                    {"source": "count", "target": "total"},
                    {"source": "nope", "target": "x", "default": 0},
                ]
            },
            {"total": 2, "x": 0},
        ),
        (
            {"template": "{{count}} items, first {{ items[0].name }}; {missing}."},
            "2 items, first apple; .",
        ),
        ({"operation": "json_stringify"}, None),
        ({"operation": "passthrough"}, None),
        ({}, None),
    ],
)
def test_transform_configs(config: dict, expected: Any):
    data = {"items": [{"name": "apple", "price": 1}, {"name": "pear", "price": 3}], "count": 2}
    nodes = [{"id": "in", "type": "input"}, {"id": "t", "type": "transform", "config": config}]
    run = run_plan(request(nodes, chain("in", "t"), **data))
    got = outputs(run)["t"]
    if config.get("operation") == "json_stringify":
        import json

        assert json.loads(got) == data
    elif expected is None:
        assert got == data
    else:
        assert got == expected


def test_transform_with_several_upstream_nodes_reads_them_by_node_id():
    nodes = [
        {"id": "in", "type": "input"},
        {"id": "a", "type": "transform", "config": {"path": "x"}},
        {"id": "b", "type": "transform", "config": {"path": "y"}},
        {"id": "join", "type": "transform", "config": {"expression": "[a, b]"}},
        {"id": "out", "type": "output", "config": {"key": "result"}},
    ]
    edges = [
        *chain("in", "a"),
        *chain("in", "b"),
        *chain("a", "join"),
        *chain("b", "join"),
        *chain("join", "out"),
    ]
    run = run_plan(request(nodes, edges, x=1, y=2))
    assert outputs(run)["out"] == {"result": [1, 2]}


def test_code_and_json_parse_transforms_are_refused_with_their_location():
    nodes = [
        {"id": "in", "type": "input"},
        {"id": "t", "type": "transform", "config": {"code": "return x"}},
        {"id": "u", "type": "transform", "config": {"operation": "json_parse"}},
        {"id": "v", "type": "transform", "config": {"expression": "a[?"}},
    ]
    got = problems_of(request(nodes, [*chain("in", "t"), *chain("in", "u"), *chain("in", "v")]))
    assert "code transforms are not run" in got["definition.nodes[1].config.code"]
    assert "json_parse" in got["definition.nodes[2].config.operation"]
    assert "not a JMESPath expression" in got["definition.nodes[3].config.expression"]


def test_path_to_jmespath():
    assert path_to_jmespath("$.a.b[0]") == "a.b[0]"
    assert path_to_jmespath("input.a.2.c") == "a[2].c"
    assert path_to_jmespath("a['x y'].z") == 'a."x y".z'
    assert path_to_jmespath("$") == "@"
    assert path_to_jmespath("[0]") == "@[0]"


# --- conditions -----------------------------------------------------------------------


def branchy(condition_config: dict, score: Any, edge_true: dict | None = None) -> PlanRun:
    nodes = [
        {"id": "in", "type": "input"},
        {"id": "check", "type": "condition", "config": condition_config},
        {"id": "yes", "type": "transform", "config": {"template": "yes {{score}}"}},
        {"id": "no", "type": "transform", "config": {"template": "no {{score}}"}},
        {"id": "out", "type": "output"},
    ]
    edges = [
        {"source": "in", "target": "check"},
        {"source": "check", "target": "yes", **(edge_true or {"sourceHandle": "true"})},
        {"source": "check", "target": "no", "sourceHandle": "false"},
        {"source": "yes", "target": "out"},
        {"source": "no", "target": "out"},
    ]
    return run_plan(request(nodes, edges, score=score))


@pytest.mark.parametrize(
    "config",
    [
        {"expression": "input.score > 0.5 && input.score !== 0.9"},
        {"condition": "{{ score }} > 0.5 and not (score == 0.9)"},
        {"expr": "inputs.score > 0.5 && !(input_data.score === 0.9)"},
        {"field": "score", "operator": "greater_than", "value": 0.5},
        {
            "conditions": [{"field": "score", "operator": ">", "value": 0.5}, "score != 0.9"],
            "logic": "and",
        },
    ],
)
def test_condition_forms_guard_the_branches(config: dict):
    high = branchy(config, 0.7)
    assert statuses(high)["yes"] == "completed" and statuses(high)["no"] == "skipped"
    assert outputs(high)["out"] == {"yes": "yes 0.7", "no": None}
    low = branchy(config, 0.2)
    assert statuses(low)["yes"] == "skipped" and outputs(low)["no"] == "no 0.2"
    assert low.final_status == high.final_status == PlanStatus.COMPLETED


def test_condition_translation_and_step_when():
    tr = translate(
        request(
            [
                {"id": "in", "type": "input"},
                {
                    "id": "c",
                    "type": "condition",
                    "config": {"expression": "input.n >= 2 || input.tag === 'x'"},
                },
                {"id": "t", "type": "transform"},
            ],
            [{"source": "in", "target": "c"}, {"source": "c", "target": "t", "label": "Yes"}],
        )
    )
    step = tr.plan.step("t")
    assert step.depends_on == ["in"]
    assert step.when == "steps.in.output.n >= 2 or steps.in.output.tag == 'x'"


def test_edge_branch_words_and_booleans():
    for edge in (
        {"label": "then"},
        {"condition": True},
        {"data": {"branch": "yes"}},
        {"sourceHandle": "output-true"},
    ):
        run = branchy({"expression": "score > 1"}, 5, edge_true=edge)
        assert statuses(run)["yes"] == "completed", edge


def test_multiway_condition_first_match_and_default():
    nodes = [
        {"id": "in", "type": "input"},
        {
            "id": "route",
            "type": "condition",
            "config": {
                "branches": [
                    {"condition": "input.size > 100", "target": "big"},
                    {"field": "size", "operator": ">", "value": 10, "target": "medium"},
                ],
                "default": "small",
            },
        },
        {"id": "big", "type": "transform", "config": {"template": "big"}},
        {"id": "medium", "type": "transform", "config": {"template": "medium"}},
        {"id": "small", "type": "transform", "config": {"template": "small"}},
    ]
    edges = [{"source": "in", "target": "route"}] + [
        {"source": "route", "target": t} for t in ("big", "medium", "small")
    ]
    for size, taken in ((500, "big"), (50, "medium"), (5, "small")):
        run = run_plan(request(nodes, edges, size=size))
        done = {k for k, v in statuses(run).items() if v == "completed"} - {"in"}
        assert done == {taken}, (size, statuses(run))


def test_chained_conditions_are_and_ed():
    nodes = [
        {"id": "in", "type": "input"},
        {"id": "c1", "type": "condition", "config": {"expression": "input.a"}},
        {"id": "c2", "type": "condition", "config": {"expression": "input.b"}},
        {"id": "t", "type": "transform", "config": {"template": "both"}},
    ]
    edges = [
        {"source": "in", "target": "c1"},
        {"source": "c1", "target": "c2", "sourceHandle": "true"},
        {"source": "c2", "target": "t", "sourceHandle": "true"},
    ]
    tr = translate(request(nodes, edges, a=True, b=True))
    assert tr.plan.step("t").when == "(steps.in.output.a) and (steps.in.output.b)"
    assert statuses(run_plan(request(nodes, edges, a=True, b=True)))["t"] == "completed"
    assert statuses(run_plan(request(nodes, edges, a=True, b=False)))["t"] == "skipped"
    assert statuses(run_plan(request(nodes, edges, a=False, b=True)))["t"] == "skipped"


def test_a_step_reached_by_an_unconditional_path_has_no_when():
    nodes = [
        {"id": "in", "type": "input"},
        {"id": "c", "type": "condition", "config": {"expression": "input.a"}},
        {"id": "t", "type": "transform"},
    ]
    edges = [
        {"source": "in", "target": "c"},
        {"source": "c", "target": "t", "sourceHandle": "true"},
        {"source": "in", "target": "t"},
    ]
    assert translate(request(nodes, edges, a=False)).plan.step("t").when is None


def test_condition_problems_are_located():
    nodes = [
        {"id": "in", "type": "input"},
        {"id": "other", "type": "input"},
        {"id": "c", "type": "condition", "config": {"expression": "input.x > 1"}},
        {"id": "d", "type": "condition", "config": {}},
        {
            "id": "e",
            "type": "condition",
            "config": {"field": "x", "operator": "resembles", "value": 1},
        },
        {"id": "t", "type": "transform"},
        {"id": "u", "type": "transform"},
        {"id": "v", "type": "transform"},
        {"id": "w", "type": "transform"},
    ]
    edges = [
        {"source": "in", "target": "c"},
        {"source": "other", "target": "c"},
        {"source": "c", "target": "t", "sourceHandle": "true"},
        {"source": "in", "target": "d"},
        {"source": "d", "target": "u", "sourceHandle": "true"},
        {"source": "in", "target": "e"},
        {"source": "e", "target": "v", "sourceHandle": "true"},
        {"source": "in", "target": "w"},
        {"source": "in", "target": "nowhere"},
    ]
    got = problems_of(request(nodes, edges))
    assert "ambiguous" in got["definition.nodes[2].config.expression"]
    assert "a condition node needs" in got["definition.nodes[3].config"]
    assert "unknown operator 'resembles'" in got["definition.nodes[4].config.operator"]
    assert got["definition.edges[8].target"] == "unknown node 'nowhere'"
    unlabeled = problems_of(
        request(
            [
                {"id": "in", "type": "input"},
                {"id": "c", "type": "condition", "config": {"expression": "input.a"}},
                {"id": "t", "type": "transform"},
            ],
            [{"source": "in", "target": "c"}, {"source": "c", "target": "t"}],
        )
    )
    assert "must say its branch" in unlabeled["definition.edges[1]"]


def test_unknown_names_and_cross_branch_references_are_refused():
    nodes = [
        {"id": "a", "type": "input"},
        {"id": "b", "type": "input"},
        {"id": "c", "type": "condition", "config": {"expression": "b.output.x > 1"}},
        {"id": "t", "type": "transform"},
    ]
    edges = [{"source": "a", "target": "c"}, {"source": "c", "target": "t", "sourceHandle": "true"}]
    got = problems_of(request(nodes, edges))
    # b is not upstream of t: the plan validator says so, located at t's node.
    assert any(
        k == "definition.nodes[3]" and "not among the dependencies" in m for k, m in got.items()
    ), got


# --- llm and node types ---------------------------------------------------------------


def test_llm_nodes_are_translated_faithfully_and_fail_at_run_time():
    nodes = [
        {"id": "in", "type": "input"},
        {
            "id": "ask",
            "type": "llm",
            "label": "Summarise",
            "config": {
                "prompt": 'Summarise {{input.text}} in {lang} for {{ in.output.who }}; JSON like {"a": 1}',
                "system_prompt": "You are terse.",
                "model": "claude-x",
                "temperature": 0.2,
                "maxTokens": 300,
            },
        },
        {"id": "out", "type": "output"},
    ]
    req = request(nodes, chain("in", "ask", "out"), text="long text", lang="fr", who="me")
    tr = translate(req)
    step = tr.plan.step("ask")
    assert step.kind == StepKind.LLM and step.description == "Summarise (llm node ask)"
    assert step.params == {
        "prompt": "Summarise {{ steps.in.output.text }} in {{ inputs.lang }} for "
        '{{ steps.in.output.who }}; JSON like {"a": 1}',
        "system": "You are terse.",
        "model": "claude-x",
        "temperature": 0.2,
        "max_tokens": 300,
        "input": "{{ steps.in.output }}",
    }
    run = run_plan(req)
    assert run.final_status == PlanStatus.FAILED
    assert statuses(run) == {"in": "completed", "ask": "failed", "out": "skipped"}
    assert (
        "needs a prompt"
        in problems_of(request([{"id": "x", "type": "llm"}]))["definition.nodes[0].config.prompt"]
    )


def test_node_type_and_duplicate_problems():
    got = problems_of(
        request(
            [
                {"id": "a", "type": "input"},
                {"id": "a", "type": "output"},
                {"id": "b", "type": "webhook"},
            ]
        )
    )
    assert got["definition.nodes[1].id"] == "duplicate node id 'a'"
    assert "unknown node type 'webhook'" in got["definition.nodes[2].type"]
    assert problems_of(request([])) == {"definition.nodes": "a definition needs at least one node"}


def test_cycles_are_reported_at_a_node():
    nodes = [{"id": "a", "type": "transform"}, {"id": "b", "type": "transform"}]
    got = problems_of(
        request(nodes, [{"source": "a", "target": "b"}, {"source": "b", "target": "a"}])
    )
    assert any(
        "dependency cycle" in m and k.startswith("definition.nodes[") for k, m in got.items()
    )


# --- status in the API's words --------------------------------------------------------


def test_status_words():
    assert status_word(PlanStatus.EXECUTING) == "running"
    assert status_word(PlanStatus.WAITING_APPROVAL) == "paused"
    assert status_word(PlanStatus.PARTIAL) == "failed"
    assert status_word(PlanStatus.CANCELLED) == "stopped"
    assert status_word(PlanStatus.APPROVED) == "pending"
    assert {status_word(s) for s in PlanStatus} == {
        "pending",
        "running",
        "paused",
        "completed",
        "failed",
        "stopped",
    }


def test_execution_status_names_the_current_node():
    tr = translate(
        request(
            [{"id": "First Node", "type": "input"}, {"id": "b", "type": "transform"}],
            [{"source": "First Node", "target": "b"}],
        )
    )
    run = new_run(tr.plan, NOW)
    run.approval = Approval(by="policy", at=NOW, version=1)
    started = advance(run, NOW)
    st = execution_status("exec-1", status_view(run))
    assert st.status == "running" and st.current_node == "First Node" and st.progress == 0
    record_success(run, started[0], {}, 1, NOW)
    advance(run, NOW)
    record_success(run, "b", {}, 1, NOW)
    finish(run, NOW)
    st = execution_status("exec-1", status_view(run))
    assert st.status == "completed" and st.progress == 1 and st.current_node is None
    assert "2 step(s) done" in st.message


# --- never a crash --------------------------------------------------------------------

_ids = st.sampled_from(["a", "b", "c", "in", "Node 1", "x-y", "if", "input", "steps"])
_text = st.one_of(
    st.text(max_size=30),
    st.sampled_from(
        [
            "input.score > 0.5 && !input.ok",
            "{{ a.output.x }} === 'y' || b",
            "{x} and {{input}}",
            "$.items[0].name",
            "items[?price > `2`]",
            "len(input) >",
            "{{",
            "a-b - c",
            "Hello {{name}} {missing} {{ in.output.who }}",
        ]
    ),
)
_values = st.recursive(
    st.one_of(st.none(), st.booleans(), st.integers(-5, 5), _text),
    lambda inner: st.one_of(
        st.lists(inner, max_size=3),
        st.dictionaries(
            st.sampled_from(
                [
                    "target",
                    "source",
                    "field",
                    "operator",
                    "value",
                    "name",
                    "default",
                    "required",
                    "handle",
                    "expression",
                ]
            ),
            inner,
            max_size=3,
        ),
    ),
    max_leaves=6,
)
_config_keys = st.sampled_from(
    [
        "expression", "condition", "field", "operator", "value", "conditions", "branches",
        "default", "logic", "path", "mapping", "mappings", "fields", "template", "operation",
        "code", "prompt", "system_prompt", "model", "temperature", "key", "label",
    ]
)  # fmt: skip
_nodes = st.lists(
    st.fixed_dictionaries(
        {
            "id": _ids,
            "type": st.sampled_from(
                ["input", "llm", "condition", "transform", "output", "end", "odd"]
            ),
            "config": st.dictionaries(_config_keys, _values, max_size=4),
        }
    ),
    max_size=6,
)
_edges = st.lists(
    st.fixed_dictionaries(
        {"source": _ids, "target": _ids},
        optional={
            "sourceHandle": st.sampled_from(["true", "false", "default", "x", "a", "b"]),
            "label": _text,
            "condition": st.one_of(st.booleans(), _text),
        },
    ),
    max_size=8,
)


@given(
    nodes=_nodes,
    edges=_edges,
    inputs=st.dictionaries(st.sampled_from(["x", "name", "score", "a"]), _values, max_size=3),
)
@settings(max_examples=400, deadline=None)
def test_any_definition_translates_or_is_refused_with_located_problems(
    nodes: list[dict], edges: list[dict], inputs: dict
):
    req = request(nodes, edges, **inputs)
    try:
        tr = translate(req)
    except PlanInvalid as e:
        assert e.problems and all(p.location for p in e.problems)
        return
    for p in validate_translation(tr, catalog()):
        assert p.location.startswith("definition")


def test_conditions_that_feed_each_other_are_refused_not_a_recursion_error():
    """Two condition nodes, each upstream of the other: working out one's branch guard
    needed the other's, which needed the first (a RecursionError: a 500 of the API)."""
    cond = {"expression": "score > 1"}
    nodes = [
        {"id": "in", "type": "input"},
        {"id": "c1", "type": "condition", "config": cond},
        {"id": "c2", "type": "condition", "config": cond},
        {"id": "out", "type": "output"},
    ]
    edges = [
        {"source": "in", "target": "c1"},
        {"source": "c2", "target": "c1", "sourceHandle": "true"},
        {"source": "c1", "target": "c2", "sourceHandle": "true"},
        {"source": "c1", "target": "out", "sourceHandle": "false"},
    ]
    problems = problems_of(request(nodes, edges, score=2))
    assert any("cycle of conditions" in text for text in problems.values()), problems

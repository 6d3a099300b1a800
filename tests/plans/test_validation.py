"""Whole-document validation in plans/validation.py (no Temporal)."""

from __future__ import annotations

import itertools
import json
from typing import Any

import pytest
import yaml

from contracts.tools import catalog as builtin_catalog
from plans.models import Plan, ToolSpec
from plans.validation import (
    PlanInvalid,
    Problem,
    find_cycles,
    load_document,
    parse_plan,
    validate_or_raise,
    validate_plan,
)

CATALOG: dict[str, ToolSpec] = {
    "echo": ToolSpec(
        name="echo",
        description="echo a message",
        params_schema={
            "type": "object",
            "additionalProperties": False,
            "properties": {
                "message": {"type": "string"},
                "times": {"type": "integer", "minimum": 1},
                "tags": {"type": "array", "items": {"type": "string"}},
                "nested": {
                    "type": "object",
                    "properties": {"level": {"type": "integer"}},
                    "required": ["level"],
                },
            },
            "required": ["message"],
        },
    ),
    "deploy": ToolSpec(
        name="deploy",
        description="deploy",
        params_schema={"type": "object", "properties": {"env": {"enum": ["staging", "prod"]}}},
        risk="high",
    ),
    "noop": ToolSpec(name="noop", description="nothing", params_schema={"type": "object"}),
}


def step(sid: str, **kw: Any) -> dict[str, Any]:
    return {"id": sid, "tool": "noop", **kw}


def doc(*steps: dict[str, Any], **top: Any) -> dict[str, Any]:
    return {"id": "p1", "steps": list(steps), **top}


def problems_of(document: dict[str, Any], cat: dict[str, ToolSpec] | None = None) -> list[Problem]:
    return validate_plan(parse_plan(document), CATALOG if cat is None else cat)


def located(problems: list[Problem]) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for p in problems:
        out.setdefault(p.location, []).append(p.message)
    return out


def only(problems: list[Problem]) -> Problem:
    assert len(problems) == 1, [str(p) for p in problems]
    return problems[0]


# --- a valid plan --------------------------------------------------------------------


def test_valid_diamond_has_no_problems() -> None:
    d = doc(
        step("a", tool="echo", params={"message": "{{ inputs.msg }}"}),
        step("b", depends_on=["a"], params={"x": "{{ steps.a.output }}"}),
        step("c", depends_on=["a"], when="steps.a.status == 'completed'"),
        step(
            "d",
            depends_on=["b", "c"],
            params={"y": "{{ steps.a.output.x }} and {{ steps.c.output }}"},
        ),
        inputs={"msg": "hi"},
    )
    assert problems_of(d) == []
    plan = validate_or_raise(parse_plan(d), CATALOG)
    assert [s.id for s in plan.steps] == ["a", "b", "c", "d"]


def test_steps_may_be_listed_before_their_dependencies() -> None:
    assert problems_of(doc(step("late", depends_on=["early"]), step("early"))) == []


def test_transitive_ancestor_output_may_be_referenced() -> None:
    d = doc(
        step("a"),
        step("b", depends_on=["a"]),
        step("c", depends_on=["b"], params={"v": "{{ steps.a.output }}"}),
    )
    assert problems_of(d) == []


def test_builtin_tools_validate() -> None:
    cat = builtin_catalog()
    assert {"http_request", "wait", "transform"} <= set(cat)
    d = doc(
        {
            "id": "get",
            "tool": "http_request",
            "params": {"url": "https://example.com", "method": "POST"},
        },
        {"id": "pause", "tool": "wait", "params": {"seconds": 0.5}, "depends_on": ["get"]},
        {
            "id": "shape",
            "tool": "transform",
            "params": {"data": "{{ steps.get.output.body }}", "expression": "items[0]"},
            "depends_on": ["get"],
        },
    )
    assert problems_of(d, cat) == []


# --- ids and dependencies ------------------------------------------------------------


def test_duplicate_ids() -> None:
    p = only(problems_of(doc(step("a"), step("b"), step("a"))))
    assert p.location == "steps[2].id"
    assert "duplicate step id 'a'" in p.message
    assert "steps[0]" in p.message


def test_unknown_dependency_with_did_you_mean_and_location() -> None:
    d = doc(step("build"), step("test", depends_on=["build"]), step("ship", depends_on=["bulid"]))
    p = only(problems_of(d))
    assert p.location == "steps[2].depends_on[0]"
    assert p.message == "unknown step 'bulid' (did you mean 'build'?)"
    assert str(p) == "steps[2].depends_on[0]: unknown step 'bulid' (did you mean 'build'?)"


def test_unknown_dependency_without_a_close_match_has_no_suggestion() -> None:
    p = only(problems_of(doc(step("build"), step("ship", depends_on=["build", "zzzzzz"]))))
    assert p.location == "steps[1].depends_on[1]"
    assert "unknown step 'zzzzzz'" in p.message
    assert "did you mean" not in p.message


@pytest.mark.parametrize(
    ("document", "location", "says"),
    [
        pytest.param(
            doc(step("a"), step("loop", depends_on=["a", "loop"])),
            "steps[1].depends_on[1]",
            "'loop' depends on itself",
            id="self dependency",
        ),
        pytest.param(
            doc(step("a"), step("b", depends_on=["a", "a"])),
            "steps[1].depends_on",
            "'a' is listed more than once",
            id="dependency listed twice",
        ),
    ],
)
def test_a_bad_dependency_list_is_located(
    document: dict[str, Any], location: str, says: str
) -> None:
    p = only(problems_of(document))
    assert p.location == location
    assert says in p.message


def test_two_step_cycle_names_both_steps() -> None:
    p = only(problems_of(doc(step("a", depends_on=["b"]), step("b", depends_on=["a"]))))
    assert p.location.startswith("steps[")
    assert p.location.endswith("].depends_on")
    assert "dependency cycle" in p.message
    assert ("a -> b -> a" in p.message) or ("b -> a -> b" in p.message)


def test_longer_cycle_lists_its_steps_in_order_and_spares_the_rest() -> None:
    d = doc(
        step("root"),
        step("x", depends_on=["root", "z"]),
        step("y", depends_on=["x"]),
        step("z", depends_on=["y"]),
        step("leaf", depends_on=["z"]),
    )
    p = only(problems_of(d))
    assert "dependency cycle" in p.message
    chain = p.message.split("dependency cycle: ")[1].split(" (")[0].split(" -> ")
    assert chain[0] == chain[-1]
    assert set(chain) == {"x", "y", "z"}
    assert len(chain) == 4
    # each step in the chain runs before the next: the next depends on it
    deps = {s["id"]: s.get("depends_on", []) for s in d["steps"]}
    for before, after in itertools.pairwise(chain):
        assert before in deps[after]
    assert "root" not in chain and "leaf" not in chain


def test_two_separate_cycles_are_both_reported() -> None:
    d = doc(
        step("a", depends_on=["b"]),
        step("b", depends_on=["a"]),
        step("c", depends_on=["d"]),
        step("d", depends_on=["c"]),
    )
    cycles = [p for p in problems_of(d) if "dependency cycle" in p.message]
    assert len(cycles) == 2
    found = [set(c) for c in find_cycles(parse_plan(d))]
    assert {"a", "b"} in found and {"c", "d"} in found


def test_acyclic_graph_has_no_cycles() -> None:
    d = doc(
        step("a"),
        step("b", depends_on=["a"]),
        step("c", depends_on=["a", "b"]),
        step("d", depends_on=["c", "a"]),
    )
    assert find_cycles(parse_plan(d)) == []


def test_empty_plan_is_invalid() -> None:
    p = only(problems_of(doc()))
    assert p.location == "steps"


# --- tools and params ----------------------------------------------------------------


def test_unknown_tool_suggests_and_lists_known_tools() -> None:
    p = only(problems_of(doc({"id": "a", "tool": "ecko"})))
    assert p.location == "steps[0].tool"
    assert "unknown tool 'ecko'" in p.message
    assert "did you mean 'echo'?" in p.message
    assert "deploy, echo, noop" in p.message


def test_unknown_builtin_tool() -> None:
    p = only(
        problems_of(
            doc({"id": "a", "tool": "http_reqest", "params": {"url": "x"}}), builtin_catalog()
        )
    )
    assert p.location == "steps[0].tool"
    assert "did you mean 'http_request'?" in p.message


@pytest.mark.parametrize(
    ("document", "location", "says"),
    [
        pytest.param(
            doc({"id": "a", "kind": "tool"}),
            "steps[0].tool",
            "must name a tool",
            id="tool step without tool",
        ),
        pytest.param(
            doc({"id": "a", "tool": "echo", "params": {}}),
            "steps[0].params",
            "'message' is a required property",
            id="missing required param",
        ),
        pytest.param(
            doc({"id": "a", "tool": "deploy", "params": {"env": "qa"}}),
            "steps[0].params.env",
            "'qa' is not one of",
            id="value outside the enum",
        ),
    ],
)
def test_a_tool_step_missing_its_tool_or_a_param_is_located(
    document: dict[str, Any], location: str, says: str
) -> None:
    p = only(problems_of(document))
    assert p.location == location
    assert says in p.message


def test_param_errors_point_into_params() -> None:
    d = doc(
        {
            "id": "a",
            "tool": "echo",
            "params": {"message": 5, "times": 0, "tags": ["ok", 3], "nested": {"level": "high"}},
        }
    )
    where = located(problems_of(d))
    assert set(where) == {
        "steps[0].params.message",
        "steps[0].params.times",
        "steps[0].params.tags[1]",
        "steps[0].params.nested.level",
    }
    assert "is not of type 'string'" in where["steps[0].params.message"][0]
    assert "minimum" in where["steps[0].params.times"][0]


def test_unexpected_param_lists_allowed_names() -> None:
    p = only(
        problems_of(doc({"id": "a", "tool": "echo", "params": {"message": "m", "mesage": "x"}}))
    )
    assert p.location == "steps[0].params"
    assert "'mesage' was unexpected" in p.message
    assert "allowed: message, nested, tags, times" in p.message


def test_templated_values_skip_type_checks_but_still_need_valid_references() -> None:
    d = doc(
        step("a"),
        {
            "id": "b",
            "tool": "echo",
            "depends_on": ["a"],
            "params": {"message": "hi", "times": "{{ steps.a.output.n }}"},
        },
    )
    assert problems_of(d) == []
    d["steps"][1]["params"]["times"] = "{{ steps.zzz.output.n }}"
    p = only(problems_of(d))
    assert p.location == "steps[1].params.times"


def test_builtin_param_errors() -> None:
    cat = builtin_catalog()
    d = doc(
        {"id": "h", "tool": "http_request", "params": {"url": 1, "method": "FETCH", "extra": True}},
        {"id": "w", "tool": "wait", "params": {"seconds": -1}},
        {"id": "w2", "tool": "wait", "params": {}},
        {
            "id": "t",
            "tool": "transform",
            "params": {"data": [], "expression": "a", "fields": {"x": "a"}},
        },
    )
    where = located(problems_of(d, cat))
    assert "steps[0].params.url" in where
    assert "steps[0].params.method" in where
    assert any("'extra' was unexpected" in m for m in where["steps[0].params"])
    assert "steps[1].params.seconds" in where
    assert any("'seconds' is a required property" in m for m in where["steps[2].params"])
    assert "steps[3].params" in where


# --- templates and conditions --------------------------------------------------------


@pytest.mark.parametrize(
    ("document", "location", "says"),
    [
        pytest.param(
            doc(
                step("build"),
                step("b", depends_on=["build"], params={"x": "{{ steps.bild.output }}"}),
            ),
            "steps[1].params.x",
            ["unknown step 'bild'", "did you mean 'build'?"],
            id="unknown step",
        ),
        pytest.param(
            doc(
                step("a"),
                step("b"),
                step("c", depends_on=["b"], params={"list": ["ok", "{{ steps.a.output }}"]}),
            ),
            "steps[2].params.list[1]",
            ["'a' is not among the dependencies of 'c'"],
            id="step that is not a dependency",
        ),
        pytest.param(
            doc(step("a", params={"x": "{{ steps.a.output }}"})),
            "steps[0].params.x",
            ["cannot read its own output"],
            id="own output",
        ),
        pytest.param(
            doc(step("a", params={"x": "value: {{ inputs.regoin }}"}), inputs={"region": "eu"}),
            "steps[0].params.x",
            ["no input 'regoin'", "did you mean 'region'?"],
            id="unknown input",
        ),
        pytest.param(
            doc(step("a", params={"nested": {"x": "{{ inputs.a + }}"}}), inputs={"a": 1}),
            "steps[0].params.nested.x",
            ["bad template", "cannot parse"],
            id="syntax error",
        ),
    ],
)
def test_a_bad_template_is_located_and_explained(
    document: dict[str, Any], location: str, says: list[str]
) -> None:
    p = only(problems_of(document))
    assert p.location == location
    for words in says:
        assert words in p.message


def test_template_unknown_name_and_bad_field() -> None:
    d = doc(
        step("a"),
        step("b", depends_on=["a"], params={"x": "{{ foo.bar }}", "y": "{{ steps.a.outptu }}"}),
    )
    where = located(problems_of(d))
    assert "unknown name 'foo'" in where["steps[1].params.x"][0]
    assert "not 'outptu'" in where["steps[1].params.y"][0]


def test_template_dangerous_expression_is_only_checked_for_names() -> None:
    p = only(problems_of(doc(step("a", params={"x": "{{ os.system('rm') }}"}))))
    assert "unknown name 'os'" in p.message


def test_when_expressions() -> None:
    d = doc(
        {
            "id": "choose",
            "kind": "decision",
            "params": {"question": "which?", "options": ["left", "right"]},
        },
        step("left", depends_on=["choose"], when="steps.choose.output.choice == 'left'"),
        step("bad-syntax", depends_on=["choose"], when="steps.choose.output.choice =="),
        step("not-dep", when="steps.choose.output.choice == 'left'"),
        step("unknown", depends_on=["choose"], when="steps.chose.output.choice == 'left'"),
        step("input-ok", when="inputs.go and true"),
        step("input-bad", when="inputs.stop"),
        inputs={"go": True},
    )
    where = located(problems_of(d))
    assert set(where) == {"steps[2].when", "steps[3].when", "steps[4].when", "steps[6].when"}
    assert "cannot parse" in where["steps[2].when"][0]
    assert "not among the dependencies" in where["steps[3].when"][0]
    assert "did you mean 'choose'?" in where["steps[4].when"][0]
    assert "no input 'stop'" in where["steps[6].when"][0]


def test_when_on_dashed_step_id() -> None:
    d = doc(
        step("build-app"),
        step("ship", depends_on=["build-app"], when="steps.build-app.output.ok == true"),
    )
    assert problems_of(d) == []


# --- kinds ---------------------------------------------------------------------------


def test_decision_requires_question_and_two_string_options() -> None:
    d = doc(
        {"id": "d1", "kind": "decision", "params": {}},
        {"id": "d2", "kind": "decision", "params": {"question": "q", "options": ["only"]}},
        {"id": "d3", "kind": "decision", "params": {"question": 3, "options": ["a", 2]}},
        {"id": "ok", "kind": "decision", "params": {"question": "q", "options": ["a", "b"]}},
    )
    where = located(problems_of(d))
    assert set(where) == {
        "steps[0].params.options",
        "steps[0].params.question",
        "steps[1].params.options",
        "steps[2].params.options",
        "steps[2].params.question",
    }


def test_validation_requires_checks_with_expr() -> None:
    d = doc(
        step("a"),
        {"id": "v0", "kind": "validation"},
        {"id": "v1", "kind": "validation", "params": {"checks": []}},
        {"id": "v2", "kind": "validation", "params": {"checks": [{"name": "no expr"}, "x"]}},
        {
            "id": "v3",
            "kind": "validation",
            "depends_on": ["a"],
            "params": {
                "checks": [{"expr": "steps.a.output.n > 0"}, {"expr": "steps.b.output > 0"}]
            },
        },
    )
    where = located(problems_of(d))
    assert set(where) == {
        "steps[1].params.checks",
        "steps[2].params.checks",
        "steps[3].params.checks[0]",
        "steps[3].params.checks[1]",
        "steps[4].params.checks[1].expr",
    }
    assert "unknown step 'b'" in where["steps[4].params.checks[1].expr"][0]


def test_llm_requires_prompt_and_no_tool() -> None:
    d = doc(
        {"id": "l1", "kind": "llm", "params": {}},
        {"id": "l2", "kind": "llm", "tool": "echo", "params": {"prompt": "hi"}},
        {"id": "ok", "kind": "llm", "params": {"prompt": "summarise {{ inputs.text }}"}},
        inputs={"text": "t"},
    )
    where = located(problems_of(d))
    assert set(where) == {"steps[0].params.prompt", "steps[1].tool"}
    assert "only tool steps name a tool" in where["steps[1].tool"][0]


def test_approval_step_needs_nothing_but_clarification_needs_a_question() -> None:
    d = doc(
        {"id": "gate", "kind": "approval"},
        step("ask", depends_on=["gate"], requires_clarification=True),
        step("ask-ok", requires_clarification=True, clarification_question="Which region?"),
    )
    p = only(problems_of(d))
    assert p.location == "steps[1].clarification_question"


# --- parse_plan (shape) --------------------------------------------------------------


def test_unknown_fields_are_rejected_with_their_location() -> None:
    with pytest.raises(PlanInvalid) as e:
        parse_plan(
            {
                "steps": [{"id": "a", "tool": "noop", "depends-on": ["x"]}],
                "optoins": {},
                "options": {"paralel": True},
            }
        )
    where = located(e.value.problems)
    assert where == {
        "steps[0].depends-on": ["unknown field"],
        "optoins": ["unknown field"],
        "options.paralel": ["unknown field"],
    }


def test_shape_errors_are_located() -> None:
    with pytest.raises(PlanInvalid) as e:
        parse_plan(
            {
                "id": "Bad Id",
                "options": {"on_error": "explode", "max_parallel_steps": 0},
                "steps": [{"id": "ok"}, {"id": "UPPER", "kind": "robot"}, {"kind": "tool"}],
            }
        )
    where = located(e.value.problems)
    assert set(where) == {
        "id",
        "options.on_error",
        "options.max_parallel_steps",
        "steps[1].id",
        "steps[1].kind",
        "steps[2].id",
    }
    assert where["steps[2].id"] == ["required field is missing"]
    assert "must match" in where["steps[1].id"][0]


def test_missing_steps() -> None:
    with pytest.raises(PlanInvalid) as e:
        parse_plan({"title": "x"})
    assert located(e.value.problems) == {"steps": ["required field is missing"]}


def test_parse_yaml_and_json_text() -> None:
    yaml_text = (
        "id: p\nsteps:\n  - id: a\n    tool: noop\n  - id: b\n    tool: noop\n    depends_on: [a]\n"
    )
    plan = parse_plan(yaml_text)
    assert isinstance(plan, Plan)
    assert plan.step("b").depends_on == ["a"]
    json_text = json.dumps({"id": "p", "steps": [{"id": "a", "tool": "noop"}]})
    assert parse_plan(json_text).steps[0].id == "a"


def test_unparseable_text_is_located() -> None:
    with pytest.raises(PlanInvalid) as e:
        load_document("steps: [", source="plan.yaml")
    p = only(e.value.problems)
    assert p.location == "plan.yaml"
    assert "line 1" in p.message
    with pytest.raises(PlanInvalid, match="must be an object"):
        parse_plan("- just\n- a list\n")


def test_json_and_yaml_read_alike_and_broken_json_is_located() -> None:
    """A JSON document reads the same as the YAML it also is (JSON goes through the fast
    JSON parser); what is not plain JSON (NaN, a typo) is read or located as YAML."""
    document = {
        "id": "p",
        "inputs": {"n": 1.5, "s": "x: y", "u": "\u00e9", "none": None, "t": True},
        "steps": [{"id": "a", "tool": "noop", "params": {"list": [1, {"k": "v"}]}}],
    }
    text = json.dumps(document)
    assert load_document(text) == yaml.safe_load(text) == document
    assert load_document("  " + json.dumps(document, indent=2)) == document
    assert load_document('{"id": "p", "x": NaN}')["x"] == "NaN"  # YAML's plain scalar
    with pytest.raises(PlanInvalid) as e:
        load_document('{"id": "p", "steps": [}', source="plan.json")
    p = only(e.value.problems)
    assert p.location == "plan.json" and "line 1" in p.message


def test_a_deeply_nested_json_object_is_a_located_problem() -> None:
    with pytest.raises(PlanInvalid, match="nested too deeply"):
        load_document('{"a": ' * 20_000 + "1" + "}" * 20_000, source="deep.json")


# --- every problem at once -----------------------------------------------------------


def test_every_problem_is_reported_at_once() -> None:
    d = doc(
        step("a"),
        step("a"),  # duplicate
        step("b", depends_on=["c"]),  # cycle with c
        step("c", depends_on=["b"]),
        step("d", depends_on=["bb"]),  # unknown dependency
        step("e", depends_on=["e"]),  # self dependency
        {"id": "f", "tool": "nope"},  # unknown tool
        {"id": "g", "tool": "echo", "params": {"message": 1}},  # bad params
        step("h", params={"x": "{{ inputs.missing }}"}),  # bad template
        step("i", when="inputs.x ==="),  # bad condition
        {"id": "j", "kind": "llm"},  # llm without prompt
        inputs={"x": 1},
    )
    problems = problems_of(d)
    where = located(problems)
    assert "steps[1].id" in where
    assert any("dependency cycle" in m for ms in where.values() for m in ms)
    assert "steps[4].depends_on[0]" in where
    assert "steps[5].depends_on[0]" in where
    assert "steps[6].tool" in where
    assert "steps[7].params.message" in where
    assert "steps[8].params.x" in where
    assert "steps[9].when" in where
    assert "steps[10].params.prompt" in where
    assert len(problems) == 9
    with pytest.raises(PlanInvalid) as e:
        validate_or_raise(parse_plan(d), CATALOG)
    assert e.value.problems == problems
    text = str(e.value)
    assert "9 problem(s)" in text
    assert "steps[4].depends_on[0]: unknown step 'bb' (did you mean 'b'?)" in text


def test_parse_plan_reports_every_shape_problem_at_once() -> None:
    with pytest.raises(PlanInvalid) as e:
        parse_plan(
            {"steps": [{"id": "a", "x": 1}, {"id": "b", "y": 2}, {"id": "c", "max_retries": -1}]}
        )
    assert set(located(e.value.problems)) == {"steps[0].x", "steps[1].y", "steps[2].max_retries"}


def judge_step(**params: Any) -> dict[str, Any]:
    return {
        "id": "v",
        "kind": "validation",
        "params": {"judge": {"criteria": ["is tidy"], "subject": "x"}, **params},
    }


@pytest.mark.parametrize("value", ["ask", "fail"])
def test_on_unassessed_is_a_validation_param(value: str) -> None:
    assert problems_of(doc(judge_step(on_unassessed=value))) == []


def test_a_bad_on_unassessed_says_what_it_may_be_and_where() -> None:
    p = only(problems_of(doc(judge_step(on_unassessed="pass"))))
    assert p.location == "steps[0].params.on_unassessed"
    assert "'fail'" in p.message and "'ask'" in p.message


def test_on_unassessed_without_a_judge_is_located() -> None:
    v = {"id": "v", "kind": "validation", "params": {"checks": [{"expr": "true"}]}}
    v["params"]["on_unassessed"] = "ask"
    p = only(problems_of(doc(v)))
    assert p.location == "steps[0].params.on_unassessed" and "no 'judge'" in p.message

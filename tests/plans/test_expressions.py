"""The safe expression language and templating in plans/expressions.py (no Temporal)."""

from __future__ import annotations

import copy
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from plans.expressions import (
    MAX_EXPRESSION_LENGTH,
    ExpressionError,
    Reference,
    evaluate,
    evaluate_condition,
    iter_templates,
    normalise,
    references,
    render,
)
from plans.models import Plan, ToolSpec
from plans.validation import Problem, validate_plan

ROOT = Path(__file__).resolve().parents[2]


def make_context() -> dict[str, Any]:
    return {
        "inputs": {
            "n": 3,
            "name": "Ann",
            "env": "prod",
            "tags": ["a", "b"],
            "limits": {"cpu": 2, "mem": "4Gi"},
            "items": [1, 2, 3],
            "flag": False,
        },
        "steps": {
            "choose": {
                "output": {"choice": "left", "reason": "shorter"},
                "status": "completed",
                "error": None,
            },
            "build-app": {
                "output": {"artifact": "app.tar.gz", "size": 10, "files": ["a.py", "b.py"]},
                "status": "completed",
                "error": None,
            },
            "fetch": {
                "output": {"status": 200, "body": {"items": [{"id": 7}, {"id": 8}], "count": 2}},
                "status": "completed",
                "error": None,
            },
            "broken": {"output": None, "status": "failed", "error": "boom"},
        },
    }


@pytest.fixture
def ctx() -> dict[str, Any]:
    return make_context()


# --- evaluation ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("expr", "expected"),
    [
        ("inputs.n > 2", True),
        ("inputs.n >= 4", False),
        ("inputs.n == 3", True),
        ("inputs.n != 3", False),
        ("1 < inputs.n <= 3", True),
        ("inputs.name == 'Ann'", True),
        ('inputs.name == "Bob"', False),
        ("inputs.env in ['prod', 'staging']", True),
        ("'c' not in inputs.tags", True),
        ("inputs.n > 1 and inputs.env == 'prod'", True),
        ("inputs.n > 5 and inputs.env == 'prod'", False),
        ("inputs.n > 5 or inputs.env == 'prod'", True),
        ("not inputs.flag", True),
        ("not (inputs.n == 3)", False),
        ("inputs.n + 1", 4),
        ("inputs.n * 2 - 1", 5),
        ("inputs.limits.cpu", 2),
        ("inputs.limits['mem']", "4Gi"),
        ("inputs['limits']['cpu']", 2),
        ("inputs.tags[0]", "a"),
        ("inputs.tags[-1]", "b"),
        ("inputs.items[1:]", [2, 3]),
        ("len(inputs.tags)", 2),
        ("max(inputs.items)", 3),
        ("lower(inputs.name)", "ann"),
        ("upper(inputs.env)", "PROD"),
        ("contains(inputs.tags, 'b')", True),
        ("steps.choose.output.choice == 'left'", True),
        ("steps.choose.output.choice == 'right'", False),
        ("steps.choose.status == 'completed'", True),
        ("steps.broken.error", "boom"),
        ("steps.broken.output == null", True),
        ("inputs.n if true else 0", 3),
    ],
)
def test_evaluate_supported_forms(ctx: dict[str, Any], expr: str, expected: Any) -> None:
    assert evaluate(expr, ctx) == expected


@pytest.mark.parametrize(
    ("expr", "expected"),
    [
        ("true", True),
        ("false", False),
        ("null", None),
        ("none", None),
        ("True", True),
        ("None", None),
    ],
)
def test_literals(expr: str, expected: Any) -> None:
    assert evaluate(expr, {}) is expected


def test_step_ids_with_dashes_are_one_name_not_a_subtraction(ctx: dict[str, Any]) -> None:
    assert evaluate("steps.build-app.output.artifact", ctx) == "app.tar.gz"
    assert evaluate("steps.build-app.output.size - 1", ctx) == 9
    assert evaluate("steps.build-app.output.size-1", ctx) == 9
    assert evaluate("steps.build-app.output.files[1]", ctx) == "b.py"
    assert evaluate("steps['build-app'].output['size']", ctx) == 10


def test_normalise_rewrites_only_step_references() -> None:
    assert normalise("steps.build-app.output") == "steps['build-app'].output"
    assert normalise("inputs.x - 1") == "inputs.x - 1"


def test_string_literal_that_mentions_steps_is_left_alone(ctx: dict[str, Any]) -> None:
    ctx["inputs"]["next"] = "steps.build-app"
    assert evaluate("inputs.next == 'steps.build-app'", ctx) is True
    assert evaluate('inputs.next != "steps.other"', ctx) is True
    assert evaluate("steps.choose.output.choice + ' then steps.x'", ctx) == "left then steps.x"


def test_keys_named_like_dict_methods_read_the_data(ctx: dict[str, Any]) -> None:
    # an HTTP body {"items": [...], "count": 2} is common; `.items` must be that list
    assert evaluate("steps.fetch.output.body.items[0].id", ctx) == 7
    assert evaluate("len(steps.fetch.output.body.items)", ctx) == 2
    assert evaluate("steps.fetch.output.body.count", ctx) == 2
    assert evaluate("inputs.items[0] + 1", ctx) == 2
    ctx["inputs"]["keys"] = ["k"]
    ctx["inputs"]["values"] = [1]
    ctx["inputs"]["get"] = "got"
    assert evaluate("inputs.keys[0]", ctx) == "k"
    assert evaluate("inputs.values", ctx) == [1]
    assert evaluate("inputs.get", ctx) == "got"


def test_attribute_and_index_access_agree(ctx: dict[str, Any]) -> None:
    assert evaluate("steps.fetch.output.body", ctx) == evaluate(
        "steps['fetch']['output']['body']", ctx
    )


def test_evaluate_condition_is_a_bool(ctx: dict[str, Any]) -> None:
    assert evaluate_condition("inputs.tags", ctx) is True
    assert evaluate_condition("inputs.flag", ctx) is False
    assert evaluate_condition("null", ctx) is False
    assert evaluate_condition("steps.choose.output.choice", ctx) is True


@pytest.mark.parametrize(
    "expr",
    [
        "inputs.missing",
        "inputs.limits.gpu",
        "steps.nope.output",
        "inputs.tags[5]",
        "1 / 0",
        "unknown_name",
        "inputs.n + 'x'",
    ],
)
def test_evaluation_errors_are_expression_errors(ctx: dict[str, Any], expr: str) -> None:
    with pytest.raises(ExpressionError) as e:
        evaluate(expr, ctx)
    assert expr in str(e.value)


@pytest.mark.parametrize("expr", ["inputs.n >", "(inputs.n", "inputs..n", "import os", "x = 1", ""])
def test_syntax_errors_say_cannot_parse(expr: str) -> None:
    with pytest.raises(ExpressionError, match="cannot parse"):
        evaluate(expr, {"inputs": {"n": 1}})


def test_too_long_expression_is_refused() -> None:
    expr = "1 + " * (MAX_EXPRESSION_LENGTH // 4 + 1) + "1"
    with pytest.raises(ExpressionError, match="longer than"):
        evaluate(expr, {})


# --- what is refused -----------------------------------------------------------------


@pytest.mark.parametrize(
    "expr",
    [
        "inputs.__class__",
        "inputs.n.__class__",
        "().__class__.__bases__",
        "inputs.name.__class__.__mro__",
        "steps.choose.output.__dict__",
        "inputs.tags.__len__()",
        "''.__class__.__subclasses__()",
        "inputs.limits.__getitem__('cpu')",
        "lower.__globals__",
    ],
)
def test_dunder_access_is_refused(ctx: dict[str, Any], expr: str) -> None:
    with pytest.raises(ExpressionError):
        evaluate(expr, ctx)


@pytest.mark.parametrize(
    "expr",
    [
        "__import__('os')",
        "__import__('os').system('true')",
        "open('/etc/passwd')",
        "eval('1 + 1')",
        "exec('x = 1')",
        "compile('1', 'f', 'eval')",
        "getattr(inputs, 'n')",
        "globals()",
        "locals()",
        "type(inputs)",
        "vars(inputs)",
        "setattr(inputs, 'n', 1)",
        "print('x')",
        "input()",
        "breakpoint()",
    ],
)
def test_calling_names_outside_the_whitelist_is_refused(ctx: dict[str, Any], expr: str) -> None:
    with pytest.raises(ExpressionError):
        evaluate(expr, ctx)


@pytest.mark.parametrize("expr", ["import os", "from os import system", "lambda: 1", "(x := 1)"])
def test_statements_lambdas_and_assignment_are_refused(expr: str) -> None:
    with pytest.raises(ExpressionError):
        evaluate(expr, {})


def test_str_format_escape_hatch_is_refused(ctx: dict[str, Any]) -> None:
    with pytest.raises(ExpressionError):
        evaluate("'{0.__class__}'.format(inputs)", ctx)
    with pytest.raises(ExpressionError):
        evaluate("inputs.name.format_map(inputs)", ctx)


@pytest.mark.parametrize(
    "expr",
    [
        "inputs.tags.append('x')",
        "inputs.tags.pop()",
        "inputs.tags.clear()",
        "inputs.items.sort(reverse=true)",
        "inputs.limits.update({'cpu': 99})",
        "inputs.limits.pop('cpu')",
        "inputs.limits.clear()",
        "inputs.limits.setdefault('x', 1)",
        "steps.fetch.output.body.items.reverse()",
        "steps.choose.output.popitem()",
    ],
)
def test_expressions_cannot_change_inputs_or_outputs(ctx: dict[str, Any], expr: str) -> None:
    before = copy.deepcopy(ctx)
    with pytest.raises(ExpressionError):
        evaluate(expr, ctx)
    assert ctx == before


def test_huge_results_are_refused() -> None:
    with pytest.raises(ExpressionError):
        evaluate("'a' * 10000000000", {})
    with pytest.raises(ExpressionError):
        evaluate("2 ** 100000000", {})


# --- limits: conditions run inside workflow code ---------------------------------------
#
# An expression that raises anything but ExpressionError, hangs, or answers differently on
# another process would fail the workflow task on every retry (or break replay): each of
# these is refused with an ExpressionError, or by validation before the plan starts.

NOOP: dict[str, ToolSpec] = {
    "noop": ToolSpec(name="noop", description="does nothing", params_schema={"type": "object"})
}


def condition_problems(expr: str, inputs: dict[str, Any] | None = None) -> list[Problem]:
    """What validation says of a plan whose one step has ``when: expr``."""
    plan = Plan.model_validate(
        {"id": "p1", "inputs": inputs or {}, "steps": [{"id": "a", "tool": "noop", "when": expr}]}
    )
    return validate_plan(plan, NOOP)


def evaluate_in_subprocess(expr: str, timeout: float) -> str:
    code = (
        "import sys\n"
        "from plans.expressions import evaluate, ExpressionError\n"
        "try:\n"
        "    v = evaluate(sys.argv[1], {'inputs': {}, 'steps': {}})\n"
        "    print('VALUE', type(v).__name__, len(v) if hasattr(v, '__len__') else '')\n"
        "except ExpressionError as e:\n"
        "    print('REFUSED', e)\n"
    )
    try:
        out = subprocess.run(
            [sys.executable, "-c", code, expr],
            capture_output=True,
            text=True,
            timeout=timeout,
            cwd=str(ROOT),
        )
    except subprocess.TimeoutExpired:
        return "TIMEOUT"
    return (out.stdout + out.stderr).strip()


def test_template_that_overflows_is_an_expression_error() -> None:
    """Rendering a step's params (workflow code) only catches ExpressionError."""
    with pytest.raises(ExpressionError):
        render({"n": "{{ int(1e400) }}"}, {"inputs": {}, "steps": {}})


@pytest.mark.parametrize(
    ("expr", "by_validation"),
    [
        ("4000000 ** 4000000 > 0", True),  # both operands pass safe_power's limit
        ("len(sum([[1] * 99999] * 9999, [])) > 0", True),  # quadratic list concat
        # .replace is not available at all (refused at run time, like any such method)
        ("len(('x' * 100000).replace('x', 'y' * 100000)) > 0", False),
    ],
)
def test_expensive_expressions_are_refused_quickly(expr: str, by_validation: bool) -> None:
    """A condition taking more than 2 s trips the workflow's deadlock detector: the
    evaluator refuses these at once; a constant one over the budget is refused by
    validation first."""
    problems = condition_problems(expr)
    assert [p.location for p in problems] == (["steps[0].when"] if by_validation else [])
    result = evaluate_in_subprocess(expr, timeout=5)
    assert result.startswith("REFUSED"), result


def test_str_methods_cannot_build_huge_strings() -> None:
    """``'a' * 10**8`` is refused by the size limit, and so is a str method that would
    build a 100 MB string inside the workflow worker."""
    expr = "len('a'.ljust(10**8)) > 0"
    assert condition_problems(expr) == []  # .ljust is refused when evaluated
    with pytest.raises(ExpressionError):
        evaluate(expr, {"inputs": {}, "steps": {}})


@pytest.mark.parametrize("expr", ["-" * 1500 + "1 > 0", "str({inputs.a, inputs.b})[2] == 'l'"])
def test_deeply_nested_and_set_expressions_are_refused_by_validation(expr: str) -> None:
    problems = condition_problems(expr, inputs={"a": "left", "b": "right"})
    assert [p.location for p in problems] == ["steps[0].when"], problems


def test_a_condition_gives_the_same_answer_in_every_worker_process() -> None:
    """Sets iterate in a hash order that differs per process (PYTHONHASHSEED): a condition
    built on one could take different branches on different workers. They are refused,
    and the refusal is the same everywhere."""
    expr = "str({inputs.a, inputs.b})[2] == 'l'"
    code = (
        "from plans.expressions import evaluate, ExpressionError\n"
        "try:\n"
        f"    print(evaluate({expr!r}, {{'inputs': {{'a': 'left', 'b': 'right'}}, 'steps': {{}}}}))\n"
        "except ExpressionError as e:\n"
        "    print('refused:', e)\n"
    )
    results = set()
    for hash_seed in range(4):
        out = subprocess.run(
            [sys.executable, "-c", code],
            capture_output=True,
            text=True,
            cwd=str(ROOT),
            env={"PYTHONHASHSEED": str(hash_seed), "PATH": "/usr/bin:/bin"},
        )
        results.add(out.stdout.strip() or out.stderr.strip()[-200:])
    assert len(results) == 1, f"same condition, different results per process: {results}"
    assert next(iter(results)).startswith("refused:")


# --- references ----------------------------------------------------------------------


def test_references_find_inputs_and_steps() -> None:
    refs = references(
        "inputs.n > 1 and steps.build-app.output.size > 2 or steps['x'].status == 'failed'"
    )
    assert set(refs) == {
        Reference(root="inputs", key="n"),
        Reference(root="steps", key="build-app", field="output"),
        Reference(root="steps", key="x", field="status"),
    }


def test_references_skip_function_names_and_report_unknown_roots() -> None:
    assert references("len(inputs.tags) > 0") == [Reference(root="inputs", key="tags")]
    assert Reference(root="foo", key="bar") in references("foo.bar")
    assert references("steps") == [Reference(root="steps", key=None)]


def test_references_raise_on_syntax_error() -> None:
    with pytest.raises(ExpressionError):
        references("steps.a.output ==")


# --- templates -----------------------------------------------------------------------


def test_whole_string_template_keeps_the_type(ctx: dict[str, Any]) -> None:
    assert render("{{ inputs.n }}", ctx) == 3
    assert render("{{ inputs.tags }}", ctx) == ["a", "b"]
    assert render("{{ inputs.limits }}", ctx) == {"cpu": 2, "mem": "4Gi"}
    assert render("{{ inputs.flag }}", ctx) is False
    assert render("{{ null }}", ctx) is None
    assert render("{{inputs.n}}", ctx) == 3
    assert render("  {{ inputs.n }}  ", ctx) == 3
    assert render("{{ steps.build-app.output.files }}", ctx) == ["a.py", "b.py"]


def test_interpolation_inside_a_string(ctx: dict[str, Any]) -> None:
    assert render("hello {{ inputs.name }}!", ctx) == "hello Ann!"
    assert render("n={{ inputs.n }}", ctx) == "n=3"
    assert render("{{ inputs.n }}{{ inputs.n }}", ctx) == "33"
    assert render("{{ inputs.name }} in {{ inputs.env }}", ctx) == "Ann in prod"
    assert render("app-{{ steps.build-app.output.artifact }}", ctx) == "app-app.tar.gz"


def test_interpolated_containers_and_literals_are_json(ctx: dict[str, Any]) -> None:
    assert render("tags={{ inputs.tags }}", ctx) == 'tags=["a", "b"]'
    assert render("limits: {{ inputs.limits }}", ctx) == 'limits: {"cpu": 2, "mem": "4Gi"}'
    assert render("flag={{ inputs.flag }} none={{ null }}", ctx) == "flag=false none=null"


def test_render_nested_dicts_and_lists(ctx: dict[str, Any]) -> None:
    params = {
        "url": "https://x/{{ inputs.env }}/items",
        "json": {
            "count": "{{ inputs.n }}",
            "choice": "{{ steps.choose.output.choice }}",
            "list": ["{{ inputs.tags }}", "literal", 5, {"deep": "{{ inputs.limits.cpu }}"}],
        },
        "timeout_s": 3.5,
        "enabled": True,
        "nothing": None,
    }
    assert render(params, ctx) == {
        "url": "https://x/prod/items",
        "json": {"count": 3, "choice": "left", "list": [["a", "b"], "literal", 5, {"deep": 2}]},
        "timeout_s": 3.5,
        "enabled": True,
        "nothing": None,
    }


def test_render_leaves_the_template_untouched(ctx: dict[str, Any]) -> None:
    params = {"a": ["{{ inputs.n }}"], "b": "x {{ inputs.name }}"}
    before = copy.deepcopy(params)
    render(params, ctx)
    assert params == before


def test_render_without_templates_is_identity(ctx: dict[str, Any]) -> None:
    params = {"a": "plain", "b": [1, "two", {"c": None}], "d": "{ not a template }"}
    assert render(params, ctx) == params


def test_render_error_names_the_expression(ctx: dict[str, Any]) -> None:
    with pytest.raises(ExpressionError, match=r"inputs\.nope"):
        render({"a": ["x {{ inputs.nope }}"]}, ctx)
    with pytest.raises(ExpressionError):
        render("{{ __import__('os') }}", ctx)


def test_iter_templates_locates_each_template() -> None:
    params = {
        "url": "{{ inputs.u }}/x/{{ inputs.v }}",
        "json": {"list": ["a", "{{ steps.s.output }}"]},
        "n": 1,
    }
    assert list(iter_templates(params, "steps[3].params")) == [
        ("steps[3].params.url", "inputs.u"),
        ("steps[3].params.url", "inputs.v"),
        ("steps[3].params.json.list[1]", "steps.s.output"),
    ]


# --- properties ----------------------------------------------------------------------

json_scalars = st.none() | st.booleans() | st.integers(-(10**6), 10**6) | st.text(max_size=20)
json_values = st.recursive(
    json_scalars,
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=12,
)


@settings(max_examples=150, deadline=None)
@given(value=json_values)
def test_whole_template_round_trips_any_json_value(value: Any) -> None:
    assert render("{{ inputs.v }}", {"inputs": {"v": value}}) == value


@settings(max_examples=150, deadline=None)
@given(value=json_values)
def test_render_without_templates_returns_equal_value(value: Any) -> None:
    if "{{" in repr(value):
        return
    assert render(value, {}) == value


@settings(max_examples=150, deadline=None)
@given(a=st.integers(-1000, 1000), b=st.integers(-1000, 1000))
def test_comparisons_agree_with_python(a: int, b: int) -> None:
    c = {"inputs": {"a": a, "b": b}}
    assert evaluate("inputs.a < inputs.b", c) is (a < b)
    assert evaluate("inputs.a == inputs.b or inputs.a > inputs.b", c) is (a >= b)
    assert evaluate("not (inputs.a != inputs.b)", c) is (a == b)


@settings(max_examples=150, deadline=None)
@given(text=st.text(alphabet=st.characters(blacklist_categories=("Cs",)), max_size=30))
def test_plain_text_is_rendered_verbatim(text: str) -> None:
    if "{{" in text:
        return
    assert render(text, {}) == text

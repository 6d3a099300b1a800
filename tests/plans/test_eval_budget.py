"""The evaluation budget of expressions, templates and conditions (plans/expressions.py,
the evaluator in plans/safe_eval.py, the limits in plans/expression_limits.py),
and what validation refuses of it (no Temporal).

Each hostile expression is evaluated in a subprocess with an address-space limit and a
timeout, so a regression fails the test instead of taking the machine down."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from contracts.tools import catalog
from plans.expressions import (
    MAX_OPERATIONS,
    MAX_RENDERED_SIZE,
    MAX_VALUE_SIZE,
    Budget,
    BudgetExceeded,
    ExpressionError,
    evaluate,
    references,
    render,
)
from plans.models import Plan
from plans.validation import validate_plan

ROOT = Path(__file__).resolve().parents[2]

# The three: a 2 GB string, a 10 GB str() of a shared list, ~45 s of sorting.
FORMAT = "'%2000000000d' % 1"
REPEAT = "str([('x'*100000)]*100000)"
SORTS = "[len(sorted('x'*100000)) for c in 'y'*10000]"
HOSTILE = [FORMAT, REPEAT, SORTS]


def evaluate_bounded(expr: str, context: dict[str, Any], timeout: float = 10) -> tuple[str, float]:
    """Evaluate in a child limited to 1 GB of address space: (outcome, seconds)."""
    code = (
        "import json, resource, sys, time\n"
        "resource.setrlimit(resource.RLIMIT_AS, (1_000_000_000, 1_000_000_000))\n"
        "from plans.expressions import evaluate, BudgetExceeded, ExpressionError\n"
        "ctx = json.loads(sys.argv[2])\n"
        "t = time.monotonic()\n"
        "try:\n"
        "    v = evaluate(sys.argv[1], ctx)\n"
        "    out = 'VALUE ' + type(v).__name__\n"
        "except BudgetExceeded as e:\n"
        "    out = 'BUDGET ' + str(e)\n"
        "except ExpressionError as e:\n"
        "    out = 'ERROR ' + str(e)\n"
        "print(round(time.monotonic() - t, 3), out)\n"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code, expr, json.dumps(context)],
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=str(ROOT),
    )
    seconds, _, out = proc.stdout.strip().partition(" ")
    assert out, proc.stderr[-500:]
    return out, float(seconds)


@pytest.mark.parametrize("expr", HOSTILE)
def test_the_hostile_expressions_stop_at_the_budget_within_a_second(expr: str) -> None:
    out, seconds = evaluate_bounded(expr, {"inputs": {}, "steps": {}})
    assert out.startswith("BUDGET"), out
    assert "limit" in out, out
    assert seconds < 1.0, (expr, seconds)


@pytest.mark.parametrize(
    "expr",
    [
        "steps.src.output.fmt % 1",
        "str([(steps.src.output.x * steps.src.output.n)] * steps.src.output.n)",
        "[len(sorted(steps.src.output.x * steps.src.output.n)) for c in steps.src.output.x * 10000]",
        "f'{1:>{steps.src.output.n * 20000}}'",  # a width from the run
        "'%*d' % (steps.src.output.n * 20000, 1)",  # a width from the arguments
        "[steps.src.output] * 1000000",  # shared references counted in full
        "[[steps.src.output.x * 1000] * 1000 for c in steps.src.output.x * 10000]",
    ],
)
def test_the_same_built_from_a_step_output_stop_at_run_time(expr: str) -> None:
    ctx = {"steps": {"src": {"output": {"fmt": "%2000000000d", "x": "x", "n": 100000}}}}
    out, seconds = evaluate_bounded(expr, ctx)
    assert out.startswith("BUDGET"), out
    assert seconds < 1.0, (expr, seconds)


def test_the_limits_are_named() -> None:
    with pytest.raises(BudgetExceeded, match=f"more than {MAX_VALUE_SIZE} characters or items"):
        evaluate(FORMAT, {})
    with pytest.raises(BudgetExceeded, match=f"limit of {MAX_OPERATIONS} operations"):
        evaluate("[len(sorted(inputs.s)) for c in inputs.s]", {"inputs": {"s": "x" * 5000}})


@pytest.mark.parametrize(
    ("expr", "expected"),
    [
        ("'%s-%03d' % (inputs.name, 7)", "ann-007"),
        ("f'{inputs.n:>5}'", "    3"),
        ("len(str(inputs.items * 1000))", len(str([1, 2, 3] * 1000))),
        ("sorted(inputs.items, reverse=true)", [3, 2, 1]),
        ("[x * 2 for x in inputs.items if x > 1]", [4, 6]),
        ("len([c for c in 'y' * 9000])", 9000),
        ("'x' * 200000 == 'x' * 200000", True),
        ("inputs.name.upper() + '!' * 3", "ANN!!!"),
    ],
)
def test_ordinary_expressions_are_unchanged(expr: str, expected: Any) -> None:
    assert evaluate(expr, {"inputs": {"name": "ann", "n": 3, "items": [1, 2, 3]}}) == expected


def test_a_steps_templates_share_one_budget_and_name_their_place() -> None:
    """One template within the budget is fine; a step of many is stopped as a whole (a
    step's rendering runs in one workflow activation), and the error says where."""
    one = "{{ len([len(sorted(inputs.s)) for c in inputs.t]) }}"
    ctx = {"inputs": {"s": "x" * 2000, "t": "y" * 150}}
    assert render({"a": one}, ctx) == {"a": 150}
    with pytest.raises(BudgetExceeded, match=r"^params\.p\d+: .*operations") as e:
        render({f"p{i}": one for i in range(40)}, ctx)
    assert "params.p" in str(e.value)


def test_rendered_params_together_are_bounded() -> None:
    big = "x" * (MAX_RENDERED_SIZE // 2 + 10)
    with pytest.raises(BudgetExceeded, match="rendered params"):
        render({"a": "{{ inputs.big }}", "b": "{{ inputs.big }}"}, {"inputs": {"big": big}})


def test_an_explicit_budget_is_spent_across_evaluations() -> None:
    budget = Budget(operations=100)
    evaluate("1 + 1", {}, budget)
    left = budget.left
    assert left < 100
    with pytest.raises(BudgetExceeded):
        for _ in range(100):
            evaluate("1 + 1 + 1", {}, budget)


def test_memory_and_recursion_errors_become_budget_errors() -> None:
    """Workflow code (render, conditions) catches ExpressionError: a MemoryError escaping
    would fail the workflow task; here one is forced by a 200 MB address-space cap."""
    code = (
        "import resource\n"
        "from plans.expressions import evaluate, ExpressionError\n"
        "ctx = {'inputs': {'s': 'x' * 900_000}}\n"
        "resource.setrlimit(resource.RLIMIT_AS, (resource.getrusage(resource.RUSAGE_SELF)"
        ".ru_maxrss * 1024 + 30_000_000,) * 2)\n"
        "try:\n"
        "    evaluate('[inputs.s + str(c) for c in inputs.s[:50]]', ctx)\n"
        "    print('VALUE')\n"
        "except ExpressionError as e:\n"
        "    print(type(e).__name__, e)\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=30, cwd=str(ROOT)
    )
    assert out.stdout.startswith("BudgetExceeded"), out.stdout + out.stderr[-400:]


# --- validation ------------------------------------------------------------------------


def one_step_plan(**step: Any) -> Plan:
    return Plan.model_validate(
        {
            "id": "p1",
            "inputs": {"n": 3},
            "steps": [
                {"id": "src", "tool": "transform", "params": {"data": 1, "expression": "@"}},
                {"id": "hostile", "tool": "transform", "depends_on": ["src"], **step},
            ],
        }
    )


@pytest.mark.parametrize("expr", HOSTILE)
def test_validation_refuses_the_literal_forms_naming_step_field_and_limit(expr: str) -> None:
    for plan, where in [
        (one_step_plan(params={"data": f"{{{{ {expr} }}}}", "expression": "@"}), "params.data"),
        (one_step_plan(params={"data": 1, "expression": "@"}, when=expr), "when"),
    ]:
        began = time.monotonic()
        problems = validate_plan(plan, catalog())
        assert time.monotonic() - began < 2
        assert [p.location for p in problems] == [f"steps[1].{where}"], problems
        message = problems[0].message
        assert "step 'hostile'" in message and "limit" in message, message


def test_validation_refuses_a_costly_check_expression() -> None:
    plan = Plan.model_validate(
        {
            "id": "p1",
            "steps": [
                {"id": "a", "tool": "transform", "params": {"data": 1, "expression": "@"}},
                {
                    "id": "check",
                    "kind": "validation",
                    "depends_on": ["a"],
                    "params": {"checks": [{"name": "x", "expr": f"len({REPEAT}) > 0"}]},
                },
            ],
        }
    )
    problems = validate_plan(plan, catalog())
    assert [p.location for p in problems] == ["steps[1].params.checks[0].expr"], problems


def test_validation_accepts_what_it_cannot_see_and_comprehension_variables() -> None:
    """The hostile value built from a step's output passes validation (the run-time
    budget stops it); a comprehension's own variable is not an unknown name."""
    for expr in [
        "steps.src.output % 1",
        "[x * 2 for x in steps.src.output if x > inputs.n]",
        "[(a, b) for a in steps.src.output for b in [1, 2]]",
    ]:
        plan = one_step_plan(params={"data": f"{{{{ {expr} }}}}", "expression": "@"})
        assert validate_plan(plan, catalog()) == [], expr
    assert [r.root for r in references("[x for x in inputs.l if x > y]")] == ["inputs", "y"]


def test_an_unknown_name_inside_a_comprehension_is_still_refused() -> None:
    plan = one_step_plan(
        params={"data": "{{ [x + y for x in steps.src.output] }}", "expression": "@"}
    )
    problems = validate_plan(plan, catalog())
    assert any("unknown name 'y'" in p.message for p in problems), problems


def test_an_error_that_is_no_budget_is_left_for_run_time() -> None:
    plan = one_step_plan(
        params={"data": "{{ 1 / 0 if steps.src.output else 0 }}", "expression": "@"}
    )
    assert validate_plan(plan, catalog()) == []
    with pytest.raises(ExpressionError):
        evaluate("1 / 0", {})

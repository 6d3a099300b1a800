"""Regressions from a review of the engine and the workflow: each test once failed.

Expressions that overflow, recurse or try to build huge values must fail the step (or be
refused by validation), never the workflow task; retries and skips must not lift a stop
they should not; resume keeps people's answers; conditions give the same value on every
worker process."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from plans.expressions import ExpressionError, evaluate
from plans.models import Plan, PlanStatus, StepStatus, ToolSpec
from plans.run_state import PlanRun, Refused, StepRun, new_run
from plans.scheduler import advance, record_cancelled, record_failure, record_success, stop
from plans.steering import apply_control, parse_control
from plans.validation import validate_plan

CATALOG: dict[str, ToolSpec] = {
    "noop": ToolSpec(
        name="noop",
        description="does nothing",
        params_schema={"type": "object", "properties": {"n": {}}, "additionalProperties": False},
    ),
}


class Drv:
    def __init__(self, steps: list[dict[str, Any]], inputs: dict | None = None, **options: Any):
        self.now = datetime(2024, 1, 1, tzinfo=UTC)
        plan = Plan.model_validate(
            {"id": "p1", "inputs": inputs or {}, "options": options, "steps": steps}
        )
        assert validate_plan(plan, CATALOG) == []  # the plan is accepted up front
        self.run: PlanRun = new_run(plan, self.now)
        self.control("approve", by="alice")

    def tick(self) -> datetime:
        self.now += timedelta(seconds=1)
        return self.now

    def control(self, name: str, **payload: Any) -> str:
        payload.setdefault("by", "op")
        return apply_control(self.run, name, parse_control(name, payload), self.tick(), CATALOG)

    def advance(self) -> list[str]:
        return advance(self.run, self.tick())

    def ok(self, sid: str) -> None:
        record_success(self.run, sid, {"step": sid}, 1, self.tick())

    def fail(self, sid: str) -> None:
        record_failure(self.run, sid, "boom", 1, self.tick())

    def st(self, sid: str) -> StepStatus:
        return self.run.steps[sid].status


def S(sid: str, *deps: str, **kw: Any) -> dict[str, Any]:
    return {"id": sid, "tool": "noop", "depends_on": list(deps), **kw}


# --- 1. expressions: exceptions the evaluator lets escape ----------------------------


@pytest.mark.parametrize(
    "expr",
    [
        "int(1e400) > 0",  # OverflowError
        "round(1e400) > 0",  # OverflowError
        "2.0 ** 5000 > 1",  # OverflowError
    ],
)
def test_review_condition_error_fails_the_step_instead_of_crashing_advance(expr: str) -> None:
    """A `when` that validates but raises something other than the caught exception types
    must fail the step (like any other bad condition), not escape from advance() -- in the
    workflow an escaping exception fails the workflow task forever and the plan hangs."""
    d = Drv([S("a", when=expr)])
    d.advance()  # actual: OverflowError / RecursionError escapes
    assert d.st("a") == StepStatus.FAILED
    assert "condition could not be evaluated" in (d.run.steps["a"].error or "")


def test_review_render_overflow_is_an_expression_error() -> None:
    """Template rendering (done in workflow code, _run_step) only catches ExpressionError."""
    from plans.expressions import render

    with pytest.raises(ExpressionError):
        render({"n": "{{ int(1e400) }}"}, {"inputs": {}, "steps": {}})


# --- 2. expressions: resource limits -------------------------------------------------


def _eval_in_subprocess(expr: str, timeout: float) -> str:
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
            cwd=str(Path(__file__).resolve().parent.parent),
        )
    except subprocess.TimeoutExpired:
        return "TIMEOUT"
    return (out.stdout + out.stderr).strip()


@pytest.mark.parametrize(
    "expr",
    [
        "4000000 ** 4000000 > 0",  # both operands pass safe_power's limit; minutes of CPU
        "len(sum([[1] * 99999] * 9999, [])) > 0",  # quadratic list concat, ~1e9 items
        "len(('x' * 100000).replace('x', 'y' * 100000)) > 0",  # a 10**10-char string
    ],
)
def test_review_expression_cannot_hang_the_evaluator(expr: str) -> None:
    """Conditions run inside workflow code: anything taking > 2 s trips the deadlock detector
    and the workflow task fails on every retry. The evaluator must refuse these quickly."""
    plan = Plan.model_validate({"id": "p1", "steps": [S("a", when=expr)]})
    assert validate_plan(plan, CATALOG) == []  # accepted up front
    result = _eval_in_subprocess(expr, timeout=5)
    assert result.startswith("REFUSED"), result


def test_review_expression_cannot_build_huge_strings_with_methods() -> None:
    """`'a' * 10**8` is refused (MAX_STRING_LENGTH=100000) but str methods are not limited:
    'a'.ljust(10**8) builds a 100 MB string inside the workflow worker."""
    expr = "len('a'.ljust(10**8)) > 0"
    assert (
        validate_plan(Plan.model_validate({"id": "p1", "steps": [S("a", when=expr)]}), CATALOG)
        == []
    )
    with pytest.raises(ExpressionError):
        evaluate(expr, {"inputs": {}, "steps": {}})


# --- 3. retry_step clears any stop reason --------------------------------------------


def test_review_deeply_nested_or_set_expressions_are_refused_up_front() -> None:
    for expr in ["-" * 1500 + "1 > 0", "str({inputs.a, inputs.b})[2] == 'l'"]:
        plan = Plan.model_validate(
            {"id": "p1", "inputs": {"a": "left", "b": "right"}, "steps": [S("x", when=expr)]}
        )
        problems = validate_plan(plan, CATALOG)
        assert [p.location for p in problems] == ["steps[0].when"], problems


def test_review_retry_step_after_total_timeout_does_not_defeat_the_timeout() -> None:
    """Total timeout fired (engine.stop, running steps being cancelled). One cancelled step is
    recorded while another is still finishing its cancellation; a retry_step on the
    cancelled one clears run.stopping and the plan goes on running -- past its total timeout."""
    d = Drv([S("a"), S("b"), S("c", "a"), S("d", "b")], on_error="continue")
    assert d.advance() == ["a", "b"]
    # what PlanWorkflow._total_timeout does:
    stop(d.run, "total timeout of 10s exceeded", d.tick())
    d.run.outcome = "total timeout of 10s exceeded"
    record_cancelled(d.run, "a", d.tick(), d.run.stopping or "")  # a's cancellation done
    d.advance()  # b still being cancelled
    with pytest.raises(Refused, match="the plan is stopping"):
        d.control("retry_step", step_id="a")
    started = d.advance()
    assert started == [], f"steps started after the total timeout fired: {started}"


def test_review_retry_one_failed_step_restarts_scheduling_despite_another_failure() -> None:
    """on_error=stop: a and b both failed while r runs. retry_step(a) clears run.stopping
    although b is still failed, so the independent step y starts -- on_error=stop no longer
    holds (y would have been skipped 'stopped' without the retry of an unrelated step)."""
    d = Drv([S("a"), S("b"), S("r"), S("y")], on_error="stop", max_parallel_steps=3)
    assert d.advance() == ["a", "b", "r"]
    d.fail("a")
    d.fail("b")
    d.advance()
    assert d.st("y") == StepStatus.PENDING  # waits for r, then is skipped (stopped)
    d.control("retry_step", step_id="a")
    started = d.advance()
    assert "y" not in started, "on_error=stop: b is still failed, no new step may start"


# --- 4. skip_step under on_error=continue ---------------------------------------------


def test_review_skip_failed_step_on_continue_lets_dependents_go_on() -> None:
    """skip_step answers 'its dependents go on', but under on_error=continue they were
    already skipped (upstream) and stay skipped."""
    d = Drv([S("a"), S("b", "a"), S("slow")], on_error="continue")
    assert d.advance() == ["a", "slow"]
    d.fail("a")
    d.advance()
    assert d.st("b") == StepStatus.SKIPPED  # upstream
    detail = d.control("skip_step", step_id="a", reason="not needed")
    assert "dependents go on" in detail
    started = d.advance()
    assert started == ["b"], f"b is {d.st('b')}"


# --- 5. resume from failure loses human input (PEERS: 'Reset loses human input') ------


def test_review_resume_from_failure_keeps_clarification_answer() -> None:
    plan = Plan.model_validate(
        {
            "id": "p1",
            "steps": [
                S("a", requires_clarification=True, clarification_question="Which region?"),
            ],
        }
    )
    now = datetime(2024, 1, 1, tzinfo=UTC)
    earlier = {
        "a": StepRun(id="a", status=StepStatus.FAILED, answered=True, answer="eu-west-1", error="x")
    }
    run = new_run(plan, now, earlier)
    run.approval_required = False
    apply_control(run, "approve", parse_control("approve", {"by": "alice"}), now, CATALOG)
    advance(run, now)
    s = run.steps["a"]
    assert s.status == StepStatus.RUNNING, f"the person is asked again: {s.status}"
    assert s.answer == "eu-west-1"


# --- workflow tests (local dev server) ----------------------------------------------

from tests.helpers import make_plan, start, status  # noqa: E402


async def _result_or_terminate(handle, seconds: float):
    try:
        return await asyncio.wait_for(handle.result(), seconds)
    except TimeoutError:
        try:
            st = await status(handle)
            seen = f"status {st.status}: {[(s.id, s.status.value, s.error) for s in st.steps]}"
        except Exception as e:  # RPCError: the workflow task is in failed state
            seen = f"query failed: {e}"
        await handle.terminate("review test cleanup")
        raise AssertionError(f"plan did not end within {seconds}s; {seen}") from None


async def test_review_wf_condition_overflow_plan_ends(client, worker, task_queue):
    """A validated plan whose `when` raises OverflowError: the step should fail and the plan
    end `failed`; actually the workflow task fails on every attempt and the plan hangs
    in `executing` forever."""
    plan = make_plan(
        [
            {
                "id": "a",
                "tool": "count",
                "params": {"key": uuid.uuid4().hex},
                "when": "int(1e400) > 0",
            }
        ]
    )
    handle = await start(client, plan, task_queue)
    res = await _result_or_terminate(handle, 15)
    assert res.status == PlanStatus.FAILED


async def test_review_wf_template_overflow_plan_ends(client, worker, task_queue):
    """Same, in a param template: _run_step only catches ExpressionError."""
    plan = make_plan([{"id": "a", "tool": "count", "params": {"key": "{{ str(int(1e400)) }}"}}])
    handle = await start(client, plan, task_queue)
    res = await _result_or_terminate(handle, 15)
    assert res.status == PlanStatus.FAILED


# --- determinism of conditions (they run in workflow code) ---------------------------


def test_review_condition_value_does_not_depend_on_the_worker_process() -> None:
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
    for seed in range(4):
        out = subprocess.run(
            [sys.executable, "-c", code],
            capture_output=True,
            text=True,
            cwd=str(Path(__file__).resolve().parent.parent),
            env={"PYTHONHASHSEED": str(seed), "PATH": "/usr/bin:/bin"},
        )
        results.add(out.stdout.strip() or out.stderr.strip()[-200:])
    assert len(results) == 1, f"same condition, different results per process: {results}"
    assert next(iter(results)).startswith("refused:")

"""The execution-plan format (Go field names or snake_case) read as a plan document."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from contracts.tools import catalog
from plans.execution_plan_import import is_execution_plan
from plans.models import OnError
from plans.plan_loading import PlanInvalid, load_document, parse_plan
from plans.validation import validate_plan

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "execution_plan.json"


def go_plan(**options: Any) -> dict[str, Any]:
    return {
        "ID": "deploy-app",
        "Description": "Deploy the app\nwith its tests first",
        "Steps": [
            {
                "ID": "tests",
                "Index": 0,
                "ToolName": "wait",
                "Description": "Run the tests",
                "Parameters": {"seconds": 0},
                "DependsOn": None,
                "MaxRetries": 3,
                "RetryDelayMs": 1500,
                "Status": "completed",
                "Result": {"ok": True},
                "DurationMs": 42,
            },
            {
                "ID": "deploy",
                "Index": 1,
                "ToolName": "wait",
                "Description": "Deploy",
                "Parameters": {"seconds": 0},
                "DependsOn": ["tests"],
            },
        ],
        "Options": {"RequireApproval": True, "StepTimeoutMs": 30000, **options},
        "Status": "executing",
        "CurrentStep": 1,
    }


def snake_plan(**options: Any) -> dict[str, Any]:
    return {
        "id": "deploy-app",
        "description": "Deploy the app\nwith its tests first",
        "steps": [
            {
                "id": "tests",
                "index": 0,
                "tool_name": "wait",
                "description": "Run the tests",
                "parameters": {"seconds": 0},
                "max_retries": 3,
                "retry_delay_ms": 1500,
            },
            {
                "id": "deploy",
                "tool_name": "wait",
                "description": "Deploy",
                "parameters": {"seconds": 0},
                "depends_on": ["tests"],
            },
        ],
        "options": {"require_approval": True, "step_timeout_ms": 30000, **options},
    }


def test_go_names_become_the_plan_document_in_seconds():
    plan = parse_plan(go_plan(ApprovalTimeoutMs=60000, TotalTimeoutMs=300000))
    assert (plan.id, plan.title) == ("deploy-app", "Deploy the app")
    assert plan.description == "Deploy the app\nwith its tests first"
    tests, deploy = plan.steps
    assert (tests.tool, tests.max_retries, tests.retry_delay_s) == ("wait", 3, 1.5)
    assert tests.depends_on == [] and deploy.depends_on == ["tests"]
    assert plan.options.step_timeout_s == 30
    assert plan.options.approval_timeout_s == 60
    assert plan.options.total_timeout_s == 300
    assert validate_plan(plan, catalog()) == []


def test_snake_case_names_make_the_same_plan():
    assert parse_plan(snake_plan()).digest() == parse_plan(go_plan()).digest()


@pytest.mark.parametrize(
    ("options", "on_error"),
    [
        ({}, OnError.STOP),
        ({"StopOnError": True}, OnError.STOP),
        ({"StopOnError": False}, OnError.CONTINUE),
        ({"StopOnError": True, "ContinueOnError": True}, OnError.CONTINUE),
        ({"ContinueOnError": False}, OnError.STOP),
    ],
)
def test_the_error_options_become_on_error(options: dict[str, Any], on_error: OnError):
    assert parse_plan(go_plan(**options)).options.on_error == on_error


def test_a_document_that_says_it_was_approved_is_not():
    """What the format records of a run is dropped: the approval it claims included."""
    doc = go_plan(AutoApprove=False)
    doc |= {"UserApproved": True, "ApprovedBy": "mallory", "ApprovedAt": "2026-01-01T00:00:00Z"}
    plan = parse_plan(doc)
    assert plan.options.require_approval is True and plan.options.auto_approve is False
    assert "mallory" not in json.dumps(plan.model_dump(mode="json"))


def test_go_zero_values_mean_not_set():
    plan = parse_plan(go_plan(ApprovalTimeoutMs=0, TotalTimeoutMs=0, MaxParallelSteps=0))
    assert plan.options.approval_timeout_s is None and plan.options.total_timeout_s is None
    assert plan.options.max_parallel_steps == 4  # the default


def test_every_problem_is_located_by_the_documents_own_names():
    doc = go_plan(StepTimeoutMs="30s", StopOnError="yes", Parallel=True)
    doc["Steps"][1]["ToolNme"] = "wait"
    doc["Steps"].append("not a step")
    doc["Owner"] = "x"
    with pytest.raises(PlanInvalid) as refused:
        parse_plan(doc)
    assert sorted(str(p) for p in refused.value.problems) == [
        "Options.Parallel: unknown field",
        "Options.StepTimeoutMs: must be a number of milliseconds",
        "Options.StopOnError: must be true or false",
        "Owner: unknown field",
        "Steps[1].ToolNme: unknown field",
        "Steps[2]: must be an object",
    ]


def test_a_step_without_an_id_gets_one_from_its_place():
    doc = go_plan()
    del doc["Steps"][0]["ID"]
    doc["Steps"][1]["DependsOn"] = ["step-1"]
    assert [s.id for s in parse_plan(doc).steps] == ["step-1", "deploy"]


def test_plan_documents_are_not_taken_for_execution_plans():
    for path in sorted(EXAMPLE.parent.glob("*.yaml")):
        assert not is_execution_plan(load_document(path.read_text())), path
    assert is_execution_plan(json.loads(EXAMPLE.read_text()))


def test_the_example_validates():
    plan = parse_plan(EXAMPLE.read_text())
    assert plan.id == "nightly-figures" and [s.id for s in plan.steps] == [
        "collect",
        "total",
        "publish",
    ]
    assert validate_plan(plan, catalog()) == []


@pytest.mark.parametrize("where", ["plan", "step"])
def test_an_id_with_a_trailing_newline_is_refused(where: str):
    """``$`` matches before a final newline: ids are checked whole (the REST path's
    pattern refuses them, so such a step could not be addressed)."""
    doc: dict[str, Any] = {
        "id": "p1",
        "steps": [{"id": "a", "tool": "wait", "params": {"seconds": 0}}],
    }
    if where == "plan":
        doc["id"] = "p1\n"
    else:
        doc["steps"][0]["id"] = "a\n"
    with pytest.raises(PlanInvalid) as refused:
        parse_plan(doc)
    assert refused.value.problems[0].location == ("id" if where == "plan" else "steps[0].id")

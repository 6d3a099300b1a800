"""``{{ secrets.NAME }}``: the workflow's rendering leaves it alone, and validation says
where a secret may not go and which names are unknown."""

from __future__ import annotations

from typing import Any

import pytest

from contracts.tools import catalog
from plans.expressions import render
from plans.models import Plan
from plans.secrets import referenced, secret_paths
from plans.validation import validate_plan


def plan(*steps: dict[str, Any], **inputs: Any) -> Plan:
    return Plan.model_validate({"id": "p", "inputs": inputs, "steps": list(steps)})


def problems(p: Plan, known: set[str] | None = None) -> list[str]:
    return [str(x) for x in validate_plan(p, catalog(), known)]


def http(params: dict[str, Any], **more: Any) -> dict[str, Any]:
    return {"id": "call", "tool": "http_request", "params": params, **more}


CTX = {"inputs": {"who": "alice", "inject": "{{ secrets.TOKEN }}"}, "steps": {}}


def test_render_leaves_a_secret_reference_as_it_is():
    params = {
        "url": "http://127.0.0.1:1/x?token={{ secrets.TOKEN }}&u={{ inputs.who }}",
        "headers": {"Authorization": "Bearer {{secrets.TOKEN}}", "X": "{{ secrets.OTHER }}"},
        "list": ["{{ secrets.A_1 }}", "{{ inputs.who }}"],
    }
    out = render(params, CTX)
    assert out == {
        "url": "http://127.0.0.1:1/x?token={{ secrets.TOKEN }}&u=alice",
        "headers": {"Authorization": "Bearer {{secrets.TOKEN}}", "X": "{{ secrets.OTHER }}"},
        "list": ["{{ secrets.A_1 }}", "alice"],
    }


def test_secret_paths_are_where_the_plan_itself_references_a_secret():
    params = {
        "url": "http://h/",
        "headers": {"Authorization": "Bearer {{ secrets.T }}"},
        "a": [1, "{{ secrets.U }}"],
    }
    assert [p for p, _ in secret_paths(params)] == [["headers", "Authorization"], ["a", 1]]


def test_a_valid_plan_with_secrets_and_its_references():
    p = plan(
        http(
            {
                "url": "http://127.0.0.1:1/?t={{ secrets.TOKEN }}",
                "headers": {"Authorization": "Bearer {{ secrets.API }}"},
            }
        )
    )
    assert problems(p) == []
    assert problems(p, {"TOKEN", "API"}) == []
    assert referenced(p) == [
        ("steps[0].params.url", "TOKEN"),
        ("steps[0].params.headers.Authorization", "API"),
    ]


def test_an_unknown_secret_is_named_where_it_is_used():
    p = plan(
        http(
            {
                "url": "http://127.0.0.1:1/",
                "headers": {"Authorization": "Bearer {{ secrets.TOKEN }}"},
            }
        )
    )
    assert problems(p, {"OTHER"}) == ["steps[0].params.headers.Authorization: unknown secret TOKEN"]


@pytest.mark.parametrize(
    ("step", "expected"),
    [
        (
            {"id": "ask", "kind": "llm", "params": {"prompt": "use {{ secrets.TOKEN }}"}},
            "steps[0].params: secrets may be used only in a tool step's params, never in a step "
            "of kind 'llm'",
        ),
        (
            {
                "id": "pick",
                "kind": "decision",
                "params": {"question": "{{ secrets.T }}?", "options": ["a", "b"]},
            },
            "never in a step of kind 'decision'",
        ),
        (
            http({"url": "http://127.0.0.1:1/"}, when="secrets.TOKEN == 'x'"),
            "steps[0].when: bad expression \"secrets.TOKEN == 'x'\": a condition or check cannot read a secret",
        ),
        (
            http({"url": "http://127.0.0.1:1/{{ secrets.TOKEN + 'x' }}"}),
            "steps[0].params.url: a secret is written {{ secrets.NAME }} on its own, not inside an expression",
        ),
        (
            http({"url": "http://127.0.0.1:1/?t={{ secrets.TOKEN }}&u={{ inputs.who }}"}),
            "steps[0].params.url: a string that uses a secret may hold no other template",
        ),
        (
            {"id": "code", "tool": "python", "params": {"code": "print('{{ secrets.TOKEN }}')"}},
            "steps[0].params: tool 'python' runs in its own activity (run_code), which is not given secrets",
        ),
    ],
)
def test_where_a_secret_may_not_go(step: dict[str, Any], expected: str):
    found = problems(plan(step, who="alice"))
    assert any(expected in f for f in found), found


def test_a_validation_check_cannot_read_a_secret():
    p = plan(
        {"id": "check", "kind": "validation", "params": {"checks": [{"expr": "secrets.T != ''"}]}}
    )
    assert any(
        f.startswith("steps[0].params.checks[0].expr:") and "cannot read a secret" in f
        for f in problems(p)
    )

"""The fast-path permission of a step (``fast``) and the declaration of a tool (``ToolSpec.fast``)."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from contracts.tools import catalog, define_tool
from plans.models import Plan
from plans.validation import validate_plan


def plan(**step: object) -> Plan:
    return Plan.model_validate(
        {
            "id": "fastflag",
            "steps": [
                {"id": "a", "tool": "transform", "params": {"data": 1, "expression": "@"}, **step}
            ],
        }
    )


def test_a_step_may_take_the_fast_path_unless_it_says_fast_false():
    assert plan().steps[0].fast is True
    assert plan(fast=False).steps[0].fast is False
    assert validate_plan(plan(fast=False), catalog()) == []


def test_fast_must_be_a_bool():
    with pytest.raises(ValidationError, match="fast"):
        plan(fast="sometimes")


def test_an_approved_digest_does_not_change_with_the_default_written_out():
    assert plan().digest() == plan(fast=True).digest()
    assert plan().digest() != plan(fast=False).digest()


def test_only_the_pure_built_in_declares_itself_fast():
    tools = catalog()
    assert tools["transform"].fast is True
    for io_tool in ("http_request", "wait", "python"):
        assert tools[io_tool].fast is False, io_tool


def test_a_tool_on_a_dedicated_pool_cannot_be_fast():
    with pytest.raises(ValueError, match="cannot have a dedicated activity or task queue"):
        define_tool(
            name="fast_elsewhere",
            description="x",
            params_schema={},
            task_queue="sandbox",
            fast=True,
        )
    assert "fast_elsewhere" not in catalog()


def test_a_step_is_found_by_id_even_after_the_list_changes_in_place():
    p = Plan.model_validate({"steps": [{"id": "a", "tool": "wait"}, {"id": "b", "tool": "wait"}]})
    assert p.step("b").id == "b"
    p.steps.reverse()
    assert p.step("b") is p.steps[0]
    p.steps.append(p.steps[0].model_copy(update={"id": "c"}))
    assert p.step("c") is p.steps[2]
    p.steps.pop()
    with pytest.raises(KeyError):
        p.step("c")
    p.steps[0] = p.steps[0].model_copy(update={"description": "new"})
    assert p.step("b").description == "new"
    copy = p.model_copy(update={"steps": [p.steps[1]]})
    assert copy.step("a") is p.steps[1]
    with pytest.raises(KeyError):
        copy.step("b")


def test_looking_steps_up_changes_neither_equality_nor_the_document():
    doc = {"id": "eq", "steps": [{"id": "a", "tool": "wait"}, {"id": "b", "tool": "wait"}]}
    looked, fresh = Plan.model_validate(doc), Plan.model_validate(doc)
    looked.step("b")
    assert looked == fresh
    assert looked.model_dump() == fresh.model_dump()

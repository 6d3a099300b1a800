"""Whole-document validation: every problem found, each with its location.

``steps[2].depends_on[0]: unknown step 'bulid' (did you mean 'build'?)``

This module checks what the fields of a document mean together: ids and dependencies,
each step's kind, tool and params, decision branches, expressions and templates, secret
references. Reading the document is :mod:`plans.plan_loading`, the dependency graph
:mod:`plans.dependency_graph`, the params' schemas :mod:`plans.step_params`; the names
callers use from those are re-exported here.
"""

from __future__ import annotations

import difflib
import re
from collections import Counter
from collections.abc import Collection, Container, Mapping
from contextvars import ContextVar
from typing import Any

import jsonschema

from plans.dependency_graph import Ancestry as Ancestry
from plans.dependency_graph import ancestors as ancestors
from plans.dependency_graph import find_cycles as find_cycles
from plans.expressions import (
    ROOT_NAMES,
    ExpressionError,
    budget_problem,
    iter_templates,
    references,
)
from plans.models import PYTHON_TOOL, Plan, Step, StepKind, ToolSpec
from plans.plan_loading import MAX_DOCUMENT_VALUES as MAX_DOCUMENT_VALUES
from plans.plan_loading import PlanInvalid as PlanInvalid
from plans.plan_loading import Problem as Problem
from plans.plan_loading import load_document as load_document
from plans.plan_loading import parse_plan as parse_plan
from plans.secrets import ROOT as SECRETS_ROOT
from plans.secrets import secret_problems
from plans.step_params import KIND_MESSAGES as KIND_MESSAGES
from plans.step_params import KIND_PARAMS as KIND_PARAMS
from plans.step_params import params_errors as params_errors

# A suggestion among many names costs a comparison with each: a document with thousands
# of unknown names among thousands of steps gets suggestions for the first few only.
SUGGESTIONS_AMONG_MANY = 100
_MANY = 64
_suggestions_left: ContextVar[list[int] | None] = ContextVar("suggestions_left", default=None)


def _did_you_mean(word: str, choices: Collection[str]) -> str:
    if len(choices) > _MANY:
        left = _suggestions_left.get()
        if left is not None:
            if left[0] <= 0:
                return ""
            left[0] -= 1
    close = difflib.get_close_matches(word, list(choices), n=1, cutoff=0.6)
    return f" (did you mean {close[0]!r}?)" if close else ""


DEFAULT_MAX_PLAN_STEPS = 10_000


def too_many_steps(count: int, max_steps: int | None) -> Problem | None:
    """The problem of a plan of ``count`` steps when at most ``max_steps`` are allowed."""
    if max_steps is None or count <= max_steps:
        return None
    return Problem(
        location="steps",
        message=f"a plan has at most {max_steps} steps (PLANSMITH_MAX_PLAN_STEPS); "
        f"this one has {count}",
    )


def validate_plan(
    plan: Plan,
    catalog: Mapping[str, ToolSpec],
    secrets: Collection[str] | None = None,
    *,
    max_steps: int | None = None,
) -> list[Problem]:
    """Every problem of the document against the tool catalog; empty means valid.

    ``secrets``: the names of the secrets that exist, where they are known (the worker);
    a reference to another one is then a problem. ``None``: names are not checked here.
    ``max_steps``: a plan with more steps is refused with that one problem (nothing else
    is checked); ``None``: no limit (the callers pass the configured one,
    ``PLANSMITH_MAX_PLAN_STEPS``). Linear in the size of the plan, never recursive.
    """
    over = too_many_steps(len(plan.steps), max_steps)
    if over is not None:
        return [over]
    token = _suggestions_left.set([SUGGESTIONS_AMONG_MANY])
    try:
        return _validate(plan, catalog, secrets)
    finally:
        _suggestions_left.reset(token)


def _validate(
    plan: Plan, catalog: Mapping[str, ToolSpec], secrets: Collection[str] | None
) -> list[Problem]:
    problems: list[Problem] = []

    def add(location: str, message: str) -> None:
        problems.append(Problem(location=location, message=message))

    if not plan.steps:
        add("steps", "a plan needs at least one step")

    index: dict[str, int] = {}
    for i, step in enumerate(plan.steps):
        if step.id in index:
            add(
                f"steps[{i}].id",
                f"duplicate step id {step.id!r} (first used at steps[{index[step.id]}])",
            )
        else:
            index[step.id] = i

    for i, step in enumerate(plan.steps):
        for j, dep in enumerate(step.depends_on):
            if dep == step.id:
                add(f"steps[{i}].depends_on[{j}]", f"step {step.id!r} depends on itself")
            elif dep not in index:
                add(
                    f"steps[{i}].depends_on[{j}]",
                    f"unknown step {dep!r}{_did_you_mean(dep, index)}",
                )
        if len(set(step.depends_on)) != len(step.depends_on):
            dupes = {d for d, n in Counter(step.depends_on).items() if n > 1}
            for d in sorted(dupes):
                add(f"steps[{i}].depends_on", f"{d!r} is listed more than once")

    anc = Ancestry(plan)
    for cycle in find_cycles(plan) if anc.has_cycle else []:
        first = cycle[0]
        add(
            f"steps[{index[first]}].depends_on",
            "dependency cycle: " + " -> ".join(cycle) + " (each step waits for the one before it)",
        )

    for i, step in enumerate(plan.steps):
        _check_kind(step, f"steps[{i}]", catalog, add)
        known = anc.of(step.id)
        if step.kind == StepKind.DECISION:
            _check_branches(step, f"steps[{i}]", plan, anc, index, add)
        if step.when is not None:
            _check_expression(step.when, f"steps[{i}].when", plan, step, known, index, add)
        for location, expr in iter_templates(step.params, f"steps[{i}].params"):
            _check_expression(expr, location, plan, step, known, index, add, template=True)
        if step.kind == StepKind.VALIDATION:
            for j, check in enumerate(_checks(step)):
                if isinstance(check, dict) and isinstance(check.get("expr"), str):
                    _check_expression(
                        check["expr"],
                        f"steps[{i}].params.checks[{j}].expr",
                        plan,
                        step,
                        known,
                        index,
                        add,
                    )
    for location, message in secret_problems(plan, catalog, secrets):
        add(location, message)
    return problems


def validate_or_raise(
    plan: Plan,
    catalog: Mapping[str, ToolSpec],
    secrets: Collection[str] | None = None,
    *,
    max_steps: int | None = None,
) -> Plan:
    problems = validate_plan(plan, catalog, secrets, max_steps=max_steps)
    if problems:
        raise PlanInvalid(problems)
    return plan


def _checks(step: Step) -> list[Any]:
    checks = step.params.get("checks")
    return checks if isinstance(checks, list) else []


def _check_kind(step: Step, where: str, catalog: Mapping[str, ToolSpec], add: Any) -> None:
    if step.kind == StepKind.TOOL:
        if not step.tool:
            add(f"{where}.tool", "a tool step must name a tool")
        elif step.tool not in catalog:
            known = ", ".join(sorted(catalog))
            add(
                f"{where}.tool",
                f"unknown tool {step.tool!r}{_did_you_mean(step.tool, catalog)}; known tools: {known}",
            )
        else:
            for path, message in params_errors(catalog[step.tool].params_schema, step.params):
                add(f"{where}.params{path}", message)
    elif step.tool is not None:
        add(f"{where}.tool", f"only tool steps name a tool (this step is kind {step.kind.value!r})")

    schema = KIND_PARAMS.get(step.kind)
    if schema is not None:
        for path, message in params_errors(schema, step.params):
            missing = _REQUIRED.match(message)
            if not path and missing:
                path = f".{missing.group(1)}"  # say which param is missing, where it goes
            if path.startswith(".options["):
                path = ".options"
            add(f"{where}.params{path}", KIND_MESSAGES.get((step.kind, path), message))
    if step.kind == StepKind.VALIDATION:
        if not _checks(step) and not step.params.get("judge"):
            add(
                f"{where}.params.checks",
                "a validation step needs 'checks': a non-empty list of {name?, expr} "
                "(or a 'judge' with criteria)",
            )
        if "on_unassessed" in step.params and not step.params.get("judge"):
            add(
                f"{where}.params.on_unassessed",
                "on_unassessed says what happens to judge criteria no model assessed; "
                "this step has no 'judge'",
            )
    elif step.kind == StepKind.CODE:
        if PYTHON_TOOL not in catalog:
            add(
                f"{where}.kind",
                f"a code step runs its code with the {PYTHON_TOOL!r} tool (the sandbox), "
                "which this catalog lacks",
            )
        if not step.description.strip() and not str(step.params.get("prompt", "")).strip():
            add(
                f"{where}.description",
                "a code step needs a description (or params.prompt): the code model "
                "writes the code for it",
            )
        _check_output_schema(step, where, add)
    elif step.kind == StepKind.LLM:
        tools = step.params.get("tools")
        for j, name in enumerate(tools if isinstance(tools, list) else []):
            if isinstance(name, str) and name not in catalog:
                add(
                    f"{where}.params.tools[{j}]",
                    f"unknown tool {name!r}{_did_you_mean(name, catalog)}; "
                    f"known tools: {', '.join(sorted(catalog))}",
                )
        _check_output_schema(step, where, add)
    if step.requires_clarification and not step.clarification_question:
        add(
            f"{where}.clarification_question",
            "requires_clarification needs a clarification_question",
        )


def _check_output_schema(step: Step, where: str, add: Any) -> None:
    out = step.params.get("output_schema")
    if isinstance(out, dict):
        try:
            jsonschema.Draft202012Validator.check_schema(out)
        except jsonschema.SchemaError as e:
            add(f"{where}.params.output_schema", f"not a valid JSON Schema: {e.message}")


_REQUIRED = re.compile(r"^'(\w+)' is a required property$")


def _check_branches(
    step: Step,
    where: str,
    plan: Plan,
    anc: Ancestry,
    index: Mapping[str, int],
    add: Any,
) -> None:
    """``branches`` maps an option to the steps that run only when it is chosen."""
    branches = step.params.get("branches")
    options = step.params.get("options")
    if not isinstance(branches, dict) or not isinstance(options, list):
        return
    for label, members in branches.items():
        loc = f"{where}.params.branches.{label}"
        if label not in options:
            add(loc, f"{label!r} is not one of the options {options}")
        for j, sid in enumerate(members if isinstance(members, list) else []):
            if not isinstance(sid, str):
                continue
            if sid not in index:
                add(f"{loc}[{j}]", f"unknown step {sid!r}{_did_you_mean(sid, index)}")
            elif not anc.waits_for(sid, step.id):
                add(
                    f"{loc}[{j}]",
                    f"step {sid!r} must depend on {step.id!r} (directly or not), "
                    "so that it waits for the choice",
                )


def _check_expression(
    expr: str,
    where: str,
    plan: Plan,
    step: Step,
    known: Container[str],
    index: Mapping[str, int],
    add: Any,
    template: bool = False,
) -> None:
    what = "template" if template else "expression"
    try:
        refs = references(expr)
        too_costly = budget_problem(expr)
    except ExpressionError as e:
        add(where, f"bad {what}: {e}")
        return
    if too_costly:
        add(where, f"bad {what} in step {step.id!r}: {too_costly}")
    for ref in refs:
        if ref.root == "inputs":
            if ref.key is not None and ref.key not in plan.inputs:
                add(
                    where,
                    f"bad {what} {{{{ {expr} }}}}: no input {ref.key!r}{_did_you_mean(ref.key, plan.inputs)}",
                )
        elif ref.root == "steps":
            if ref.key is None:
                add(where, f"bad {what} {expr!r}: name a step, as steps.<id>.output")
            elif ref.key not in index:
                add(
                    where,
                    f"bad {what} {expr!r}: unknown step {ref.key!r}{_did_you_mean(ref.key, index)}",
                )
            elif ref.key == step.id:
                add(where, f"bad {what} {expr!r}: a step cannot read its own output")
            elif ref.key not in known:
                add(
                    where,
                    f"bad {what} {expr!r}: step {ref.key!r} is not among the dependencies of "
                    f"{step.id!r}, so its output may not exist yet (add it to depends_on)",
                )
            elif ref.field not in (None, "output", "status", "error"):
                add(
                    where,
                    f"bad {what} {expr!r}: a step has 'output', 'status' and 'error', not {ref.field!r}",
                )
        elif ref.root == SECRETS_ROOT:
            if not template:  # templates: plans.secrets.secret_problems says what is wrong
                add(
                    where,
                    f"bad {what} {expr!r}: a condition or check cannot read a secret; "
                    "secrets go in a tool step's params as {{ secrets.NAME }}",
                )
        elif ref.root not in ROOT_NAMES:
            add(
                where,
                f"bad {what} {expr!r}: unknown name {ref.root!r} (use inputs.*, steps.<id>.output, answer or feedback)",
            )

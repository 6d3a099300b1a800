"""Whole-document validation: every problem found, each with its location.

``steps[2].depends_on[0]: unknown step 'bulid' (did you mean 'build'?)``
"""

from __future__ import annotations

import difflib
import re
from collections import Counter
from collections.abc import Collection, Container, Iterable, Iterator, Mapping
from contextvars import ContextVar
from functools import reduce
from itertools import repeat
from operator import or_
from typing import Any

import jsonschema
import yaml
from pydantic import BaseModel
from pydantic import ValidationError as PydanticValidationError

from plans.expressions import (
    ROOT_NAMES,
    ExpressionError,
    budget_problem,
    iter_templates,
    references,
)
from plans.models import Plan, Step, StepKind, ToolSpec
from plans.secrets import ROOT as SECRETS_ROOT
from plans.secrets import secret_problems


class Problem(BaseModel):
    location: str
    message: str

    def __str__(self) -> str:
        return f"{self.location}: {self.message}"


class PlanInvalid(ValueError):
    """The document was refused; ``problems`` lists every reason with its location."""

    def __init__(self, problems: list[Problem]):
        self.problems = problems
        lines = "\n".join(f"  - {p}" for p in problems)
        super().__init__(f"plan is invalid ({len(problems)} problem(s)):\n{lines}")


def _loc(parts: Iterable[Any]) -> str:
    out = ""
    for p in parts:
        if isinstance(p, int):
            out += f"[{p}]"
        else:
            out += f".{p}" if out else str(p)
    return out or "(document)"


# What one document may expand to once YAML aliases are followed: an alias bomb (an
# anchor of nine aliases of an anchor of nine aliases...) is small text but 9^9 values.
MAX_DOCUMENT_VALUES = 1_000_000


def _expanded_size(root: yaml.Node, limit: int) -> str | None:
    """Why the node graph is refused (None: fine): it expands to more than ``limit``
    values, or an alias refers to a node that contains it. Iterative, linear in the
    number of distinct nodes (each one's expanded size is computed once)."""
    size: dict[int, int] = {}
    on_path: set[int] = set()
    stack: list[tuple[yaml.Node, bool]] = [(root, False)]
    while stack:
        node, done = stack.pop()
        key = id(node)
        children: list[yaml.Node] = []
        if isinstance(node, yaml.SequenceNode):
            children = list(node.value)
        elif isinstance(node, yaml.MappingNode):
            children = [n for pair in node.value for n in pair]
        if done:
            on_path.discard(key)
            size[key] = 1 + sum(size[id(c)] for c in children)
            if size[key] > limit:
                return f"the document expands to more than {limit} values (YAML aliases)"
            continue
        if key in size:
            continue
        if key in on_path:
            return "a YAML alias refers to a value that contains it"
        on_path.add(key)
        stack.append((node, True))
        for child in children:
            if id(child) in on_path:
                return "a YAML alias refers to a value that contains it"
            if id(child) not in size:
                stack.append((child, False))
    return None


def _safe_load(text: str) -> Any:
    """``yaml.safe_load``, refusing documents whose aliases expand beyond
    :data:`MAX_DOCUMENT_VALUES` before anything is built."""
    loader = yaml.SafeLoader(text)
    try:
        node = loader.get_single_node()
        if node is None:
            return None
        why = _expanded_size(node, MAX_DOCUMENT_VALUES)
        if why is not None:
            raise _TooBig(why)
        return loader.construct_document(node)
    finally:
        loader.dispose()


class _TooBig(Exception):
    pass


def load_document(text: str, source: str = "<input>") -> dict[str, Any]:
    """Parse JSON or YAML text into a mapping, with a located error when it is neither."""
    try:
        data = _safe_load(text)
    except _TooBig as e:
        raise PlanInvalid([Problem(location=source, message=str(e))]) from None
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}" if mark else "unknown position"
        raise PlanInvalid(
            [Problem(location=source, message=f"not valid JSON/YAML at {where}: {e}")]
        ) from None
    except RecursionError:  # the parsers recurse once per level of nesting
        raise PlanInvalid(
            [Problem(location=source, message="the document is nested too deeply to be read")]
        ) from None
    if not isinstance(data, dict):
        raise PlanInvalid([Problem(location=source, message="a plan document must be an object")])
    return data


def parse_plan(data: Mapping[str, Any] | str) -> Plan:
    """Shape-check a document; every field error becomes a located :class:`Problem`."""
    if isinstance(data, str):
        data = load_document(data)
    try:
        return Plan.model_validate(data)
    except PydanticValidationError as e:
        problems = [
            Problem(location=_loc(err["loc"]), message=_pydantic_message(err))
            for err in e.errors(include_url=False)
        ]
        raise PlanInvalid(problems) from None


def _pydantic_message(err: Mapping[str, Any]) -> str:
    if err["type"] == "extra_forbidden":
        return "unknown field"
    if err["type"] == "missing":
        return "required field is missing"
    msg = str(err["msg"])
    return msg.removeprefix("Value error, ")


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


class Ancestry:
    """Which steps each step waits for, directly or not, as one bit set per step.

    Built in one pass over the dependencies (iterative: a chain of any length is fine),
    so a plan of *n* steps and *e* dependencies costs O(e) set unions of n bits each, in
    place of the n² sets of names a plain transitive closure would keep. Unknown ids and
    cycles are tolerated (a cycle is reported elsewhere; its members see what they can).
    """

    def __init__(self, plan: Plan):
        self.index: dict[str, int] = {}
        for s in plan.steps:
            self.index.setdefault(s.id, len(self.index))
        deps: dict[str, list[str]] = {}
        for s in plan.steps:
            known = [d for d in s.depends_on if d in self.index]
            if s.id in deps:  # a duplicate id (reported elsewhere): both lists count
                deps[s.id] += known
            else:
                deps[s.id] = known
        # closed[id]: the bits of its ancestors and its own; a DFS that pushes all the
        # dependencies of a step at once, and ORs theirs when it leaves the step.
        closed: dict[str, int] = {}
        gray: set[str] = set()  # entered, not left: the DFS path
        self.has_cycle = False
        for root in deps:
            if root in closed:
                continue
            stack: list[tuple[str, bool]] = [(root, False)]
            while stack:
                sid, leaving = stack.pop()
                if leaving:
                    gray.discard(sid)
                    # a dependency still on the path (a cycle) is not yet in ``closed``
                    acc = reduce(or_, map(closed.get, deps[sid], repeat(0)), 0)
                    closed[sid] = acc | 1 << self.index[sid]
                    continue
                if sid in closed:
                    continue
                if sid in gray:
                    self.has_cycle = True
                    continue
                gray.add(sid)
                stack.append((sid, True))
                stack.extend([(d, False) for d in deps[sid] if d not in closed])
        self.closed = closed

    def waits_for(self, step_id: str, other: str) -> bool:
        """Whether ``step_id`` runs only after ``other`` (a transitive dependency)."""
        i = self.index.get(other)
        return i is not None and other != step_id and bool(self.closed.get(step_id, 0) >> i & 1)

    def of(self, step_id: str) -> _Ancestors:
        return _Ancestors(self, step_id)


class _Ancestors(Container[str]):
    """The steps one step waits for, as something ``in`` answers."""

    def __init__(self, ancestry: Ancestry, step_id: str):
        self.ancestry, self.step_id = ancestry, step_id

    def __contains__(self, other: object) -> bool:
        return isinstance(other, str) and self.ancestry.waits_for(self.step_id, other)


def ancestors(plan: Plan) -> dict[str, set[str]]:
    """Transitive dependencies of each step, as sets of ids (unknown ids and cycles are
    tolerated). O(n²) in space for a long chain: validation uses :class:`Ancestry`."""
    a = Ancestry(plan)
    ids = list(a.index)
    return {
        sid: {ids[i] for i in range(bits.bit_length()) if bits >> i & 1 and ids[i] != sid}
        for sid, bits in a.closed.items()
    }


def find_cycles(plan: Plan) -> list[list[str]]:
    """Each elementary cycle found by DFS, as ``[a, b, ..., a]``; one per strongly tied group.

    Iterative and linear in the size of the graph: the position of each node on the DFS
    path is kept, and so is, for each position, the highest position at or below it that
    belongs to a cycle already reported (a later cycle through it is not reported again).
    """
    graph = {s.id: [d for d in s.depends_on if d != s.id] for s in plan.steps}
    color: dict[str, int] = {}  # 0 new, 1 on stack, 2 done
    cycles: list[list[str]] = []
    pos: dict[str, int] = {}  # position on the path of each node on the stack
    seen_upto: list[int] = []  # per path position: highest reported position <= it, or -1

    for root in graph:
        if color.get(root):
            continue
        stack: list[tuple[str, Iterator[str]]] = [(root, iter(graph[root]))]
        path = [root]
        pos[root] = 0
        seen_upto.append(-1)
        color[root] = 1
        while stack:
            node, it = stack[-1]
            advanced = False
            for nxt in it:
                if nxt not in graph:
                    continue
                if color.get(nxt, 0) == 0:
                    color[nxt] = 1
                    pos[nxt] = len(path)
                    seen_upto.append(seen_upto[-1])
                    path.append(nxt)
                    stack.append((nxt, iter(graph[nxt])))
                    advanced = True
                    break
                if color.get(nxt) == 1:
                    start = pos[nxt]
                    if seen_upto[-1] < start:  # no member already in a reported cycle
                        cyc = path[start:]
                        for k in range(start, len(path)):
                            seen_upto[k] = k
                        # Show it in execution order: a runs before b runs before ... a.
                        order = list(reversed(cyc))
                        cycles.append([*order, order[0]])
            if not advanced:
                color[node] = 2
                stack.pop()
                path.pop()
                seen_upto.pop()
                del pos[node]
    return cycles


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
    elif step.kind == StepKind.LLM:
        tools = step.params.get("tools")
        for j, name in enumerate(tools if isinstance(tools, list) else []):
            if isinstance(name, str) and name not in catalog:
                add(
                    f"{where}.params.tools[{j}]",
                    f"unknown tool {name!r}{_did_you_mean(name, catalog)}; "
                    f"known tools: {', '.join(sorted(catalog))}",
                )
        out = step.params.get("output_schema")
        if isinstance(out, dict):
            try:
                jsonschema.Draft202012Validator.check_schema(out)
            except jsonschema.SchemaError as e:
                add(f"{where}.params.output_schema", f"not a valid JSON Schema: {e.message}")
    if step.requires_clarification and not step.clarification_question:
        add(
            f"{where}.clarification_question",
            "requires_clarification needs a clarification_question",
        )


_REQUIRED = re.compile(r"^'(\w+)' is a required property$")
_MODEL_PARAMS: dict[str, Any] = {
    "model": {"type": "string", "minLength": 1},
    "capabilities": {"type": "array", "items": {"type": "string"}, "minItems": 1},
    "temperature": {"type": "number", "minimum": 0, "maximum": 1},
    "max_tokens": {"type": "integer", "minimum": 1, "maximum": 64000},
}

# The params of the kinds that are not tools, as JSON Schema.
KIND_PARAMS: dict[StepKind, dict[str, Any]] = {
    StepKind.LLM: {
        "type": "object",
        "additionalProperties": False,
        "properties": {
            "prompt": {"type": "string"},
            "system": {"type": "string"},
            "input": {},
            "output_schema": {"type": "object"},
            "tools": {"type": "array", "items": {"type": "string"}, "uniqueItems": True},
            "max_tool_calls": {"type": "integer", "minimum": 1, "maximum": 50},
            "max_invalid_calls": {"type": "integer", "minimum": 0, "maximum": 10},
            **_MODEL_PARAMS,
        },
        "required": ["prompt"],
    },
    StepKind.DECISION: {
        "type": "object",
        "additionalProperties": False,
        "properties": {
            "question": {"type": "string"},
            "options": {
                "type": "array",
                "items": {"type": "string", "minLength": 1},
                "minItems": 2,
                "uniqueItems": True,
            },
            "context": {},
            "branches": {
                "type": "object",
                "additionalProperties": {"type": "array", "items": {"type": "string"}},
            },
            **_MODEL_PARAMS,
        },
        "required": ["question", "options"],
    },
    StepKind.VALIDATION: {
        "type": "object",
        "additionalProperties": False,
        "properties": {
            "checks": {
                "type": "array",
                "items": {
                    "type": "object",
                    "properties": {
                        "name": {"type": "string"},
                        "expr": {"type": "string"},
                        "message": {"type": "string"},
                    },
                    "required": ["expr"],
                    "additionalProperties": False,
                },
            },
            "judge": {
                "type": "object",
                "additionalProperties": False,
                "properties": {
                    "criteria": {
                        "type": "array",
                        "items": {"type": "string", "minLength": 1},
                        "minItems": 1,
                    },
                    "subject": {},
                    **_MODEL_PARAMS,
                },
                "required": ["criteria", "subject"],
            },
            "on_unassessed": {"enum": ["fail", "ask"]},
        },
    },
}
KIND_MESSAGES: dict[tuple[StepKind, str], str] = {
    (StepKind.DECISION, ""): "a decision step needs a 'question' string and 'options': "
    "a list of at least two labels",
    (StepKind.DECISION, ".options"): "a decision step needs 'options': a list of at least "
    "two different labels",
    (StepKind.DECISION, ".question"): "a decision step needs a 'question' string",
    (StepKind.LLM, ""): "an llm step needs a 'prompt' string",
    (StepKind.LLM, ".prompt"): "an llm step needs a 'prompt' string",
    (StepKind.VALIDATION, ".on_unassessed"): "on_unassessed is 'fail' (the default: a judge "
    "criterion no model assessed fails the step) or 'ask' (a person passes or rejects it)",
}


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


_VALIDATORS: dict[int, tuple[Mapping[str, Any], jsonschema.Draft202012Validator]] = {}


def _validator(schema: Mapping[str, Any]) -> jsonschema.Draft202012Validator:
    """One validator per schema object (the catalog's and the kinds' schemas live as long
    as the process): a plan of thousands of steps does not build thousands of them."""
    hit = _VALIDATORS.get(id(schema))
    if hit is not None and hit[0] is schema:
        return hit[1]
    validator = jsonschema.Draft202012Validator(schema)
    if len(_VALIDATORS) > 256:
        _VALIDATORS.clear()
    _VALIDATORS[id(schema)] = (schema, validator)
    return validator


def params_errors(
    schema: Mapping[str, Any], params: Mapping[str, Any], rendered: bool = False
) -> list[tuple[str, str]]:
    """JSON-schema errors of ``params`` as ``(".path", message)``.

    Before rendering, a value that is a ``{{ template }}`` is only known at run time, so a
    type error on it is not reported; the activity checks the ``rendered`` params again,
    and then a ``{{`` left in a value is just a wrong value.
    """
    validator = _validator(schema)
    out: list[tuple[str, str]] = []
    for err in sorted(validator.iter_errors(params), key=lambda e: list(map(str, e.absolute_path))):
        if not rendered and isinstance(err.instance, str) and "{{" in err.instance:
            continue
        path = "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in err.absolute_path)
        message = err.message
        if err.validator == "additionalProperties":
            message = f"{message}; allowed: {', '.join(sorted(schema.get('properties', {})))}"
        out.append((path, message))
    return out


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

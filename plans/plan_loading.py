"""Reading a plan document: JSON or YAML text, or a mapping, into a :class:`Plan`.

It owns the located :class:`Problem` and :class:`PlanInvalid` every check of a document
reports with, the guard against YAML alias bombs (``MAX_DOCUMENT_VALUES``), and
:func:`parse_plan`, the shape check of the document's fields. What the fields mean
together (dependencies, tools, params, expressions) is :mod:`plans.validation`.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from typing import Any

import yaml
from pydantic import BaseModel
from pydantic import ValidationError as PydanticValidationError

from plans.models import Plan


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


class _NotPlainJson(ValueError):
    pass


def _refuse_constant(name: str) -> Any:
    raise _NotPlainJson(name)  # NaN, Infinity: not JSON; YAML reads them as it reads them


def _json(text: str) -> Any:
    """``text`` read as JSON when it is plain JSON (an object), else ``_NotPlainJson``.
    JSON is YAML too, and reads the same either way; the JSON parser takes a 2,000-step
    plan in milliseconds where the YAML parser takes seconds."""
    if not text.lstrip().startswith("{"):
        raise _NotPlainJson("not an object")
    try:
        return json.loads(text, parse_constant=_refuse_constant)
    except json.JSONDecodeError as e:
        raise _NotPlainJson(str(e)) from None


def load_document(text: str, source: str = "<input>") -> dict[str, Any]:
    """Parse JSON or YAML text into a mapping, with a located error when it is neither."""
    try:
        try:
            data = _json(text)
        except _NotPlainJson:  # YAML, or broken JSON: the YAML parser locates the problem
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
    """Shape-check a document; every field error becomes a located :class:`Problem`. A
    document in the execution-plan format is translated first
    (:mod:`plans.execution_plan_import`)."""
    from plans.execution_plan_import import is_execution_plan, translate_execution_plan

    if isinstance(data, str):
        data = load_document(data)
    if is_execution_plan(data):
        data = translate_execution_plan(data)
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

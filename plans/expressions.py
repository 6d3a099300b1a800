"""The safe expression language used by ``when`` conditions, validation checks and
``{{ ... }}`` templates in step params.

Expressions are Python-like (comparisons, ``and``/``or``/``not``, literals, attribute and
index access, a few pure functions) and are evaluated by :mod:`simpleeval`, never by
Python's ``eval``. Names available: ``inputs``, ``steps`` (``steps.<id>.output``,
``steps.<id>.status``) and the literals ``true``/``false``/``null``.

Step ids may contain ``-``; ``steps.build-app.output`` is read as the step
``build-app``, not as a subtraction.
"""

from __future__ import annotations

import ast
import json
import re
import types
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

from simpleeval import (
    DISALLOW_FUNCTIONS,
    DISALLOW_METHODS,
    DISALLOW_PREFIXES,
    AttributeDoesNotExist,
    EvalWithCompoundTypes,
    FeatureNotAvailable,
    InvalidExpression,
)

MAX_EXPRESSION_LENGTH = 2000

# A quoted string (left as it is) or a ``steps.<id>`` reference outside of one.
_STEP_REF_RE = re.compile(
    r"""('(?:[^'\\\n]|\\.)*'|"(?:[^"\\\n]|\\.)*")|\bsteps\.([a-z0-9][a-z0-9_-]*)"""
)
TEMPLATE_RE = re.compile(r"\{\{\s*(.*?)\s*\}\}", re.DOTALL)

_FUNCTIONS: dict[str, Any] = {
    "len": len,
    "str": str,
    "int": int,
    "float": float,
    "bool": bool,
    "abs": abs,
    "min": min,
    "max": max,
    "sum": sum,
    "round": round,
    "any": any,
    "all": all,
    "sorted": sorted,
    "lower": lambda s: str(s).lower(),
    "upper": lambda s: str(s).upper(),
    "contains": lambda container, item: item in container,
}
_LITERALS = {"true": True, "false": False, "null": None, "none": None}
ROOT_NAMES = frozenset({"inputs", "steps", "answer", "feedback", *_LITERALS})


class ExpressionError(ValueError):
    """An expression that cannot be parsed or evaluated; the message says why."""


@dataclass(frozen=True)
class Reference:
    """One ``inputs.<key>`` or ``steps.<id>`` reference found in an expression."""

    root: str  # "inputs" | "steps" | another (unknown) name
    key: str | None  # the input key or the step id
    field: str | None = None  # for steps: "output", "status", ...


def normalise(expr: str) -> str:
    """Rewrite ``steps.build-app`` to ``steps['build-app']`` so ids with '-' parse."""
    return _STEP_REF_RE.sub(
        lambda m: m.group(1) if m.group(1) is not None else f"steps[{m.group(2)!r}]", expr
    )


def parse(expr: str) -> ast.Expression:
    if len(expr) > MAX_EXPRESSION_LENGTH:
        raise ExpressionError(f"expression longer than {MAX_EXPRESSION_LENGTH} characters")
    try:
        return ast.parse(normalise(expr).strip(), mode="eval")
    except SyntaxError as e:
        raise ExpressionError(f"cannot parse expression {expr!r}: {e.msg}") from None


def _key_of(node: ast.expr) -> str | None:
    if isinstance(node, ast.Constant) and isinstance(node.value, str | int):
        return str(node.value)
    return None


def references(expr: str) -> list[Reference]:
    """Every name the expression reads from, with the first key below it."""
    tree = parse(expr)
    found: list[Reference] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Name) and node.id not in _FUNCTIONS:
            found.append(_reference_for(tree, node))
    return found


def _reference_for(tree: ast.AST, name: ast.Name) -> Reference:
    # Find the access chain that starts at this Name: parent attribute/subscript nodes.
    parents = {child: parent for parent in ast.walk(tree) for child in ast.iter_child_nodes(parent)}
    chain: list[str | None] = []
    node: ast.AST = name
    while node in parents and len(chain) < 2:
        parent = parents[node]
        if isinstance(parent, ast.Attribute) and parent.value is node:
            chain.append(parent.attr)
        elif isinstance(parent, ast.Subscript) and parent.value is node:
            chain.append(_key_of(parent.slice))
        else:
            break
        node = parent
    key = chain[0] if chain else None
    field = chain[1] if len(chain) > 1 else None
    return Reference(root=name.id, key=key, field=field)


# Methods that change the value they are called on: an expression only reads.
_MUTATING_METHODS = frozenset(
    {
        "append",
        "extend",
        "insert",
        "pop",
        "remove",
        "clear",
        "sort",
        "reverse",
        "update",
        "setdefault",
        "popitem",
        "add",
        "discard",
        "difference_update",
        "intersection_update",
        "symmetric_difference_update",
    }
)


class _SafeEval(EvalWithCompoundTypes):
    """simpleeval, except that ``a.b`` on a mapping with a key ``b`` reads that key (so
    ``output.items`` is the data, not ``dict.items``) and methods that change a value
    (``append``, ``pop``, ``update``, ...) are refused: plan inputs and step outputs are
    the run's state and an expression must never alter them."""

    def _eval_attribute(self, node: ast.Attribute) -> Any:
        attr = node.attr
        if attr.startswith(tuple(DISALLOW_PREFIXES)) or attr in DISALLOW_METHODS:
            return super()._eval_attribute(node)  # refuses before evaluating anything
        base = self._eval(node.value)
        if isinstance(base, Mapping) and attr in base:
            return base[attr]
        if attr in _MUTATING_METHODS:
            raise FeatureNotAvailable(f"Sorry, .{attr} changes a value and is not available")
        try:
            item = getattr(base, attr)
        except (AttributeError, TypeError):
            raise AttributeDoesNotExist(attr, self.expr) from None
        if isinstance(item, types.ModuleType) or (callable(item) and item in DISALLOW_FUNCTIONS):
            raise FeatureNotAvailable(f"Sorry, .{attr} is not available")
        return item


def _evaluator(context: dict[str, Any]) -> EvalWithCompoundTypes:
    names = dict(_LITERALS)
    names.update(context)
    return _SafeEval(names=names, functions=dict(_FUNCTIONS))


def evaluate(expr: str, context: dict[str, Any]) -> Any:
    """Evaluate ``expr`` against ``context``; raise :class:`ExpressionError` with the cause."""
    parse(expr)  # a clear syntax message first
    try:
        return _evaluator(context).eval(normalise(expr).strip())
    except InvalidExpression as e:
        raise ExpressionError(f"{expr!r}: {e}") from None
    except (KeyError, IndexError, TypeError, ValueError, ZeroDivisionError, AttributeError) as e:
        raise ExpressionError(f"{expr!r}: {type(e).__name__}: {e}") from None


def evaluate_condition(expr: str, context: dict[str, Any]) -> bool:
    return bool(evaluate(expr, context))


# --- templates -----------------------------------------------------------------------


def iter_templates(value: Any, path: str = "params") -> Iterator[tuple[str, str]]:
    """Yield ``(location, expression)`` for every ``{{ ... }}`` inside ``value``."""
    if isinstance(value, str):
        for m in TEMPLATE_RE.finditer(value):
            yield path, m.group(1)
    elif isinstance(value, dict):
        for k, v in value.items():
            yield from iter_templates(v, f"{path}.{k}")
    elif isinstance(value, list):
        for i, v in enumerate(value):
            yield from iter_templates(v, f"{path}[{i}]")


def render(value: Any, context: dict[str, Any]) -> Any:
    """Replace templates in ``value``.

    A string that is exactly one ``{{ expr }}`` becomes the expression's value with its
    type (a list stays a list); templates inside longer strings are interpolated, with
    dicts and lists written as JSON.
    """
    if isinstance(value, str):
        whole = TEMPLATE_RE.fullmatch(value.strip())
        if whole and value.strip().count("{{") == 1:
            return evaluate(whole.group(1), context)
        return TEMPLATE_RE.sub(lambda m: _as_text(evaluate(m.group(1), context)), value)
    if isinstance(value, dict):
        return {k: render(v, context) for k, v in value.items()}
    if isinstance(value, list):
        return [render(v, context) for v in value]
    return value


def _as_text(v: Any) -> str:
    if isinstance(v, str):
        return v
    return json.dumps(v, sort_keys=True, default=str)

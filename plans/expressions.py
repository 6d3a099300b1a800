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
import functools
import json
import re
import threading
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
MAX_NODES = 400  # syntax-tree nodes in one expression
MAX_DEPTH = 40  # nesting of the syntax tree
MAX_SEQUENCE = 100_000  # items or characters a single operation may build
MAX_INT_BITS = 64_000  # size of an integer an operation may build

# A quoted string (left as it is) or a ``steps.<id>`` reference outside of one.
_STEP_REF_RE = re.compile(
    r"""('(?:[^'\\\n]|\\.)*'|"(?:[^"\\\n]|\\.)*")|\bsteps\.([a-z0-9][a-z0-9_-]*)"""
)
TEMPLATE_RE = re.compile(r"\{\{\s*(.*?)\s*\}\}", re.DOTALL)
# ``{{ secrets.NAME }}``: resolved by the step activity, never here (plans/secrets.py).
SECRET_REF_RE = re.compile(r"\{\{\s*secrets\.([A-Za-z_][A-Za-z0-9_]*)\s*\}\}")

_FUNCTIONS: dict[str, Any] = {
    "len": len,
    "str": str,
    "int": int,
    "float": float,
    "bool": bool,
    "abs": abs,
    "min": min,
    "max": max,
    "sum": lambda values, start=0: _numeric_sum(values, start),
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


# CPython 3.11's ast.parse is not safe to run in two threads at once ("AST constructor
# recursion depth mismatch", gh-106905), and workflows run in a thread pool: one lock.
_PARSE_LOCK = threading.Lock()


def parse(expr: str) -> ast.Expression:
    """Parse and check the shape: size, depth, and no constructs whose value could differ
    between worker processes (sets iterate in a hash order) or that define code.

    Cached: the same expressions are evaluated again and again (conditions, templates).
    """
    return _parse(expr)


@functools.lru_cache(maxsize=2048)
def _parse(expr: str) -> ast.Expression:
    if len(expr) > MAX_EXPRESSION_LENGTH:
        raise ExpressionError(f"expression longer than {MAX_EXPRESSION_LENGTH} characters")
    try:
        with _PARSE_LOCK:
            tree = ast.parse(normalise(expr).strip(), mode="eval")
    except SyntaxError as e:
        raise ExpressionError(f"cannot parse expression {expr!r}: {e.msg}") from None
    except (RecursionError, MemoryError):
        raise ExpressionError(f"expression {expr[:60]!r}... is nested too deeply") from None
    nodes = 0
    stack: list[tuple[ast.AST, int]] = [(tree, 0)]
    while stack:
        node, depth = stack.pop()
        nodes += 1
        if nodes > MAX_NODES or depth > MAX_DEPTH:
            raise ExpressionError(f"expression {expr[:60]!r} is too large or nested too deeply")
        if isinstance(node, ast.Set | ast.SetComp | ast.Lambda | ast.NamedExpr | ast.DictComp):
            raise ExpressionError(f"{type(node).__name__} is not allowed in expression {expr!r}")
        stack.extend((child, depth + 1) for child in ast.iter_child_nodes(node))
    return tree


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


# Methods of str, list and dict that only read and whose result stays small.
_SAFE_METHODS = frozenset(
    {
        "get",
        "keys",
        "values",
        "items",
        "count",
        "index",
        "find",
        "rfind",
        "startswith",
        "endswith",
        "lower",
        "upper",
        "strip",
        "lstrip",
        "rstrip",
        "split",
        "rsplit",
        "title",
        "capitalize",
        "isdigit",
        "isalpha",
        "isalnum",
        "isspace",
        "islower",
        "isupper",
    }
)


def _numeric_sum(values: Any, start: Any = 0) -> Any:
    items = list(values)
    if not all(isinstance(v, int | float) and not isinstance(v, bool) for v in [*items, start]):
        raise TypeError("sum() adds numbers only")
    return sum(items, start)


def _size(value: Any, cap: int = MAX_SEQUENCE) -> int:
    """Characters or items in ``value``, nested lists counted in full (the evaluator walks
    them), stopping once past ``cap``."""
    if isinstance(value, str | bytes):
        return len(value)
    if not isinstance(value, list | tuple | dict):
        return 0
    total = 0
    stack: list[Any] = [value]
    while stack and total <= cap:
        cur = stack.pop()
        items = list(cur.values()) if isinstance(cur, dict) else cur
        total += len(items)
        stack.extend(v for v in items if isinstance(v, list | tuple | dict))
    return total


def _safe_mult(a: Any, b: Any) -> Any:
    if isinstance(a, int) and isinstance(b, int):
        if a.bit_length() + b.bit_length() > MAX_INT_BITS:
            raise ValueError("product too large")
    elif (isinstance(b, int) and _size(a) * max(b, 0) > MAX_SEQUENCE) or (
        isinstance(a, int) and _size(b) * max(a, 0) > MAX_SEQUENCE
    ):
        raise ValueError(f"result longer than {MAX_SEQUENCE}")
    return a * b


def _safe_pow(a: Any, b: Any) -> Any:
    big = isinstance(a, int) and isinstance(b, int) and b > 0 and abs(a) > 1
    if big and a.bit_length() * b > MAX_INT_BITS:
        raise ValueError("power too large")
    return a**b


def _safe_lshift(a: Any, b: Any) -> Any:
    if isinstance(b, int) and b > MAX_INT_BITS:
        raise ValueError("shift too large")
    return a << b


def _safe_add(a: Any, b: Any) -> Any:
    if _size(a) + _size(b) > MAX_SEQUENCE:
        raise ValueError(f"result longer than {MAX_SEQUENCE}")
    return a + b


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
        if callable(item) and attr not in _SAFE_METHODS:
            raise FeatureNotAvailable(f"Sorry, .{attr}() is not available in expressions")
        return item


def _evaluator(context: dict[str, Any]) -> EvalWithCompoundTypes:
    names = dict(_LITERALS)
    names.update(context)
    ev = _SafeEval(names=names, functions=dict(_FUNCTIONS))
    ev.operators = {
        **ev.operators,
        ast.Mult: _safe_mult,
        ast.Pow: _safe_pow,
        ast.LShift: _safe_lshift,
        ast.Add: _safe_add,
    }
    return ev


def evaluate(expr: str, context: dict[str, Any]) -> Any:
    """Evaluate ``expr`` against ``context``; raise :class:`ExpressionError` with the cause."""
    tree = parse(expr)  # a clear syntax message first
    try:
        return _evaluator(context).eval(normalise(expr).strip(), previously_parsed=tree.body)
    except InvalidExpression as e:
        raise ExpressionError(f"{expr!r}: {e}") from None
    except (KeyError, IndexError, TypeError, ValueError, ArithmeticError, AttributeError) as e:
        raise ExpressionError(f"{expr!r}: {type(e).__name__}: {e}") from None
    except (RecursionError, MemoryError) as e:
        raise ExpressionError(f"{expr!r}: too large to evaluate ({type(e).__name__})") from None


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
    dicts and lists written as JSON. A secret reference ``{{ secrets.NAME }}`` is left as
    it is: only the step activity resolves it (:mod:`plans.secrets`).
    """
    if isinstance(value, str):
        whole = TEMPLATE_RE.fullmatch(value.strip())
        if whole and value.strip().count("{{") == 1:
            if SECRET_REF_RE.fullmatch(value.strip()):
                return value
            return evaluate(whole.group(1), context)
        return TEMPLATE_RE.sub(lambda m: _render_one(m, context), value)
    if isinstance(value, dict):
        return {k: render(v, context) for k, v in value.items()}
    if isinstance(value, list):
        return [render(v, context) for v in value]
    return value


def _render_one(m: re.Match[str], context: dict[str, Any]) -> str:
    if SECRET_REF_RE.fullmatch(m.group(0)):
        return m.group(0)
    return _as_text(evaluate(m.group(1), context))


def _as_text(v: Any) -> str:
    if isinstance(v, str):
        return v
    return json.dumps(v, sort_keys=True, default=str)

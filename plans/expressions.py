"""The safe expression language used by ``when`` conditions, validation checks and
``{{ ... }}`` templates in step params.

Expressions are Python-like (comparisons, ``and``/``or``/``not``, literals, attribute and
index access, a few pure functions) and are evaluated by :mod:`plans.safe_eval` (built
on :mod:`simpleeval`), never by Python's ``eval``, under a budget whose limits are
:mod:`plans.expression_limits`. Names available: ``inputs``, ``steps`` (``steps.<id>.output``,
``steps.<id>.status``) and the literals ``true``/``false``/``null``.

Step ids may contain ``-``; ``steps.build-app.output`` is read as the step
``build-app``, not as a subtraction.

This module owns the language as callers use it: parsing and its shape checks, the
references an expression reads, evaluating, and templates (``{{ ... }}``) in params. The
errors, the budget and the limits are re-exported from :mod:`plans.expression_limits`.
"""

from __future__ import annotations

import ast
import functools
import json
import re
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from simpleeval import InvalidExpression

# Re-exported: callers import the errors, the budget and the limits from here too.
from plans.expression_limits import MAX_DEPTH as MAX_DEPTH
from plans.expression_limits import MAX_EXPRESSION_LENGTH as MAX_EXPRESSION_LENGTH
from plans.expression_limits import MAX_INT_BITS as MAX_INT_BITS
from plans.expression_limits import MAX_NODES as MAX_NODES
from plans.expression_limits import MAX_OPERATIONS as MAX_OPERATIONS
from plans.expression_limits import MAX_RENDERED_SIZE as MAX_RENDERED_SIZE
from plans.expression_limits import MAX_SEQUENCE as MAX_SEQUENCE
from plans.expression_limits import MAX_VALUE_SIZE as MAX_VALUE_SIZE
from plans.expression_limits import VALIDATION_OPERATIONS as VALIDATION_OPERATIONS
from plans.expression_limits import Budget as Budget
from plans.expression_limits import BudgetExceeded as BudgetExceeded
from plans.expression_limits import ExpressionError as ExpressionError
from plans.expression_limits import text_size as text_size
from plans.expression_limits import weight as weight
from plans.safe_eval import FUNCTIONS, LITERALS, evaluator

# A quoted string (left as it is) or a ``steps.<id>`` reference outside of one.
_STEP_REF_RE = re.compile(
    r"""('(?:[^'\\\n]|\\.)*'|"(?:[^"\\\n]|\\.)*")|\bsteps\.([a-z0-9][a-z0-9_-]*)"""
)
TEMPLATE_RE = re.compile(r"\{\{\s*(.*?)\s*\}\}", re.DOTALL)
# ``{{ secrets.NAME }}``: resolved by the step activity, never here (plans/secrets.py).
SECRET_REF_RE = re.compile(r"\{\{\s*secrets\.([A-Za-z_][A-Za-z0-9_]*)\s*\}\}")
ROOT_NAMES = frozenset({"inputs", "steps", "answer", "feedback", *LITERALS})


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
    return [_reference_for(tree, node) for node in _free_names(tree) if node.id not in FUNCTIONS]


def _free_names(tree: ast.AST) -> list[ast.Name]:
    """The names read from outside: not the variables of an enclosing comprehension."""
    found: list[ast.Name] = []
    stack: list[tuple[ast.AST, frozenset[str]]] = [(tree, frozenset())]
    while stack:
        node, bound = stack.pop()
        if isinstance(node, ast.Name):
            if node.id not in bound:
                found.append(node)
        elif isinstance(node, ast.ListComp | ast.GeneratorExp):
            inner = bound
            for g in node.generators:
                stack.append((g.iter, inner))
                inner = inner | {n.id for n in ast.walk(g.target) if isinstance(n, ast.Name)}
                stack.extend((cond, inner) for cond in g.ifs)
            stack.append((node.elt, inner))
        else:
            stack.extend((child, bound) for child in ast.iter_child_nodes(node))
    return sorted(found, key=lambda n: (n.lineno, n.col_offset))  # in the order written


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


def evaluate(expr: str, context: dict[str, Any], budget: Budget | None = None) -> Any:
    """Evaluate ``expr`` against ``context`` under ``budget`` (a fresh one if None);
    raise :class:`ExpressionError` with the cause (:class:`BudgetExceeded` when over)."""
    tree = parse(expr)  # a clear syntax message first
    budget = budget or Budget()
    try:
        return evaluator(context, budget).eval(normalise(expr).strip(), previously_parsed=tree.body)
    except BudgetExceeded as e:
        raise BudgetExceeded(f"{expr!r}: {e}") from None
    except InvalidExpression as e:
        raise ExpressionError(f"{expr!r}: {e}") from None
    except (KeyError, IndexError, TypeError, ValueError, ArithmeticError, AttributeError) as e:
        raise ExpressionError(f"{expr!r}: {type(e).__name__}: {e}") from None
    except (RecursionError, MemoryError) as e:
        raise BudgetExceeded(f"{expr!r}: too large to evaluate ({type(e).__name__})") from None


def budget_problem(expr: str) -> str | None:
    """What validation can see of a budget: the parts of ``expr`` that read nothing from
    the run (``'x' * 100000``, a comprehension over a literal) are evaluated now, under a
    budget of ``VALIDATION_OPERATIONS``; the first that goes over it is reported (None
    when none does). Other errors are left for run time."""
    tree = parse(expr)
    free: dict[int, frozenset[str]] = {}

    def names_of(node: ast.AST) -> frozenset[str]:
        if isinstance(node, ast.Name):
            out = frozenset() if node.id in FUNCTIONS or node.id in LITERALS else {node.id}
        elif isinstance(node, ast.ListComp | ast.GeneratorExp):
            bound: set[str] = set()
            out = frozenset()
            for g in node.generators:
                out |= names_of(g.iter) - bound
                bound |= {n.id for n in ast.walk(g.target) if isinstance(n, ast.Name)}
                for cond in g.ifs:
                    out |= names_of(cond) - bound
                names_of(g.target)
            out |= names_of(node.elt) - bound
        else:
            out = frozenset()
            for child in ast.iter_child_nodes(node):
                out |= names_of(child)
        free[id(node)] = frozenset(out)
        return free[id(node)]

    names_of(tree.body)
    stack: list[ast.AST] = [tree.body]
    while stack:
        node = stack.pop()
        if free.get(id(node)) or isinstance(
            node, ast.Attribute | ast.keyword | ast.comprehension | ast.Starred
        ):
            stack.extend(ast.iter_child_nodes(node))
            continue
        if isinstance(node, ast.Constant | ast.Name | ast.expr_context):
            continue  # nothing to build
        budget = Budget(operations=VALIDATION_OPERATIONS)
        try:
            evaluator({}, budget).eval(expr, previously_parsed=node)
        except BudgetExceeded as e:
            part = ast.unparse(node)
            return f"{part[:80]!r}: {e}"
        except (RecursionError, MemoryError):
            return f"{ast.unparse(node)[:80]!r} is too large to evaluate"
        except Exception:  # any other error is the run's to report
            pass
    return None


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


def render(value: Any, context: dict[str, Any], path: str = "params") -> Any:
    """Replace templates in ``value``.

    A string that is exactly one ``{{ expr }}`` becomes the expression's value with its
    type (a list stays a list); templates inside longer strings are interpolated, with
    dicts and lists written as JSON. A secret reference ``{{ secrets.NAME }}`` is left as
    it is: only the step activity resolves it (:mod:`plans.secrets`).

    All the templates of ``value`` share one :class:`Budget`, and what they produce
    together may hold at most ``MAX_RENDERED_SIZE`` characters or items. An error names
    the template's place (``params.body``) and, for a budget, the limit.
    """
    budget = Budget()
    rendered = [0]
    return _render(value, context, path, budget, rendered)


def _render(
    value: Any, context: dict[str, Any], path: str, budget: Budget, rendered: list[int]
) -> Any:
    if isinstance(value, str):
        try:
            whole = TEMPLATE_RE.fullmatch(value.strip())
            if whole and value.strip().count("{{") == 1:
                if SECRET_REF_RE.fullmatch(value.strip()):
                    return value
                out = evaluate(whole.group(1), context, budget)
            else:
                out = TEMPLATE_RE.sub(lambda m: _render_one(m, context, budget), value)
            if out is not value:
                rendered[0] += weight(out, MAX_RENDERED_SIZE, budget)
                if rendered[0] > MAX_RENDERED_SIZE:
                    raise BudgetExceeded(
                        f"the rendered params would hold more than {MAX_RENDERED_SIZE} "
                        "characters or items (the limit of a step's rendered params)"
                    )
            return out
        except ExpressionError as e:
            raise type(e)(f"{path}: {e}") from None
    if isinstance(value, dict):
        return {k: _render(v, context, f"{path}.{k}", budget, rendered) for k, v in value.items()}
    if isinstance(value, list):
        return [_render(v, context, f"{path}[{i}]", budget, rendered) for i, v in enumerate(value)]
    return value


def _render_one(m: re.Match[str], context: dict[str, Any], budget: Budget) -> str:
    if SECRET_REF_RE.fullmatch(m.group(0)):
        return m.group(0)
    return _as_text(evaluate(m.group(1), context, budget), budget)


def _as_text(v: Any, budget: Budget) -> str:
    if isinstance(v, str):
        return v
    size = text_size(v, budget.size, budget, as_json=True)
    budget.check(size, "the text of the value")
    budget.chars(size)
    return json.dumps(v, sort_keys=True, default=str)

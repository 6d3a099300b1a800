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
import operator as op
import re
import threading
import types
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

from simpleeval import (
    DEFAULT_OPERATORS,
    DISALLOW_FUNCTIONS,
    DISALLOW_METHODS,
    DISALLOW_PREFIXES,
    MAX_COMPREHENSION_LENGTH,
    AttributeDoesNotExist,
    EvalWithCompoundTypes,
    FeatureNotAvailable,
    InvalidExpression,
)

MAX_EXPRESSION_LENGTH = 2000
MAX_NODES = 400  # syntax-tree nodes in one expression
MAX_DEPTH = 40  # nesting of the syntax tree
MAX_INT_BITS = 64_000  # size of an integer an operation may build

# A quoted string (left as it is) or a ``steps.<id>`` reference outside of one.
_STEP_REF_RE = re.compile(
    r"""('(?:[^'\\\n]|\\.)*'|"(?:[^"\\\n]|\\.)*")|\bsteps\.([a-z0-9][a-z0-9_-]*)"""
)
TEMPLATE_RE = re.compile(r"\{\{\s*(.*?)\s*\}\}", re.DOTALL)
# ``{{ secrets.NAME }}``: resolved by the step activity, never here (plans/secrets.py).
SECRET_REF_RE = re.compile(r"\{\{\s*secrets\.([A-Za-z_][A-Za-z0-9_]*)\s*\}\}")

# The functions an expression may call (their budgeted versions: ``_SafeEval``).
_FUNCTIONS = frozenset(
    {
        "len", "str", "int", "float", "bool", "abs", "min", "max", "sum", "round", "any",
        "all", "sorted", "lower", "upper", "contains",
    }
)  # fmt: skip
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
    return [_reference_for(tree, node) for node in _free_names(tree) if node.id not in _FUNCTIONS]


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


# --- the budget ----------------------------------------------------------------------
#
# Every evaluation runs under a budget, counted (never timed: conditions and templates run
# inside workflow code, which must give the same answer on every replay):
#
# * operations: each piece of the expression evaluated is one; building, scanning,
#   comparing or sorting a value costs by its size (``_ITEMS_PER_OP`` items or
#   ``_CHARS_PER_OP`` characters per operation), charged *before* the work is done;
# * the size of every value built (a string's characters, a container's items, nested
#   values counted in full, a value repeated in a list counted each time): at most
#   ``MAX_VALUE_SIZE``, checked before the value is built where it could be huge
#   (``*``, ``%``, format specs, ``str()``) and as it grows (lists, comprehensions).
#
# A template's step renders all its params under one budget (``render``).

MAX_OPERATIONS = 200_000
MAX_VALUE_SIZE = 1_000_000
MAX_SEQUENCE = MAX_VALUE_SIZE  # the former name of the size limit
MAX_RENDERED_SIZE = MAX_VALUE_SIZE  # all the rendered params of one step, together
_ITEMS_PER_OP = 8
_CHARS_PER_OP = 256


class BudgetExceeded(ExpressionError):
    """An evaluation went over its budget (operations or the size of a value)."""


class Budget:
    """What one evaluation (or one step's templates, together) may still spend."""

    def __init__(self, operations: int = MAX_OPERATIONS, size: int = MAX_VALUE_SIZE) -> None:
        self.left = operations
        self.operations = operations
        self.size = size

    def charge(self, ops: int) -> None:
        self.left -= ops
        if self.left < 0:
            raise BudgetExceeded(
                f"more work than the limit of {self.operations} operations per evaluation"
            )

    def items(self, n: int) -> None:
        self.charge(n // _ITEMS_PER_OP)

    def chars(self, n: int) -> None:
        self.charge(n // _CHARS_PER_OP)

    def too_big(self, what: str = "the value built") -> BudgetExceeded:
        return BudgetExceeded(
            f"{what} would hold more than {self.size} characters or items "
            f"(the limit of a value's size)"
        )

    def check(self, size: int, what: str = "the value built") -> None:
        if size > self.size:
            raise self.too_big(what)


_KEYS: type = type({}.keys())
_VALUES: type = type({}.values())
_ITEMS: type = type({}.items())
_SEQUENCES = frozenset({list, tuple, _KEYS, _VALUES, _ITEMS})
_TEXTS = frozenset({str, bytes})


def weight(value: Any, cap: int, budget: Budget | None = None) -> int:
    """The size of ``value``: characters of a string, items of a container plus the sizes
    of what they hold, a value held twice counted twice (that is what serialising it
    costs). Stops once past ``cap`` (the answer is then only known to be > cap); the walk
    is charged to ``budget``."""
    t = type(value)
    if t in _TEXTS:
        return len(value)
    if t is not dict and t not in _SEQUENCES:
        return 1
    total = 0
    walked = 0
    stack: list[Any] = [value]
    try:
        while stack and total <= cap:
            cur = stack.pop()
            if type(cur) is dict:
                n = len(cur)
                total += n
                walked += n
                cur = [*cur.keys(), *cur.values()] if n <= cap else ()
            else:
                n = len(cur)
                total += n
                walked += n
            if total > cap:
                break
            for v in cur:
                t = type(v)
                if t is str:
                    total += len(v)
                elif t is dict or t in _SEQUENCES:
                    stack.append(v)
    finally:
        if budget is not None:
            budget.items(walked)
    return total


def _is_container(value: Any) -> bool:
    return type(value) is dict or type(value) in _SEQUENCES


def text_size(value: Any, cap: int, budget: Budget | None = None, *, as_json: bool = False) -> int:
    """An upper bound of ``len(str(value))`` (or of its JSON text), stopping once past
    ``cap``: computed without building the text."""
    if type(value) is str and not as_json:
        return len(value)
    total = 0
    walked = 0
    stack: list[Any] = [value]
    try:
        while stack and total <= cap:
            cur = stack.pop()
            walked += 1
            t = type(cur)
            if t is str or t is bytes:
                if len(cur) > cap:
                    return cap + 1
                if len(cur) < 64:  # short: a bound, not the text
                    if t is str and cur.isascii() and cur.isprintable():
                        total += len(cur) + 3 + cur.count("\\") + cur.count("'") + cur.count('"')
                    else:
                        total += 12 * len(cur) + 3  # every character escaped
                    continue
                if budget is not None:
                    budget.chars(len(cur))
                total += len(json.dumps(cur) if as_json and t is str else repr(cur))
            elif t is bool or cur is None or t is float:
                total += 24
            elif t is int:
                total += cur.bit_length() * 30103 // 100000 + 2
            elif t is dict or t is _ITEMS:
                items = cur.items() if t is dict else cur
                total += 2 + 4 * len(items) + (12 if t is _ITEMS else 0)
                walked += len(items)
                if total <= cap:
                    for k, v in items:
                        stack.append(k)
                        stack.append(v)
            elif t in _SEQUENCES:
                total += 3 + 2 * len(cur) + (0 if t is list or t is tuple else 12)
                walked += len(cur)
                if total <= cap:
                    stack.extend(cur)
            else:  # a function or method: a short text
                total += len(repr(cur))
    finally:
        if budget is not None:
            budget.items(walked)
    return total


def _int_cost(a: Any, b: Any) -> int:
    """Operations for multiplying or dividing two integers (quadratic in their size)."""
    if type(a) is int and type(b) is int:
        return (a.bit_length() * b.bit_length()) >> 16
    return 0


def _numeric_sum(values: Any, start: Any = 0) -> Any:
    items = list(values)
    if not all(isinstance(v, int | float) and not isinstance(v, bool) for v in [*items, start]):
        raise TypeError("sum() adds numbers only")
    return sum(items, start)


# ``%`` conversions: the mapping key, flags, width and precision.
_PERCENT_RE = re.compile(r"%(\([^)]*\))?[-#0 +]*(\*|\d+)?(?:\.(\*|\d+))?[hlL]?(.)", re.DOTALL)
# The numbers of a format spec (``{x:>10.3f}``): width and precision.
_SPEC_NUMBER_RE = re.compile(r"\d+")


class _SafeEval(EvalWithCompoundTypes):
    """simpleeval, except that ``a.b`` on a mapping with a key ``b`` reads that key (so
    ``output.items`` is the data, not ``dict.items``), methods that change a value
    (``append``, ``pop``, ``update``, ...) are refused (plan inputs and step outputs are
    the run's state and an expression must never alter them), and everything is counted
    against a :class:`Budget`."""

    def __init__(self, names: dict[str, Any], budget: Budget) -> None:
        self.budget = budget
        functions: dict[str, Any] = {
            "len": len,
            "str": self._str,
            "int": self._int,
            "float": float,
            "bool": bool,
            "abs": abs,
            "min": self._scanning(min),
            "max": self._scanning(max),
            "sum": self._scanning(_numeric_sum),
            "round": round,
            "any": self._scanning(any),
            "all": self._scanning(all),
            "sorted": self._sorted,
            "lower": lambda s: self._str(s).lower(),
            "upper": lambda s: self._str(s).upper(),
            "contains": lambda container, item: self._contains(item, container),
        }
        super().__init__(names=names, functions=functions)
        for name, fn in (("list", list), ("tuple", tuple), ("dict", dict), ("set", set)):
            self.functions[name] = self._building(fn)
        self.operators = {
            **DEFAULT_OPERATORS,
            ast.Add: self._add,
            ast.Mult: self._mult,
            ast.Mod: self._mod,
            ast.Pow: self._pow,
            ast.FloorDiv: self._dividing(op.floordiv),
            ast.Div: self._dividing(op.truediv),
            ast.LShift: _safe_lshift,
            ast.BitOr: self._or,
            ast.Eq: self._comparing(op.eq),
            ast.NotEq: self._comparing(op.ne),
            ast.Lt: self._comparing(op.lt),
            ast.LtE: self._comparing(op.le),
            ast.Gt: self._comparing(op.gt),
            ast.GtE: self._comparing(op.ge),
            ast.In: self._contains,
            ast.NotIn: lambda x, y: not self._contains(x, y),
        }

    # -- every node ------------------------------------------------------------------

    def _eval(self, node: ast.AST) -> Any:
        self.budget.charge(1)
        try:
            handler = self.nodes[type(node)]
        except KeyError:
            raise FeatureNotAvailable(
                f"Sorry, {type(node).__name__} is not available in this evaluator"
            ) from None
        result = handler(node)
        # Values come from the context (data) or are built here from checked values: a
        # shallow check finds anything forbidden (simpleeval's walks every container).
        if isinstance(result, types.ModuleType) or (
            callable(result) and not isinstance(result, type) and result in DISALLOW_FUNCTIONS
        ):
            raise FeatureNotAvailable("Sorry, this value is not available")
        return result

    def _built(self, value: Any, what: str = "the value built") -> Any:
        self.budget.check(weight(value, self.budget.size, self.budget), what)
        return value

    # -- operators -------------------------------------------------------------------

    def _size(self, value: Any) -> int:
        return weight(value, self.budget.size, self.budget)

    def _add(self, a: Any, b: Any) -> Any:
        if isinstance(a, str | bytes | list | tuple) and isinstance(b, str | bytes | list | tuple):
            size = self._size(a) + self._size(b)
            self.budget.check(size)
            self.budget.items(len(a) + len(b)) if not isinstance(a, str) else self.budget.chars(
                size
            )
        return a + b

    def _mult(self, a: Any, b: Any) -> Any:
        if isinstance(a, int) and isinstance(b, int):
            if a.bit_length() + b.bit_length() > MAX_INT_BITS:
                raise BudgetExceeded(f"the product would have more than {MAX_INT_BITS} bits")
            self.budget.charge(_int_cost(a, b))
            return a * b
        seq, n = (a, b) if isinstance(b, int) else (b, a)
        if isinstance(n, int) and isinstance(seq, str | bytes | list | tuple):
            times = max(n, 0)
            if times:
                size = self._size(seq)
                self.budget.check(size * times)
                if isinstance(seq, str | bytes):
                    self.budget.chars(len(seq) * times)
                else:
                    self.budget.items(len(seq) * times)
        return a * b

    def _dividing(self, fn: Any) -> Any:
        def divide(a: Any, b: Any) -> Any:
            self.budget.charge(_int_cost(a, b))
            return fn(a, b)

        return divide

    def _pow(self, a: Any, b: Any) -> Any:
        big = isinstance(a, int) and isinstance(b, int) and b > 0 and abs(a) > 1
        if big:
            bits = a.bit_length() * b
            if bits > MAX_INT_BITS:
                raise BudgetExceeded(f"the power would have more than {MAX_INT_BITS} bits")
            self.budget.charge((bits * bits) >> 16)
        return a**b

    def _mod(self, a: Any, b: Any) -> Any:
        self.budget.charge(_int_cost(a, b))
        if isinstance(a, str):
            self.budget.check(self._format_size(a, b), "the formatted string")
            self.budget.chars(len(a))
        return a % b

    def _format_size(self, fmt: str, args: Any) -> int:
        """An upper bound of ``len(fmt % args)``."""
        cap = self.budget.size
        conversions = 0
        size = len(fmt)
        star = False
        for m in _PERCENT_RE.finditer(fmt):
            if m.group(4) == "%":
                continue
            conversions += 1
            for number in (m.group(2), m.group(3)):
                if number == "*":
                    star = True
                elif number:
                    size += int(number[:8]) if len(number) < 8 else cap + 1
            size += 400  # a float's digits with %f
        if conversions:
            size += conversions * text_size(args, cap, self.budget)
        if star:
            values = args if isinstance(args, tuple) else (args,)
            size += sum(abs(v) for v in values if isinstance(v, int) and abs(v) <= cap + 1)
            size += sum(cap + 1 for v in values if isinstance(v, int) and abs(v) > cap + 1)
        return size

    def _or(self, a: Any, b: Any) -> Any:
        if isinstance(a, dict) and isinstance(b, dict):
            self.budget.check(self._size(a) + self._size(b))
            self.budget.items(len(a) + len(b))
        return a | b

    def _scan_cost(self, value: Any) -> None:
        """Charge the work of reading ``value`` (comparing, searching, iterating)."""
        if isinstance(value, str | bytes):
            self.budget.chars(len(value))
        elif _is_container(value):
            weight(value, self.budget.size, self.budget)

    def _comparing(self, fn: Any) -> Any:
        def compare(a: Any, b: Any) -> Any:
            if _is_container(a) and _is_container(b):
                # Comparing walks at most the smaller: charge that (walking the shorter
                # first, then the other only as far).
                first, second = (a, b) if len(a) <= len(b) else (b, a)
                weight(second, weight(first, self.budget.size, self.budget), self.budget)
            elif isinstance(a, str) and isinstance(b, str):
                self.budget.chars(min(len(a), len(b)))
            return fn(a, b)

        return compare

    def _contains(self, item: Any, container: Any) -> bool:
        if isinstance(container, str | bytes):
            self.budget.chars(len(container))
        elif not isinstance(container, dict):
            self._scan_cost(container)
        self._scan_cost(item)
        return item in container

    # -- functions -------------------------------------------------------------------

    def _str(self, value: Any = "") -> str:
        if isinstance(value, str):
            return value
        size = text_size(value, self.budget.size, self.budget)
        self.budget.check(size, "str()")
        self.budget.chars(size)
        return str(value)

    def _int(self, value: Any = 0, *args: Any) -> int:
        if isinstance(value, str):
            self.budget.chars(len(value) * 64)  # a number's digits: quadratic in CPython
        return int(value, *args)

    def _scanning(self, fn: Any) -> Any:
        def scan(*args: Any, **kwargs: Any) -> Any:
            for a in args:
                self._scan_cost(a)
            return fn(*args, **kwargs)

        return scan

    def _sorted(self, values: Any, *, reverse: bool = False) -> list[Any]:
        if not isinstance(values, list | tuple | str | dict):
            values = list(values)
        n = len(values)
        self._scan_cost(values)
        self.budget.items(n * max(n.bit_length(), 1) // 8)
        self.budget.check(n)
        return sorted(values, reverse=reverse)

    def _building(self, fn: Any) -> Any:
        def build(*args: Any, **kwargs: Any) -> Any:
            for a in args:
                self._scan_cost(a)
            return self._built(fn(*args, **kwargs))

        return build

    def _method(self, base: Any, attr: str, method: Any) -> Any:
        """A safe method, charged by the size of what it reads; its result checked."""

        def call(*args: Any, **kwargs: Any) -> Any:
            if isinstance(base, str | bytes):
                self.budget.chars(len(base))
            elif isinstance(base, list | tuple):  # count, index: one pass
                self.budget.items(len(base))
            # a dict's get, keys, values, items: no pass over it
            for a in args:
                self._scan_cost(a)
            result = method(*args, **kwargs)
            if isinstance(result, str | list | tuple):
                self._built(result, f".{attr}()")
            return result

        return call

    # -- nodes -----------------------------------------------------------------------

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
        if callable(item):
            return self._method(base, attr, item)
        return item

    def _eval_subscript(self, node: ast.Subscript) -> Any:
        result = super()._eval_subscript(node)
        if isinstance(node.slice, ast.Slice):  # a copy of a part
            if isinstance(result, str | bytes):
                self.budget.chars(len(result))
            elif isinstance(result, list | tuple):
                self.budget.items(len(result))
        return result

    def _eval_list(self, node: ast.List) -> Any:
        return self._built(super()._eval_list(node), "the list")

    def _eval_tuple(self, node: ast.Tuple) -> Any:
        return self._built(super()._eval_tuple(node), "the tuple")

    def _eval_dict(self, node: ast.Dict) -> Any:
        return self._built(super()._eval_dict(node), "the dict")

    def _eval_joinedstr(self, node: ast.JoinedStr) -> Any:
        parts: list[str] = []
        size = 0
        for n in node.values:
            part = self._str(self._eval(n))
            size += len(part)
            self.budget.check(size, "the f-string")
            parts.append(part)
        return "".join(parts)

    def _eval_formattedvalue(self, node: ast.FormattedValue) -> Any:
        value = self._eval(node.value)
        if not node.format_spec:
            return value
        spec = self._str(self._eval(node.format_spec))
        size = text_size(value, self.budget.size, self.budget) + 400
        for number in _SPEC_NUMBER_RE.findall(spec):
            size += int(number) if len(number) < 8 else self.budget.size + 1
        self.budget.check(size, "the formatted value")
        return ("{:" + spec + "}").format(value)

    def _eval_comprehension(self, node: Any) -> Any:
        """simpleeval's comprehension, with the result's size counted as it grows."""
        if isinstance(node, ast.DictComp):  # refused by parse(); never evaluated here
            raise FeatureNotAvailable("Sorry, dict comprehensions are not available")
        result: list[Any] = []
        size = 0
        extra_names: dict[str, Any] = {}
        previous_name_evaller = self.nodes[ast.Name]

        def eval_names_extra(n: ast.Name) -> Any:
            if n.id in extra_names:
                return extra_names[n.id]
            return previous_name_evaller(n)

        def bind(target: Any, value: Any) -> None:
            if isinstance(target, ast.Name):
                extra_names[target.id] = value
            else:
                for t, v in zip(target.elts, value, strict=False):
                    bind(t, v)

        def generate(gi: int = 0) -> None:
            nonlocal size
            g = node.generators[gi]
            for item in self._eval(g.iter):
                self._max_count += 1
                if self._max_count > MAX_COMPREHENSION_LENGTH:
                    raise BudgetExceeded(
                        f"a comprehension may go round at most {MAX_COMPREHENSION_LENGTH} times"
                    )
                self.budget.charge(1)
                bind(g.target, item)
                if all(self._eval(iff) for iff in g.ifs):
                    if len(node.generators) > gi + 1:
                        generate(gi + 1)
                    else:
                        value = self._eval(node.elt)
                        size += 1 + weight(value, self.budget.size, self.budget)
                        self.budget.check(size, "the comprehension's list")
                        result.append(value)

        self.nodes[ast.Name] = eval_names_extra
        try:
            generate()
        finally:
            self.nodes[ast.Name] = previous_name_evaller
        return result


def _safe_lshift(a: Any, b: Any) -> Any:
    if isinstance(b, int) and b > MAX_INT_BITS:
        raise BudgetExceeded(f"the shift would make more than {MAX_INT_BITS} bits")
    return a << b


def _evaluator(context: dict[str, Any], budget: Budget) -> _SafeEval:
    names = dict(_LITERALS)
    names.update(context)
    return _SafeEval(names, budget)


def evaluate(expr: str, context: dict[str, Any], budget: Budget | None = None) -> Any:
    """Evaluate ``expr`` against ``context`` under ``budget`` (a fresh one if None);
    raise :class:`ExpressionError` with the cause (:class:`BudgetExceeded` when over)."""
    tree = parse(expr)  # a clear syntax message first
    budget = budget or Budget()
    try:
        return _evaluator(context, budget).eval(
            normalise(expr).strip(), previously_parsed=tree.body
        )
    except BudgetExceeded as e:
        raise BudgetExceeded(f"{expr!r}: {e}") from None
    except InvalidExpression as e:
        raise ExpressionError(f"{expr!r}: {e}") from None
    except (KeyError, IndexError, TypeError, ValueError, ArithmeticError, AttributeError) as e:
        raise ExpressionError(f"{expr!r}: {type(e).__name__}: {e}") from None
    except (RecursionError, MemoryError) as e:
        raise BudgetExceeded(f"{expr!r}: too large to evaluate ({type(e).__name__})") from None


VALIDATION_OPERATIONS = MAX_OPERATIONS // 4  # for the constant parts of one expression


def budget_problem(expr: str) -> str | None:
    """What validation can see of a budget: the parts of ``expr`` that read nothing from
    the run (``'x' * 100000``, a comprehension over a literal) are evaluated now, under a
    budget of ``VALIDATION_OPERATIONS``; the first that goes over it is reported (None
    when none does). Other errors are left for run time."""
    tree = parse(expr)
    free: dict[int, frozenset[str]] = {}

    def names_of(node: ast.AST) -> frozenset[str]:
        if isinstance(node, ast.Name):
            out = frozenset() if node.id in _FUNCTIONS or node.id in _LITERALS else {node.id}
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
            _evaluator({}, budget).eval(expr, previously_parsed=node)
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

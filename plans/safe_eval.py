"""The evaluator of expressions: :mod:`simpleeval` with every step counted against a
:class:`~plans.expression_limits.Budget`.

It owns what an expression may call (the functions, the methods that only read), what it
may not (methods that change a value, modules, simpleeval's forbidden functions) and what
each operator, function and node costs. Parsing, references and templates are
:mod:`plans.expressions`; the limits and sizes are :mod:`plans.expression_limits`.
"""

from __future__ import annotations

import ast
import operator as op
import re
import types
from collections.abc import Mapping
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
)

from plans.expression_limits import (
    MAX_INT_BITS,
    Budget,
    BudgetExceeded,
    int_cost,
    is_container,
    text_size,
    weight,
)

# The functions an expression may call (their budgeted versions: ``SafeEval``).
FUNCTIONS = frozenset(
    {
        "len", "str", "int", "float", "bool", "abs", "min", "max", "sum", "round", "any",
        "all", "sorted", "lower", "upper", "contains",
    }
)  # fmt: skip
LITERALS = {"true": True, "false": False, "null": None, "none": None}

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


# ``%`` conversions: the mapping key, flags, width and precision.
_PERCENT_RE = re.compile(r"%(\([^)]*\))?[-#0 +]*(\*|\d+)?(?:\.(\*|\d+))?[hlL]?(.)", re.DOTALL)
# The numbers of a format spec (``{x:>10.3f}``): width and precision.
_SPEC_NUMBER_RE = re.compile(r"\d+")


class SafeEval(EvalWithCompoundTypes):
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
            self.budget.charge(int_cost(a, b))
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
            self.budget.charge(int_cost(a, b))
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
        self.budget.charge(int_cost(a, b))
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
        elif is_container(value):
            weight(value, self.budget.size, self.budget)

    def _comparing(self, fn: Any) -> Any:
        def compare(a: Any, b: Any) -> Any:
            if is_container(a) and is_container(b):
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


def evaluator(context: dict[str, Any], budget: Budget) -> SafeEval:
    """An evaluator reading the names of ``context`` and the literals, under ``budget``."""
    names = dict(LITERALS)
    names.update(context)
    return SafeEval(names, budget)

"""The limits of the expression language and what evaluating costs.

This module owns the errors (:class:`ExpressionError`, :class:`BudgetExceeded`), the
``MAX_*`` limits, the :class:`Budget` every evaluation runs under and the helpers that
size a value without building it (:func:`weight`, :func:`text_size`). The evaluator that
spends the budget is :mod:`plans.safe_eval`; the language itself is
:mod:`plans.expressions`.
"""

from __future__ import annotations

import json
from typing import Any

MAX_EXPRESSION_LENGTH = 2000
MAX_NODES = 400  # syntax-tree nodes in one expression
MAX_DEPTH = 40  # nesting of the syntax tree
MAX_INT_BITS = 64_000  # size of an integer an operation may build


class ExpressionError(ValueError):
    """An expression that cannot be parsed or evaluated; the message says why."""


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


def is_container(value: Any) -> bool:
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


def int_cost(a: Any, b: Any) -> int:
    """Operations for multiplying or dividing two integers (quadratic in their size)."""
    if type(a) is int and type(b) is int:
        return (a.bit_length() * b.bit_length()) >> 16
    return 0


# What validation may spend on the constant parts of one expression (``budget_problem``).
VALIDATION_OPERATIONS = MAX_OPERATIONS // 4

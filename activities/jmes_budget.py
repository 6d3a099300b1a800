"""JMESPath under a budget, for the ``transform`` tool.

``jmespath.search`` returns shared references: ``[@,@] | [@,@] | ...`` forty times is a
list of two lists of two lists... built at once, but 2^40 times the input once written
out (to JSON, to the store, to the workflow's history). A worker asked to serialise it
runs out of memory, and a retried step does it again on every worker.

:func:`search` evaluates with an interpreter that counts every node it visits and checks
the size of every list or object an expression builds (shared references counted in
full, as serialising them costs; the walk stops once past the limit). Going over either
limit raises :class:`TransformTooLarge`, which the tool turns into a non-retryable step
failure that names the limit.
"""

from __future__ import annotations

from typing import Any

import jmespath
from jmespath import visitor

from plans.expression_limits import Budget, BudgetExceeded, weight

MAX_TRANSFORM_OPERATIONS = 2_000_000  # nodes visited plus items walked / 8
MAX_TRANSFORM_SIZE = 5_000_000  # characters or items of any value built, and of the result

# Visits whose result is a value the expression builds (the others return a part of
# their input, or a scalar).
_BUILDING = frozenset(
    {
        "flatten",
        "projection",
        "value_projection",
        "filter_projection",
        "multi_select_list",
        "multi_select_dict",
        "function_expression",
        "slice",
    }
)


class TransformTooLarge(Exception):
    """A JMESPath expression went over its budget; the message names the limit."""


class _BudgetInterpreter(visitor.TreeInterpreter):
    def __init__(self, budget: Budget) -> None:
        super().__init__()
        self.budget = budget

    def visit(self, node: dict[str, Any], *args: Any, **kwargs: Any) -> Any:
        self.budget.charge(1)
        result = super().visit(node, *args, **kwargs)
        if node["type"] in _BUILDING and isinstance(result, list | dict | str):
            self.budget.check(weight(result, self.budget.size, self.budget))
        return result


def search(expression: str, data: Any) -> Any:
    """``jmespath.search(expression, data)`` under the budget; raises
    :class:`TransformTooLarge` past it (and for MemoryError and RecursionError)."""
    parsed = jmespath.compile(expression)
    budget = Budget(operations=MAX_TRANSFORM_OPERATIONS, size=MAX_TRANSFORM_SIZE)
    try:
        result = _BudgetInterpreter(budget).visit(parsed.parsed, data)
        budget.check(weight(result, budget.size, budget), "the result")
    except BudgetExceeded as e:
        raise TransformTooLarge(f"JMESPath {expression[:200]!r}: {e}") from None
    except (MemoryError, RecursionError) as e:
        raise TransformTooLarge(
            f"JMESPath {expression[:200]!r}: too large to evaluate ({type(e).__name__})"
        ) from None
    return result

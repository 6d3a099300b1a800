"""Condition nodes and the guards they put on the steps behind them.

A condition node becomes no step of its own: :class:`PathResolver` follows the edges into
a node back through condition nodes, and :class:`ConditionNode` gives each edge leaving
a condition its guard (a Plansmith expression), which becomes the ``when`` of the step
it leads to. The forms a condition may take are listed in :mod:`plans.graph_import`.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from plans.graph_document import GraphEdge, TranslationContext, config_of
from plans.graph_names import NodeNames

_TRUE = frozenset({"true", "yes", "then", "1", "on", "pass", "success"})
_FALSE = frozenset({"false", "no", "else", "0", "off", "fail", "failure"})
_DEFAULT_HANDLES = frozenset({"default", "else", "otherwise"})


def _and(a: str | None, b: str | None) -> str | None:
    if a is None:
        return b
    if b is None:
        return a
    return f"({a}) and ({b})"


def or_guards(guards: list[str | None]) -> str | None:
    """The ``when`` of a step reached by several paths: any of their guards holds (None
    when a path has no guard, or there is no path)."""
    if not guards or any(g is None for g in guards):
        return None
    unique: list[str] = []
    for g in guards:
        if g is not None and g not in unique:
            unique.append(g)
    return unique[0] if len(unique) == 1 else " or ".join(f"({g})" for g in unique)


class PathResolver:
    """Which steps a node depends on, through condition nodes, and under which guard."""

    def __init__(
        self,
        ctx: TranslationContext,
        incoming: dict[str, list[tuple[int, GraphEdge]]],
        conditions: dict[str, ConditionNode],
    ):
        self.ctx, self.incoming, self.conditions = ctx, incoming, conditions
        self.memo: dict[str, list[tuple[str | None, str | None]]] = {}
        self.guard_memo: dict[int, str | None] = {}
        self.guarding: set[int] = set()  # edges whose guard is being worked out

    def paths_into(
        self, node_id: str, stack: frozenset[str] = frozenset()
    ) -> list[tuple[str | None, str | None]]:
        """``(upstream step node id or None, guard)`` for every path into ``node_id``."""
        out: list[tuple[str | None, str | None]] = []
        for j, edge in self.incoming.get(node_id, []):
            src = edge.source
            kind = self.ctx.kinds.get(src)
            if kind is None:
                continue
            if kind != "condition":
                out.append((src, None))
                continue
            if src in stack:
                self.ctx.add(
                    self.ctx.where(src), f"condition node {src!r} is part of a cycle of conditions"
                )
                continue
            before = len(self.ctx.problems)
            guard = self._edge_guard(j, edge)
            if guard is None or len(self.ctx.problems) > before:
                continue
            upstream = self.paths_into(src, stack | {src}) or [(None, None)]
            for dep, g in upstream:
                out.append((dep, _and(g, guard)))
        return out

    def _edge_guard(self, j: int, edge: GraphEdge) -> str | None:
        if j in self.guard_memo:
            return self.guard_memo[j]
        if j in self.guarding:  # its guard needs itself: conditions feeding each other
            self.ctx.add(
                self.ctx.where(edge.source),
                f"condition node {edge.source!r} is part of a cycle of conditions",
            )
            return None
        self.guarding.add(j)
        try:
            cond = self.conditions[edge.source]
            deps = [d for d, _ in self.paths_into(edge.source, frozenset({edge.source})) if d]
            names = NodeNames(self.ctx, edge.source, list(dict.fromkeys(deps)))
            self.guard_memo[j] = cond.guard_for(j, edge, names)
        finally:
            self.guarding.discard(j)
        return self.guard_memo[j]


class ConditionNode:
    """A condition node: its branches' guards over ``input`` (its upstream)."""

    def __init__(self, ctx: TranslationContext, node_id: str):
        self.ctx = ctx
        self.node_id = node_id
        self.node = ctx.nodes[node_id]
        self.cfg = config_of(self.node)

    def guard_for(self, edge_index: int, edge: GraphEdge, names: NodeNames) -> str | None:
        """The guard of the branch ``edge`` is; a problem (and None) when it cannot tell."""
        cfg = self.cfg
        where = self.ctx.where(self.node_id, ".config")
        branches = None
        for key in ("branches", "cases", "conditions"):
            value = cfg.get(key)
            if isinstance(value, list) and any(
                isinstance(b, dict) and (_branch_target(b) is not None or "handle" in b)
                for b in value
            ):
                branches = (key, value)
                break
        if branches is not None:
            return self._multiway(edge_index, edge, names, *branches)
        expr = self._boolean(names, where)
        if expr is None:
            return None
        branch = _edge_branch(edge)
        if branch is True:
            return expr
        if branch is False:
            return f"not ({expr})"
        self.ctx.add(
            f"definition.edges[{edge_index}]",
            f"edge from condition node {self.node_id!r} must say its branch: sourceHandle, "
            "label or condition 'true' or 'false'",
        )
        return None

    def _boolean(self, names: NodeNames, where: str) -> str | None:
        cfg = self.cfg
        for key in ("expression", "condition", "expr"):
            value = cfg.get(key)
            if isinstance(value, str) and value.strip():
                return names.expression(value, f"{where}.{key}")
        if "field" in cfg or "left" in cfg:
            return _structured(cfg, names, where)
        conds = cfg.get("conditions") or cfg.get("rules")
        if isinstance(conds, list) and conds:
            logic = str(cfg.get("logic") or cfg.get("combinator") or "and").lower()
            joiner = " or " if logic in ("or", "any") else " and "
            parts = []
            for i, c in enumerate(conds):
                part = _one_condition(c, names, f"{where}.conditions[{i}]")
                if part is None:
                    return None
                parts.append(f"({part})")
            return joiner.join(parts)
        self.ctx.add(
            where,
            "a condition node needs 'expression' (or 'condition'), {field, operator, value}, "
            "'conditions', or 'branches' with targets",
        )
        return None

    def _multiway(
        self, edge_index: int, edge: GraphEdge, names: NodeNames, key: str, branches: list[Any]
    ) -> str | None:
        where = self.ctx.where(self.node_id, f".config.{key}")
        guards: list[str] = []
        for i, b in enumerate(branches):
            g = _one_condition(b, names, f"{where}[{i}]")
            if g is None:
                return None
            guards.append(g)
        earlier: list[str] = []
        for i, b in enumerate(branches):
            target, handle = _branch_target(b), b.get("handle") or b.get("id")
            if edge.target == target or (
                edge.source_handle is not None and edge.source_handle in (handle, target)
            ):
                none_before = f"not ({' or '.join(f'({e})' for e in earlier)})" if earlier else None
                return _and(none_before, guards[i])
            earlier.append(guards[i])
        default = (
            self.cfg.get("default")
            or self.cfg.get("defaultTargetNodeId")
            or self.cfg.get("default_target")
        )
        handle = (edge.source_handle or edge.label or "").strip().lower()
        if edge.target == default or handle in _DEFAULT_HANDLES:
            return f"not ({' or '.join(f'({g})' for g in guards)})"
        self.ctx.add(
            f"definition.edges[{edge_index}]",
            f"edge from condition node {self.node_id!r} to {edge.target!r} matches none of its "
            "branches (by target or sourceHandle) and is not its default",
        )
        return None


def _branch_target(b: Any) -> str | None:
    """The node a branch of a multi-way condition leads to (None: it names none)."""
    if not isinstance(b, dict):
        return None
    for key in ("target", "targetNodeId", "target_node_id", "target_node"):
        if isinstance(b.get(key), str):
            return str(b[key])
    return None


def _edge_branch(edge: GraphEdge) -> bool | None:
    candidates: list[Any] = [
        edge.source_handle,
        edge.label,
        edge.condition,
        edge.data.get("branch"),
        edge.data.get("condition"),
        edge.data.get("label"),
    ]
    for c in candidates:
        if isinstance(c, bool):
            return c
        if isinstance(c, str):
            word = c.strip().lower()
            for prefix in ("branch-", "branch_", "output-", "output_", "source-", "source_"):
                word = word.removeprefix(prefix)
            if word in _TRUE:
                return True
            if word in _FALSE:
                return False
    return None


_OPERATORS = {
    "==": "==",
    "=": "==",
    "===": "==",
    "eq": "==",
    "equals": "==",
    "equal": "==",
    "is": "==",
    "!=": "!=",
    "!==": "!=",
    "ne": "!=",
    "neq": "!=",
    "not_equals": "!=",
    "not_equal": "!=",
    ">": ">",
    "gt": ">",
    "greater_than": ">",
    ">=": ">=",
    "gte": ">=",
    "greater_than_or_equal": ">=",
    "greater_or_equal": ">=",
    "<": "<",
    "lt": "<",
    "less_than": "<",
    "<=": "<=",
    "lte": "<=",
    "less_than_or_equal": "<=",
    "less_or_equal": "<=",
}


def _one_condition(c: Any, names: NodeNames, where: str) -> str | None:
    if isinstance(c, str):
        return names.expression(c, where)
    if isinstance(c, dict):
        for key in ("expression", "condition", "expr"):
            if isinstance(c.get(key), str):
                return names.expression(c[key], f"{where}.{key}")
        if "field" in c or "left" in c:
            return _structured(c, names, where)
    names.ctx.add(where, "a condition is an expression string or {field, operator, value}")
    return None


def _structured(c: Mapping[str, Any], names: NodeNames, where: str) -> str | None:
    field = c.get("field", c.get("left"))
    if not isinstance(field, str) or not field.strip():
        names.ctx.add(f"{where}.field", "a condition's field must be a non-empty string")
        return None
    lhs = names.path(field, f"{where}.field")
    if lhs is None:
        return None
    op = str(c.get("operator", c.get("op", "=="))).strip().lower().replace(" ", "_")
    value = c.get("value", c.get("right"))
    lit = json.dumps(value)
    if op in _OPERATORS:
        return f"{lhs} {_OPERATORS[op]} {lit}"
    if op in ("contains", "includes"):
        return f"contains({lhs}, {lit})"
    if op in ("not_contains", "not_includes", "does_not_contain"):
        return f"not contains({lhs}, {lit})"
    if op == "in":
        return f"{lhs} in {lit}"
    if op in ("not_in", "nin"):
        return f"{lhs} not in {lit}"
    if op in ("starts_with", "startswith"):
        return f"str({lhs}).startswith({lit})"
    if op in ("ends_with", "endswith"):
        return f"str({lhs}).endswith({lit})"
    if op in ("is_empty", "empty"):
        return f"not {lhs}"
    if op in ("is_not_empty", "not_empty", "exists", "is_set"):
        return f"bool({lhs})"
    names.ctx.add(f"{where}.operator", f"unknown operator {op!r}")
    return None

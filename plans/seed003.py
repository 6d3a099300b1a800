"""Seed 003's execution API, translated into a plan document (DESIGN.md §2, §5).

Seed 003 runs a *workflow definition* — ``{nodes, edges}`` with node types ``input``,
``llm``, ``condition``, ``transform`` and ``output`` — with ``input_data``. Plansmith runs
it as an ordinary :class:`~plans.models.Plan` in ``PlanWorkflow``; this module is the
pure translation (no I/O), plus the mapping of a plan's status back to seed 003's
vocabulary. The API (``api/routes_v1.py``) only calls these functions.

Mapping (every node but ``condition`` becomes one step; the step id is the node id when
that is a valid step id, else a cleaned-up id with a short hash):

``input``
    A ``transform`` tool step over ``{{ inputs }}`` (the plan's inputs are
    ``input_data``). With ``fields`` (names, ``{name, default?, required?}`` objects, or
    ``{name: spec}``) it outputs just those fields; a missing field with a ``default``
    gets it (the default is put into the plan's inputs), a missing ``required`` field is
    refused. Without fields it outputs the whole ``input_data``.
``llm``
    An ``llm`` step: ``params.prompt`` from ``prompt`` (or ``prompt_template``,
    ``user_prompt``, ``template``, ``message``), plus ``system`` (``system_prompt``),
    ``model`` (``model_name``, ``modelId``), ``temperature``, ``max_tokens``
    (``maxTokens``) when given, and ``input``: the upstream output(s). Placeholders in the
    prompt (``{{input}}``, ``{{input.x}}``, ``{{<node id>.output.x}}``,
    ``{{inputs.x}}``/``{{input_data.x}}``/``{{variables.x}}``, ``{name}`` for an
    ``input_data`` key) become Plansmith templates. The step fails at run time until the
    LLM layer exists (``UnsupportedStep``), but it is translated faithfully.
``condition``
    No step of its own: its boolean becomes the ``when`` of the steps its edges lead to,
    and those steps depend on the condition's own upstream steps. The condition is
    ``expression`` (or ``condition``/``expr``) — JavaScript/Python-like, translated
    (``&&``→``and``, ``||``→``or``, ``!``→``not``, ``===``→``==``; names as for
    prompts; a bare name is an ``input_data`` key, else a field of the single upstream
    output) — or ``{field, operator, value}`` (operators ``==``/``equals``/``eq``,
    ``!=``, ``>``, ``>=``, ``<``, ``<=`` and their word forms, ``contains``,
    ``not_contains``, ``in``, ``not_in``, ``starts_with``, ``ends_with``,
    ``is_empty``, ``is_not_empty``), or ``conditions: [...]`` of those combined by
    ``logic`` (``and``, default, or ``or``). Edges leaving it say which branch they are
    by ``sourceHandle``, ``label``, ``condition`` or ``data.branch``: ``true``/``yes``/
    ``then`` or ``false``/``no``/``else``. A multi-way condition lists
    ``branches`` (or ``conditions``/``cases``) each with a ``target`` node id or a
    ``handle`` matched against the edge's ``sourceHandle``; the first branch whose
    condition holds is taken, and ``default`` (a node id) or an edge with handle
    ``default``/``else`` when none does. A step reached by several paths runs when any
    of them is taken (the guards are or-ed); conditions chained behind conditions
    are and-ed.
``transform``
    A ``transform`` tool step (JMESPath) whose ``data`` is the upstream output (one
    upstream node), an object keyed by upstream node id (several), or the plan's inputs
    (none). The config is mapped, first match wins: ``expression``/``jmespath``/``query``
    (a JMESPath expression, as is); ``path``/``extract``/``key``/``field``/``jsonpath``
    (a dotted path such as ``$.items[0].name`` or ``input.items.0.name``, turned into
    JMESPath); ``mapping``/``mappings``/``fields`` (``{output key: path}`` or a list of
    ``{source, target, default?}``: an object with those keys); ``template`` (a string
    with ``{{path}}``/``{path}`` placeholders: a JMESPath ``join`` of literals and
    ``to_string`` values, a missing value renders as ``""``); ``operation``
    ``json_stringify`` (``to_string(@)``) or ``passthrough``; nothing (``@``: pass the
    data through). Code transforms (``code``, ``transformCode``, ``script``) and
    ``json_parse`` cannot be expressed in JMESPath and are refused with a located
    problem.
``output``
    A ``transform`` step collecting the upstream output(s) the same way (``@``), or with
    ``fields``/``mapping`` as for ``transform``; ``key`` (``output_key``) wraps the result
    as ``{key: ...}``. Its output is the execution's result.

Seed 003 executions start at once: the plan has ``require_approval: false`` and
``on_error: stop``. The plan id is the execution id when it is a valid plan id, else a
cleaned-up id with a short hash (:func:`plan_id_for_execution`), so an execution is also
reachable through ``/api/plans/{id}``.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Mapping
from typing import Any, Literal

import jmespath
import jmespath.exceptions
from pydantic import BaseModel, ConfigDict, Field

from plans.models import ID_RE, Plan, PlanStatus, StepStatus, ToolSpec
from plans.validation import PlanInvalid, Problem, parse_plan, validate_plan
from plans.views import StatusView

NODE_TYPES = ("input", "llm", "condition", "transform", "output")
_TYPE_ALIASES = {"start": "input", "end": "output"}
_TRUE = frozenset({"true", "yes", "then", "1", "on", "pass", "success"})
_FALSE = frozenset({"false", "no", "else", "0", "off", "fail", "failure"})
_DEFAULT_HANDLES = frozenset({"default", "else", "otherwise"})


# --- seed 003's request shapes ---------------------------------------------------------


class Seed003Node(BaseModel):
    """One node. Editors (React Flow) add ``position``, ``width``…: extra keys are kept
    and ignored. The node's settings are ``config`` merged over ``data`` (and
    ``data.config``)."""

    model_config = ConfigDict(extra="allow")

    id: str = Field(min_length=1, max_length=200)
    type: str = Field(min_length=1, max_length=100)
    data: dict[str, Any] = Field(default_factory=dict)
    config: dict[str, Any] = Field(default_factory=dict)
    label: str | None = None


class Seed003Edge(BaseModel):
    model_config = ConfigDict(extra="allow", populate_by_name=True)

    id: str | None = None
    source: str = Field(min_length=1)
    target: str = Field(min_length=1)
    source_handle: str | None = Field(default=None, alias="sourceHandle")
    label: str | None = None
    condition: str | bool | None = None
    data: dict[str, Any] = Field(default_factory=dict)


class Seed003Definition(BaseModel):
    model_config = ConfigDict(extra="allow")

    nodes: list[Seed003Node]
    edges: list[Seed003Edge] = Field(default_factory=list)


class ExecutionCreate(BaseModel):
    """``POST /api/v1/execute``: seed 003's ``ExecutionCreate``."""

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [
                {
                    "execution_id": "exec-001",
                    "workflow_id": "workflow-001",
                    "definition": {
                        "nodes": [
                            {"id": "start", "type": "input", "config": {"fields": ["message"]}},
                            {
                                "id": "check",
                                "type": "condition",
                                "config": {"expression": "len(input.message) > 3"},
                            },
                            {
                                "id": "shout",
                                "type": "transform",
                                "config": {"template": "{{message}}!"},
                            },
                            {"id": "done", "type": "output"},
                        ],
                        "edges": [
                            {"source": "start", "target": "check"},
                            {"source": "check", "target": "shout", "sourceHandle": "true"},
                            {"source": "shout", "target": "done"},
                        ],
                    },
                    "input_data": {"message": "Hello"},
                }
            ]
        },
    )

    execution_id: str = Field(min_length=1, max_length=200, description="the execution's id")
    workflow_id: str = Field(
        min_length=1, max_length=200, description="the seed 003 workflow it runs"
    )
    definition: Seed003Definition
    input_data: dict[str, Any] = Field(default_factory=dict)


SeedStatus = Literal["pending", "running", "paused", "completed", "failed", "stopped"]


class ExecutionStatus(BaseModel):
    """Seed 003's ``ExecutionStatus``."""

    execution_id: str
    status: SeedStatus
    current_node: str | None = Field(
        default=None, description="the node running now (or waiting for a person)"
    )
    progress: float = Field(ge=0, le=1)
    message: str = ""


# --- ids ------------------------------------------------------------------------------


def _short_hash(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:8]


def clean_id(raw: str, max_len: int = 64) -> str:
    """``raw`` when it is a valid plan/step id; else a valid id made from it plus a hash
    of the original (so two different raw ids never clean to the same id)."""
    if ID_RE.match(raw) and len(raw) <= max_len:
        return raw
    slug = re.sub(r"[^a-z0-9_-]+", "-", raw.lower()).strip("-_")
    slug = slug[: max_len - 9].rstrip("-_")
    return f"{slug}-{_short_hash(raw)}" if slug else f"n{_short_hash(raw)}"


def plan_id_for_execution(execution_id: str) -> str:
    """The plan (and so the workflow ``plan-<id>``) an execution id runs as."""
    return clean_id(execution_id)


# --- translation ----------------------------------------------------------------------


class Translation(BaseModel):
    plan: Plan
    step_of_node: dict[str, str]
    node_of_step: dict[str, str]
    node_index_of_step: dict[str, int]

    def relocate(self, problem: Problem) -> Problem:
        """A plan problem (``steps[3].when: ...``) told in terms of the definition."""
        m = re.match(r"steps\[(\d+)\]\.?(.*)", problem.location)
        if not m or int(m.group(1)) >= len(self.plan.steps):
            return Problem(location="definition", message=f"{problem.location}: {problem.message}")
        step = self.plan.steps[int(m.group(1))]
        index = self.node_index_of_step.get(step.id)
        where = f"definition.nodes[{index}]" if index is not None else "definition"
        field = f" {m.group(2)}" if m.group(2) else ""
        return Problem(
            location=where, message=f"{problem.message} (translated step {step.id!r}{field})"
        )


class _Ctx:
    """What the translation of one node needs to know about the whole definition."""

    def __init__(self, req: ExecutionCreate):
        self.req = req
        self.nodes = {n.id: n for n in req.definition.nodes}
        self.index = {n.id: i for i, n in enumerate(req.definition.nodes)}
        self.kinds: dict[str, str] = {}
        self.step_ids: dict[str, str] = {}
        self.problems: list[Problem] = []
        self.inputs: dict[str, Any] = dict(req.input_data)

    def add(self, location: str, message: str) -> None:
        self.problems.append(Problem(location=location, message=message))

    def where(self, node_id: str, suffix: str = "") -> str:
        return f"definition.nodes[{self.index[node_id]}]{suffix}"


def config_of(node: Seed003Node) -> dict[str, Any]:
    """``data`` (and ``data.config``) overlaid with ``config``."""
    merged: dict[str, Any] = {k: v for k, v in node.data.items() if k != "config"}
    nested = node.data.get("config")
    if isinstance(nested, dict):
        merged.update(nested)
    merged.update(node.config)
    return merged


def node_type(raw: str) -> str | None:
    t = raw.strip().lower().replace("-", "_")
    for suffix in ("_node", "node"):
        if t.endswith(suffix) and t != suffix:
            t = t[: -len(suffix)].rstrip("_")
    t = _TYPE_ALIASES.get(t, t)
    return t if t in NODE_TYPES else None


def translate(req: ExecutionCreate) -> Translation:
    """The plan that runs ``req``; :class:`PlanInvalid` lists every problem, located in
    the request (``definition.nodes[2].config.expression: ...``)."""
    ctx = _Ctx(req)
    nodes = req.definition.nodes
    if not nodes:
        ctx.add("definition.nodes", "a definition needs at least one node")
    seen: dict[str, int] = {}
    for i, node in enumerate(nodes):
        if node.id in seen:
            ctx.add(f"definition.nodes[{i}].id", f"duplicate node id {node.id!r}")
            continue
        seen[node.id] = i
        kind = node_type(node.type)
        if kind is None:
            ctx.add(
                f"definition.nodes[{i}].type",
                f"unknown node type {node.type!r}; supported: {', '.join(NODE_TYPES)}",
            )
            continue
        ctx.kinds[node.id] = kind
    ctx.index = seen
    used: set[str] = set()
    for node in nodes:
        if ctx.kinds.get(node.id) in (None, "condition") or node.id in ctx.step_ids:
            continue
        sid = clean_id(node.id)
        while sid in used:  # two raw ids cleaning to one id: only with a hash collision
            sid = clean_id(sid + "_")
        used.add(sid)
        ctx.step_ids[node.id] = sid

    incoming: dict[str, list[tuple[int, Seed003Edge]]] = {}
    for j, edge in enumerate(req.definition.edges):
        for end in ("source", "target"):
            ref = getattr(edge, end)
            if ref not in ctx.nodes:
                ctx.add(f"definition.edges[{j}].{end}", f"unknown node {ref!r}")
        if edge.source in ctx.nodes and edge.target in ctx.nodes:
            incoming.setdefault(edge.target, []).append((j, edge))

    conditions = {nid: _Condition(ctx, nid) for nid, k in ctx.kinds.items() if k == "condition"}
    resolver = _Resolver(ctx, incoming, conditions)

    steps: list[dict[str, Any]] = []
    node_index: dict[str, int] = {}
    for i, node in enumerate(nodes):
        kind = ctx.kinds.get(node.id)
        if kind is None or kind == "condition" or ctx.index[node.id] != i:
            continue
        sid = ctx.step_ids[node.id]
        paths = resolver.paths_into(node.id)
        deps = list(dict.fromkeys(dep for dep, _ in paths if dep is not None))
        step: dict[str, Any] = {
            "id": sid,
            "description": _describe(node, kind),
            "depends_on": [ctx.step_ids[d] for d in deps],
        }
        when = _or_guards([g for _, g in paths])
        if when:
            step["when"] = when
        up = _Upstream(ctx, node.id, deps)
        if kind == "llm":
            step["kind"] = "llm"
            step["params"] = _llm_params(ctx, node, up)
        else:
            step["tool"] = "transform"
            make = {"input": _input_params, "transform": _transform_params}
            step["params"] = make.get(kind, _output_params)(ctx, node, up)
        node_index[sid] = ctx.index[node.id]
        steps.append(step)

    if ctx.problems:
        raise PlanInvalid(ctx.problems)
    doc = {
        "id": plan_id_for_execution(req.execution_id),
        "title": req.workflow_id,
        "description": f"seed 003 execution {req.execution_id} of workflow {req.workflow_id}",
        "inputs": ctx.inputs,
        "options": {"require_approval": False, "on_error": "stop"},
        "steps": steps,
    }
    plan = parse_plan(doc)
    return Translation(
        plan=plan,
        step_of_node=dict(ctx.step_ids),
        node_of_step={v: k for k, v in ctx.step_ids.items()},
        node_index_of_step=node_index,
    )


def validate_translation(tr: Translation, catalog: Mapping[str, ToolSpec]) -> list[Problem]:
    """The whole-plan problems of a translation, located in the request."""
    return [tr.relocate(p) for p in validate_plan(tr.plan, catalog)]


def _describe(node: Seed003Node, kind: str) -> str:
    cfg = config_of(node)
    label = node.label or cfg.get("label") or cfg.get("name") or cfg.get("title")
    tail = f"({kind} node {node.id})"
    return f"{label} {tail}" if isinstance(label, str) and label.strip() else tail


_NODE_IN_DESCRIPTION = re.compile(r"\((?:input|llm|transform|output) node (.+)\)$")


def node_id_of(step_id: str, description: str) -> str:
    """The seed 003 node a step was made from (read back from its description)."""
    m = _NODE_IN_DESCRIPTION.search(description or "")
    return m.group(1) if m else step_id


# --- conditions and guards ------------------------------------------------------------


def _and(a: str | None, b: str | None) -> str | None:
    if a is None:
        return b
    if b is None:
        return a
    return f"({a}) and ({b})"


def _or_guards(guards: list[str | None]) -> str | None:
    if not guards or any(g is None for g in guards):
        return None
    unique: list[str] = []
    for g in guards:
        if g is not None and g not in unique:
            unique.append(g)
    return unique[0] if len(unique) == 1 else " or ".join(f"({g})" for g in unique)


class _Upstream:
    """The upstream of a node: its dependency steps (by node id)."""

    def __init__(self, ctx: _Ctx, node_id: str, deps: list[str]):
        self.ctx, self.node_id, self.deps = ctx, node_id, deps

    def data_template(self) -> Any:
        """What a transform/output node reads: one upstream output, several by node id, or
        the plan's inputs."""
        if not self.deps:
            return "{{ inputs }}"
        if len(self.deps) == 1:
            return "{{ " + _step_output(self.ctx.step_ids[self.deps[0]]) + " }}"
        return {d: "{{ " + _step_output(self.ctx.step_ids[d]) + " }}" for d in self.deps}


def _step_output(step_id: str) -> str:
    return f"steps.{step_id}.output"


def _inputs_ref(key: str) -> str:
    return (
        f"inputs.{key}"
        if re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", key)
        else (f"inputs[{json.dumps(key)}]")
    )


class _Condition:
    """A condition node: its branches' guards over ``input`` (its upstream)."""

    def __init__(self, ctx: _Ctx, node_id: str):
        self.ctx = ctx
        self.node_id = node_id
        self.node = ctx.nodes[node_id]
        self.cfg = config_of(self.node)

    def guard_for(self, edge_index: int, edge: Seed003Edge, names: _Names) -> str | None:
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

    def _boolean(self, names: _Names, where: str) -> str | None:
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
        self, edge_index: int, edge: Seed003Edge, names: _Names, key: str, branches: list[Any]
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


def _edge_branch(edge: Seed003Edge) -> bool | None:
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


def _one_condition(c: Any, names: _Names, where: str) -> str | None:
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


def _structured(c: Mapping[str, Any], names: _Names, where: str) -> str | None:
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


class _Resolver:
    """Which steps a node depends on, through condition nodes, and under which guard."""

    def __init__(
        self,
        ctx: _Ctx,
        incoming: dict[str, list[tuple[int, Seed003Edge]]],
        conditions: dict[str, _Condition],
    ):
        self.ctx, self.incoming, self.conditions = ctx, incoming, conditions
        self.memo: dict[str, list[tuple[str | None, str | None]]] = {}
        self.guard_memo: dict[int, str | None] = {}

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

    def _edge_guard(self, j: int, edge: Seed003Edge) -> str | None:
        if j not in self.guard_memo:
            cond = self.conditions[edge.source]
            deps = [d for d, _ in self.paths_into(edge.source, frozenset({edge.source})) if d]
            names = _Names(self.ctx, edge.source, list(dict.fromkeys(deps)))
            self.guard_memo[j] = cond.guard_for(j, edge, names)
        return self.guard_memo[j]


# --- names in expressions, prompts and paths ------------------------------------------

_KEYWORDS = frozenset(
    [
        "and",
        "or",
        "not",
        "in",
        "is",
        "if",
        "else",
        "true",
        "false",
        "null",
        "none",
        "True",
        "False",
        "None",
        "answer",
        "feedback",
        "steps",
    ]
)
_FUNCTIONS = frozenset(
    [
        "len",
        "str",
        "int",
        "float",
        "bool",
        "abs",
        "min",
        "max",
        "sum",
        "round",
        "any",
        "all",
        "sorted",
        "lower",
        "upper",
        "contains",
    ]
)
_INPUT_ROOTS = frozenset({"inputs", "input_data", "variables", "vars", "params", "inputData"})
_UPSTREAM_ROOTS = frozenset({"input", "$input", "data", "previous", "prev"})
_TOKEN = re.compile(
    r"""(?P<str>'(?:[^'\\]|\\.)*'|"(?:[^"\\]|\\.)*")"""
    r"""|(?P<num>\d+(?:\.\d+)?(?:[eE][+-]?\d+)?)"""
    r"""|(?P<op>===|!==|&&|\|\||!(?!=))"""
    r"""|(?P<name>\$?[A-Za-z_][A-Za-z0-9_-]*)"""
    r"""|(?P<other>.)""",
    re.DOTALL,
)


class _Names:
    """Rewrites seed 003 names to Plansmith ones for one node (whose upstream is ``deps``)."""

    def __init__(self, ctx: _Ctx, node_id: str, deps: list[str]):
        self.ctx, self.node_id, self.deps = ctx, node_id, deps

    def _upstream(self, where: str, name: str) -> str | None:
        if len(self.deps) == 1:
            return _step_output(self.ctx.step_ids[self.deps[0]])
        if not self.deps:
            return "inputs"
        self.ctx.add(
            where,
            f"{name!r} is ambiguous: node {self.node_id!r} has several upstream nodes "
            f"({', '.join(self.deps)}); name one as <node id>.output",
        )
        return None

    def _root(self, name: str, rest: str, where: str) -> tuple[str | None, str]:
        """Translate a leading name (and maybe swallow ``.output`` after a node id)."""
        if name in self.ctx.nodes and self.ctx.kinds.get(name) not in (None, "condition"):
            rest = re.sub(r"^\.(output|result|outputs)\b", "", rest)
            return _step_output(self.ctx.step_ids[name]), rest
        if name in _UPSTREAM_ROOTS:
            return self._upstream(where, name), rest
        if name in _INPUT_ROOTS:
            return "inputs", rest
        if name in self.ctx.inputs:
            return _inputs_ref(name), rest
        if self.deps and len(self.deps) == 1:
            return f"{_step_output(self.ctx.step_ids[self.deps[0]])}.{name}", rest
        self.ctx.add(
            where,
            f"unknown name {name!r}: use input, inputs.<key>, <node id>.output or an input_data key",
        )
        return None, rest

    def expression(self, text: str, where: str) -> str | None:
        """A seed 003 condition/placeholder expression in Plansmith's expression language."""
        # ``{{ score }} > 0.5``: a placeholder inside an expression is just its value.
        text = re.sub(r"\{\{\s*(.*?)\s*\}\}", r"(\1)", text.strip(), flags=re.DOTALL)
        out: list[str] = []
        problems_before = len(self.ctx.problems)
        pos = 0
        prev_sig = ""
        while pos < len(text):
            m = _TOKEN.match(text, pos)
            assert m is not None  # the last alternative matches any character
            pos = m.end()
            if m.group("str") is not None:
                out.append(m.group("str"))
                prev_sig = '"'
                continue
            if m.group("num") is not None:
                out.append(m.group("num"))
                prev_sig = "0"
                continue
            op = m.group("op")
            if op is not None:
                out.append(
                    {"===": "==", "!==": "!=", "&&": " and ", "||": " or ", "!": " not "}[op]
                )
                prev_sig = op
                continue
            name = m.group("name")
            if name is None:
                ch = m.group("other")
                out.append(ch)
                if not ch.isspace():
                    prev_sig = ch
                continue
            if prev_sig == ".":
                out.append(name)
                prev_sig = "n"
                continue
            # A node id may contain '-': prefer the longest known node id at this place.
            for nid in sorted(self.ctx.nodes, key=len, reverse=True):
                if text.startswith(nid, m.start()) and (
                    m.start() + len(nid) == len(text)
                    or not re.match(r"[A-Za-z0-9_-]", text[m.start() + len(nid)])
                ):
                    name, pos = nid, m.start() + len(nid)
                    break
            else:
                if "-" in name:  # not a node id: a subtraction such as a-b
                    head = name.split("-", 1)[0]
                    pos = m.start() + len(head)
                    name = head
            rest_match = re.match(r"(\.[A-Za-z_][A-Za-z0-9_]*)*", text[pos:])
            rest = rest_match.group(0) if rest_match else ""
            follows_call = re.match(r"\s*\(", text[pos:]) is not None
            # A node may be called like a keyword ("in"): it is the node when read from.
            node_ref = name in self.ctx.nodes and text[pos : pos + 1] == "."
            if not node_ref and (name in _KEYWORDS or (name in _FUNCTIONS and follows_call)):
                out.append({"undefined": "null"}.get(name, name))
                prev_sig = "n"
                continue
            if name == "undefined":
                out.append("null")
                prev_sig = "n"
                continue
            root, rest2 = self._root(name, rest, where)
            if root is None:
                continue
            out.append(root + rest2)
            pos += len(rest)
            prev_sig = "n"
        if len(self.ctx.problems) > problems_before:
            return None
        return re.sub(r"\s+", " ", "".join(out)).strip()

    def path(self, text: str, where: str) -> str | None:
        """A dotted path (``input.score``, ``$.a[0]``) as a Plansmith expression."""
        p = text.strip().removeprefix("$.").removeprefix("$")
        if not p:
            return self._upstream(where, "$")
        parts = _path_parts(p)
        if parts is None:
            self.ctx.add(where, f"cannot read path {text!r}")
            return None
        head, tail = parts[0], parts[1:]
        if isinstance(head, int):
            base = self._upstream(where, text)
            tail = parts
        else:
            base, _ = self._root(head, "", where)
            if head in self.ctx.nodes and tail and tail[0] in ("output", "result"):
                tail = tail[1:]
        if base is None:
            return None
        out = base
        for part in tail:
            out += f"[{part}]" if isinstance(part, int) else f"[{json.dumps(part)}]"
        return out

    def template(self, text: str, where: str) -> str:
        """A prompt: ``{{ ... }}`` and ``{name}`` placeholders become Plansmith templates."""

        def double(m: re.Match[str]) -> str:
            expr = self.expression(m.group(1), where)
            return "{{ " + expr + " }}" if expr is not None else m.group(0)

        text = re.sub(r"\{\{\s*(.*?)\s*\}\}", double, text, flags=re.DOTALL)

        def single(m: re.Match[str]) -> str:
            name = m.group(1)
            head = re.split(r"[.\[]", name, maxsplit=1)[0]
            if (
                head in self.ctx.inputs
                or head in _UPSTREAM_ROOTS
                or head in _INPUT_ROOTS
                or (head in self.ctx.nodes and self.ctx.kinds.get(head) != "condition")
            ):
                expr = self.expression(name, where)
                if expr is not None:
                    return "{{ " + expr + " }}"
            return m.group(0)  # literal braces (JSON in a prompt, say) stay as they are

        return re.sub(
            r"(?<!\{)\{\s*([A-Za-z_$][A-Za-z0-9_.\-\[\]]*)\s*\}(?!\})",
            single,
            text,
        )


def _path_parts(p: str) -> list[str | int] | None:
    parts: list[str | int] = []
    for m in re.finditer(r"([^.\[\]]+)|\[(\d+)\]|\[['\"]([^'\"]+)['\"]\]|(\.)", p):
        if m.group(1) is not None:
            seg = m.group(1)
            parts.append(int(seg) if seg.isdigit() else seg)
        elif m.group(2) is not None:
            parts.append(int(m.group(2)))
        elif m.group(3) is not None:
            parts.append(m.group(3))
    return parts or None


# --- params per node type -------------------------------------------------------------


def _jmes_ident(name: str) -> str:
    return name if re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", name) else json.dumps(name)


def _literal(value: Any) -> str:
    return "`" + json.dumps(value).replace("`", "\\`") + "`"


def path_to_jmespath(path: str) -> str | None:
    """``$.a.b[0]`` / ``input.a.b.0`` / ``a['x y']`` as a JMESPath expression (None if empty)."""
    p = path.strip().removeprefix("$.").removeprefix("$")
    for prefix in ("input.", "data."):
        p = p.removeprefix(prefix)
    if p in ("", "input", "data", "@"):
        return "@"
    parts = _path_parts(p)
    if parts is None:
        return None
    out = ""
    for part in parts:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += ("." if out else "") + _jmes_ident(part)
    return out if not out.startswith("[") else "@" + out


def _check_jmespath(ctx: _Ctx, expr: str, where: str) -> str | None:
    try:
        jmespath.compile(expr)
    except jmespath.exceptions.JMESPathError as e:
        ctx.add(where, f"not a JMESPath expression: {e}")
        return None
    return expr


def _template_to_jmespath(template: str) -> str:
    pieces: list[str] = []
    pos = 0
    pattern = re.compile(r"\{\{\s*(.*?)\s*\}\}|\{\s*([A-Za-z_$][A-Za-z0-9_.\[\]'\"$-]*)\s*\}")
    for m in pattern.finditer(template):
        if m.start() > pos:
            pieces.append(_literal(template[pos : m.start()]))
        path = path_to_jmespath(m.group(1) or m.group(2)) or "@"
        pieces.append(f'to_string(not_null({path}, `""`))')
        pos = m.end()
    if pos < len(template):
        pieces.append(_literal(template[pos:]))
    if not pieces:
        return _literal("")
    return f"join('', [{', '.join(pieces)}])"


def _mapping_fields(ctx: _Ctx, value: Any, where: str) -> dict[str, str] | None:
    fields: dict[str, str] = {}
    items: list[tuple[str, Any, Any, str]] = []
    if isinstance(value, dict):
        items = [(str(k), v, None, f"{where}.{k}") for k, v in value.items()]
    elif isinstance(value, list):
        for i, m in enumerate(value):
            if not isinstance(m, dict) or not isinstance(m.get("target", m.get("to")), str):
                ctx.add(f"{where}[{i}]", "a mapping entry is {source, target, default?}")
                return None
            items.append(
                (
                    str(m.get("target", m.get("to"))),
                    m.get("source", m.get("from", m.get("path"))),
                    m.get("default"),
                    f"{where}[{i}]",
                )
            )
    else:
        ctx.add(where, "a mapping is {output key: path} or a list of {source, target}")
        return None
    for target, source, default, loc in items:
        if not isinstance(source, str):
            ctx.add(loc, "the source of a mapping must be a path string")
            return None
        expr = path_to_jmespath(source)
        if expr is None:
            ctx.add(loc, f"cannot read path {source!r}")
            return None
        if default is not None:
            expr = f"not_null({expr}, {_literal(default)})"
        checked = _check_jmespath(ctx, expr, loc)
        if checked is None:
            return None
        fields[target] = checked
    return fields


def _first(cfg: Mapping[str, Any], *keys: str) -> tuple[str, Any] | None:
    for k in keys:
        if k in cfg and cfg[k] is not None:
            return k, cfg[k]
    return None


def _input_params(ctx: _Ctx, node: Seed003Node, up: _Upstream) -> dict[str, Any]:
    cfg = config_of(node)
    found = _first(cfg, "fields", "input_fields", "inputFields", "variables", "inputs")
    if found is None:
        return {"data": "{{ inputs }}", "expression": "@"}
    key, spec = found
    where = ctx.where(node.id, f".config.{key}")
    entries: list[tuple[str, dict[str, Any]]] = []
    if isinstance(spec, dict):
        entries = [(str(k), v if isinstance(v, dict) else {}) for k, v in spec.items()]
    elif isinstance(spec, list):
        for i, f in enumerate(spec):
            if isinstance(f, str):
                entries.append((f, {}))
            elif isinstance(f, dict) and isinstance(f.get("name", f.get("key")), str):
                entries.append((str(f.get("name", f.get("key"))), f))
            else:
                ctx.add(f"{where}[{i}]", "a field is a name or {name, default?, required?}")
    else:
        ctx.add(where, "fields are a list of names or {name, ...}, or an object of them")
    fields: dict[str, str] = {}
    for name, f in entries:
        if name not in ctx.inputs:
            if "default" in f:
                ctx.inputs[name] = f["default"]
            elif f.get("required"):
                ctx.add(f"input_data.{name}", f"required by input node {node.id!r}")
        fields[name] = _jmes_ident(name)
    if not fields:
        return {"data": "{{ inputs }}", "expression": "@"}
    return {"data": "{{ inputs }}", "fields": fields}


def _transform_params(ctx: _Ctx, node: Seed003Node, up: _Upstream) -> dict[str, Any]:
    cfg = config_of(node)
    data = up.data_template()
    where = ctx.where(node.id, ".config")
    op = str(cfg.get("operation") or cfg.get("transformType") or cfg.get("transform_type") or "")
    op = op.lower()
    op = op.replace("-", "_")
    code = _first(cfg, "code", "transformCode", "transform_code", "script", "python", "function")
    if code is not None or op in ("code", "script", "python", "javascript"):
        k = code[0] if code else "operation"
        ctx.add(
            f"{where}.{k}",
            "code transforms are not run by Plansmith; give a JMESPath 'expression', a 'path', "
            "a 'mapping' or a 'template' instead",
        )
        return {"data": data, "expression": "@"}
    if op in ("json_parse", "parse_json", "from_json"):
        ctx.add(
            f"{where}.operation",
            "json_parse cannot be expressed in JMESPath; have the upstream node return JSON",
        )
        return {"data": data, "expression": "@"}
    found = _first(cfg, "expression", "jmespath", "query")
    if found is not None and isinstance(found[1], str):
        expr = _check_jmespath(ctx, found[1], f"{where}.{found[0]}")
        return {"data": data, "expression": expr or "@"}
    found = _first(cfg, "path", "extract", "key", "field", "jsonpath", "json_path")
    if found is not None and isinstance(found[1], str):
        expr = path_to_jmespath(found[1])
        if expr is None:
            ctx.add(f"{where}.{found[0]}", f"cannot read path {found[1]!r}")
            return {"data": data, "expression": "@"}
        return {
            "data": data,
            "expression": _check_jmespath(ctx, expr, f"{where}.{found[0]}") or "@",
        }
    found = _first(cfg, "mapping", "mappings", "fields", "output_mapping", "outputMapping")
    if found is not None:
        fields = _mapping_fields(ctx, found[1], f"{where}.{found[0]}")
        if fields:
            return {"data": data, "fields": fields}
        return {"data": data, "expression": "@"}
    found = _first(cfg, "template")
    if found is not None and isinstance(found[1], str):
        expr = _check_jmespath(ctx, _template_to_jmespath(found[1]), f"{where}.template")
        return {"data": data, "expression": expr or "@"}
    if op in ("json_stringify", "stringify", "to_json", "to_string"):
        return {"data": data, "expression": "to_string(@)"}
    if op and op not in ("passthrough", "pass_through", "identity", "none", "extract", "template"):
        ctx.add(f"{where}.operation", f"unknown transform operation {op!r}")
    return {"data": data, "expression": "@"}


def _output_params(ctx: _Ctx, node: Seed003Node, up: _Upstream) -> dict[str, Any]:
    cfg = config_of(node)
    data = up.data_template()
    where = ctx.where(node.id, ".config")
    found = _first(cfg, "mapping", "mappings", "fields", "output_mapping", "outputMapping")
    params: dict[str, Any] = {"data": data, "expression": "@"}
    if found is not None:
        fields = _mapping_fields(ctx, found[1], f"{where}.{found[0]}")
        if fields:
            params = {"data": data, "fields": fields}
    key = _first(cfg, "key", "output_key", "outputKey")
    if key is not None and isinstance(key[1], str) and "expression" in params:
        params["expression"] = "{" + _jmes_ident(key[1]) + ": @}"
    return params


def _llm_params(ctx: _Ctx, node: Seed003Node, up: _Upstream) -> dict[str, Any]:
    cfg = config_of(node)
    where = ctx.where(node.id, ".config")
    names = _Names(ctx, node.id, up.deps)
    found = _first(cfg, "prompt", "prompt_template", "promptTemplate", "user_prompt", "template")
    found = found or _first(cfg, "message", "userPrompt")
    params: dict[str, Any] = {}
    if found is None or not isinstance(found[1], str) or not found[1].strip():
        ctx.add(f"{where}.prompt", "an llm node needs a prompt (config.prompt)")
    else:
        params["prompt"] = names.template(found[1], f"{where}.{found[0]}")
    system = _first(cfg, "system_prompt", "systemPrompt", "system")
    if system is not None and isinstance(system[1], str):
        params["system"] = names.template(system[1], f"{where}.{system[0]}")
    model = _first(cfg, "model", "model_name", "modelName", "modelId", "model_id")
    if model is not None and isinstance(model[1], str):
        params["model"] = model[1]
    for key, target in (
        ("temperature", "temperature"),
        ("max_tokens", "max_tokens"),
        ("maxTokens", "max_tokens"),
    ):
        if isinstance(cfg.get(key), int | float) and not isinstance(cfg.get(key), bool):
            params[target] = cfg[key]
    if up.deps:
        params["input"] = up.data_template()
    return params


# --- status in seed 003's words -------------------------------------------------------

_STATUS: dict[PlanStatus, SeedStatus] = {
    PlanStatus.DRAFT: "pending",
    PlanStatus.PENDING_APPROVAL: "pending",
    PlanStatus.APPROVED: "pending",
    PlanStatus.EXECUTING: "running",
    PlanStatus.PAUSED: "paused",
    PlanStatus.WAITING_APPROVAL: "paused",
    PlanStatus.WAITING_CLARIFICATION: "paused",
    PlanStatus.WAITING_CORRECTION: "paused",
    PlanStatus.COMPLETED: "completed",
    PlanStatus.PARTIAL: "failed",
    PlanStatus.FAILED: "failed",
    PlanStatus.CANCELLED: "stopped",
    PlanStatus.REJECTED: "stopped",
}


def seed_status(status: PlanStatus) -> SeedStatus:
    """Plansmith's plan status in seed 003's six words (waits for a person are ``paused``,
    ``partial`` is ``failed``, ``cancelled`` and ``rejected`` are ``stopped``)."""
    return _STATUS[status]


def execution_status(execution_id: str, view: StatusView) -> ExecutionStatus:
    """Seed 003's status of an execution from the plan's ``status`` query."""
    current = next((s for s in view.steps if s.status == StepStatus.RUNNING), None)
    if current is None and view.waiting_for is not None and view.waiting_for.step_id:
        current = next((s for s in view.steps if s.id == view.waiting_for.step_id), None)
    done = sum(1 for s in view.steps if s.status.terminal)
    if view.status.terminal:
        message = view.outcome or view.status.value
    elif view.waiting_for is not None:
        w = view.waiting_for
        message = f"waiting for {w.kind}" + (f": {w.question}" if w.question else "")
    else:
        message = f"{done} of {len(view.steps)} node(s) done"
    if view.status == PlanStatus.PARTIAL:
        message = f"partial: {message}"
    return ExecutionStatus(
        execution_id=execution_id,
        status=seed_status(view.status),
        current_node=node_id_of(current.id, current.description) if current else None,
        progress=view.progress,
        message=message,
    )

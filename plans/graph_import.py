"""The nodes/edges execution API's workflow definitions, translated into plans.

That API (``/api/v1/execute``, :mod:`api.routes_executions`) runs a *workflow
definition* — ``{nodes, edges}`` with node types ``input``, ``llm``, ``condition``,
``transform`` and ``output`` — with ``input_data``. Plansmith runs it as an ordinary
:class:`~plans.models.Plan` in ``PlanWorkflow``; :func:`translate` is the pure
translation (no I/O). The request's shapes are in :mod:`plans.graph_document`, condition
nodes in :mod:`plans.graph_conditions`, names in expressions and prompts in
:mod:`plans.graph_names`, each node type's step params in :mod:`plans.graph_params`, and
a plan's status told back in the API's words in :mod:`plans.graph_views`.

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

Executions start at once: the plan has ``require_approval: false`` and
``on_error: stop``. The plan id is the execution id when it is a valid plan id, else a
cleaned-up id with a short hash (:func:`~plans.graph_document.plan_id_for_execution`), so
an execution is also reachable through ``/api/plans/{id}``.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from pydantic import BaseModel

from plans.graph_conditions import ConditionNode, PathResolver, or_guards
from plans.graph_document import (
    NODE_TYPES,
    ExecutionCreate,
    GraphEdge,
    GraphNode,
    TranslationContext,
    clean_id,
    config_of,
    node_type,
    plan_id_for_execution,
)
from plans.graph_names import Upstream
from plans.graph_params import input_params, llm_params, output_params, transform_params
from plans.models import Plan, ToolSpec
from plans.validation import PlanInvalid, Problem, parse_plan, validate_plan


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


def translate(req: ExecutionCreate) -> Translation:
    """The plan that runs ``req``; :class:`PlanInvalid` lists every problem, located in
    the request (``definition.nodes[2].config.expression: ...``)."""
    ctx = TranslationContext(req)
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

    incoming: dict[str, list[tuple[int, GraphEdge]]] = {}
    for j, edge in enumerate(req.definition.edges):
        for end in ("source", "target"):
            ref = getattr(edge, end)
            if ref not in ctx.nodes:
                ctx.add(f"definition.edges[{j}].{end}", f"unknown node {ref!r}")
        if edge.source in ctx.nodes and edge.target in ctx.nodes:
            incoming.setdefault(edge.target, []).append((j, edge))

    conditions = {nid: ConditionNode(ctx, nid) for nid, k in ctx.kinds.items() if k == "condition"}
    resolver = PathResolver(ctx, incoming, conditions)

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
        when = or_guards([g for _, g in paths])
        if when:
            step["when"] = when
        up = Upstream(ctx, node.id, deps)
        if kind == "llm":
            step["kind"] = "llm"
            step["params"] = llm_params(ctx, node, up)
        else:
            step["tool"] = "transform"
            make = {"input": input_params, "transform": transform_params}
            step["params"] = make.get(kind, output_params)(ctx, node, up)
        node_index[sid] = ctx.index[node.id]
        steps.append(step)

    if ctx.problems:
        raise PlanInvalid(ctx.problems)
    doc = {
        "id": plan_id_for_execution(req.execution_id),
        "title": req.workflow_id,
        "description": f"nodes/edges execution {req.execution_id} of workflow {req.workflow_id}",
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


def validate_translation(
    tr: Translation, catalog: Mapping[str, ToolSpec], *, max_steps: int | None = None
) -> list[Problem]:
    """The whole-plan problems of a translation, located in the request."""
    return [tr.relocate(p) for p in validate_plan(tr.plan, catalog, max_steps=max_steps)]


def _describe(node: GraphNode, kind: str) -> str:
    cfg = config_of(node)
    label = node.label or cfg.get("label") or cfg.get("name") or cfg.get("title")
    tail = f"({kind} node {node.id})"
    return f"{label} {tail}" if isinstance(label, str) and label.strip() else tail


_NODE_IN_DESCRIPTION = re.compile(r"\((?:input|llm|transform|output) node (.+)\)$")


def node_id_of(step_id: str, description: str) -> str:
    """The node a step was made from (read back from its description)."""
    m = _NODE_IN_DESCRIPTION.search(description or "")
    return m.group(1) if m else step_id

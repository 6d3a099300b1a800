"""The nodes/edges execution API's request: a workflow definition (``{nodes, edges}``)
with its ``input_data``, the node types it knows, the ids its executions and nodes get as
plans and steps, and :class:`TranslationContext`, through which :mod:`plans.graph_import`
and its helpers read one definition while they translate it into a plan.
"""

from __future__ import annotations

import hashlib
import re
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from plans.models import ID_RE
from plans.validation import Problem

NODE_TYPES = ("input", "llm", "condition", "transform", "output")
_TYPE_ALIASES = {"start": "input", "end": "output"}


# --- the request ---------------------------------------------------------------------


class GraphNode(BaseModel):
    """One node. Editors (React Flow) add ``position``, ``width``…: extra keys are kept
    and ignored. The node's settings are ``config`` merged over ``data`` (and
    ``data.config``)."""

    model_config = ConfigDict(extra="allow")

    id: str = Field(min_length=1, max_length=200)
    type: str = Field(min_length=1, max_length=100)
    data: dict[str, Any] = Field(default_factory=dict)
    config: dict[str, Any] = Field(default_factory=dict)
    label: str | None = None


class GraphEdge(BaseModel):
    model_config = ConfigDict(extra="allow", populate_by_name=True)

    id: str | None = None
    source: str = Field(min_length=1)
    target: str = Field(min_length=1)
    source_handle: str | None = Field(default=None, alias="sourceHandle")
    label: str | None = None
    condition: str | bool | None = None
    data: dict[str, Any] = Field(default_factory=dict)


class GraphDefinition(BaseModel):
    model_config = ConfigDict(extra="allow")

    nodes: list[GraphNode]
    edges: list[GraphEdge] = Field(default_factory=list)


class ExecutionCreate(BaseModel):
    """``POST /api/v1/execute``: run ``definition`` on ``input_data``."""

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
        min_length=1, max_length=200, description="the workflow whose definition it runs"
    )
    definition: GraphDefinition
    input_data: dict[str, Any] = Field(default_factory=dict)


# --- node types ------------------------------------------------------------------------


def config_of(node: GraphNode) -> dict[str, Any]:
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


# --- ids ------------------------------------------------------------------------------


def _short_hash(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:8]


def clean_id(raw: str, max_len: int = 64) -> str:
    """``raw`` when it is a valid plan/step id; else a valid id made from it plus a hash
    of the original (so two different raw ids never clean to the same id)."""
    if ID_RE.fullmatch(raw) and len(raw) <= max_len:
        return raw
    slug = re.sub(r"[^a-z0-9_-]+", "-", raw.lower()).strip("-_")
    slug = slug[: max_len - 9].rstrip("-_")
    return f"{slug}-{_short_hash(raw)}" if slug else f"n{_short_hash(raw)}"


def plan_id_for_execution(execution_id: str) -> str:
    """The plan (and so the workflow ``plan-<id>``) an execution id runs as."""
    return clean_id(execution_id)


# --- reading one definition -------------------------------------------------------------


class TranslationContext:
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

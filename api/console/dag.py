"""The plan's DAG laid out by networkx, for the SVG of the plan page.

Layers are ``networkx.topological_generations`` (a step sits one layer right of its
deepest dependency), drawn left to right. Within a layer the steps are ordered by the
mean row of their dependencies (the barycenter pass of a layered, Sugiyama-style layout),
so edges cross less, and each layer is centred vertically. ``multipartite_layout`` would
do the placing but needs numpy, a large dependency for one scale-and-centre step.
"""

from __future__ import annotations

from dataclasses import dataclass

import networkx as nx

from plans.models import Step

NODE_W, NODE_H = 168, 44
COL_W, ROW_H = 220, 70
PAD = 16
MAX_DRAWN = 400  # steps; a bigger plan is listed, not drawn
# dependencies; a denser plan is listed, not drawn (400 steps each depending on every
# earlier one are a 0.6 MB document but 79,800 paths: a 13 MB page, seconds to render)
MAX_EDGES = 1600


@dataclass(frozen=True)
class Node:
    id: str
    x: float  # top-left corner
    y: float
    status: str
    label: str


@dataclass(frozen=True)
class Edge:
    source: str
    target: str
    x1: float
    y1: float
    x2: float
    y2: float


@dataclass(frozen=True)
class Layout:
    width: float
    height: float
    nodes: list[Node]
    edges: list[Edge]


def _label(step_id: str) -> str:
    return step_id if len(step_id) <= 20 else step_id[:19] + "…"


def layout(steps: list[Step], statuses: dict[str, str]) -> Layout | None:
    """Pixel positions of every step and dependency; None when the plan has more than
    ``MAX_DRAWN`` steps or ``MAX_EDGES`` dependencies (or no step)."""
    if not steps or len(steps) > MAX_DRAWN:
        return None
    if sum(len(step.depends_on) for step in steps) > MAX_EDGES:
        return None
    graph: nx.DiGraph[str] = nx.DiGraph()
    for step in steps:
        graph.add_node(step.id)
    for step in steps:
        for dep in step.depends_on:
            if dep in graph:
                graph.add_edge(dep, step.id)
    layers = [list(g) for g in nx.topological_generations(graph)]
    order = {s.id: i for i, s in enumerate(steps)}
    row: dict[str, float] = {}
    for layer in layers:

        def centre(node: str) -> tuple[float, int]:
            preds = [row[p] for p in graph.predecessors(node)]
            return (sum(preds) / len(preds) if preds else float(order[node]), order[node])

        layer.sort(key=centre)
        for i, node in enumerate(layer):
            row[node] = float(i)
    rows = max(len(layer) for layer in layers)
    places: dict[str, tuple[float, float]] = {}
    for col, layer in enumerate(layers):
        top = (rows - len(layer)) * ROW_H / 2
        for i, node in enumerate(layer):
            places[node] = (PAD + col * COL_W, PAD + top + i * ROW_H)
    columns = len(layers)
    nodes = [
        Node(
            id=s.id,
            x=places[s.id][0],
            y=places[s.id][1],
            status=statuses.get(s.id, "pending"),
            label=_label(s.id),
        )
        for s in steps
    ]
    edges = []
    for a, b in graph.edges:
        (ax, ay), (bx, by) = places[a], places[b]
        edges.append(Edge(a, b, ax + NODE_W, ay + NODE_H / 2, bx, by + NODE_H / 2))
    width = PAD * 2 + (columns - 1) * COL_W + NODE_W
    height = PAD * 2 + (rows - 1) * ROW_H + NODE_H
    return Layout(width=width, height=height, nodes=nodes, edges=edges)

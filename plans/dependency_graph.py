"""The dependency graph of a plan's steps: which steps each one waits for (directly or
not) and the dependency cycles, each computed iteratively in time linear in the size of
the graph. Validation (:mod:`plans.validation`) reports what these find.
"""

from __future__ import annotations

from collections.abc import Container, Iterator
from functools import reduce
from itertools import repeat
from operator import or_

from plans.models import Plan


class Ancestry:
    """Which steps each step waits for, directly or not, as one bit set per step.

    Built in one pass over the dependencies (iterative: a chain of any length is fine),
    so a plan of *n* steps and *e* dependencies costs O(e) set unions of n bits each, in
    place of the n² sets of names a plain transitive closure would keep. Unknown ids and
    cycles are tolerated (a cycle is reported elsewhere; its members see what they can).
    """

    def __init__(self, plan: Plan):
        self.index: dict[str, int] = {}
        for s in plan.steps:
            self.index.setdefault(s.id, len(self.index))
        deps: dict[str, list[str]] = {}
        for s in plan.steps:
            known = [d for d in s.depends_on if d in self.index]
            if s.id in deps:  # a duplicate id (reported elsewhere): both lists count
                deps[s.id] += known
            else:
                deps[s.id] = known
        # closed[id]: the bits of its ancestors and its own; a DFS that pushes all the
        # dependencies of a step at once, and ORs theirs when it leaves the step.
        closed: dict[str, int] = {}
        gray: set[str] = set()  # entered, not left: the DFS path
        self.has_cycle = False
        for root in deps:
            if root in closed:
                continue
            stack: list[tuple[str, bool]] = [(root, False)]
            while stack:
                sid, leaving = stack.pop()
                if leaving:
                    gray.discard(sid)
                    # a dependency still on the path (a cycle) is not yet in ``closed``
                    acc = reduce(or_, map(closed.get, deps[sid], repeat(0)), 0)
                    closed[sid] = acc | 1 << self.index[sid]
                    continue
                if sid in closed:
                    continue
                if sid in gray:
                    self.has_cycle = True
                    continue
                gray.add(sid)
                stack.append((sid, True))
                stack.extend([(d, False) for d in deps[sid] if d not in closed])
        self.closed = closed

    def waits_for(self, step_id: str, other: str) -> bool:
        """Whether ``step_id`` runs only after ``other`` (a transitive dependency)."""
        i = self.index.get(other)
        return i is not None and other != step_id and bool(self.closed.get(step_id, 0) >> i & 1)

    def of(self, step_id: str) -> _Ancestors:
        return _Ancestors(self, step_id)


class _Ancestors(Container[str]):
    """The steps one step waits for, as something ``in`` answers."""

    def __init__(self, ancestry: Ancestry, step_id: str):
        self.ancestry, self.step_id = ancestry, step_id

    def __contains__(self, other: object) -> bool:
        return isinstance(other, str) and self.ancestry.waits_for(self.step_id, other)


def ancestors(plan: Plan) -> dict[str, set[str]]:
    """Transitive dependencies of each step, as sets of ids (unknown ids and cycles are
    tolerated). O(n²) in space for a long chain: validation uses :class:`Ancestry`."""
    a = Ancestry(plan)
    ids = list(a.index)
    return {
        sid: {ids[i] for i in range(bits.bit_length()) if bits >> i & 1 and ids[i] != sid}
        for sid, bits in a.closed.items()
    }


def find_cycles(plan: Plan) -> list[list[str]]:
    """Each elementary cycle found by DFS, as ``[a, b, ..., a]``; one per strongly tied group.

    Iterative and linear in the size of the graph: the position of each node on the DFS
    path is kept, and so is, for each position, the highest position at or below it that
    belongs to a cycle already reported (a later cycle through it is not reported again).
    """
    graph = {s.id: [d for d in s.depends_on if d != s.id] for s in plan.steps}
    color: dict[str, int] = {}  # 0 new, 1 on stack, 2 done
    cycles: list[list[str]] = []
    pos: dict[str, int] = {}  # position on the path of each node on the stack
    seen_upto: list[int] = []  # per path position: highest reported position <= it, or -1

    for root in graph:
        if color.get(root):
            continue
        stack: list[tuple[str, Iterator[str]]] = [(root, iter(graph[root]))]
        path = [root]
        pos[root] = 0
        seen_upto.append(-1)
        color[root] = 1
        while stack:
            node, it = stack[-1]
            advanced = False
            for nxt in it:
                if nxt not in graph:
                    continue
                if color.get(nxt, 0) == 0:
                    color[nxt] = 1
                    pos[nxt] = len(path)
                    seen_upto.append(seen_upto[-1])
                    path.append(nxt)
                    stack.append((nxt, iter(graph[nxt])))
                    advanced = True
                    break
                if color.get(nxt) == 1:
                    start = pos[nxt]
                    if seen_upto[-1] < start:  # no member already in a reported cycle
                        cyc = path[start:]
                        for k in range(start, len(path)):
                            seen_upto[k] = k
                        # Show it in execution order: a runs before b runs before ... a.
                        order = list(reversed(cyc))
                        cycles.append([*order, order[0]])
            if not advanced:
                color[node] = 2
                stack.pop()
                path.pop()
                seen_upto.pop()
                del pos[node]
    return cycles

"""An index kept beside each :class:`PlanRun`, so per-step work does not grow with the plan.

It holds the steps in each status, the steps awaiting a person's decision, the *ready*
steps (pending steps the scheduler must look at: their dependencies are all settled, or
a judge's verdict on them is pending) and a bounded journal of numbered status changes.

It is never serialised: :func:`of` finds the run's index, or builds it from the run when
there is none (a run read from a workflow input, a copy) or when the run's plan or step
table was replaced. It stays current through :class:`StepRun`'s hook on the fields it
follows (``run_state.WATCHED_STEP_FIELDS``): every mutation site is covered without
calling anything. The change numbers live in the run (``PlanRun.change_seq``, serialised),
so numbering goes on over continue-as-new, and the newest changes go along with it
(:func:`carry_changes`, ``PlanRun.carried_changes``) to start the next run's journal.
"""

from __future__ import annotations

import weakref
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass
from itertools import islice
from typing import Any

from plans.models import Plan, Step, StepKind, StepStatus
from plans.run_state import STEP_WATCHERS, PlanRun, SkipReason, StepRun

MAX_JOURNAL = 10_000  # step changes kept for the changes query (the newest)
MAX_CARRIED = 1_000  # of those, carried over continue-as-new
_BAD = (StepStatus.FAILED, StepStatus.SKIPPED, StepStatus.CANCELLED)


@dataclass(slots=True)
class Change:
    seq: int
    step_id: str
    status: StepStatus


def dependency_state(run: PlanRun, step: Step) -> tuple[str, str | None]:
    """'wait' | 'blocked' | 'inactive' | 'ok', and which dependency decided it."""
    inactive = 0
    steps = run.steps
    for dep in step.depends_on:
        d = steps[dep]
        status = d.status
        if status == StepStatus.COMPLETED:
            continue
        if status == StepStatus.SKIPPED and d.skip_reason == SkipReason.OPERATOR:
            continue
        if status == StepStatus.SKIPPED and d.skip_reason == SkipReason.CONDITION:
            inactive += 1
            continue
        if status in _BAD:
            if d.awaiting_decision:
                return "wait", dep
            return "blocked", dep
        return "wait", dep
    if step.depends_on and inactive == len(step.depends_on):
        return "inactive", step.depends_on[0]
    return "ok", None


class _Structure:
    """What follows from the plan document alone: positions, dependents, branches."""

    def __init__(self, plan: Plan) -> None:
        self.pos = plan.positions()
        self.dependents: dict[str, list[str]] = {}
        self.branches: dict[str, list[tuple[str, list[str]]]] = {}
        for step in plan.steps:
            for dep in step.depends_on:
                self.dependents.setdefault(dep, []).append(step.id)
            branches = step.params.get("branches") if step.kind == StepKind.DECISION else None
            if not isinstance(branches, dict):
                continue
            labels: dict[str, list[str]] = {}
            for label, members in branches.items():
                for member in members or []:
                    mine = labels.setdefault(member, []) if isinstance(member, str) else None
                    if mine is not None and label not in mine:
                        mine.append(label)
            for member, ls in labels.items():
                self.branches.setdefault(member, []).append((step.id, ls))


class RunIndex:
    def __init__(
        self, run: PlanRun, journal: deque[Change] | None = None, *, watch: bool = True
    ) -> None:
        self._run = weakref.ref(run)
        self.plan = run.plan
        self.table = run.steps
        self.size = len(run.steps)
        self.structure = _Structure(run.plan)
        self.by_status: dict[StepStatus, set[str]] = {s: set() for s in StepStatus}
        self.awaiting: set[str] = set()
        self.ready: set[str] = set()
        self.fresh: list[str] = []  # steps that became ready since the scheduler last looked
        if journal is None:
            journal = deque((Change(*c) for c in run.carried_changes), maxlen=MAX_JOURNAL)
            if watch:
                run.carried_changes = []  # in the journal now
        self.journal: deque[Change] = journal
        self.watched: list[int] = []
        self.finalizer: weakref.finalize | None = None  # set by of(), which registers it
        for sid, s in run.steps.items():
            self.by_status[s.status].add(sid)
            if s.awaiting_decision:
                self.awaiting.add(sid)
        for sid in run.steps:
            self._recheck(run, sid)
        self.fresh.clear()
        for s in run.steps.values() if watch else ():
            STEP_WATCHERS[id(s)] = self._changed
            self.watched.append(id(s))

    # --- reads -------------------------------------------------------------------------

    def counts(self) -> dict[str, int]:
        return {k.value: len(v) for k, v in self.by_status.items() if v}

    def in_order(self, sids: Iterable[str]) -> list[str]:
        pos = self.structure.pos
        return sorted(sids, key=lambda sid: pos.get(sid, len(pos)))

    def terminal(self) -> int:
        return sum(len(self.by_status[s]) for s in StepStatus if s.terminal)

    def finished(self) -> bool:
        """Every step is terminal and none awaits a decision."""
        return self.terminal() == self.size and not self.awaiting

    def waiting(self) -> list[str]:
        """The steps that wait for a person, in plan order."""
        return self.in_order(
            self.awaiting
            | self.by_status[StepStatus.WAITING_CLARIFICATION]
            | self.by_status[StepStatus.WAITING_APPROVAL]
        )

    def active(self) -> list[str]:
        """Running, waiting, failed and awaiting-decision steps, in plan order."""
        return self.in_order(
            self.awaiting
            | self.by_status[StepStatus.RUNNING]
            | self.by_status[StepStatus.WAITING_CLARIFICATION]
            | self.by_status[StepStatus.WAITING_APPROVAL]
            | self.by_status[StepStatus.FAILED]
        )

    def take_fresh(self) -> list[str]:
        fresh, self.fresh = self.fresh, []
        return fresh

    # --- upkeep ------------------------------------------------------------------------

    def _recheck(self, run: PlanRun, sid: str) -> None:
        s = run.steps.get(sid)
        ready = (
            s is not None
            and s.status == StepStatus.PENDING
            and (
                s.judge_gate is not None
                or sid not in self.structure.pos
                or dependency_state(run, self.plan.steps[self.structure.pos[sid]])[0] != "wait"
            )
        )
        if ready:
            if sid not in self.ready:
                self.ready.add(sid)
                self.fresh.append(sid)
        else:
            self.ready.discard(sid)

    def _changed(self, s: StepRun, name: str, old: Any) -> None:
        run = self._run()
        if run is None or run.steps.get(s.id) is not s:
            return
        sid = s.id
        if name == "status":
            self.by_status[old].discard(sid)
            self.by_status[s.status].add(sid)
            run.change_seq += 1
            self.journal.append(Change(run.change_seq, sid, s.status))
        elif name == "awaiting_decision":
            if s.awaiting_decision:
                self.awaiting.add(sid)
            else:
                self.awaiting.discard(sid)
        self._recheck(run, sid)
        if name != "judge_gate":
            for dependent in self.structure.dependents.get(sid, ()):
                self._recheck(run, dependent)

    def forget(self) -> None:
        for key in self.watched:
            if STEP_WATCHERS.get(key) == self._changed:
                del STEP_WATCHERS[key]
        self.watched = []


_INDEXES: dict[int, RunIndex] = {}


def _drop(key: int, index: RunIndex) -> None:
    if _INDEXES.get(key) is index:
        del _INDEXES[key]
    index.forget()


def of(run: PlanRun) -> RunIndex:
    """The run's index, built (or rebuilt, keeping the journal) when it is missing or its
    run's plan or step table was replaced."""
    key = id(run)
    idx = _INDEXES.get(key)
    if idx is not None and idx._run() is run:
        if idx.plan is run.plan and idx.table is run.steps and idx.size == len(run.steps):
            return idx
        journal: deque[Change] | None = idx.journal
        idx.forget()
        # the run lives on with the new index: the old one's finalizer would keep the old
        # index (its sets and structure) alive as long as the run, for nothing
        if idx.finalizer is not None:
            idx.finalizer.detach()
    else:
        journal = None
    new = RunIndex(run, journal)
    _INDEXES[key] = new
    new.finalizer = weakref.finalize(run, _drop, key, new)
    return new


def carry_changes(run: PlanRun) -> None:
    """Before continue-as-new: the newest changes go with the run's state."""
    journal = of(run).journal
    start = max(0, len(journal) - MAX_CARRIED)
    run.carried_changes = [(c.seq, c.step_id, c.status) for c in islice(journal, start, None)]


def recompute(run: PlanRun) -> RunIndex:
    """A fresh index built from the run alone (for checks; not registered)."""
    return RunIndex(run, watch=False)

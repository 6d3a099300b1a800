"""What `plansmith run --watch` and `plansmith watch` print, against a scripted plan: each
change with its time and, for a finished step, how long it ran; read from the workflow's
changes, or from successive status answers of an older worker."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from plans.models import Plan, PlanStatus, StepStatus
from plans.run_state import StepRun
from plans.views import ChangesQuery, ChangesView, StatusView, StepChange, StepsQuery, StepView
from plansmith.cli.running import watch
from workflows.client import page_of
from workflows.errors import PlanClosed, QueryUnsupported
from workflows.plan_input import PlanResult

T0 = datetime(2026, 1, 1, 12, 0, 0, tzinfo=UTC)


def clock(at: datetime) -> str:
    return at.astimezone().strftime("%H:%M:%S")


class ScriptedPlan:
    """A plan client whose plan moves one scripted step per read."""

    def __init__(
        self, script: list[tuple[str, StepStatus, float]], old: bool = False, per_read: int = 1
    ):
        self.script = list(script)  # (step, new status, seconds after T0)
        self.old = old
        self.per_read = per_read  # the plan moves this many changes between two reads
        self.log: list[StepChange] = []
        self.steps: dict[str, StepView] = {}
        for sid, _, _ in script:
            self.steps.setdefault(
                sid,
                StepView(
                    id=sid,
                    kind="tool",
                    status=StepStatus.PENDING,
                    attempts=0,
                    version=1,
                    started_at=None,
                    completed_at=None,
                    error=None,
                ),
            )
        self.plan = PlanStatus.EXECUTING
        self.dropped = 0  # changes the journal forgets (complete=false for readers behind)
        self.result: PlanResult | None = None  # what the ended workflow's history holds
        self.reads_after_end = 0  # status or steps queries once the plan ended

    def tick(self) -> None:
        if not self.script:
            self.plan = PlanStatus.COMPLETED
            return
        sid, to, s = self.script.pop(0)
        at = T0 + timedelta(seconds=s)
        prev = self.steps[sid]
        self.steps[sid] = prev.model_copy(
            update={
                "status": to,
                "attempts": 1,
                "started_at": at if to == StepStatus.RUNNING else prev.started_at,
                "completed_at": at if to.terminal else None,
            }
        )
        self.log.append(
            StepChange(seq=len(self.log) + 1, step_id=sid, status=to, at=at, attempts=1)
        )

    def view(self) -> StatusView:
        steps = list(self.steps.values())
        done = sum(1 for s in steps if s.status.terminal)
        return StatusView(
            plan_id="p",
            status=self.plan,
            progress=done / len(steps),
            version=1,
            digest="d",
            waiting_for=None,
            waiting=[],
            outcome="done" if self.plan.terminal else None,
            approved_by=None,
            created_at=T0,
            started_at=T0,
            finished_at=T0 + timedelta(seconds=9) if self.plan.terminal else None,
            steps=steps,
            seq=len(self.log),
        )

    async def status(self, plan_id: str) -> StatusView:
        if self.old:
            self.tick()
        self.reads_after_end += self.plan.terminal
        return self.view()

    async def final_result(self, plan_id: str) -> PlanResult | None:
        return self.result

    async def changes(
        self, plan_id: str, query: ChangesQuery, open_only: bool = False
    ) -> ChangesView:
        if self.old:
            raise QueryUnsupported("changes")
        for _ in range(self.per_read):
            self.tick()
        # as the workflow answers: a change the step has moved on from has no time and
        # no attempts (it keeps only the step's current ones)
        changes = [
            c
            if self.steps[c.step_id].status == c.status
            else c.model_copy(update={"at": None, "attempts": 0})
            for c in self.log
            if c.seq > query.since
        ]
        return ChangesView(
            plan_id="p",
            status=self.plan,
            seq=len(self.log),
            complete=query.since >= self.dropped,
            changes=changes,
        )

    async def steps(self, plan_id: str, query: StepsQuery) -> Any:
        self.reads_after_end += self.plan.terminal
        return page_of(self.view(), query)


SCRIPT = [
    ("a", StepStatus.RUNNING, 1),
    ("a", StepStatus.COMPLETED, 2.5),
    ("b", StepStatus.RUNNING, 3),
    ("b", StepStatus.FAILED, 7.25),
]


@pytest.mark.parametrize("old", [False, True], ids=["changes", "older-worker"])
async def test_watch_prints_each_change_with_its_time_and_a_finished_step_with_its_duration(
    old: bool, capsys: pytest.CaptureFixture[str]
):
    plans = ScriptedPlan(SCRIPT, old=old)
    assert await watch(plans, "p", interval_s=0) == PlanStatus.COMPLETED  # type: ignore[arg-type]
    lines = capsys.readouterr().out.splitlines()
    steps = [line for line in lines if re.search(r"\] . [ab] ", line)]
    assert steps == [
        f"[{clock(T0 + timedelta(seconds=1))}] ▶ a                        running (attempts: 1)",
        f"[{clock(T0 + timedelta(seconds=2.5))}] ✓ a                        completed (attempts: 1) in 1.50s",
        f"[{clock(T0 + timedelta(seconds=3))}] ▶ b                        running (attempts: 1)",
        f"[{clock(T0 + timedelta(seconds=7.25))}] ✗ b                        failed (attempts: 1) in 4.25s",
    ]
    assert lines[-2].endswith("plan p: completed (100%)") and lines[-1] == "  outcome: done"


async def test_a_watch_whose_changes_were_dropped_reads_the_status_again(
    capsys: pytest.CaptureFixture[str],
):
    plans = ScriptedPlan(SCRIPT)
    plans.dropped = 99  # the workflow's journal forgot what this watcher has not seen
    plans.script = SCRIPT[:2]

    async def changes(plan_id: str, query: ChangesQuery, open_only: bool = False) -> ChangesView:
        answer = await ScriptedPlan.changes(plans, plan_id, query)
        plans.dropped = 0  # once
        return answer

    plans.changes = changes  # type: ignore[method-assign]
    await watch(plans, "p", interval_s=0)  # type: ignore[arg-type]
    out = capsys.readouterr().out
    assert "(changes were missed: reading the status again)" in out
    # the snapshot after it shows the step as the status has it; later changes follow
    assert re.search(r"▶ a +running", out) and re.search(r"✓ a +completed .* in 1\.50s", out)


async def test_a_step_that_started_and_finished_between_two_reads_still_shows_its_duration(
    capsys: pytest.CaptureFixture[str],
):
    plans = ScriptedPlan(SCRIPT, per_read=2)  # each step's start is gone when it is read
    await watch(plans, "p", interval_s=0)  # type: ignore[arg-type]
    out = capsys.readouterr().out
    assert re.search(r"✓ a +completed \(attempts: 1\) in 1\.50s", out), out
    assert re.search(r"✗ b +failed \(attempts: 1\) in 4\.25s", out), out


async def test_the_end_of_a_watched_plan_is_read_from_its_result_not_by_queries(
    capsys: pytest.CaptureFixture[str],
):
    """A query of a closed workflow replays its whole run on a worker (seconds for a big
    plan): the watch prints the end, the outcome and the final step's output from the
    workflow's result instead."""
    plans = ScriptedPlan(SCRIPT[:2])
    plans.result = PlanResult(
        plan_id="p",
        status=PlanStatus.COMPLETED,
        outcome="all 1 step(s) done",
        version=1,
        steps={"a": "completed"},
        plan=Plan.model_validate({"id": "p", "steps": [{"id": "a", "tool": "noop"}]}),
        final_steps={"a": StepRun(id="a", status=StepStatus.COMPLETED, output={"rows": 3})},
    )
    assert await watch(plans, "p", interval_s=0) == PlanStatus.COMPLETED  # type: ignore[arg-type]
    lines = capsys.readouterr().out.splitlines()
    assert lines[-3].endswith("plan p: completed (100%)")
    assert lines[-2:] == ["  outcome: all 1 step(s) done", '  result of a: {"rows": 3}']
    assert plans.reads_after_end == 0


async def test_a_plan_that_closed_between_two_reads_ends_the_watch_from_its_result(
    capsys: pytest.CaptureFixture[str],
):
    """The workflow closed while the watch was behind: the steps it had not printed
    come from the result, and no query (which would replay the whole run) is asked."""
    plans = ScriptedPlan(SCRIPT)
    queries = {"changes": 0}
    read_changes = plans.changes

    async def changes(plan_id: str, query: ChangesQuery, open_only: bool = False) -> ChangesView:
        if queries["changes"] >= 2:  # closed after a's start and end were read
            assert open_only  # else the server would have a worker replay the run
            raise PlanClosed(plan_id)
        queries["changes"] += 1
        return await read_changes(plan_id, query)

    plans.changes = changes  # type: ignore[method-assign]
    plans.result = PlanResult(
        plan_id="p",
        status=PlanStatus.FAILED,
        outcome="b failed",
        version=1,
        steps={"a": "completed", "b": "failed"},
        plan=Plan.model_validate(
            {"id": "p", "steps": [{"id": "a", "tool": "noop"}, {"id": "b", "tool": "noop"}]}
        ),
        final_steps={
            "a": StepRun(id="a", status=StepStatus.COMPLETED, attempts=1),
            "b": StepRun(
                id="b",
                status=StepStatus.FAILED,
                attempts=1,
                error="boom",
                started_at=T0 + timedelta(seconds=3),
                completed_at=T0 + timedelta(seconds=7.25),
            ),
        },
    )
    assert await watch(plans, "p", interval_s=0) == PlanStatus.FAILED  # type: ignore[arg-type]
    out = capsys.readouterr().out
    assert queries["changes"] == 2 and plans.reads_after_end == 0
    assert out.count("✓ a ") == 1  # printed once, from the changes
    assert re.search(r"✗ b +failed \(attempts: 1\) in 4\.25s — boom", out), out
    assert out.splitlines()[-2:][0].endswith("plan p: failed (100%)")
    assert out.splitlines()[-1] == "  outcome: b failed"

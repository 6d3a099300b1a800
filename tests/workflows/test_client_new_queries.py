"""The plan client's ``steps`` and ``changes`` against a worker that does not know them
(an older worker): Temporal's "query handler not found" becomes a fallback, not an error."""

from __future__ import annotations

from typing import Any

import pytest
from temporalio.client import WorkflowQueryFailedError

from config import get_settings
from plans.models import PlanStatus, StepStatus
from plans.views import ChangesQuery, StatusView, StepsQuery, StepView
from tests.helpers import T0, step_view
from workflows.client import PlanClient, StatusDiff
from workflows.errors import QueryUnsupported, TemporalError


def status(steps: list[StepView]) -> StatusView:
    return StatusView(
        plan_id="p",
        status=PlanStatus.EXECUTING,
        progress=0.0,
        version=1,
        digest="d",
        waiting_for=None,
        waiting=[],
        outcome=None,
        approved_by=None,
        created_at=T0,
        started_at=T0,
        finished_at=None,
        steps=steps,
    )


class OldHandle:
    """A workflow handle whose worker knows only the queries of older workers."""

    def __init__(self, view: StatusView, failing: str | None = None):
        self.view, self.failing = view, failing
        self.asked: list[str] = []

    async def query(self, query: Any, *args: Any, **kw: Any) -> Any:
        name = query if isinstance(query, str) else query.__name__
        self.asked.append(name)
        if name == "status":
            return self.view
        if name == self.failing:
            raise WorkflowQueryFailedError("boom: the handler raised")
        raise WorkflowQueryFailedError(
            f"Query handler for '{name}' expected but not found, known queries: [audit status]"
        )


class OldClient:
    def __init__(self, handle: OldHandle):
        self.handle = handle

    def get_workflow_handle(self, workflow_id: str) -> OldHandle:
        return self.handle


def plan_client(handle: OldHandle) -> PlanClient:
    return PlanClient(get_settings(), client=OldClient(handle))  # type: ignore[arg-type]


async def test_steps_fall_back_to_the_status_of_an_older_worker_paged_and_filtered():
    steps = [
        step_view(f"s{i}", StepStatus.COMPLETED if i % 2 else StepStatus.PENDING) for i in range(7)
    ]
    handle = OldHandle(status(steps))
    plans = plan_client(handle)
    page = await plans.steps("p", StepsQuery(status=StepStatus.COMPLETED, offset=1, limit=2))
    assert page.total == 3 and [s.id for s in page.steps] == ["s3", "s5"]
    page = await plans.steps("p", StepsQuery(offset=5, limit=10))
    assert page.total == 7 and [s.id for s in page.steps] == ["s5", "s6"]
    # The worker said once it does not know the query: it is not asked again at once.
    assert handle.asked == ["steps", "status", "status"]


async def test_changes_of_an_older_worker_raise_query_unsupported_and_other_failures_stay_errors():
    plans = plan_client(OldHandle(status([])))
    with pytest.raises(QueryUnsupported):
        await plans.changes("p", ChangesQuery(since=0))
    failing = plan_client(OldHandle(status([]), failing="changes"))
    with pytest.raises(TemporalError) as e:
        await failing.changes("p", ChangesQuery(since=0))
    assert not isinstance(e.value, QueryUnsupported) and "boom" in str(e.value)


def test_status_diff_numbers_every_step_change_and_skips_what_did_not_change():
    diff = StatusDiff()
    first = diff.diff(
        status([step_view("a", StepStatus.RUNNING, 1), step_view("b", StepStatus.PENDING)])
    )
    assert [(c.seq, c.step_id, c.status) for c in first] == [(1, "a", StepStatus.RUNNING)]
    assert (
        diff.diff(
            status([step_view("a", StepStatus.RUNNING, 1), step_view("b", StepStatus.PENDING)])
        )
        == []
    )
    later = diff.diff(
        status([step_view("a", StepStatus.COMPLETED, 1), step_view("b", StepStatus.RUNNING, 1)])
    )
    assert [(c.seq, c.step_id, c.status) for c in later] == [
        (2, "a", StepStatus.COMPLETED),
        (3, "b", StepStatus.RUNNING),
    ]
    assert later[0].at == T0
    retried = diff.diff(
        status([step_view("a", StepStatus.COMPLETED, 1), step_view("b", StepStatus.RUNNING, 2)])
    )
    assert [(c.step_id, c.attempts) for c in retried] == [("b", 2)]

"""PlanWorkflow on the local dev server: scheduling, retries, failures, approval,
controls as signals and updates, queries, cancellation."""

from __future__ import annotations

import asyncio
import uuid

import pytest
from temporalio.client import (
    WorkflowExecutionStatus,
    WorkflowFailureError,
    WorkflowUpdateFailedError,
)
from temporalio.exceptions import CancelledError

from plans.controls import ApproveInput, CancelInput, ControlResult
from plans.models import PlanStatus
from plans.run_state import AuditEntry, LogEntry
from plans.views import (
    ChangesQuery,
    ChangesView,
    ExecutionState,
    LogsQuery,
    PlanView,
    StatusView,
    StepsPage,
    StepsQuery,
)
from tests.helpers import make_plan, start, status, wait_for
from tests.tools_for_tests import CALLS
from workflows.plan_workflow import PlanWorkflow


def key() -> str:
    return uuid.uuid4().hex


def wait_step(sid: str, seconds: float, deps: list[str] | None = None, **kw) -> dict:
    return {
        "id": sid,
        "tool": "wait",
        "params": {"seconds": seconds},
        "depends_on": deps or [],
        **kw,
    }


def overlaps(a, b) -> bool:
    return a.started_at < b.completed_at and b.started_at < a.completed_at


@pytest.mark.parametrize("allow_parallel", [True, False])
async def test_diamond_branches_overlap_only_when_parallel_is_allowed(
    client, worker, task_queue, allow_parallel
):
    plan = make_plan(
        [
            wait_step("a", 1),
            wait_step("b", 1, ["a"]),
            wait_step("c", 1, ["a"]),
            wait_step("d", 1, ["b", "c"]),
        ],
        allow_parallel=allow_parallel,
    )
    res = await (await start(client, plan, task_queue)).result()
    assert res.status == "completed"
    st = await status(client.get_workflow_handle(plan.workflow_id))
    steps = {s.id: s for s in st.steps}
    assert overlaps(steps["b"], steps["c"]) is allow_parallel
    assert steps["b"].started_at >= steps["a"].completed_at
    assert steps["d"].started_at >= max(steps["b"].completed_at, steps["c"].completed_at)
    makespan = (st.finished_at - st.started_at).total_seconds()
    if allow_parallel:
        assert makespan < 4.0, f"diamond with parallel b/c took {makespan:.2f}s (serial: 4s)"
    else:
        assert makespan >= 4.0


async def test_step_starts_when_its_own_dependencies_finish_not_a_batch(client, worker, task_queue):
    # quick -> after_quick must not wait for the slow sibling of quick (no batch barrier).
    plan = make_plan(
        [
            wait_step("quick", 0.01),
            wait_step("slow", 2),
            wait_step("after-quick", 0.01, ["quick"]),
        ]
    )
    await (await start(client, plan, task_queue)).result()
    st = await status(client.get_workflow_handle(plan.workflow_id))
    steps = {s.id: s for s in st.steps}
    assert steps["after-quick"].completed_at < steps["slow"].completed_at


async def test_flaky_step_retries_and_shows_attempts(client, worker, task_queue):
    k = key()
    plan = make_plan(
        [
            {
                "id": "flaky",
                "tool": "flaky",
                "params": {"key": k, "failures": 2},
                "max_retries": 2,
                "retry_delay_s": 0.05,
            }
        ]
    )
    res = await (await start(client, plan, task_queue)).result()
    assert res.status == "completed"
    st = await status(client.get_workflow_handle(plan.workflow_id))
    assert st.steps[0].attempts == 3
    assert st.steps[0].output["attempt"] == 3


async def test_retries_exhausted_fail_with_attempt_count(client, worker, task_queue):
    k = key()
    plan = make_plan(
        [{"id": "b", "tool": "boom", "params": {"key": k}, "max_retries": 2, "retry_delay_s": 0.05}]
    )
    res = await (await start(client, plan, task_queue)).result()
    assert res.status == "failed"
    st = await status(client.get_workflow_handle(plan.workflow_id))
    assert st.steps[0].attempts == 3
    assert CALLS[k] == 3
    assert "boom" in st.steps[0].error


async def test_non_idempotent_step_runs_once(client, worker, task_queue):
    k = key()
    plan = make_plan(
        [{"id": "pay", "tool": "boom", "params": {"key": k}, "max_retries": 5, "idempotent": False}]
    )
    res = await (await start(client, plan, task_queue)).result()
    assert res.status == "failed"
    assert CALLS[k] == 1


async def test_non_retryable_error_is_not_retried(client, worker, task_queue):
    k = key()
    plan = make_plan(
        [
            {
                "id": "b",
                "tool": "boom",
                "params": {"key": k, "permanent": True},
                "max_retries": 5,
                "retry_delay_s": 0.05,
            }
        ]
    )
    await (await start(client, plan, task_queue)).result()
    assert CALLS[k] == 1


def _failing_dag(k: str) -> list[dict]:
    #   bad -> child -> grandchild ; ok -> ok-child ; slow (independent)
    return [
        {"id": "bad", "tool": "boom", "params": {"key": k, "permanent": True}},
        {"id": "child", "tool": "count", "params": {"key": f"{k}-child"}, "depends_on": ["bad"]},
        {
            "id": "grandchild",
            "tool": "count",
            "params": {"key": f"{k}-gc"},
            "depends_on": ["child"],
        },
        {"id": "ok", "tool": "count", "params": {"key": f"{k}-ok", "sleep_s": 0.3}},
        {"id": "ok-child", "tool": "count", "params": {"key": f"{k}-okc"}, "depends_on": ["ok"]},
    ]


async def test_failure_skips_exactly_its_dependents_and_continue_ends_partial(
    client, worker, task_queue
):
    k = key()
    plan = make_plan(_failing_dag(k), on_error="continue")
    res = await (await start(client, plan, task_queue)).result()
    assert res.status == "partial"
    assert res.steps == {
        "bad": "failed",
        "child": "skipped",
        "grandchild": "skipped",
        "ok": "completed",
        "ok-child": "completed",
    }
    assert CALLS[f"{k}-child"] == 0 and CALLS[f"{k}-gc"] == 0


async def test_on_error_stop_starts_nothing_new_and_fails(client, worker, task_queue):
    k = key()
    plan = make_plan(_failing_dag(k), on_error="stop")
    res = await (await start(client, plan, task_queue)).result()
    assert res.status == "failed"
    # ok was already running when bad failed: it finishes; ok-child would be new: it never starts.
    assert res.steps["ok"] == "completed"
    assert res.steps["ok-child"] == "skipped"
    assert CALLS[f"{k}-okc"] == 0
    st = await status(client.get_workflow_handle(plan.workflow_id))
    assert "bad failed" in (st.outcome or "")


async def test_templates_pass_outputs_between_steps(client, worker, task_queue):
    plan = make_plan(
        [
            {
                "id": "src",
                "tool": "transform",
                "params": {"data": {"items": [3, 4, 5]}, "expression": "items"},
            },
            {
                "id": "sum",
                "tool": "transform",
                "params": {"data": {"xs": "{{ steps.src.output }}"}, "expression": "sum(xs)"},
                "depends_on": ["src"],
            },
            {
                "id": "msg",
                "tool": "count",
                "params": {
                    "key": key(),
                    "value": "total={{ steps.sum.output }} for {{ inputs.who }}",
                },
                "depends_on": ["sum"],
            },
        ]
    )
    plan.inputs["who"] = "ops"
    res = await (await start(client, plan, task_queue)).result()
    assert res.status == "completed"
    st = await status(client.get_workflow_handle(plan.workflow_id))
    assert {s.id: s.output for s in st.steps}["msg"]["value"] == "total=12 for ops"


async def test_when_false_skips_step(client, worker, task_queue):
    plan = make_plan(
        [
            {
                "id": "probe",
                "tool": "transform",
                "params": {"data": {"env": "staging"}, "expression": "env"},
            },
            {
                "id": "prod-only",
                "tool": "count",
                "params": {"key": key()},
                "depends_on": ["probe"],
                "when": "steps.probe.output == 'production'",
            },
            {"id": "always", "tool": "count", "params": {"key": key()}, "depends_on": ["probe"]},
        ]
    )
    res = await (await start(client, plan, task_queue)).result()
    assert res.status == "completed"
    assert res.steps["prod-only"] == "skipped"


async def result_or_terminate(handle, seconds: float):
    """The plan's result, or (it hangs) terminate it and fail saying what it showed."""
    try:
        return await asyncio.wait_for(handle.result(), seconds)
    except TimeoutError:
        try:
            st = await status(handle)
            seen = f"status {st.status}: {[(s.id, s.status.value, s.error) for s in st.steps]}"
        except Exception as e:  # RPCError: the workflow task is in failed state
            seen = f"query failed: {e}"
        await handle.terminate("the plan did not end (test cleanup)")
        raise AssertionError(f"plan did not end within {seconds}s; {seen}") from None


@pytest.mark.parametrize(
    "overflowing",
    [
        pytest.param({"when": "int(1e400) > 0"}, id="condition"),
        pytest.param({"params": {"key": "{{ str(int(1e400)) }}"}}, id="template"),
    ],
)
async def test_an_expression_that_overflows_fails_the_plan_instead_of_hanging(
    client, worker, task_queue, overflowing
):
    """A validated plan whose condition or param template raises OverflowError: the step
    fails and the plan ends failed (the workflow task must not fail on every attempt)."""
    plan = make_plan([{"id": "a", "tool": "count", "params": {"key": key()}, **overflowing}])
    handle = await start(client, plan, task_queue)
    res = await result_or_terminate(handle, 15)
    assert res.status == PlanStatus.FAILED


async def test_approval_by_signal_starts_a_waiting_plan(client, worker, task_queue):
    k = key()
    plan = make_plan([{"id": "a", "tool": "count", "params": {"key": k}}], require_approval=True)
    handle = await start(client, plan, task_queue)
    st = await wait_for(handle, lambda s: s.status == "pending_approval")
    assert st.waiting_for is not None and st.waiting_for.kind == "plan_approval"
    assert CALLS[k] == 0
    await handle.signal("approve", {"by": "ops"})
    res = await handle.result()
    assert res.status == "completed"
    audit = await handle.query("audit", result_type=list[AuditEntry])
    approvals = [a for a in audit if a.action == "approve"]
    assert approvals[-1].by == "ops" and approvals[-1].accepted and approvals[-1].via == "signal"


async def test_update_on_completed_plan_is_refused_with_a_reason(client, worker, task_queue):
    plan = make_plan([{"id": "a", "tool": "count", "params": {"key": key()}}])
    handle = await start(client, plan, task_queue)
    # keep the workflow open long enough? it completes; updates to a closed workflow are
    # refused by the server. Use a waiting plan that is then completed instead:
    await handle.result()
    with pytest.raises(Exception) as info:
        await handle.execute_update("approve", {"by": "late"})
    assert "complete" in str(info.value).lower() or "closed" in str(info.value).lower()


async def test_update_refused_by_validator_names_the_reason(client, worker, task_queue):
    plan = make_plan([wait_step("a", 30)])
    handle = await start(client, plan, task_queue)
    await wait_for(handle, lambda s: s.steps[0].status == "running")
    with pytest.raises(WorkflowUpdateFailedError) as info:
        await handle.execute_update("approve", {"by": "bob"})
    assert "already approved" in info.value.cause.message
    with pytest.raises(WorkflowUpdateFailedError) as info:
        await handle.execute_update("reject", {"by": "bob", "reason": "no"})
    assert "cancel it instead" in info.value.cause.message
    with pytest.raises(WorkflowUpdateFailedError) as info:
        await handle.execute_update("approve", {"who": "bob"})
    assert "by" in info.value.cause.message
    await handle.execute_update("cancel", {"by": "bob", "reason": "done testing"})
    res = await handle.result()
    assert res.status == "cancelled"


async def test_stale_approval_version_is_refused(client, worker, task_queue):
    plan = make_plan(
        [{"id": "a", "tool": "count", "params": {"key": key()}}], require_approval=True
    )
    handle = await start(client, plan, task_queue)
    st = await wait_for(handle, lambda s: s.status == "pending_approval")
    with pytest.raises(WorkflowUpdateFailedError) as info:
        await handle.execute_update("approve", {"by": "bob", "version": st.version + 1})
    assert "stale approval" in info.value.cause.message
    with pytest.raises(WorkflowUpdateFailedError) as info:
        await handle.execute_update("approve", {"by": "bob", "digest": "0000"})
    assert "digest" in info.value.cause.message
    result = await handle.execute_update(
        "approve", {"by": "bob", "version": st.version, "digest": st.digest}
    )
    assert result["accepted"] is True
    assert (await handle.result()).status == "completed"


async def test_invalid_signal_is_recorded_as_refused_and_plan_goes_on(client, worker, task_queue):
    k = key()
    plan = make_plan([{"id": "a", "tool": "count", "params": {"key": k}}], require_approval=True)
    handle = await start(client, plan, task_queue)
    await wait_for(handle, lambda s: s.status == "pending_approval")
    await handle.signal("approve", {"who": "nobody"})  # missing `by`
    await handle.signal("approve", "not an object")
    await handle.signal("resume", {"by": "eve"})  # not paused
    await handle.signal(
        "approve"
    )  # no argument at all (`temporal workflow signal` without --input)
    with pytest.raises(WorkflowUpdateFailedError) as info:
        await handle.execute_update("approve")
    assert "by" in info.value.cause.message
    await handle.signal("approve", {"by": "ops"})
    assert (await handle.result()).status == "completed"
    audit = await handle.query("audit", result_type=list[AuditEntry])
    refused = [a for a in audit if not a.accepted]
    assert len(refused) == 4
    assert all(a.via == "signal" and a.detail for a in refused)
    assert any("resume refused" in a.detail for a in refused)


async def test_controls_and_queries_by_typed_handler_reference(client, worker, task_queue):
    plan = make_plan([wait_step("a", 30)], require_approval=True)
    handle = await start(client, plan, task_queue)
    await wait_for(handle, lambda s: s.status == "pending_approval")
    st = await handle.query(PlanWorkflow.status)
    assert isinstance(st, StatusView) and st.status == "pending_approval"
    with pytest.raises(WorkflowUpdateFailedError) as info:
        await handle.execute_update(
            PlanWorkflow.approve, ApproveInput(by="alice", version=st.version + 1)
        )
    assert "stale approval" in info.value.cause.message
    result = await handle.execute_update(PlanWorkflow.approve, ApproveInput(by="alice"))
    assert isinstance(result, ControlResult) and result.accepted and result.control == "approve"
    await wait_for(handle, lambda s: s.steps[0].status == "running")
    await handle.signal(PlanWorkflow.cancel_signal, CancelInput(by="alice", reason="enough"))
    assert (await handle.result()).status == "cancelled"
    audit = await handle.query(PlanWorkflow.audit)
    cancel = [a for a in audit if a.action == "cancel"]
    assert cancel and cancel[-1].by == "alice" and cancel[-1].via == "signal"


async def test_reject_ends_rejected_and_runs_nothing(client, worker, task_queue):
    k = key()
    plan = make_plan([{"id": "a", "tool": "count", "params": {"key": k}}], require_approval=True)
    handle = await start(client, plan, task_queue)
    await wait_for(handle, lambda s: s.status == "pending_approval")
    await handle.execute_update("reject", {"by": "ops", "reason": "wrong target"})
    res = await handle.result()
    assert res.status == "rejected"
    assert res.steps == {"a": "skipped"}
    assert CALLS[k] == 0
    assert "wrong target" in (res.outcome or "")


async def test_auto_approve_runs_without_a_person(client, worker, task_queue):
    plan = make_plan(
        [{"id": "a", "tool": "count", "params": {"key": key()}}],
        require_approval=True,
        auto_approve=True,
    )
    res = await (await start(client, plan, task_queue)).result()
    assert res.status == "completed"


async def test_cancel_update_cancels_running_steps(client, worker, task_queue):
    plan = make_plan([wait_step("long", 60), wait_step("after", 1, ["long"])])
    handle = await start(client, plan, task_queue)
    await wait_for(handle, lambda s: s.steps[0].status == "running")
    await handle.execute_update("cancel", {"by": "ops", "reason": "wrong day"})
    res = await asyncio.wait_for(handle.result(), timeout=15)
    assert res.status == "cancelled"
    assert res.steps == {"long": "cancelled", "after": "cancelled"}


async def test_temporal_cancel_ends_plan_cancelled_with_cleanup(client, worker, task_queue):
    plan = make_plan([wait_step("long", 60), wait_step("after", 1, ["long"])])
    handle = await start(client, plan, task_queue)
    await wait_for(handle, lambda s: s.steps[0].status == "running")
    await handle.cancel()
    with pytest.raises(WorkflowFailureError) as info:
        await asyncio.wait_for(handle.result(), timeout=15)
    assert isinstance(info.value.cause, CancelledError)
    desc = await handle.describe()
    assert desc.status == WorkflowExecutionStatus.CANCELED
    st = await status(handle)
    assert st.status == "cancelled"
    assert {s.id: s.status for s in st.steps} == {"long": "cancelled", "after": "cancelled"}


async def test_queries_status_plan_logs_audit_execution_state(client, worker, task_queue):
    plan = make_plan(
        [{"id": "a", "tool": "count", "params": {"key": key()}}, wait_step("b", 0.01, ["a"])],
        require_approval=True,
    )
    handle = await start(client, plan, task_queue)
    await wait_for(handle, lambda s: s.status == "pending_approval")
    es = await handle.query("execution_state", result_type=ExecutionState)
    assert (es.state, es.status) == ("paused", "pending_approval")
    await handle.execute_update("approve", {"by": "ann", "comment": "looks right"})
    await handle.result()
    st = await status(handle)
    assert (
        st.plan_id == plan.id and st.progress == 1.0 and st.version == 1 and st.waiting_for is None
    )
    assert [s.status for s in st.steps] == ["completed", "completed"]
    assert st.steps[0].started_at and st.steps[0].completed_at
    pv = await handle.query("plan", result_type=PlanView)
    assert pv.plan.steps[1].id == "b" and pv.version == 1
    logs = await handle.query("logs", LogsQuery(level="info", limit=3), result_type=list[LogEntry])
    assert len(logs) == 3 and logs[-1].message.startswith("plan ended completed")
    audit = await handle.query("audit", result_type=list[AuditEntry])
    assert audit[-1].by == "ann" and audit[-1].action == "approve" and audit[-1].version == 1


async def test_steps_and_changes_queries_page_a_big_plan_and_number_its_changes(
    client, worker, task_queue
):
    steps = [{"id": "gate", "tool": "count", "params": {"key": key()}, "requires_approval": True}]
    steps += [
        {"id": f"s{i:03d}", "tool": "count", "params": {"key": key()}, "depends_on": ["gate"]}
        for i in range(250)
    ]
    plan = make_plan(steps, max_parallel_steps=50)
    handle = await start(client, plan, task_queue)
    st = await wait_for(handle, lambda s: s.status == "waiting_approval")
    # over 200 steps: status lists only what is active, and counts the rest
    assert not st.steps_complete and st.total_steps == 251
    assert [s.id for s in st.steps] == ["gate"] and st.waiting_for.step_id == "gate"
    assert st.counts == {"waiting_approval": 1, "pending": 250}
    page = await handle.query(
        "steps", StepsQuery(status="pending", offset=100, limit=3), result_type=StepsPage
    )
    assert page.total == 250 and [s.id for s in page.steps] == ["s100", "s101", "s102"]
    before = await handle.query("changes", ChangesQuery(since=0), result_type=ChangesView)
    assert before.complete and [(c.step_id, c.status) for c in before.changes] == [
        ("gate", "waiting_approval")
    ]
    await handle.execute_update("approve_step", {"by": "ann", "step_id": "gate"})
    assert (await handle.result()).status == "completed"
    after = await handle.query("changes", ChangesQuery(since=before.seq), result_type=ChangesView)
    assert after.complete and after.seq == before.seq + len(after.changes)
    done = [c.step_id for c in after.changes if c.status == "completed"]
    assert sorted(done) == ["gate"] + [f"s{i:03d}" for i in range(250)]
    st = await status(handle)
    assert st.counts == {"completed": 251} and st.steps == [] and st.seq == after.seq
    assert [c.seq for c in st.recent] == list(range(after.seq - 19, after.seq + 1))
    done_page = await handle.query(
        "steps", StepsQuery(status="completed", offset=250, limit=10), result_type=StepsPage
    )
    assert done_page.total == 251 and [s.id for s in done_page.steps] == ["s249"]


async def test_search_attributes_show_plans_waiting_for_a_person(client, worker, task_queue):
    plan = make_plan(
        [{"id": "a", "tool": "count", "params": {"key": key()}}], require_approval=True
    )
    handle = await start(client, plan, task_queue)
    await wait_for(handle, lambda s: s.status == "pending_approval")
    found = []
    for _ in range(50):  # visibility is eventually consistent
        found = [
            w.id
            async for w in client.list_workflows(
                f"PlanStatus = 'pending_approval' AND WorkflowId = '{handle.id}'"
            )
        ]
        if found:
            break
        await asyncio.sleep(0.2)
    assert found == [handle.id]
    await handle.execute_update("cancel", {"by": "t", "reason": "cleanup"})
    assert (await handle.result()).status == "cancelled"


async def test_total_timeout_cancels_running_steps_and_fails(client, worker, task_queue):
    plan = make_plan(
        [
            wait_step("slow", 120),
            {"id": "after", "tool": "count", "params": {"key": key()}, "depends_on": ["slow"]},
        ],
        total_timeout_s=1.5,
    )
    handle = await start(client, plan, task_queue)
    res = await asyncio.wait_for(handle.result(), timeout=20)
    assert res.status == "failed"
    assert res.outcome == "total timeout of 1.5s exceeded"
    assert res.steps == {"slow": "cancelled", "after": "skipped"}
    audit = await handle.query("audit", result_type=list[AuditEntry])
    assert audit[-1].action == "total_timeout" and audit[-1].by == "system:timeout"


async def test_a_closed_plan_is_read_from_its_result_and_an_open_only_query_is_refused(
    client, worker, task_queue
):
    """A query of a closed workflow makes a worker replay the whole run (seconds for a
    big plan): ``open_only`` queries are refused by Temporal instead, and the end of the
    plan is read from its result."""
    from config import get_settings
    from plans.views import ChangesQuery
    from workflows.client import PlanClient
    from workflows.errors import PlanClosed

    plan = make_plan([wait_step("a", 0.1), wait_step("b", 0.1, ["a"])])
    handle = await start(client, plan, task_queue)
    plans = PlanClient(get_settings(), client=client)
    assert plan.id is not None
    running = await plans.changes(plan.id, ChangesQuery(), open_only=True)  # open: answered
    assert running.plan_id == plan.id
    await handle.result()
    with pytest.raises(PlanClosed):
        await plans.changes(plan.id, ChangesQuery(), open_only=True)
    result = await plans.final_result(plan.id)
    assert result is not None and result.status == PlanStatus.COMPLETED
    assert {sid: s.status.value for sid, s in result.final_steps.items()} == {
        "a": "completed",
        "b": "completed",
    }
    replayed = await plans.changes(plan.id, ChangesQuery())  # without open_only: replayed
    assert replayed.status == PlanStatus.COMPLETED

"""Timeouts on every wait for a person, on the time-skipping server.

Step gates, clarification questions (a step's own and a pause with a question) and
on_error=ask corrections end by a durable timer when a timeout is set, with the configured
default action and an outcome that says it timed out, audited by ``system:timeout``
(never mistaken for a person's decision).

The time-skipping server supports signals and queries but neither updates nor search
attributes, and it does not skip time while an activity runs: only waits for a person
are timed here."""

from __future__ import annotations

import asyncio
import uuid
from datetime import timedelta
from typing import Any

from temporalio.client import WorkflowHandle

from plans.run_state import AuditEntry, PlanRun
from plans.views import StatusView, StepView
from tests.helpers import make_plan, start, status
from tests.tools_for_tests import CALLS


def key() -> str:
    return uuid.uuid4().hex


def count_step(sid: str, k: str, deps: list[str] | None = None, **kw: Any) -> dict[str, Any]:
    params: dict[str, Any] = {"key": k}
    if "value" in kw:
        params["value"] = kw.pop("value")
    return {"id": sid, "tool": "count", "params": params, "depends_on": deps or [], **kw}


def step(st: StatusView, sid: str) -> StepView:
    return next(s for s in st.steps if s.id == sid)


async def audit_of(handle: WorkflowHandle) -> list[AuditEntry]:
    return await handle.query("audit", result_type=list[AuditEntry])


async def run_state(handle: WorkflowHandle) -> PlanRun:
    return await handle.query("run_state", result_type=PlanRun)


async def until(handle: WorkflowHandle, predicate: Any, timeout: float = 5.0) -> StatusView:
    """Poll the status query (time does not skip while polling)."""
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        st = await status(handle)
        if predicate(st):
            return st
        assert asyncio.get_running_loop().time() < deadline, (
            f"not reached; last {st.status}: {[(s.id, s.status) for s in st.steps]}"
        )
        await asyncio.sleep(0.05)


def timeouts(audit: list[AuditEntry]) -> list[AuditEntry]:
    return [a for a in audit if a.by == "system:timeout"]


# --- step approval -------------------------------------------------------------------


async def test_step_approval_timeout_rejects_the_gate(ts):
    env, tq = ts
    k = key()
    plan = make_plan(
        [
            count_step("gate", f"{k}-g", requires_approval=True),
            count_step("child", f"{k}-c", ["gate"]),
            count_step("side", f"{k}-s"),
        ],
        step_approval_timeout_s=3600,
        on_step_approval_timeout="reject",
    )
    handle = await start(env.client, plan, tq, search_attributes=False, persist=False)
    before = await env.get_current_time()
    res = await handle.result()  # time skips the hour
    after = await env.get_current_time()
    assert after - before >= timedelta(seconds=3600)
    assert res.steps == {"gate": "skipped", "child": "skipped", "side": "completed"}
    assert res.status == "partial"
    assert CALLS[f"{k}-g"] == 0 and CALLS[f"{k}-c"] == 0
    st = await status(handle)
    detail = step(st, "gate").skip_detail or ""
    assert "step approval timed out after 3600s" in detail
    assert "on_step_approval_timeout=reject" in detail
    assert step(st, "child").skip_reason == "upstream"
    state = await run_state(handle)
    assert state.steps["gate"].timed_out == detail
    assert state.steps["gate"].gate_approved_by is None
    t = timeouts(await audit_of(handle))
    assert [(a.action, a.step_id, a.accepted, a.via) for a in t] == [
        ("step_approval_timeout", "gate", True, "system")
    ]
    assert "timed out" in t[0].detail


async def test_step_approval_timeout_can_approve(ts):
    env, tq = ts
    k = key()
    plan = make_plan(
        [count_step("gate", f"{k}-g", requires_approval=True), count_step("c", f"{k}-c", ["gate"])],
        step_approval_timeout_s=900,
        on_step_approval_timeout="approve",
    )
    handle = await start(env.client, plan, tq, search_attributes=False, persist=False)
    res = await handle.result()
    assert res.status == "completed"
    assert CALLS[f"{k}-g"] == 1 and CALLS[f"{k}-c"] == 1
    state = await run_state(handle)
    assert state.steps["gate"].gate_approved_by == "system:timeout"
    assert "on_step_approval_timeout=approve" in (state.steps["gate"].timed_out or "")
    audit = await audit_of(handle)
    assert [a.action for a in timeouts(audit)] == ["step_approval_timeout"]
    assert not [a for a in audit if a.action == "approve_step"]  # no person decided


async def test_a_person_approving_in_time_leaves_no_timeout(ts):
    env, tq = ts
    k = key()
    plan = make_plan(
        [count_step("gate", k, requires_approval=True)],
        step_approval_timeout_s=600,
        on_step_approval_timeout="reject",
    )
    handle = await start(env.client, plan, tq, search_attributes=False, persist=False)
    await until(handle, lambda s: step(s, "gate").status == "waiting_approval")
    await handle.signal("approve_step", {"by": "amy", "step_id": "gate"})
    res = await handle.result()
    assert res.status == "completed" and CALLS[k] == 1
    audit = await audit_of(handle)
    assert timeouts(audit) == []
    assert [(a.by, a.action, a.via) for a in audit if a.action == "approve_step"] == [
        ("amy", "approve_step", "signal")
    ]
    assert (await run_state(handle)).steps["gate"].timed_out is None


async def test_step_approval_timeout_restarts_after_a_correction(ts):
    env, tq = ts
    k = key()
    plan = make_plan(
        [count_step("gate", k, requires_approval=True, value="v1")],
        step_approval_timeout_s=1000,
        on_step_approval_timeout="approve",
    )
    handle = await start(env.client, plan, tq, search_attributes=False, persist=False)
    await until(handle, lambda s: step(s, "gate").status == "waiting_approval")
    await env.sleep(600)
    correction = {"updated_step": {"params": {"value": "v2"}}}
    await handle.signal(  # corrected and approved by cora: the step's own gate still waits
        "apply_correction",
        {"by": "cora", "step_id": "gate", "correction": correction, "approve": True},
    )
    await until(handle, lambda s: s.version == 2)
    await env.sleep(600)  # 1200 s after the gate opened, 600 s after the correction
    st = await status(handle)
    assert step(st, "gate").status == "waiting_approval" and CALLS[k] == 0
    res = await handle.result()
    assert res.status == "completed"
    assert step(await status(handle), "gate").output["value"] == "v2"


# --- clarification -------------------------------------------------------------------


def _asking_plan(k: str, action: str) -> Any:
    return make_plan(
        [
            count_step(
                "ask",
                f"{k}-a",
                requires_clarification=True,
                clarification_question="Which region?",
                value="{{ answer }}",
            ),
            count_step("after", f"{k}-b", ["ask"]),
        ],
        clarification_timeout_s=600,
        on_clarification_timeout=action,
    )


async def test_clarification_timeout_fail(ts):
    env, tq = ts
    k = key()
    handle = await start(
        env.client, _asking_plan(k, "fail"), tq, search_attributes=False, persist=False
    )
    res = await handle.result()
    assert res.status == "failed"
    assert res.steps == {"ask": "failed", "after": "skipped"}
    assert CALLS[f"{k}-a"] == 0
    st = await status(handle)
    err = step(st, "ask").error or ""
    assert "clarification timed out" in err and "no answer within 600s" in err
    assert "on_clarification_timeout=fail" in err
    t = timeouts(await audit_of(handle))
    assert [(a.action, a.step_id) for a in t] == [("clarification_timeout", "ask")]


async def test_clarification_timeout_skip(ts):
    env, tq = ts
    k = key()
    handle = await start(
        env.client, _asking_plan(k, "skip"), tq, search_attributes=False, persist=False
    )
    res = await handle.result()
    assert res.steps == {"ask": "skipped", "after": "skipped"}
    assert CALLS[f"{k}-a"] == 0 and CALLS[f"{k}-b"] == 0
    st = await status(handle)
    assert "on_clarification_timeout=skip" in (step(st, "ask").skip_detail or "")
    state = await run_state(handle)
    assert "no answer within 600s" in (state.steps["ask"].timed_out or "")
    assert [a.action for a in timeouts(await audit_of(handle))] == ["clarification_timeout"]


async def test_clarification_timeout_proceed_runs_without_an_answer(ts):
    env, tq = ts
    k = key()
    handle = await start(
        env.client, _asking_plan(k, "proceed"), tq, search_attributes=False, persist=False
    )
    res = await handle.result()
    assert res.status == "completed"
    st = await status(handle)
    assert step(st, "ask").output["value"] is None  # no answer came
    assert CALLS[f"{k}-a"] == 1 and CALLS[f"{k}-b"] == 1
    state = await run_state(handle)
    assert "on_clarification_timeout=proceed" in (state.steps["ask"].timed_out or "")
    t = timeouts(await audit_of(handle))
    assert [(a.action, a.step_id) for a in t] == [("clarification_timeout", "ask")]


async def test_an_answer_in_time_leaves_no_timeout(ts):
    env, tq = ts
    k = key()
    handle = await start(
        env.client, _asking_plan(k, "fail"), tq, search_attributes=False, persist=False
    )
    await until(handle, lambda s: step(s, "ask").status == "waiting_clarification")
    await env.sleep(300)
    await handle.signal("answer_clarification", {"by": "dev", "step_id": "ask", "answer": "eu"})
    res = await handle.result()
    assert res.status == "completed"
    assert step(await status(handle), "ask").output["value"] == "eu"
    assert timeouts(await audit_of(handle)) == []


# --- pause with a question -----------------------------------------------------------


async def test_pause_with_question_timeout_fails_the_plan(ts):
    env, tq = ts
    k = key()
    plan = make_plan(
        [count_step("gate", k, requires_approval=True)],
        clarification_timeout_s=1800,
        on_clarification_timeout="fail",
    )
    handle = await start(env.client, plan, tq, search_attributes=False, persist=False)
    await until(handle, lambda s: step(s, "gate").status == "waiting_approval")
    await handle.signal("pause", {"by": "ops", "step_id": "gate", "question": "Is it safe?"})
    await until(handle, lambda s: s.status == "waiting_clarification")
    res = await handle.result()
    assert res.status == "failed"
    assert res.outcome is not None and res.outcome.startswith("clarification timed out")
    assert "no answer within 1800s" in res.outcome
    assert res.steps == {"gate": "skipped"} and CALLS[k] == 0
    t = timeouts(await audit_of(handle))
    assert [(a.action, a.step_id) for a in t] == [("pause_question_timeout", "gate")]


async def test_pause_with_question_timeout_proceed_unpauses(ts):
    env, tq = ts
    k = key()
    plan = make_plan(
        [count_step("gate", k, requires_approval=True)],
        clarification_timeout_s=1800,
        on_clarification_timeout="proceed",
    )
    handle = await start(env.client, plan, tq, search_attributes=False, persist=False)
    await until(handle, lambda s: step(s, "gate").status == "waiting_approval")
    await handle.signal("pause", {"by": "ops", "question": "Is it safe?"})
    await until(handle, lambda s: s.status == "waiting_clarification")
    await env.sleep(2000)
    st = await until(handle, lambda s: s.status == "waiting_approval")
    assert st.paused_by is None and st.waiting_for is not None
    assert st.waiting_for.kind == "step_approval"
    assert [a.action for a in timeouts(await audit_of(handle))] == ["pause_question_timeout"]
    await handle.signal("approve_step", {"by": "amy", "step_id": "gate"})
    assert (await handle.result()).status == "completed"
    assert CALLS[k] == 1


# --- correction (on_error=ask) -------------------------------------------------------


async def test_correction_timeout_ends_the_plan_failed(ts):
    env, tq = ts
    k = key()
    plan = make_plan(
        [
            {"id": "bad", "tool": "boom", "params": {"key": f"{k}-b", "permanent": True}},
            count_step("after", f"{k}-a", ["bad"]),
        ],
        on_error="ask",
        correction_timeout_s=900,
    )
    handle = await start(env.client, plan, tq, search_attributes=False, persist=False)
    await until(handle, lambda s: s.status == "waiting_correction")
    res = await handle.result()
    assert res.status == "failed"
    assert res.steps == {"bad": "failed", "after": "skipped"}
    assert "no correction, retry or skip within 900s" in (res.outcome or "")
    assert CALLS[f"{k}-b"] == 1 and CALLS[f"{k}-a"] == 0
    state = await run_state(handle)
    assert not state.steps["bad"].awaiting_decision
    assert "no correction" in (state.steps["bad"].timed_out or "")
    t = timeouts(await audit_of(handle))
    assert [(a.action, a.step_id, a.via) for a in t] == [("correction_timeout", "bad", "system")]


async def test_total_timeout_counts_from_approval_even_after_continue_as_new(ts):
    env, tq = ts
    k = key()
    plan = make_plan([count_step("a", k)], require_approval=True, total_timeout_s=60)
    handle = await start(
        env.client, plan, tq, search_attributes=False, max_history_events=50, persist=False
    )
    for i in range(30):  # refused controls grow the history: the approval wait continues as new
        await handle.signal("resume", {"by": f"r-{i}"})
    latest = env.client.get_workflow_handle(plan.workflow_id)
    for _ in range(100):
        if (await latest.describe()).run_id != handle.first_execution_run_id:
            break
        await asyncio.sleep(0.05)
    await env.sleep(3600)  # an hour waiting for a person
    assert (await status(latest)).status == "pending_approval"
    await latest.signal("approve", {"by": "ann"})
    for _ in range(50):
        st = await status(latest)
        if st.status not in ("pending_approval", "approved", "executing"):
            break
        await asyncio.sleep(0.1)
    assert st.status == "completed", (st.status, st.outcome, st.started_at)
    assert CALLS[k] == 1

"""People in the loop on the local dev server: pause/resume, questions, step gates,
corrections and stale decisions, on_error=ask, live retries, resume from failure,
continue-as-new, search attributes, and storms of conflicting controls.

Every transition is tested allowed and refused: a refused update raises
``WorkflowUpdateFailedError`` whose cause says why, a refused signal is an audit entry
with ``accepted=False``."""

from __future__ import annotations

import asyncio
import uuid
from collections import defaultdict
from typing import Any

import pytest
from temporalio.api.enums.v1 import EventType, WorkflowTaskFailedCause
from temporalio.client import WorkflowFailureError, WorkflowHandle, WorkflowUpdateFailedError
from temporalio.exceptions import ApplicationError
from temporalio.service import RPCError

from activities.tools import ToolContext, ToolError, tool
from contracts.steps import request_key
from plans.controls import ControlResult
from plans.models import StepKind
from plans.run_state import AuditEntry, LogEntry, PlanRun
from plans.views import (
    ChangesQuery,
    ChangesView,
    ExecutionState,
    LogsQuery,
    PlanView,
    StatusView,
    StepView,
)
from tests.helpers import make_plan, start, status, wait_for
from tests.tools_for_tests import CALLS
from workflows.errors import ResumeRefused
from workflows.plan_input import PlanResult
from workflows.starter import resume_from_failure

# --- a probe tool: what a tool receives (idempotency key, context) -------------------

PROBES: dict[str, list[dict[str, Any]]] = defaultdict(list)


@tool(
    name="people_probe",
    description="Record the idempotency key, attempt and context it gets; fail the first "
    "`fail_times` calls under `key`.",
    params_schema={
        "properties": {
            "key": {"type": "string"},
            "fail_times": {"type": "integer"},
            "value": {},
        },
        "required": ["key"],
    },
)
async def people_probe(params: dict[str, Any], ctx: ToolContext) -> Any:
    seen = PROBES[params["key"]]
    seen.append(
        {
            "idempotency_key": ctx.idempotency_key,
            "attempt": ctx.attempt,
            "extra": dict(ctx.extra),
            "value": params.get("value"),
        }
    )
    if len(seen) <= params.get("fail_times", 0):
        raise ToolError(f"probe failure {len(seen)}", retryable=True)
    return {"value": params.get("value"), "idempotency_key": ctx.idempotency_key}


# --- helpers -------------------------------------------------------------------------


def key() -> str:
    return uuid.uuid4().hex


def count_step(sid: str, k: str, deps: list[str] | None = None, **kw: Any) -> dict[str, Any]:
    params: dict[str, Any] = {"key": k}
    for name in ("sleep_s", "value"):
        if name in kw:
            params[name] = kw.pop(name)
    return {"id": sid, "tool": "count", "params": params, "depends_on": deps or [], **kw}


def wait_step(sid: str, seconds: float, deps: list[str] | None = None, **kw: Any) -> dict:
    return {
        "id": sid,
        "tool": "wait",
        "params": {"seconds": seconds},
        "depends_on": deps or [],
        **kw,
    }


def step(st: StatusView, sid: str) -> StepView:
    return next(s for s in st.steps if s.id == sid)


async def audit_of(handle: WorkflowHandle) -> list[AuditEntry]:
    return await handle.query("audit", result_type=list[AuditEntry])


async def wait_audit(handle: WorkflowHandle, predicate: Any, timeout: float = 10.0) -> list:
    """Poll the audit query until ``predicate(entries)`` holds (signals are asynchronous)."""
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        entries = await audit_of(handle)
        if predicate(entries):
            return entries
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"audit condition not reached: {entries}")
        await asyncio.sleep(0.1)


async def exec_state(handle: WorkflowHandle) -> ExecutionState:
    return await handle.query("execution_state", result_type=ExecutionState)


async def update(handle: WorkflowHandle, name: str, arg: dict[str, Any]) -> ControlResult:
    return await handle.execute_update(name, arg, result_type=ControlResult)


async def refused(handle: WorkflowHandle, name: str, arg: dict[str, Any]) -> str:
    """Send ``name`` as an update that must be refused; return the reason."""
    with pytest.raises(WorkflowUpdateFailedError) as info:
        await handle.execute_update(name, arg)
    cause = info.value.cause
    assert isinstance(cause, ApplicationError), cause
    assert cause.type == "TransitionRefused", cause
    return cause.message


async def result_within(handle: WorkflowHandle, seconds: float = 15.0) -> Any:
    return await asyncio.wait_for(handle.result(), timeout=seconds)


# --- pause / resume ------------------------------------------------------------------


async def test_pause_stops_scheduling_running_step_finishes_resume_keeps_feedback(
    client, worker, task_queue
):
    k = key()
    plan = make_plan(
        [
            count_step("a", f"{k}-a", sleep_s=0.8),
            count_step("b", f"{k}-b", ["a"], value="{{ feedback }}"),
        ],
        require_approval=True,
    )
    handle = await start(client, plan, task_queue)
    await wait_for(handle, lambda s: s.status == "pending_approval")
    # refused: nothing to pause or resume before the plan runs
    assert "not been approved" in await refused(handle, "pause", {"by": "pat"})
    await update(handle, "approve", {"by": "ann"})
    await wait_for(handle, lambda s: step(s, "a").status == "running")

    r = await update(handle, "pause", {"by": "pat", "reason": "checking numbers"})
    assert r.accepted and r.status == "paused"
    st = await wait_for(handle, lambda s: step(s, "a").status == "completed")
    assert st.status == "paused" and st.paused_by == "pat"
    assert st.waiting_for is not None and st.waiting_for.kind == "resume"
    assert "pat" in st.waiting_for.who and st.waiting_for.since is not None
    await asyncio.sleep(0.4)  # nothing new starts while paused
    st = await status(handle)
    assert step(st, "b").status == "pending" and CALLS[f"{k}-b"] == 0
    assert (await exec_state(handle)).state == "paused"

    assert "already paused by pat" in await refused(handle, "pause", {"by": "quinn"})
    r = await update(handle, "resume", {"by": "pat", "feedback": "numbers are fine"})
    assert r.accepted and "feedback" in r.detail
    res = await result_within(handle)
    assert res.status == "completed"
    st = await status(handle)
    assert st.feedback == ["numbers are fine"]
    assert step(st, "b").output["value"] == ["numbers are fine"]  # later steps see it
    assert CALLS[f"{k}-a"] == 1 and CALLS[f"{k}-b"] == 1

    audit = await audit_of(handle)
    mine = [(a.by, a.action, a.accepted, a.via) for a in audit if a.action in ("pause", "resume")]
    assert mine == [
        ("pat", "pause", False, "update"),
        ("pat", "pause", True, "update"),
        ("quinn", "pause", False, "update"),
        ("pat", "resume", True, "update"),
    ]


async def test_resume_is_refused_when_not_paused_as_update_and_as_signal(
    client, worker, task_queue
):
    plan = make_plan([wait_step("long", 30)])
    handle = await start(client, plan, task_queue)
    await wait_for(handle, lambda s: s.steps[0].status == "running")
    assert "not paused" in await refused(handle, "resume", {"by": "rex"})
    await handle.signal("resume", {"by": "sigrid"})
    await handle.signal("pause", {"by": "sam", "step_id": "nope"})
    audit = await wait_audit(handle, lambda a: {"sigrid", "sam"} <= {e.by for e in a})
    sig = [a for a in audit if a.by in ("sigrid", "sam")]
    assert [(a.action, a.accepted, a.via) for a in sig] == [
        ("resume", False, "signal"),
        ("pause", False, "signal"),
    ]
    assert "not paused" in sig[0].detail and "no step 'nope'" in sig[1].detail
    assert (await status(handle)).status == "executing"  # the refusals broke nothing
    await update(handle, "cancel", {"by": "t", "reason": "cleanup"})
    assert (await result_within(handle)).status == "cancelled"


# --- pause with a question -------------------------------------------------


async def test_pause_with_a_question_answer_and_resume(client, worker, task_queue):
    k = key()
    plan = make_plan(
        [
            count_step("fetch", f"{k}-f", sleep_s=0.8),
            count_step("deploy", f"{k}-d", ["fetch"], value="{{ answer }}"),
        ]
    )
    handle = await start(client, plan, task_queue)
    await wait_for(handle, lambda s: step(s, "fetch").status == "running")
    assert "no question is waiting" in await refused(
        handle, "answer_clarification", {"by": "ops", "answer": "x"}
    )
    await update(
        handle,
        "pause",
        {"by": "ops", "reason": "unsure", "step_id": "deploy", "question": "Which region?"},
    )
    es = await exec_state(handle)
    assert es.state == "waiting_clarification"
    assert es.question == "Which region?" and es.step_id == "deploy"
    assert es.paused_at is not None
    st = await status(handle)
    assert st.waiting_for is not None and st.waiting_for.kind == "clarification"
    assert st.waiting_for.question == "Which region?" and "ops" in st.waiting_for.who

    st = await wait_for(handle, lambda s: step(s, "fetch").status == "completed")
    assert step(st, "deploy").status == "pending" and CALLS[f"{k}-d"] == 0

    r = await update(
        handle, "answer_clarification", {"by": "lead", "step_id": "deploy", "answer": "eu-west-1"}
    )
    assert r.accepted
    es = await exec_state(handle)
    assert es.state == "paused" and es.question is None  # answered; still paused
    await asyncio.sleep(0.3)
    assert CALLS[f"{k}-d"] == 0
    await update(handle, "resume", {"by": "ops"})
    res = await result_within(handle)
    assert res.status == "completed"
    st = await status(handle)
    assert step(st, "deploy").output["value"] == "eu-west-1"
    assert "Which region? -> eu-west-1" in st.feedback
    assert (await exec_state(handle)).state == "completed"


async def test_by_signals_resume_with_feedback_answers_the_question(client, worker, task_queue):
    k = key()
    plan = make_plan(
        [
            count_step("fetch", f"{k}-f", sleep_s=0.5),
            count_step("deploy", f"{k}-d", ["fetch"], value="{{ answer }}"),
        ]
    )
    handle = await start(client, plan, task_queue)
    await wait_for(handle, lambda s: step(s, "fetch").status == "running")
    await handle.signal("pause", {"by": "ops", "step_id": "deploy", "question": "Region?"})
    await wait_for(handle, lambda s: s.status == "waiting_clarification")
    await handle.signal("resume", {"by": "ops", "feedback": "us-east-2"})
    res = await result_within(handle)
    assert res.status == "completed"
    st = await status(handle)
    assert step(st, "deploy").output["value"] == "us-east-2"
    assert st.feedback == ["us-east-2"]
    audit = await audit_of(handle)
    assert [(a.action, a.accepted, a.via) for a in audit if a.by == "ops"] == [
        ("pause", True, "signal"),
        ("resume", True, "signal"),
    ]


async def test_answering_a_pause_question_releases_a_step_asking_for_the_same(
    client, worker, task_queue
):
    k = key()
    plan = make_plan(
        [
            count_step(
                "ask",
                k,
                requires_clarification=True,
                clarification_question="Which region?",
                value="{{ answer }}",
            )
        ]
    )
    handle = await start(client, plan, task_queue)
    await wait_for(handle, lambda s: step(s, "ask").status == "waiting_clarification")
    await update(handle, "pause", {"by": "ops", "step_id": "ask", "question": "Which region?"})
    await update(handle, "answer_clarification", {"by": "lead", "answer": "ap-south-1"})
    st = await status(handle)
    assert st.status == "paused" and step(st, "ask").status == "pending"
    await update(handle, "resume", {"by": "ops"})
    assert (await result_within(handle)).status == "completed"
    assert step(await status(handle), "ask").output["value"] == "ap-south-1"
    assert CALLS[k] == 1


# --- step gates ----------------------------------------------------------------------


async def test_step_gate_waits_while_independent_branch_runs_then_approve_step(
    client, worker, task_queue
):
    k = key()
    plan = make_plan(
        [
            count_step("gate", f"{k}-g", requires_approval=True, description="deploy to prod"),
            count_step("after-gate", f"{k}-ag", ["gate"]),
            count_step("side", f"{k}-s", sleep_s=0.2),
            count_step("side2", f"{k}-s2", ["side"]),
        ]
    )
    handle = await start(client, plan, task_queue)
    st = await wait_for(
        handle,
        lambda s: (
            step(s, "side2").status == "completed" and step(s, "gate").status == "waiting_approval"
        ),
    )
    assert st.status == "waiting_approval"
    assert st.waiting_for is not None and st.waiting_for.kind == "step_approval"
    assert st.waiting_for.step_id == "gate" and st.waiting_for.question == "deploy to prod"
    es = await exec_state(handle)
    assert (es.state, es.status) == ("paused", "waiting_approval") and es.step_id == "gate"
    assert CALLS[f"{k}-g"] == 0 and CALLS[f"{k}-ag"] == 0

    assert "not waiting for approval" in await refused(
        handle, "approve_step", {"by": "amy", "step_id": "side"}
    )
    assert "no step 'nope'" in await refused(
        handle, "approve_step", {"by": "amy", "step_id": "nope"}
    )
    await handle.signal("approve_step", {"by": "sig", "step_id": "side2"})
    r = await update(handle, "approve_step", {"by": "amy", "step_id": "gate", "comment": "go"})
    assert r.accepted
    res = await result_within(handle)
    assert res.status == "completed"
    assert CALLS[f"{k}-g"] == 1 and CALLS[f"{k}-ag"] == 1
    audit = await audit_of(handle)
    sig = [a for a in audit if a.by == "sig"]
    assert len(sig) == 1 and not sig[0].accepted and sig[0].via == "signal"
    assert "not waiting for approval" in sig[0].detail
    ok = [a for a in audit if a.by == "amy" and a.accepted]
    assert [(a.action, a.step_id) for a in ok] == [("approve_step", "gate")]


async def test_reject_step_skips_it_and_its_dependents(client, worker, task_queue):
    k = key()
    plan = make_plan(
        [
            count_step("gate", f"{k}-g", requires_approval=True),
            count_step("child", f"{k}-c", ["gate"]),
            count_step("side", f"{k}-s"),
        ]
    )
    handle = await start(client, plan, task_queue)
    await wait_for(handle, lambda s: step(s, "gate").status == "waiting_approval")
    with pytest.raises(WorkflowUpdateFailedError) as info:  # malformed: no reason
        await handle.execute_update("reject_step", {"by": "rob", "step_id": "gate"})
    assert info.value.cause.type == "InvalidControl" and "reason" in info.value.cause.message
    await update(handle, "reject_step", {"by": "rob", "step_id": "gate", "reason": "not today"})
    res = await result_within(handle)
    assert res.steps == {"gate": "skipped", "child": "skipped", "side": "completed"}
    assert res.status == "partial"
    st = await status(handle)
    assert step(st, "gate").skip_reason == "rejected"
    assert step(st, "gate").skip_detail == "rejected by rob: not today"
    assert step(st, "child").skip_reason == "upstream"
    assert CALLS[f"{k}-g"] == 0 and CALLS[f"{k}-c"] == 0


async def test_retry_step_reopens_a_rejected_gate_while_the_plan_runs(client, worker, task_queue):
    k = key()
    plan = make_plan(
        [
            count_step("g1", f"{k}-1", requires_approval=True),
            count_step("g2", f"{k}-2", requires_approval=True),
        ]
    )
    handle = await start(client, plan, task_queue)
    await wait_for(handle, lambda s: all(x.status == "waiting_approval" for x in s.steps))
    await update(handle, "reject_step", {"by": "rob", "step_id": "g1", "reason": "wrong"})
    assert step(await status(handle), "g1").status == "skipped"
    r = await update(handle, "retry_step", {"by": "rob", "step_id": "g1"})
    assert r.accepted
    await wait_for(handle, lambda s: step(s, "g1").status == "waiting_approval")
    assert CALLS[f"{k}-1"] == 0  # a retried gate asks again
    for sid in ("g1", "g2"):
        await update(handle, "approve_step", {"by": "amy", "step_id": sid})
    res = await result_within(handle)
    assert res.status == "completed" and CALLS[f"{k}-1"] == 1 and CALLS[f"{k}-2"] == 1


async def test_approval_kind_step_is_a_pure_gate(client, worker, task_queue):
    k = key()
    plan = make_plan(
        [
            {"id": "signoff", "kind": "approval", "description": "manager sign-off"},
            count_step("ship", k, ["signoff"]),
        ]
    )
    handle = await start(client, plan, task_queue)
    st = await wait_for(handle, lambda s: step(s, "signoff").status == "waiting_approval")
    assert st.waiting_for is not None and st.waiting_for.kind == "step_approval"
    assert CALLS[k] == 0
    assert "not waiting for approval" in await refused(
        handle, "reject_step", {"by": "mgr", "step_id": "ship", "reason": "x"}
    )
    await handle.signal("approve_step", {"by": "mgr", "step_id": "signoff"})
    res = await result_within(handle)
    assert res.status == "completed"
    st = await status(handle)
    assert step(st, "signoff").output == {"approved_by": "mgr"}
    assert step(st, "signoff").attempts == 0  # no activity ran for the gate itself
    assert CALLS[k] == 1


async def test_clarification_step_asks_and_runs_with_the_answer(client, worker, task_queue):
    k = key()
    plan = make_plan(
        [
            {
                "id": "ask",
                "tool": "people_probe",
                "params": {"key": k, "value": "{{ answer }}"},
                "requires_clarification": True,
                "clarification_question": "Which environment?",
            },
            count_step("other", f"{k}-o"),
        ]
    )
    handle = await start(client, plan, task_queue)
    st = await wait_for(handle, lambda s: step(s, "ask").status == "waiting_clarification")
    assert st.status == "waiting_clarification"
    es = await exec_state(handle)
    assert es.state == "waiting_clarification"
    assert es.step_id == "ask" and es.question == "Which environment?"
    assert PROBES[k] == []
    assert "not waiting for an answer" in await refused(
        handle, "answer_clarification", {"by": "dev", "step_id": "other", "answer": "x"}
    )
    await handle.signal(
        "answer_clarification", {"by": "dev", "step_id": "ask", "answer": "staging"}
    )
    res = await result_within(handle)
    assert res.status == "completed"
    st = await status(handle)
    assert step(st, "ask").output["value"] == "staging"
    assert len(PROBES[k]) == 1 and PROBES[k][0]["extra"]["answer"] == "staging"


# --- corrections ---------------------------------------------------------------------


async def test_correction_of_a_waiting_gate_changes_the_input_and_stale_approve_is_refused(
    client, worker, task_queue
):
    k = key()
    plan = make_plan(
        [
            count_step("done", f"{k}-d"),
            count_step("gate", f"{k}-g", requires_approval=True, value="old"),
        ]
    )
    handle = await start(client, plan, task_queue)
    await wait_for(
        handle,
        lambda s: (
            step(s, "gate").status == "waiting_approval" and step(s, "done").status == "completed"
        ),
    )
    # refused corrections
    assert "only steps not completed or running" in await refused(
        handle,
        "apply_correction",
        {"by": "cora", "step_id": "done", "correction": {"updated_step": {"description": "x"}}},
    )
    assert "unknown tool" in await refused(
        handle,
        "apply_correction",
        {"by": "cora", "step_id": "gate", "correction": {"updated_step": {"tool": "nope"}}},
    )
    assert "depends on itself" in await refused(
        handle,
        "apply_correction",
        {"by": "cora", "step_id": "gate", "correction": {"updated_step": {"depends_on": ["gate"]}}},
    )
    assert "cannot change a step's id" in await refused(
        handle,
        "apply_correction",
        {"by": "cora", "step_id": "gate", "correction": {"updated_step": {"id": "other"}}},
    )
    assert (await status(handle)).version == 1

    r = await update(
        handle,
        "apply_correction",
        {
            "by": "cora",
            "step_id": "gate",
            "correction": {"updated_step": {"params": {"value": "new"}}},
        },
    )
    assert r.accepted and r.version == 2
    st = await status(handle)
    assert st.version == 2 and step(st, "gate").version == 2
    assert step(st, "gate").status == "waiting_approval"
    pv = await handle.query("plan", result_type=PlanView)
    assert pv.version == 2
    assert pv.plan.step("gate").params == {"key": f"{k}-g", "value": "new"}  # merge patch
    assert [v["version"] for v in pv.versions] == [1, 2]
    assert pv.versions[1]["by"] == "cora" and pv.versions[1]["step_id"] == "gate"
    assert "params" in pv.versions[1]["change"]
    state = await handle.query("run_state", result_type=PlanRun)
    assert [v.version for v in state.versions] == [1, 2]
    assert state.versions[1].diff == {
        "gate": {
            "params": {"old": {"key": f"{k}-g", "value": "old"}, "new": pv.plan.step("gate").params}
        }
    }

    assert "stale decision for step version 1" in await refused(
        handle, "approve_step", {"by": "amy", "step_id": "gate", "version": 1}
    )
    await update(handle, "approve_step", {"by": "amy", "step_id": "gate", "version": 2})
    res = await result_within(handle)
    assert res.status == "completed" and res.version == 2
    st = await status(handle)
    assert step(st, "gate").output["value"] == "new"
    assert CALLS[f"{k}-g"] == 1
    audit = await audit_of(handle)
    corr = [a for a in audit if a.action == "apply_correction"]
    assert [a.accepted for a in corr] == [False, False, False, False, True]
    assert corr[-1].by == "cora" and corr[-1].step_id == "gate"


async def test_correction_lapses_an_earlier_step_approval(client, worker, task_queue):
    k = key()
    plan = make_plan([count_step("gate", k, requires_approval=True, value="v1")])
    handle = await start(client, plan, task_queue)
    await wait_for(handle, lambda s: step(s, "gate").status == "waiting_approval")
    await update(handle, "pause", {"by": "pat"})
    await update(handle, "approve_step", {"by": "amy", "step_id": "gate"})
    st = await status(handle)
    assert step(st, "gate").status == "pending"  # approved, but paused: does not start
    await update(
        handle,
        "apply_correction",
        {
            "by": "cora",
            "step_id": "gate",
            "correction": {"updated_step": {"params": {"value": "v2"}}},
        },
    )
    await update(handle, "resume", {"by": "pat"})
    st = await wait_for(handle, lambda s: step(s, "gate").status == "waiting_approval")
    assert st.status == "waiting_approval" and step(st, "gate").version == 2
    await asyncio.sleep(0.3)
    assert CALLS[k] == 0  # amy's approval of version 1 lapsed
    await update(handle, "approve_step", {"by": "amy", "step_id": "gate", "version": 2})
    assert (await result_within(handle)).status == "completed"
    assert step(await status(handle), "gate").output["value"] == "v2"


async def test_plan_approval_with_an_old_version_is_refused_after_a_correction(
    client, worker, task_queue
):
    k = key()
    plan = make_plan([count_step("a", k, value="v1")], require_approval=True)
    handle = await start(client, plan, task_queue)
    st = await wait_for(handle, lambda s: s.status == "pending_approval")
    assert st.version == 1
    r = await update(
        handle,
        "apply_correction",
        {"by": "cora", "step_id": "a", "correction": {"updated_step": {"params": {"value": "v2"}}}},
    )
    assert r.version == 2 and r.status == "pending_approval"
    assert "stale approval for version 1" in await refused(
        handle, "approve", {"by": "ann", "version": 1}
    )
    await handle.signal("approve", {"by": "sig-ann", "version": 1})
    await asyncio.sleep(0.3)
    assert (await status(handle)).status == "pending_approval" and CALLS[k] == 0
    await update(handle, "approve", {"by": "ann", "version": 2})
    res = await result_within(handle)
    assert res.status == "completed"
    assert step(await status(handle), "a").output["value"] == "v2"
    audit = await audit_of(handle)
    approvals = [(a.by, a.accepted, a.version) for a in audit if a.action == "approve"]
    assert approvals == [("ann", False, 2), ("sig-ann", False, 2), ("ann", True, 2)]


async def test_correction_versions_carry_a_field_diff(client, worker, task_queue):
    k = key()
    plan = make_plan([count_step("gate", k, requires_approval=True, value="old")])
    handle = await start(client, plan, task_queue)
    await wait_for(handle, lambda s: step(s, "gate").status == "waiting_approval")
    await update(
        handle,
        "apply_correction",
        {
            "by": "cora",
            "step_id": "gate",
            "correction": {"updated_step": {"params": {"value": "new"}, "description": "fixed"}},
        },
    )
    pv = await handle.query("plan", result_type=PlanView)
    assert pv.versions[1]["diff"] == {
        "gate": {
            "description": {"old": "", "new": "fixed"},
            "params": {"old": {"key": k, "value": "old"}, "new": {"key": k, "value": "new"}},
        }
    }
    await update(handle, "cancel", {"by": "t", "reason": "cleanup"})
    await result_within(handle)


# --- on_error=ask --------------------------------------------------------------------


async def test_on_error_ask_waits_for_correction_then_retry_completes(client, worker, task_queue):
    k = key()
    plan = make_plan(
        [
            {"id": "bad", "tool": "boom", "params": {"key": f"{k}-b", "permanent": True}},
            count_step("after", f"{k}-a", ["bad"]),
        ],
        on_error="ask",
    )
    handle = await start(client, plan, task_queue)
    st = await wait_for(handle, lambda s: s.status == "waiting_correction")
    assert st.waiting_for is not None and st.waiting_for.kind == "correction"
    assert st.waiting_for.step_id == "bad" and "boom" in (st.waiting_for.question or "")
    assert (await exec_state(handle)).state == "waiting_correction"
    assert step(st, "after").status == "pending"  # waits for the decision, not skipped
    assert "only failed, skipped or cancelled" in await refused(
        handle, "retry_step", {"by": "rae", "step_id": "after"}
    )
    r = await update(
        handle,
        "apply_correction",
        {
            "by": "cora",
            "step_id": "bad",
            "correction": {
                "updated_step": {"tool": "count", "params": {"key": f"{k}-fix", "value": "ok"}}
            },
        },
    )
    assert r.version == 2 and r.status == "waiting_correction"  # still waits for a retry
    assert "waits for a person to approve the change" in r.detail
    await update(handle, "retry_step", {"by": "rae", "step_id": "bad"})
    # the plan was approved at version 1: the changed step waits for a person, with the diff
    st = await wait_for(handle, lambda s: step(s, "bad").status == "waiting_approval")
    assert st.waiting_for is not None and st.waiting_for.kind == "step_approval"
    assert "changed after the plan was approved" in (st.waiting_for.question or "")
    assert st.waiting_for.change["tool"] == {"old": "boom", "new": "count"}
    assert CALLS.get(f"{k}-fix", 0) == 0
    await update(handle, "approve_step", {"by": "rae", "step_id": "bad", "version": 2})
    res = await result_within(handle)
    assert res.status == "completed" and res.version == 2
    assert res.steps == {"bad": "completed", "after": "completed"}
    assert CALLS[f"{k}-b"] == 1 and CALLS[f"{k}-fix"] == 1 and CALLS[f"{k}-a"] == 1
    st = await status(handle)
    assert step(st, "bad").output["value"] == "ok"


async def test_on_error_ask_skip_step_ends_partial_and_dependents_go_on(client, worker, task_queue):
    k = key()
    plan = make_plan(
        [
            {"id": "bad", "tool": "boom", "params": {"key": f"{k}-b", "permanent": True}},
            count_step("child", f"{k}-c", ["bad"]),
            count_step("side", f"{k}-s"),
        ],
        on_error="ask",
    )
    handle = await start(client, plan, task_queue)
    await wait_for(
        handle,
        lambda s: s.status == "waiting_correction" and step(s, "side").status == "completed",
    )
    assert "only failed, waiting or pending" in await refused(
        handle, "skip_step", {"by": "sam", "step_id": "side", "reason": "x"}
    )
    await handle.signal("skip_step", {"by": "sam", "step_id": "bad", "reason": "not needed"})
    res = await result_within(handle)
    assert res.status == "partial"
    assert res.steps == {"bad": "skipped", "child": "completed", "side": "completed"}
    st = await status(handle)
    assert step(st, "bad").skip_reason == "operator"
    assert "bad" in (st.outcome or "")


async def test_on_error_ask_cancel_ends_cancelled(client, worker, task_queue):
    k = key()
    plan = make_plan(
        [{"id": "bad", "tool": "boom", "params": {"key": k, "permanent": True}}],
        on_error="ask",
    )
    handle = await start(client, plan, task_queue)
    await wait_for(handle, lambda s: s.status == "waiting_correction")
    await update(handle, "cancel", {"by": "cal", "reason": "give up"})
    res = await result_within(handle)
    assert res.status == "cancelled" and "give up" in (res.outcome or "")


async def test_idempotency_key_is_stable_across_retries_and_changed_by_a_correction(
    client, worker, task_queue
):
    k = key()
    plan = make_plan(
        [
            {
                "id": "p",
                "tool": "people_probe",
                "params": {"key": k, "fail_times": 2},
                "max_retries": 1,
                "retry_delay_s": 0.05,
            }
        ],
        on_error="ask",
    )
    first = request_key(plan.id or "", "p", StepKind.TOOL, "people_probe", plan.steps[0].params)
    handle = await start(client, plan, task_queue)
    await wait_for(handle, lambda s: s.status == "waiting_correction")
    assert [(p["idempotency_key"], p["attempt"]) for p in PROBES[k]] == [
        (first, 1),
        (first, 2),
    ]
    await update(
        handle,
        "apply_correction",
        {
            "by": "cora",
            "step_id": "p",
            "correction": {"updated_step": {"params": {"fail_times": 0}}},
            "approve": True,  # corrected and approved at once
        },
    )
    await update(handle, "retry_step", {"by": "rae", "step_id": "p"})
    assert (await result_within(handle)).status == "completed"
    corrected = {"key": k, "fail_times": 0}
    assert PROBES[k][-1]["idempotency_key"] == request_key(
        plan.id or "", "p", StepKind.TOOL, "people_probe", corrected
    )
    assert PROBES[k][-1]["idempotency_key"] != first  # the request changed: a new key
    assert len(PROBES[k]) == 3


# --- live retry ----------------------------------------------------------------------


async def test_live_retry_of_a_failed_step_while_another_branch_runs(client, worker, task_queue):
    k = key()
    plan = make_plan(
        [
            {"id": "bad", "tool": "flaky", "params": {"key": f"{k}-f", "failures": 1}},
            count_step("child", f"{k}-c", ["bad"]),
            wait_step("slow", 3),
        ],
        on_error="continue",
    )
    handle = await start(client, plan, task_queue)
    st = await wait_for(
        handle,
        lambda s: step(s, "bad").status == "failed" and step(s, "child").status == "skipped",
    )
    assert step(st, "slow").status == "running"
    assert "slow is running" in await refused(
        handle, "retry_step", {"by": "rae", "step_id": "slow"}
    )
    assert "only steps not completed or running" in await refused(
        handle,
        "apply_correction",
        {"by": "cora", "step_id": "slow", "correction": {"updated_step": {"timeout_s": 10}}},
    )
    r = await update(handle, "retry_step", {"by": "rae", "step_id": "bad"})
    assert "with 1 dependent(s)" in r.detail
    st = await wait_for(handle, lambda s: step(s, "child").status == "completed")
    assert step(st, "slow").status == "running"  # the other branch went on meanwhile
    res = await result_within(handle)
    assert res.status == "completed"
    assert res.steps == {"bad": "completed", "child": "completed", "slow": "completed"}
    assert CALLS[f"{k}-f"] == 2 and CALLS[f"{k}-c"] == 1


# --- resume from failure -------------------------------------------------------------


@pytest.mark.parametrize("cancelled_by", ["temporal", "update"])
async def test_cancel_mid_run_then_resume_from_failure_never_reruns_completed_steps(
    client, worker, task_queue, cancelled_by
):
    """Cancelled through Temporal (no workflow code decides) or by the cancel update, the
    plan resumes from failure with its completed steps carried, not run again."""
    k = key()
    plan = make_plan(
        [
            count_step("a", f"{k}-a"),
            count_step("b", f"{k}-b", ["a"]),
            wait_step("c", 2, ["b"]),
            count_step("d", f"{k}-d", ["c"]),
        ]
    )
    handle = await start(client, plan, task_queue)
    await wait_for(handle, lambda s: step(s, "c").status == "running")
    with pytest.raises(ResumeRefused, match="still running"):
        await resume_from_failure(client, plan.id, by="rita", task_queue=task_queue)
    if cancelled_by == "temporal":
        await handle.cancel()
        with pytest.raises(WorkflowFailureError):
            await result_within(handle)
    else:
        await update(handle, "cancel", {"by": "carl", "reason": "maintenance"})
        assert (await result_within(handle)).status == "cancelled"
    st = await status(handle)
    assert st.status == "cancelled"
    assert {s.id: s.status for s in st.steps} == {
        "a": "completed",
        "b": "completed",
        "c": "cancelled",
        "d": "cancelled",
    }

    handle2, carried = await resume_from_failure(client, plan.id, by="rita", task_queue=task_queue)
    assert carried == 2
    res2 = await result_within(handle2)
    assert res2.status == "completed"
    assert set(res2.steps.values()) == {"completed"}
    assert CALLS[f"{k}-a"] == 1 and CALLS[f"{k}-b"] == 1 and CALLS[f"{k}-d"] == 1
    audit = await audit_of(handle2)
    resumed = [a for a in audit if a.action == "resume_from_failure"]
    assert len(resumed) == 1 and resumed[0].by == "rita" and resumed[0].accepted
    assert "2 completed step(s)" in resumed[0].detail
    state = await handle2.query("run_state", result_type=PlanRun)
    assert state.steps["a"].carried and state.steps["b"].carried
    assert not state.steps["c"].carried and state.steps["c"].runs == 1
    assert not any(a.action == "cancel" for a in audit)  # a new run, a fresh audit
    with pytest.raises(ResumeRefused, match="ended completed"):
        await resume_from_failure(client, plan.id, by="rita", task_queue=task_queue)


async def test_resume_from_failure_of_a_partial_plan(client, worker, task_queue):
    k = key()
    plan = make_plan(
        [
            {"id": "bad", "tool": "flaky", "params": {"key": f"{k}-f", "failures": 1}},
            count_step("ok", f"{k}-ok"),
        ],
        on_error="continue",
    )
    handle = await start(client, plan, task_queue)
    assert (await result_within(handle)).status == "partial"
    handle2, carried = await resume_from_failure(client, plan.id, by="rita", task_queue=task_queue)
    assert carried == 1
    assert (await result_within(handle2)).status == "completed"
    assert CALLS[f"{k}-ok"] == 1 and CALLS[f"{k}-f"] == 2


async def test_resume_from_failure_runs_an_unchanged_step_under_the_same_idempotency_key(
    client, worker, task_queue
):
    k = key()
    plan = make_plan(
        [
            count_step("a", f"{k}-a"),
            {"id": "p", "tool": "people_probe", "params": {"key": k, "fail_times": 1}},
        ],
        on_error="continue",
    )
    handle = await start(client, plan, task_queue)
    assert (await result_within(handle)).status == "partial"
    handle2, carried = await resume_from_failure(client, plan.id, by="rita", task_queue=task_queue)
    assert carried == 1
    assert (await result_within(handle2)).status == "completed"
    keys = [p["idempotency_key"] for p in PROBES[k]]
    # the same logical request: a server that saw it once does not repeat its effect
    params = {"key": k, "fail_times": 1}
    assert keys == [request_key(plan.id or "", "p", StepKind.TOOL, "people_probe", params)] * 2
    assert CALLS[f"{k}-a"] == 1


# --- continue-as-new -----------------------------------------------------------------


async def test_continue_as_new_carries_the_whole_state(client, worker, task_queue):
    k = key()
    n = 30
    steps = [count_step("s0", f"{k}-0")]
    steps += [count_step(f"s{i}", f"{k}-{i}", [f"s{i - 1}"]) for i in range(1, n)]
    plan = make_plan(steps)
    handle = await start(client, plan, task_queue, max_history_events=60)

    async def poke(i: int) -> None:  # controls arriving across the runs are all kept
        await asyncio.sleep(0.05 * i)
        await handle.signal("resume", {"by": f"can-{i}"})  # refused: not paused

    await asyncio.gather(*(poke(i) for i in range(10)))
    res = await result_within(handle, 40)
    assert res.status == "completed"
    assert all(CALLS[f"{k}-{i}"] == 1 for i in range(n)), [CALLS[f"{k}-{i}"] for i in range(n)]
    latest = client.get_workflow_handle(plan.workflow_id)
    desc = await latest.describe()
    assert desc.run_id != handle.first_execution_run_id  # more than one run in the chain
    st = await status(latest)
    assert st.status == "completed" and st.progress == 1.0
    assert [s.status for s in st.steps] == ["completed"] * n
    logs = await latest.query("logs", LogsQuery(limit=1000), result_type=list[LogEntry])
    assert any("continuing as new" in e.message for e in logs)
    # a watcher reading the changes from the start misses none across the runs
    seen = await latest.query("changes", ChangesQuery(since=0), result_type=ChangesView)
    assert seen.complete and [c.seq for c in seen.changes] == list(range(1, seen.seq + 1))
    done = [c.step_id for c in seen.changes if c.status == "completed"]
    assert sorted(done) == sorted(f"s{i}" for i in range(n))
    assert sum(1 for e in logs if e.message == "plan execution started") == 1
    audit = await audit_of(latest)
    pokes = [a.by for a in audit if a.by.startswith("can-")]
    assert sorted(pokes) == sorted(f"can-{i}" for i in range(10))
    assert all(not a.accepted for a in audit if a.by.startswith("can-"))
    runs = []
    for _ in range(50):
        runs = [w.run_id async for w in client.list_workflows(f"WorkflowId = '{handle.id}'")]
        if len(runs) > 1:
            break
        await asyncio.sleep(0.2)
    assert len(runs) > 1


# --- search attributes ---------------------------------------------------------------


async def _visible(client, query: str, timeout: float = 10.0) -> list[str]:
    found: list[str] = []
    deadline = asyncio.get_running_loop().time() + timeout
    while asyncio.get_running_loop().time() < deadline:
        found = [w.id async for w in client.list_workflows(query)]
        if found:
            break
        await asyncio.sleep(0.2)
    return found


async def test_search_attributes_find_a_plan_waiting_at_a_gate(client, worker, task_queue):
    plan = make_plan([count_step("gate", key(), requires_approval=True)])
    handle = await start(client, plan, task_queue)
    await wait_for(handle, lambda s: s.status == "waiting_approval")
    wid = handle.id
    assert await _visible(client, f"WaitingFor = 'step_approval' AND WorkflowId = '{wid}'") == [wid]
    assert await _visible(client, f"PlanStatus = 'waiting_approval' AND WorkflowId = '{wid}'") == [
        wid
    ]
    await update(handle, "approve_step", {"by": "amy", "step_id": "gate"})
    assert (await result_within(handle)).status == "completed"
    assert await _visible(
        client, f"PlanStatus = 'completed' AND WaitingFor = 'none' AND WorkflowId = '{wid}'"
    ) == [wid]


# --- storms of conflicting controls --------------------------------------------------


def _storm_controls(n: int) -> list[tuple[str, dict[str, Any]]]:
    kinds: list[tuple[str, dict[str, Any]]] = [
        ("approve", {}),
        ("pause", {"reason": "storm"}),
        ("resume", {"feedback": "go"}),
        ("cancel", {"reason": "storm"}),
        ("approve_step", {"step_id": "gate"}),
        ("reject_step", {"step_id": "gate", "reason": "storm"}),
        ("pause", {"question": "really?", "step_id": "gate"}),
        ("answer_clarification", {"answer": "yes"}),
        ("retry_step", {"step_id": "gate"}),
        ("skip_step", {"step_id": "gate", "reason": "storm"}),
        (
            "apply_correction",
            {"step_id": "gate", "correction": {"updated_step": {"params": {"value": "s"}}}},
        ),
        ("reject", {"reason": "storm"}),
    ]
    return [kinds[i % len(kinds)] for i in range(n)]


async def _storm(handle: WorkflowHandle, n: int, tag: str) -> dict[str, tuple[str, str, Any]]:
    """Fire ``n`` controls at once, even ones as signals, odd ones as updates.

    Returns by -> (name, via, outcome) with outcome True (update accepted), False
    (update refused with a reason), None (signal delivered) or the exception."""

    async def send(i: int, name: str, arg: dict[str, Any]) -> tuple[str, tuple[str, str, Any]]:
        by = f"{tag}-{i}"
        payload = {"by": by, **arg}
        try:
            if i % 2 == 0:
                await handle.signal(name, payload)
                return by, (name, "signal", None)
            await handle.execute_update(name, payload)
            return by, (name, "update", True)
        except WorkflowUpdateFailedError as e:
            if isinstance(e.cause, ApplicationError) and e.cause.type == "TransitionRefused":
                return by, (name, "update", False)
            return by, (name, "update", e)
        except Exception as e:  # reported by the test
            return by, (name, "signal" if i % 2 == 0 else "update", e)

    sent = await asyncio.gather(
        *(send(i, name, arg) for i, (name, arg) in enumerate(_storm_controls(n)))
    )
    return dict(sent)


def _check_audit(audit: list[AuditEntry], sent: dict[str, tuple[str, str, Any]]) -> None:
    by_actor: dict[str, list[AuditEntry]] = defaultdict(list)
    for a in audit:
        by_actor[a.by].append(a)
    for by, (name, via, outcome) in sent.items():
        entries = by_actor.get(by, [])
        assert len(entries) == 1, (by, name, via, outcome, entries)
        e = entries[0]
        assert e.action == name and e.via == via, (by, e)
        if outcome is True:
            assert e.accepted, (by, e)
        elif outcome is False:
            assert not e.accepted and e.detail, (by, e)


async def _task_failures(handle: WorkflowHandle) -> list[Any]:
    """Workflow task failures, but for UnhandledCommand (the server asking the workflow to
    look at signals that came in while it was completing: normal, not a crash)."""
    return [
        e
        async for e in handle.fetch_history_events()
        if e.event_type == EventType.EVENT_TYPE_WORKFLOW_TASK_FAILED
        and e.workflow_task_failed_event_attributes.cause
        != WorkflowTaskFailedCause.WORKFLOW_TASK_FAILED_CAUSE_UNHANDLED_COMMAND
    ]


def _closed_errors(sent: dict[str, tuple[str, str, Any]]) -> set[str]:
    """Controls the server turned away because the run had closed; the sender was told.

    Temporal aborts an update still queued when a workflow run closes; such an update
    never reaches the workflow, so it cannot be in its audit trail."""
    out = set()
    for by, (_, _, outcome) in sent.items():
        if isinstance(outcome, BaseException):
            assert isinstance(outcome, RPCError), (by, outcome)
            assert "completed" in outcome.message or "clos" in outcome.message, (by, outcome)
            out.add(by)
    return out


async def test_storm_of_50_controls_on_a_running_plan(client, worker, task_queue):
    k = key()
    plan = make_plan(
        [
            wait_step("long", 30),
            count_step("gate", f"{k}-g", requires_approval=True, value="v"),
            count_step("after", f"{k}-a", ["gate"]),
        ]
    )
    handle = await start(client, plan, task_queue)
    await wait_for(
        handle,
        lambda s: (
            step(s, "long").status == "running" and step(s, "gate").status == "waiting_approval"
        ),
    )
    sent = await _storm(handle, 50, "storm")
    closed = _closed_errors(sent)
    assert not [by for by in closed if sent[by][1] == "signal"]  # every signal got in
    res = await result_within(handle, 15)
    assert res.status == "cancelled"
    assert res.steps["long"] == "cancelled"
    audit = await audit_of(handle)
    delivered = {by: v for by, v in sent.items() if by not in closed}
    _check_audit(audit, delivered)
    assert not [a for a in audit if a.by in closed]
    assert len([a for a in audit if a.by.startswith("storm-")]) == len(delivered)
    assert len(delivered) >= 40
    cancels = [a for a in audit if a.action == "cancel" and a.accepted]
    assert len(cancels) == 1
    assert await _task_failures(handle) == []  # nothing crashed on the way
    st = await status(handle)
    assert st.status == "cancelled" and st.waiting_for is None


async def test_storm_of_50_controls_on_a_plan_pending_approval(client, worker, task_queue):
    k = key()
    plan = make_plan(
        [
            # long enough that the whole storm lands before the plan could end by itself,
            # however slowly a busy machine delivers it
            count_step("first", f"{k}-f", sleep_s=5),
            count_step("gate", f"{k}-g", ["first"], requires_approval=True),
        ],
        require_approval=True,
    )
    handle = await start(client, plan, task_queue)
    await wait_for(handle, lambda s: s.status == "pending_approval")
    sent = await _storm(handle, 50, "pstorm")
    closed = _closed_errors(sent)
    res = await result_within(handle, 15)
    assert res.status in ("cancelled", "rejected")
    audit = await audit_of(handle)
    delivered = {by: v for by, v in sent.items() if by not in closed}
    _check_audit(audit, delivered)
    assert not [a for a in audit if a.by in closed]
    assert len([a for a in audit if a.by.startswith("pstorm-")]) == len(delivered)
    ends = [a for a in audit if a.action in ("cancel", "reject") and a.accepted]
    assert len(ends) == 1
    assert await _task_failures(handle) == []


async def test_paused_status_says_why(client, worker, task_queue):
    plan = make_plan([wait_step("long", 30)])
    handle = await start(client, plan, task_queue)
    await wait_for(handle, lambda s: s.steps[0].status == "running")
    await update(handle, "pause", {"by": "pat", "reason": "waiting for the change window"})
    st = await status(handle)
    assert st.status == "paused" and st.paused_by == "pat"
    assert "waiting for the change window" in st.model_dump_json()
    await update(handle, "cancel", {"by": "t", "reason": "cleanup"})
    assert (await result_within(handle)).status == "cancelled"


async def test_execution_state_question_when_a_gate_waits_longer_than_the_pause(
    client, worker, task_queue
):
    from plans.views import ExecutionState

    plan = make_plan([count_step("gate", key(), requires_approval=True)])
    handle = await start(client, plan, task_queue)
    await wait_for(handle, lambda s: step(s, "gate").status == "waiting_approval")
    await update(handle, "pause", {"by": "ops", "question": "Is it safe?"})
    es = await handle.query("execution_state", result_type=ExecutionState)
    st = await status(handle)
    try:
        assert es.state == "waiting_clarification"
        assert es.question == "Is it safe?", es
        assert st.waiting_for is not None and st.waiting_for.kind == "clarification", st.waiting_for
    finally:
        await update(handle, "cancel", {"by": "t", "reason": "cleanup"})


async def test_resumed_run_keeps_the_plan_version_of_the_corrected_document(
    client, worker, task_queue
):
    from temporalio.client import WorkflowUpdateFailedError

    k = key()
    plan = make_plan(
        [{"id": "p", "tool": "boom", "params": {"key": k, "permanent": True}}],
        on_error="ask",
        require_approval=True,
    )
    handle = await start(client, plan, task_queue)
    await wait_for(handle, lambda s: s.status == "pending_approval")
    await update(handle, "approve", {"by": "ann", "version": 1})
    await wait_for(handle, lambda s: s.status == "waiting_correction")
    correction = {"updated_step": {"tool": "count", "params": {"key": k}}}
    r = await update(
        handle, "apply_correction", {"by": "cora", "step_id": "p", "correction": correction}
    )
    assert r.version == 2
    await update(handle, "cancel", {"by": "carl", "reason": "later"})
    await result_within(handle)
    handle2, _ = await resume_from_failure(client, plan.id, by="rita", task_queue=task_queue)
    st = await wait_for(handle2, lambda s: s.status == "pending_approval")
    try:
        assert st.version == 2, st.version  # the document is the corrected version 2
        await update(handle2, "approve", {"by": "ann", "version": 2})
    except WorkflowUpdateFailedError as e:
        raise AssertionError(e.cause.message) from None
    finally:
        await handle2.signal("cancel", {"by": "t", "reason": "cleanup"})


async def test_continue_as_new_while_pending_approval_does_not_start_the_plan(
    client, worker, task_queue
):
    k = key()
    plan = make_plan([count_step("a", k)], require_approval=True)
    handle = await start(client, plan, task_queue, max_history_events=50)
    await wait_for(handle, lambda s: s.status == "pending_approval")
    for i in range(30):  # refused controls grow the history past 50 events
        await handle.signal("resume", {"by": f"r-{i}"})
    latest = client.get_workflow_handle(plan.workflow_id, result_type=PlanResult)
    for _ in range(100):
        if (await latest.describe()).run_id != handle.first_execution_run_id:
            break
        await asyncio.sleep(0.1)
    assert (await latest.describe()).run_id != handle.first_execution_run_id
    st = await status(latest)
    assert st.status == "pending_approval"
    assert st.started_at is None, st.started_at  # nothing has started: it is not approved
    await latest.signal("approve", {"by": "ann"})
    assert (await result_within(latest)).status == "completed"
    assert CALLS[k] == 1

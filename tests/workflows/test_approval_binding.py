"""Approvals are bound to content, on a real workflow: after alice approved version 1, a
correction (by update, or by signal as `temporal workflow signal` sends it) that turns a
harmless step into an HTTP POST waits for a person; the server it would call sees nothing
until a person approves version 2 of that step."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime
from typing import Any

import pytest
from temporalio.client import WorkflowHandle

from plans.controls import ControlResult
from plans.run_state import Approval
from tests.helpers import make_plan, start, status, wait_for
from tests.key_server import KeyServer
from workflows.starter import resume_from_failure


def _step(st: Any, sid: str) -> Any:
    return next(s for s in st.steps if s.id == sid)


async def _send(handle: WorkflowHandle, how: str, name: str, arg: dict[str, Any]) -> None:
    if how == "update":
        await handle.execute_update(name, arg, result_type=ControlResult)
    else:
        await handle.signal(name, arg)


@pytest.mark.parametrize("how", ["update", "signal"])
async def test_a_step_changed_after_approval_runs_only_after_a_person_approves_the_change(
    client, worker, task_queue, how
):
    with KeyServer() as srv:
        plan = make_plan(
            [
                {"id": "first", "tool": "wait", "params": {"seconds": 1.0}},
                {
                    "id": "deploy",
                    "tool": "wait",
                    "params": {"seconds": 0.01},
                    "depends_on": ["first"],
                },
            ],
            require_approval=True,
        )
        handle = await start(client, plan, task_queue)
        await wait_for(handle, lambda s: s.status == "pending_approval")
        await _send(handle, how, "approve", {"by": "alice", "version": 1})
        await wait_for(handle, lambda s: _step(s, "first").status == "running")
        target = srv.url("/prod-deploy?env=production")
        change = {"tool": "http_request", "params": {"url": target, "method": "POST"}}
        await _send(
            handle,
            how,
            "apply_correction",
            {"by": "bot", "step_id": "deploy", "correction": {"updated_step": change}},
        )
        st = await wait_for(handle, lambda s: _step(s, "deploy").status == "waiting_approval")
        assert st.version == 2 and st.approved_by == "alice" and st.approved_version == 1
        wait = next(w for w in st.waiting if w.step_id == "deploy")
        assert wait.kind == "step_approval"
        assert "changed after the plan was approved" in (wait.question or "")
        assert wait.change is not None
        assert wait.change["tool"] == {"old": "wait", "new": "http_request"}
        assert wait.change["params"]["new"]["url"] == target
        await asyncio.sleep(0.5)
        assert srv.seen == [], "the changed step must not run before a person approves it"
        assert _step(await status(handle), "deploy").status == "waiting_approval"

        await _send(handle, how, "approve_step", {"by": "carol", "step_id": "deploy", "version": 2})
        res = await asyncio.wait_for(handle.result(), timeout=20)
        assert res.status == "completed"
        assert [(m, p) for m, p, _ in srv.seen] == [("POST", "/prod-deploy")]
        audit = await handle.query("audit")
        approvals = [e for e in audit if e["action"] == "approve_step" and e["accepted"]]
        assert [e["by"] for e in approvals] == ["carol"]


async def test_an_approval_given_before_the_run_counts_only_for_the_document_it_saw(
    client, worker, task_queue
):
    plan = make_plan([{"id": "a", "tool": "wait", "params": {"seconds": 0}}], require_approval=True)
    other = make_plan([{"id": "a", "tool": "wait", "params": {"seconds": 5}}])
    seen = Approval(by="carol", at=datetime.now(UTC), version=1, digest=other.digest())
    handle = await start(client, plan, task_queue, approval=seen)
    st = await wait_for(handle, lambda s: s.status == "pending_approval")
    assert st.approved_by is None
    audit = await handle.query("audit")
    (refusal,) = [e for e in audit if e["action"] == "approve"]
    assert refusal["by"] == "carol" and refusal["accepted"] is False
    assert "waits for approval again" in refusal["detail"]

    same = make_plan([{"id": "a", "tool": "wait", "params": {"seconds": 0}}], require_approval=True)
    good = Approval(by="carol", at=datetime.now(UTC), version=1, digest=same.digest())
    res = await (await start(client, same, task_queue, approval=good)).result()
    assert res.status == "completed"


async def test_a_change_nobody_approved_still_waits_after_resume_from_failure(
    client, worker, task_queue
):
    """No person approved the plan (require_approval false: the policy did); the bot
    turns a pending step into a POST, which waits for a person; an operator cancels and
    later resumes the plan from failure. The new run must not run the change unasked:
    resuming is not approving it (a person's approve_step still is)."""
    with KeyServer() as srv:
        plan = make_plan(
            [
                {"id": "first", "tool": "wait", "params": {"seconds": 1.0}},
                {"id": "deploy", "tool": "wait", "params": {"seconds": 0}, "depends_on": ["first"]},
            ]
        )
        handle = await start(client, plan, task_queue)
        await wait_for(handle, lambda s: _step(s, "first").status == "running")
        change = {
            "tool": "http_request",
            "params": {"url": srv.url("/prod-deploy?env=production"), "method": "POST"},
        }
        await handle.signal(
            "apply_correction",
            {"by": "bot", "step_id": "deploy", "correction": {"updated_step": change}},
        )
        await wait_for(handle, lambda s: _step(s, "deploy").status == "waiting_approval")
        await handle.execute_update(
            "cancel", {"by": "ops", "reason": "later"}, result_type=ControlResult
        )
        assert (await asyncio.wait_for(handle.result(), timeout=20)).status == "cancelled"

        handle2, _ = await resume_from_failure(client, plan.id, by="ops", task_queue=task_queue)
        st = await wait_for(handle2, lambda s: _step(s, "deploy").status == "waiting_approval")
        wait = next(w for w in st.waiting if w.step_id == "deploy")
        assert "changed after the plan was approved" in (wait.question or "")
        assert wait.change is not None and wait.change["tool"]["new"] == "http_request"
        await asyncio.sleep(0.5)
        assert srv.seen == [], "a resumed run must not run a change nobody approved"

        await handle2.execute_update(
            "approve_step", {"by": "carol", "step_id": "deploy"}, result_type=ControlResult
        )
        res = await asyncio.wait_for(handle2.result(), timeout=20)
        assert res.status == "completed"
        assert [(m, p) for m, p, _ in srv.seen] == [("POST", "/prod-deploy")]


async def test_a_person_approving_the_resumed_run_approves_the_change_with_the_plan(
    client, worker, task_queue
):
    """The same with require_approval true: the person who approves the resumed run's
    plan sees the changed document (its version and digest) and approves it whole."""
    with KeyServer() as srv:
        plan = make_plan(
            [
                {"id": "first", "tool": "wait", "params": {"seconds": 1.0}},
                {"id": "deploy", "tool": "wait", "params": {"seconds": 0}, "depends_on": ["first"]},
            ],
            require_approval=True,
        )
        handle = await start(client, plan, task_queue)
        await wait_for(handle, lambda s: s.status == "pending_approval")
        await handle.execute_update("approve", {"by": "alice"}, result_type=ControlResult)
        await wait_for(handle, lambda s: _step(s, "first").status == "running")
        change = {"tool": "http_request", "params": {"url": srv.url("/hook"), "method": "POST"}}
        await handle.execute_update(
            "apply_correction",
            {"by": "bot", "step_id": "deploy", "correction": {"updated_step": change}},
            result_type=ControlResult,
        )
        await wait_for(handle, lambda s: _step(s, "deploy").status == "waiting_approval")
        await handle.execute_update(
            "cancel", {"by": "ops", "reason": "x"}, result_type=ControlResult
        )
        await asyncio.wait_for(handle.result(), timeout=20)

        handle2, _ = await resume_from_failure(client, plan.id, by="ops", task_queue=task_queue)
        st = await wait_for(handle2, lambda s: s.status == "pending_approval")
        assert srv.seen == []
        await handle2.execute_update(
            "approve", {"by": "alice", "version": st.version}, result_type=ControlResult
        )
        res = await asyncio.wait_for(handle2.result(), timeout=20)
        assert res.status == "completed"
        assert [(m, p) for m, p, _ in srv.seen] == [("POST", "/hook")]

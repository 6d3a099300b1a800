"""Effects once, judgements never skipped, through the workflow.

Idempotency keys follow the step's request: a retry, a retry_step and a
resume-from-failure of an unchanged step send the same key; a correction that changes
the request sends a new one. A store that cannot keep a large output does not make a
``POST`` go out twice. A validation step's judge criterion that no model assessed fails
the step, or (``on_unassessed: ask``) waits for a person -- it never passes by itself.

Every request goes to a server the test starts on 127.0.0.1 that counts them by key."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from typing import Any

import pytest
from temporalio.client import WorkflowHandle

from activities import persist
from config import get_settings
from contracts.snapshots import as_output_ref
from contracts.steps import request_digest, request_key
from plans.models import StepKind
from store import blobs
from tests.helpers import StartWorker, make_plan, start, status, wait_for
from tests.key_server import KeyServer
from workflows.starter import resume_from_failure


@pytest.fixture
def server() -> Iterator[KeyServer]:
    with KeyServer() as srv:
        yield srv


def pay(server: KeyServer, path: str, **step: Any) -> dict[str, Any]:
    return {
        "id": "pay",
        "tool": "http_request",
        "params": {"url": server.url(path), "method": "POST", "json": {"amount": 5}},
        **step,
    }


def key_of(plan_id: str | None, step: dict[str, Any]) -> str:
    kind = StepKind(step.get("kind", "tool"))
    return request_key(plan_id or "", step["id"], kind, step.get("tool"), step["params"])


async def result_within(handle: WorkflowHandle, seconds: float = 30.0) -> Any:
    return await asyncio.wait_for(handle.result(), timeout=seconds)


async def update(handle: WorkflowHandle, name: str, arg: dict[str, Any]) -> Any:
    return await handle.execute_update(name, arg)


# --- idempotency keys -----------------------------------------------------------------


async def test_temporal_retries_send_one_key_the_request_key(client, worker, task_queue, server):
    step = pay(server, "/flaky?fail=2", max_retries=3, retry_delay_s=0.05)
    plan = make_plan([step])
    res = await result_within(await start(client, plan, task_queue))
    assert res.status == "completed"
    keys = server.requests("/flaky", "POST")
    assert keys == [key_of(plan.id, step)] * 3


async def test_resume_from_failure_of_an_unchanged_step_sends_the_same_key(
    client, worker, task_queue, server
):
    step = pay(server, "/flaky?fail=1", max_retries=0)
    plan = make_plan(
        [step, {"id": "ok", "tool": "wait", "params": {"seconds": 0}}], on_error="continue"
    )
    handle = await start(client, plan, task_queue)
    assert (await result_within(handle)).status == "partial"
    handle2, carried = await resume_from_failure(client, plan.id, by="rita", task_queue=task_queue)
    assert carried == 1
    assert (await result_within(handle2)).status == "completed"
    assert server.requests("/flaky", "POST") == [key_of(plan.id, step)] * 2


async def test_retry_step_keeps_the_key_and_a_correction_of_the_request_changes_it(
    client, worker, task_queue, server
):
    step = pay(server, "/flaky?fail=2", max_retries=0)
    plan = make_plan([step], on_error="ask")
    handle = await start(client, plan, task_queue)
    await wait_for(handle, lambda s: s.status == "waiting_correction")
    await update(handle, "retry_step", {"by": "rae", "step_id": "pay"})  # unchanged
    await wait_for(handle, lambda s: s.status == "waiting_correction" and s.steps[0].attempts)
    await asyncio.sleep(0.2)
    assert len(server.requests("/flaky")) == 2
    await update(
        handle,
        "apply_correction",
        {
            "by": "cora",
            "step_id": "pay",
            "correction": {"updated_step": {"params": {"json": {"amount": 7}}}},
            "approve": True,  # corrected and approved by its sender
        },
    )
    await update(handle, "retry_step", {"by": "rae", "step_id": "pay"})
    assert (await result_within(handle)).status == "completed"
    corrected = {**step, "params": {**step["params"], "json": {"amount": 7}}}
    first, new = key_of(plan.id, step), key_of(plan.id, corrected)
    assert new != first
    assert server.requests("/flaky", "POST") == [first, first, new]


async def test_an_llm_steps_tool_call_keeps_its_key_when_the_plan_is_resumed(
    client, worker, task_queue, server
):
    """The call is cut off mid-request (the plan is cancelled), the plan is resumed, the
    model asks for the same call: the server sees the same key again."""
    call = {"url": server.url("/hold"), "method": "POST", "json": {"amount": 5}}
    step = {
        "id": "agent",
        "kind": "llm",
        "params": {
            "prompt": f"Send it: use http_request with {json.dumps(call)}",
            "tools": ["http_request"],
        },
    }
    plan = make_plan([step])
    handle = await start(client, plan, task_queue)
    assert await asyncio.to_thread(server.arrived.wait, 20)
    await update(handle, "cancel", {"by": "carl", "reason": "cut it off"})
    assert (await result_within(handle)).status == "cancelled"
    server.release()
    handle2, _ = await resume_from_failure(client, plan.id, by="rita", task_queue=task_queue)
    assert (await result_within(handle2)).status == "completed"
    expected = (
        key_of(plan.id, step) + ":call-" + request_digest(StepKind.TOOL, "http_request", call)
    )
    assert server.requests("/hold", "POST") == [expected, expected]


# --- a large output the store cannot keep ---------------------------------------------


def store_down(monkeypatch: pytest.MonkeyPatch, times: int) -> list[int]:
    real = blobs.put_blob
    calls: list[int] = []

    def put_blob(*args: Any, **kw: Any) -> Any:
        calls.append(1)
        if len(calls) <= times:
            raise ConnectionError("the store is unreachable")
        return real(*args, **kw)

    monkeypatch.setattr(blobs, "put_blob", put_blob)
    monkeypatch.setattr(persist, "STORE_FIRST_DELAY_S", 0.01)
    monkeypatch.setattr(persist, "STORE_MAX_DELAY_S", 0.02)
    return calls


@pytest.mark.parametrize("down_for", [2, 1000])
async def test_a_store_failure_after_the_post_never_sends_it_again(
    client, start_worker: StartWorker, task_queue, server, monkeypatch, down_for
):
    tries = store_down(monkeypatch, down_for)
    await start_worker(None, get_settings().replace(store={"large_output_bytes": 1000}))
    step = pay(server, "/big?size=5000", max_retries=3, retry_delay_s=0.05)
    plan = make_plan([step])
    handle = await start(client, plan, task_queue)
    res = await result_within(handle)
    assert server.requests("/big", "POST") == [key_of(plan.id, step)]  # once, whatever happened
    (st,) = (await status(handle)).steps
    if down_for < persist.STORE_TRIES:
        assert res.status == "completed"
        assert len(tries) == down_for + 1
        assert as_output_ref(st.output) is not None
    else:
        assert res.status == "failed"
        assert st.attempts == 1  # max_retries 3, yet not retried
        assert "OutputNotStored" in (st.error or "") and "retry_step" in (st.error or "")
        assert len(tries) == persist.STORE_TRIES


# --- judges ---------------------------------------------------------------------------


def review(**params: Any) -> dict[str, Any]:
    return {
        "id": "review",
        "kind": "validation",
        "depends_on": ["make"],
        "params": {
            "judge": {
                "criteria": ["names 'hello'", "is written politely"],
                "subject": "{{ steps.make.output }}",
            },
            **params,
        },
    }


def judged_plan(timeout: float | None = None, **params: Any) -> Any:
    return make_plan(
        [
            {"id": "make", "tool": "transform", "params": {"data": "hello", "expression": "@"}},
            review(**params),
            {"id": "after", "tool": "wait", "params": {"seconds": 0}, "depends_on": ["review"]},
        ],
        step_approval_timeout_s=timeout,
        on_step_approval_timeout="approve",
    )


async def test_an_unassessed_criterion_fails_the_validation_step(client, worker, task_queue):
    plan = judged_plan()
    handle = await start(client, plan, task_queue)
    res = await result_within(handle)
    assert res.status == "failed"
    st = await status(handle)
    rev = next(s for s in st.steps if s.id == "review")
    assert rev.attempts == 1
    assert "judge: is written politely (no model assessed it)" in (rev.error or "")
    assert "names 'hello'" not in (rev.error or "")


async def test_on_unassessed_ask_waits_for_a_person_who_passes_it(client, worker, task_queue):
    plan = judged_plan(on_unassessed="ask")
    handle = await start(client, plan, task_queue)
    st = await wait_for(handle, lambda s: s.status == "waiting_approval")
    rev = next(s for s in st.steps if s.id == "review")
    assert rev.status == "waiting_approval"
    assert st.waiting_for is not None and st.waiting_for.step_id == "review"
    assert "no model assessed judge criteria 'is written politely'" in (
        st.waiting_for.question or ""
    )
    assert next(s for s in st.steps if s.id == "after").status == "pending"
    await update(handle, "approve_step", {"by": "judy", "step_id": "review"})
    res = await result_within(handle)
    assert res.status == "completed"
    out = res.final_steps["review"].output
    assert out["passed"] is True and out["passed_by"] == "judy"
    assert out["unassessed"] == ["is written politely"]


async def test_on_unassessed_ask_rejected_skips_the_step(client, worker, task_queue):
    handle = await start(client, judged_plan(on_unassessed="ask"), task_queue)
    await wait_for(handle, lambda s: s.status == "waiting_approval")
    await update(handle, "reject_step", {"by": "judy", "step_id": "review", "reason": "rude"})
    res = await result_within(handle)
    assert res.steps["review"] == "skipped" and res.steps["after"] == "skipped"
    assert res.status != "completed"


async def test_a_step_approval_timeout_never_passes_an_unassessed_judgement(
    client, worker, task_queue
):
    handle = await start(client, judged_plan(on_unassessed="ask", timeout=1), task_queue)
    res = await result_within(handle)
    assert res.steps["review"] == "skipped"
    rev = res.final_steps["review"]
    assert "no model assessed" in (rev.timed_out or "")

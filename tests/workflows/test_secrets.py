"""``{{ secrets.NAME }}`` in real plans on the local dev server: the tool gets the value,
while Temporal's history (read without any codec), the queries, the audit trail, the
versions of a corrected plan and the store hold only the reference."""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy.engine import make_url
from temporalio.client import WorkflowHandle, WorkflowUpdateFailedError

from config import Settings, get_settings
from plans.controls import ControlResult
from plans.models import PlanStatus
from tests.echo_server import EchoServer
from tests.helpers import make_plan, start, status, wait_for
from tests.history_text import history_text


@pytest.fixture
def echo() -> Iterator[EchoServer]:
    with EchoServer() as server:
        yield server


@pytest.fixture
def token() -> str:
    return f"s3cr3t-{uuid.uuid4().hex}"


@pytest.fixture
def secret_settings(tmp_path: Path, token: str) -> Settings:
    f = tmp_path / "secrets.json"
    f.write_text(json.dumps({"TOKEN": token}))
    return get_settings().replace(secrets={"file": str(f)})


async def everything_temporal_knows(env, handle: WorkflowHandle) -> str:
    """The history as Temporal keeps it (the temporal CLI, payloads decoded: the tests'
    converter is plain JSON, so a value anywhere in it would show) and every query a
    person reads."""
    texts = [history_text(env.client.service_client.config.target_host, handle.id)]
    for q in ("status", "run_state", "plan", "audit", "execution_state"):
        texts.append(json.dumps(await handle.query(q)))
    texts.append(json.dumps(await handle.query("logs", {})))
    return "\n".join(texts)


def store_bytes() -> bytes:
    path = make_url(get_settings().store.database_url).database
    assert path
    data = Path(path).read_bytes()
    for extra in ("-wal", "-journal"):
        if Path(path + extra).exists():
            data += Path(path + extra).read_bytes()
    return data


async def test_the_tool_gets_the_value_and_nothing_else_does(
    env, client, task_queue, start_worker, secret_settings, echo, token
):
    await start_worker(None, secret_settings)
    plan = make_plan(
        [
            {
                "id": "deploy",
                "tool": "http_request",
                "params": {
                    "url": echo.url + "/deploy?env=production&token={{ secrets.TOKEN }}",
                    "headers": {"Authorization": "Bearer {{ secrets.TOKEN }}"},
                },
            },
            {  # the server's answer repeats the value: it must come back redacted
                "id": "report",
                "tool": "transform",
                "params": {"data": "{{ steps.deploy.output.body }}", "expression": "you_sent"},
                "depends_on": ["deploy"],
            },
        ]
    )
    handle = await start(client, plan, task_queue)
    result = await asyncio.wait_for(handle.result(), 60)
    assert result.status == PlanStatus.COMPLETED
    assert echo.received(token)  # the value did reach the tool's server
    assert echo.requests[0]["headers"]["Authorization"] == f"Bearer {token}"
    st = await status(handle)
    report = next(s for s in st.steps if s.id == "report").output
    assert report["headers"]["Authorization"] == "Bearer ***"
    assert "token=***" in report["path"]
    known = await everything_temporal_knows(env, handle)
    assert "{{ secrets.TOKEN }}" in known  # the reference is there ...
    assert token not in known  # ... the value nowhere
    await asyncio.sleep(0.5)  # the last snapshot is written after the result
    assert token.encode() not in store_bytes()


async def test_an_error_that_echoes_the_value_is_redacted(
    env, client, task_queue, start_worker, secret_settings, echo, token
):
    await start_worker(None, secret_settings)
    plan = make_plan(
        [
            {
                "id": "call",
                "tool": "http_request",
                "params": {
                    "url": echo.url + "/reject?token={{ secrets.TOKEN }}",
                    "headers": {"X-Api-Key": "{{ secrets.TOKEN }}"},
                },
            }
        ]
    )
    handle = await start(client, plan, task_queue)
    result = await asyncio.wait_for(handle.result(), 60)
    assert result.status == PlanStatus.FAILED
    assert echo.received(token)
    st = await status(handle)
    error = st.steps[0].error or ""
    assert "answered 400" in error and "***" in error
    assert token not in await everything_temporal_knows(env, handle)


async def test_an_unknown_secret_fails_the_plan_before_any_step_runs(
    client, task_queue, start_worker, secret_settings, echo
):
    await start_worker(None, secret_settings)
    plan = make_plan(
        [
            {"id": "first", "tool": "http_request", "params": {"url": echo.url + "/first"}},
            {
                "id": "call",
                "tool": "http_request",
                "params": {
                    "url": echo.url + "/x",
                    "headers": {"Authorization": "Bearer {{ secrets.NOPE }}"},
                },
                "depends_on": ["first"],
            },
        ]
    )
    handle = await start(client, plan, task_queue)
    result = await asyncio.wait_for(handle.result(), 60)
    assert result.status == PlanStatus.FAILED
    assert result.outcome == "steps[1].params.headers.Authorization: unknown secret NOPE"
    assert echo.requests == []  # not even the first step ran
    assert set(result.steps.values()) == {"skipped"}


async def test_a_reference_a_step_produced_is_only_text(
    client, task_queue, start_worker, secret_settings, echo, token
):
    """An earlier step's output (here a transform; in life an HTTP answer) that looks like
    a reference stays text: only the plan's own params name secrets."""
    await start_worker(None, secret_settings)
    plan = make_plan(
        [
            {
                "id": "evil",
                "tool": "transform",
                "params": {"data": {"v": "{{ inputs.bait }}"}, "expression": "v"},
            },
            {
                "id": "call",
                "tool": "http_request",
                "params": {"url": echo.url + "/x", "json": {"v": "{{ steps.evil.output }}"}},
                "depends_on": ["evil"],
            },
        ]
    ).model_copy(update={"inputs": {"bait": "{{ secrets.TOKEN }}"}})
    handle = await start(client, plan, task_queue)
    assert (await asyncio.wait_for(handle.result(), 60)).status == PlanStatus.COMPLETED
    assert echo.requests and not echo.received(token)
    assert "{{ secrets.TOKEN }}" in echo.requests[0]["body"]


async def correct(handle: WorkflowHandle, step_id: str, updated: dict[str, Any]) -> ControlResult:
    return await handle.execute_update(
        "apply_correction",
        {"by": "cora", "step_id": step_id, "correction": {"updated_step": updated}},
        result_type=ControlResult,
    )


async def test_a_correction_references_a_secret_but_never_reads_it(
    env, client, task_queue, start_worker, secret_settings, echo, token
):
    await start_worker(None, secret_settings)
    plan = make_plan(
        [
            {
                "id": "call",
                "tool": "http_request",
                "params": {"url": echo.url + "/x"},
                "requires_approval": True,
            }
        ]
    )
    handle = await start(client, plan, task_queue)
    await wait_for(handle, lambda s: s.steps[0].status == "waiting_approval")
    # a secret inside an expression is refused like any invalid correction
    with pytest.raises(WorkflowUpdateFailedError) as e:
        await correct(handle, "call", {"params": {"url": echo.url + "/{{ secrets.TOKEN + '' }}"}})
    assert "on its own, not inside an expression" in str(e.value.cause)
    r = await correct(
        handle,
        "call",
        {"params": {"headers": {"Authorization": "Bearer {{ secrets.TOKEN }}"}}},
    )
    assert r.accepted
    await handle.execute_update(
        "approve_step", {"by": "amy", "step_id": "call", "version": r.version}
    )
    assert (await asyncio.wait_for(handle.result(), 60)).status == PlanStatus.COMPLETED
    assert echo.requests[-1]["headers"]["Authorization"] == f"Bearer {token}"
    known = await everything_temporal_knows(env, handle)
    assert "Bearer {{ secrets.TOKEN }}" in known  # the correction's diff and version
    assert token not in known

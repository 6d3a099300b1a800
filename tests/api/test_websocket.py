"""``/api/plans/{id}/ws``: a plan's events over a real WebSocket (uvicorn on 127.0.0.1,
the ``websockets`` client), with API keys on: the same events as the SSE stream, a
reconnect with the last event id misses nothing, and handshakes without a key, from
another site's page, or for an unknown plan are refused with the API's error body."""

from __future__ import annotations

import asyncio
import json
import uuid
from typing import Any

import httpx
import pytest
from temporalio.testing import WorkflowEnvironment
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosedOK, InvalidStatus

from api.app import create_app
from config import get_settings
from tests.api.test_dashboard import uvicorn_serving
from tests.api.test_plans_routes import TEST_CONFIG, plan_doc, wait_step

KEY = {"Authorization": "Bearer k1"}


def settings_for(env: WorkflowEnvironment, task_queue: str) -> Any:
    return get_settings().replace(
        temporal={
            "task_queue": task_queue,
            "address": env.client.service_client.config.target_host,
        },
        api={**TEST_CONFIG.model_dump(), "keys": "k1:alice:operator"},
    )


async def receive(ws: ClientConnection, timeout: float = 20) -> dict[str, Any]:
    event: dict[str, Any] = json.loads(await asyncio.wait_for(ws.recv(), timeout))
    return event


def seq(event: dict[str, Any]) -> int:
    return int(event["id"].rpartition(":")[2])


async def test_a_watcher_gets_every_step_and_the_end_and_a_reconnect_misses_nothing(
    env: WorkflowEnvironment, worker: Any, task_queue: str
) -> None:
    steps = [wait_step("a", 0.3), wait_step("b", 0.3, ["a"]), wait_step("c", 0.3, ["b"])]
    doc = plan_doc(steps, plan_id=f"ws-{uuid.uuid4().hex[:8]}")
    with uvicorn_serving(create_app(settings=settings_for(env, task_queue))) as base:
        url = base.replace("http://", "ws://") + f"/api/plans/{doc['id']}/ws"
        async with httpx.AsyncClient(base_url=base, headers=KEY, timeout=30) as http:
            assert (await http.post("/api/plans", json=doc)).status_code == 201
            assert (await http.post(f"/api/plans/{doc['id']}/execute", json={})).status_code == 202

        # the first watcher: the snapshot, then changes until step a has completed
        first: list[dict[str, Any]] = []
        async with connect(url, additional_headers=KEY) as ws:
            while not any(
                e["event"] == "step"
                and e["data"]["step_id"] == "a"
                and e["data"]["status"] == "completed"
                for e in first
            ):
                first.append(await receive(ws))
        assert first[0]["event"] == "plan" and first[0]["data"]["plan_id"] == doc["id"]
        last = first[-1]["id"]

        # away for a moment, back with the last id: exactly what came after it
        await asyncio.sleep(0.5)
        rest: list[dict[str, Any]] = []
        async with connect(f"{url}?last_event_id={last}", additional_headers=KEY) as ws:
            with pytest.raises(ConnectionClosedOK):
                while True:
                    rest.append(await receive(ws))
            assert ws.close_code == 1000
        assert rest, "nothing after the last event"
        assert [seq(e) for e in rest] == list(
            range(seq(first[-1]) + 1, seq(first[-1]) + 1 + len(rest))
        )
        assert rest[-1]["event"] == "end" and rest[-1]["data"]["status"] == "completed"
        ended = [
            e["data"]["step_id"]
            for e in first + rest
            if e["event"] == "step" and e["data"]["status"] == "completed"
        ]
        assert sorted(set(ended)) == ["a", "b", "c"]

        # after the end: closed at once, nothing sent
        async with connect(f"{url}?last_event_id={rest[-1]['id']}", additional_headers=KEY) as ws:
            with pytest.raises(ConnectionClosedOK):
                await receive(ws, 5)
            assert ws.close_code == 1000 and "ended" in (ws.close_reason or "")


async def test_handshakes_are_refused_without_a_key_from_another_site_or_for_no_plan(
    env: WorkflowEnvironment, task_queue: str
) -> None:
    with uvicorn_serving(create_app(settings=settings_for(env, task_queue))) as base:
        ws_base = base.replace("http://", "ws://")
        cases = [
            (f"{ws_base}/api/plans/some-plan/ws", {}, 401, "unauthorized"),
            (f"{ws_base}/api/plans/some-plan/ws", {"Authorization": "Bearer nope"}, 401, None),
            # another site's page, with the key the browser would not even need without keys
            (
                f"{ws_base}/api/plans/some-plan/ws",
                {**KEY, "Origin": "http://evil.test"},
                403,
                "bad_origin",
            ),
            (f"{ws_base}/api/plans/never-was-{uuid.uuid4().hex[:6]}/ws", KEY, 404, "not_found"),
            (f"{ws_base}/api/plans/some-plan/ws?levle=1", KEY, 422, "invalid"),
        ]
        for url, headers, status, code in cases:
            with pytest.raises(InvalidStatus) as refused:
                async with connect(url, additional_headers=headers):
                    pass
            response = refused.value.response
            assert response.status_code == status, (url, headers, response.body)
            if code is not None:
                assert json.loads(response.body)["code"] == code
        # the API's own page may (the console, same origin)
        with pytest.raises(InvalidStatus) as refused:
            async with connect(
                f"{ws_base}/api/plans/never-was-a-plan/ws",
                additional_headers={**KEY, "Origin": base},
            ):
                pass
        assert refused.value.response.status_code == 404  # past the origin check

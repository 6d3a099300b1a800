"""Acceptance: a plan using ``{{ secrets.TOKEN }}`` sends the value to a local server,
and then the value is found nowhere else: not in Temporal's history (read with
``temporal workflow show -o json``), not in the SQLite store, not in the worker's or the
API's logs, not in any GET route of the plan. A worker and an API run as processes, as
an operator runs them; only the worker is given the secret."""

from __future__ import annotations

import asyncio
import os
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path

import httpx
import pytest

from tests.echo_server import EchoServer
from tests.history_text import history_text

ROOT = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.slow


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def spawn(argv: list[str], env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    out = log.open("wb")
    return subprocess.Popen(
        [sys.executable, "-m", "plansmith.cli", *argv],
        cwd=ROOT,
        env=env,
        stdout=out,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )


def stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)


async def wait_ready(http: httpx.AsyncClient, proc: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        assert proc.poll() is None, "the API stopped"
        try:
            if (await http.get("/healthz")).status_code == 200:
                return
        except httpx.TransportError:
            pass
        await asyncio.sleep(0.2)
    raise AssertionError("the API did not start")


async def every_get_route(
    http: httpx.AsyncClient, plan_id: str, step_id: str = "deploy"
) -> dict[str, str]:
    """The body of every GET route that names the plan (from the API's own OpenAPI; a
    route of one step: ``step_id``, a step with an output), the list of plans, and the
    event stream (it ends after the plan's ``end`` event)."""
    paths = (await http.get("/openapi.json")).json()["paths"]
    got: dict[str, str] = {}
    for path, ops in paths.items():
        if "get" not in ops or not ("{plan_id}" in path or "{execution_id}" in path):
            continue
        url = path.replace("{plan_id}", plan_id).replace("{execution_id}", plan_id)
        url = url.replace("{step_id}", step_id)
        if url.endswith("/events"):
            async with http.stream("GET", url, timeout=20) as r:
                body = b"".join([chunk async for chunk in r.aiter_bytes()]).decode()
        else:
            r = await http.get(url)
            body = r.text
        assert r.status_code == 200, (url, r.status_code, body)
        got[url] = body
    got["/api/plans"] = (await http.get("/api/plans")).text
    return got


async def test_a_secret_reaches_the_tool_and_nowhere_else(env, task_queue, tmp_path: Path):
    token = f"tok-{uuid.uuid4().hex}"
    store = tmp_path / "store.db"
    address = env.client.service_client.config.target_host
    base = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("PLANSMITH_SECRET", "PLANSMITH_API_KEYS"))
    }
    base.update(
        {
            "TEMPORAL_ADDRESS": address,
            "PLANSMITH_TASK_QUEUE": task_queue,
            "DATABASE_URL": f"sqlite:///{store}",
            "PLANSMITH_LOG_LEVEL": "DEBUG",
            "PLANSMITH_LOG_FORMAT": "text",
        }
    )
    worker_env = {**base, "PLANSMITH_SECRET_TOKEN": token}  # only the worker has it
    port = free_port()
    logs = {"worker": tmp_path / "worker.log", "api": tmp_path / "api.log"}
    with EchoServer() as server:
        worker = spawn(["worker", "--queue", task_queue], worker_env, logs["worker"])
        api = spawn(["api", "--port", str(port)], base, logs["api"])
        try:
            async with httpx.AsyncClient(
                base_url=f"http://127.0.0.1:{port}",
                headers={"Content-Type": "application/json"},
                timeout=30,
            ) as http:
                await wait_ready(http, api)
                plan = {
                    "id": f"sec-{uuid.uuid4().hex[:8]}",
                    "title": "deploy with a token",
                    "options": {"require_approval": False},
                    "steps": [
                        {
                            "id": "deploy",
                            "tool": "http_request",
                            "params": {
                                "url": server.url
                                + "/prod-deploy?env=production&token={{ secrets.TOKEN }}",
                                "headers": {"Authorization": "Bearer {{ secrets.TOKEN }}"},
                            },
                        },
                        {
                            "id": "notify",
                            "tool": "http_request",
                            "params": {
                                "method": "POST",
                                "url": server.url + "/reject",
                                "json": {"auth": "{{ secrets.TOKEN }}"},
                            },
                            "depends_on": ["deploy"],
                        },
                    ],
                }
                created = await http.post("/api/plans", json=plan)
                assert created.status_code == 201, created.text
                executed = await http.post(f"/api/plans/{plan['id']}/execute")
                assert executed.status_code == 202, executed.text
                deadline = time.monotonic() + 90
                while True:
                    st = (await http.get(f"/api/plans/{plan['id']}/status")).json()
                    if st["status"] in ("completed", "failed", "partial"):
                        break
                    assert time.monotonic() < deadline, st
                    await asyncio.sleep(0.3)
                assert st["status"] == "failed"  # the second server answers 400
                steps = {s["id"]: s for s in st["steps"]}
                assert steps["deploy"]["status"] == "completed"
                assert "answered 400" in steps["notify"]["error"]
                routes = await every_get_route(http, plan["id"])
                # a secret the worker does not have: accepted by the API (it knows no
                # secrets), refused by the worker when the plan starts, before any step
                unknown = {
                    "id": f"sec-unknown-{uuid.uuid4().hex[:8]}",
                    "options": {"require_approval": False},
                    "steps": [
                        {
                            "id": "call",
                            "tool": "http_request",
                            "params": {
                                "url": server.url + "/never",
                                "headers": {"Authorization": "Bearer {{ secrets.NOPE }}"},
                            },
                        }
                    ],
                }
                assert (await http.post("/api/plans", json=unknown)).status_code == 201
                assert (await http.post(f"/api/plans/{unknown['id']}/execute")).status_code == 202
                deadline = time.monotonic() + 60
                while (st2 := (await http.get(f"/api/plans/{unknown['id']}/status")).json())[
                    "status"
                ] != "failed":
                    assert time.monotonic() < deadline, st2
                    await asyncio.sleep(0.3)
                assert st2["outcome"] == (
                    "steps[0].params.headers.Authorization: unknown secret NOPE"
                )
                # a secret where it may not go: refused by the API's validation, located
                misplaced = {
                    "steps": [
                        {"id": "ask", "kind": "llm", "params": {"prompt": "{{ secrets.TOKEN }}"}}
                    ]
                }
                refused = await http.post("/api/plans", json=misplaced)
                assert refused.status_code == 422, refused.text
                assert (
                    "steps[0].params" in refused.text
                    and "never in a step of kind 'llm'" in refused.text
                )
        finally:
            stop(api)
            stop(worker)

        # the value did reach the tool's server, in the URL, a header and a body ...
        assert [r["path"].split("?")[0] for r in server.requests] == [
            "/prod-deploy",
            "/reject",
        ]  # not /never
        assert f"token={token}" in server.requests[0]["path"]
        assert server.requests[0]["headers"]["Authorization"] == f"Bearer {token}"
        assert token in server.requests[1]["body"]

    # ... and is found nowhere else
    history = history_text(address, f"plan-{plan['id']}")
    assert "prod-deploy" in history and "{{ secrets.TOKEN }}" in history  # the real history
    assert token not in history
    store_files = [p for p in tmp_path.iterdir() if p.name.startswith("store.db")]
    store_data = b"".join(p.read_bytes() for p in store_files)
    assert plan["id"].encode() in store_data  # the run was recorded there
    assert token.encode() not in store_data
    for name, log in logs.items():
        text = log.read_text()
        assert text, f"the {name} wrote no log"
        assert token not in text, f"the value is in the {name}'s log"
    assert "/api/plans" in logs["api"].read_text()  # the API logged the requests
    assert "secrets available to plans: TOKEN" in logs["worker"].read_text()  # names only
    assert len(routes) >= 10
    for url, body in routes.items():
        assert token not in body, url
    # the server's answer repeated the value: the error shows *** in its place
    error = steps["notify"]["error"].replace("\\", "")
    assert '"auth":"***"' in error, error

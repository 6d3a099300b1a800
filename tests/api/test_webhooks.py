"""``/api/webhooks`` against the real app, a real dev server and worker: validation
located, roles, secrets never shown, the URL policy, the delivery log, redelivery and a
plan's own webhooks (docs/webhooks.md)."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import AsyncExitStack
from pathlib import Path
from typing import Any

import httpx
import pytest
import pytest_asyncio
from temporalio.testing import WorkflowEnvironment

from api.app import create_app
from config import Settings, get_settings
from tests.api.serving import serve
from tests.helpers import StartWorker
from tests.webhook_receiver import Receiver

KEYS = "k-admin:root:admin,k-op:alice:operator,k-bot:bot:agent"
ADMIN = {"Authorization": "Bearer k-admin"}
OPERATOR = {"Authorization": "Bearer k-op"}
AGENT = {"Authorization": "Bearer k-bot"}
SECRET = "never-shown-9f2c"

Serve = Callable[..., Awaitable[httpx.AsyncClient]]


def settings_for(tmp_path: Path, task_queue: str, **sections: dict[str, Any]) -> Settings:
    base: dict[str, dict[str, Any]] = {
        "temporal": {"task_queue": task_queue},
        "store": {"database_url": f"sqlite:///{tmp_path / 'store.db'}"},
        "webhooks": {"retry_delay_s": 0.2, "max_retry_delay_s": 0.5, "timeout_s": 5.0},
        "api": {"rpc_timeout_s": 5.0, "connect_timeout_s": 2.0},
    }
    for name, fields in sections.items():
        base[name] = {**base.get(name, {}), **fields}
    return get_settings().replace(**base)


@pytest_asyncio.fixture
async def start(
    env: WorkflowEnvironment, start_worker: StartWorker, task_queue: str, tmp_path: Path
) -> AsyncIterator[Serve]:
    """``await start(api={...}, http={...}, worker_http={...})``: a worker and the app on a
    store of the test's own; the worker's URL policy may differ from the API's."""
    async with AsyncExitStack() as stack:

        async def go(
            worker_http: dict[str, Any] | None = None, **sections: Any
        ) -> httpx.AsyncClient:
            settings = settings_for(tmp_path, task_queue, **sections)
            worker_settings = settings.replace(http=worker_http) if worker_http else settings
            await start_worker(settings=worker_settings)
            app = create_app(settings=settings, client=env.client)
            return await stack.enter_async_context(serve(app))

        yield go


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    r = Receiver().start()
    yield r
    r.stop()


def plan(plan_id: str, **options: Any) -> dict[str, Any]:
    return {
        "id": plan_id,
        "options": {"require_approval": False, **options},
        "steps": [{"id": "only", "tool": "wait", "params": {"seconds": 0}}],
    }


async def run(
    http: httpx.AsyncClient, doc: dict[str, Any], headers: dict[str, str] | None = None
) -> None:
    r = await http.post("/api/plans", json=doc, headers=headers or {})
    assert r.status_code == 201, r.text
    r = await http.post(f"/api/plans/{doc['id']}/execute", headers=headers or {})
    assert r.status_code == 202, r.text


async def until(check: Callable[[], Awaitable[Any]], timeout: float = 20) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        got = await check()
        if got:
            return got
        assert time.monotonic() < deadline, "condition not reached"
        await asyncio.sleep(0.1)


def problems(r: httpx.Response) -> dict[str, str]:
    assert r.status_code == 422, r.text
    return {p["location"]: p["message"] for p in r.json()["problems"]}


# --- validation -----------------------------------------------------------------------


async def test_a_bad_subscription_is_refused_with_every_problem_located(start: Serve) -> None:
    http = await start()
    got = problems(
        await http.post(
            "/api/webhooks",
            json={"url": "ftp://example.test/x", "events": ["plan.done", "plan.started"]},
        )
    )
    assert "http:// or https://" in got["url"]
    assert "plan.completed" in got["events[0]"]
    got = problems(
        await http.post("/api/webhooks", json={"url": "http://127.0.0.1:9/", "events": []})
    )
    assert "at least one event" in got["events"]
    got = problems(
        await http.post(
            "/api/webhooks",
            json={"url": "http://u:pw@127.0.0.1:9/", "events": ["plan.failed", "plan.failed"]},
        )
    )
    assert "user name or password" in got["url"] and "named twice" in got["events"]
    got = problems(
        await http.post(
            "/api/webhooks",
            json={
                "url": "http://127.0.0.1:9/",
                "events": ["plan.failed"],
                "secret": "",
                "sekret": 1,
            },
        )
    )
    assert set(got) == {"secret", "sekret"} and got["sekret"] == "unknown field"
    got = problems(await http.post("/api/webhooks", json={"events": ["plan.failed"]}))
    assert got == {"url": "required field is missing"}
    assert (await http.get("/api/webhooks")).json() == {"webhooks": []}


async def test_a_plans_own_webhooks_are_checked_where_they_are_written(start: Serve) -> None:
    http = await start()
    doc = plan(
        f"pw-{uuid.uuid4().hex[:8]}",
        webhooks=[
            {"url": "http://127.0.0.1:9/ok", "events": ["plan.completed"]},
            {"url": "gopher://x", "events": ["step.done"], "secret": "plain-value"},
        ],
    )
    got = problems(await http.post("/api/plans", json=doc))
    assert set(got) == {
        "options.webhooks[1].url",
        "options.webhooks[1].events[0]",
        "options.webhooks[1].secret",
    }
    assert "{{ secrets.NAME }}" in got["options.webhooks[1].secret"]


# --- roles and secrets ------------------------------------------------------------------


async def test_only_an_admin_manages_webhooks_and_the_secret_is_never_shown(
    start: Serve, receiver: Receiver, capfd: pytest.CaptureFixture[str]
) -> None:
    http = await start(api={"keys": KEYS})
    body = {"url": receiver.url, "events": ["plan.completed"], "secret": SECRET}
    assert (await http.post("/api/webhooks", json=body)).status_code == 401
    for who in (OPERATOR, AGENT):
        r = await http.post("/api/webhooks", json=body, headers=who)
        assert r.status_code == 403 and "admin key" in r.json()["detail"], r.text
        assert (await http.get("/api/webhooks", headers=who)).status_code == 403
    r = await http.post("/api/webhooks", json=body, headers=ADMIN)
    assert r.status_code == 201, r.text
    hook = r.json()
    assert hook["has_secret"] is True and hook["created_by"] == "root"
    listed = await http.get("/api/webhooks", headers=ADMIN)
    one = await http.get(f"/api/webhooks/{hook['id']}", headers=ADMIN)
    for text in (r.text, listed.text, one.text):
        assert SECRET not in text and '"secret"' not in text
    for who in (OPERATOR, AGENT):
        assert (await http.delete(f"/api/webhooks/{hook['id']}", headers=who)).status_code == 403
        gone = await http.get(f"/api/webhooks/{hook['id']}/deliveries", headers=who)
        assert gone.status_code == 403

    # An agent may not name webhooks in the plan it proposes either.
    doc = plan(
        f"ag-{uuid.uuid4().hex[:8]}", webhooks=[{"url": receiver.url, "events": ["plan.completed"]}]
    )
    doc["options"]["require_approval"] = True
    r = await http.post("/api/plans", json=doc, headers=AGENT)
    assert r.status_code == 403 and "options.webhooks" in r.json()["detail"], r.text

    # A plan run by the operator: the delivery is signed, and the secret is in no log.
    doc = plan(f"op-{uuid.uuid4().hex[:8]}")
    await run(http, doc, OPERATOR)
    got = await until(lambda: asyncio.sleep(0, receiver.events(doc["id"])))
    assert got[0].event == "plan.completed" and got[0].signed_with(SECRET)
    out, err = capfd.readouterr()
    assert SECRET not in out + err

    r = await http.delete(f"/api/webhooks/{hook['id']}", headers=ADMIN)
    assert r.status_code == 200 and r.json() == {"id": hook["id"], "outcome": "deleted"}
    assert (await http.get(f"/api/webhooks/{hook['id']}", headers=ADMIN)).status_code == 404
    assert (await http.delete(f"/api/webhooks/{hook['id']}", headers=ADMIN)).status_code == 404


# --- the URL policy ---------------------------------------------------------------------


async def test_the_url_policy_refuses_a_denied_receiver_at_registration_and_at_delivery(
    start: Serve,
) -> None:
    # a receiver on 127.0.0.2 (loopback): the worker's deny list keeps every delivery from it
    denied = Receiver("127.0.0.2").start()
    http = await start(http={"deny": "127.0.0.3"}, worker_http={"deny": "127.0.0.2"})
    # the API's own policy refuses a literal denied address at once, located
    got = problems(
        await http.post(
            "/api/webhooks", json={"url": "http://127.0.0.3:9/x", "events": ["plan.completed"]}
        )
    )
    assert "PLANSMITH_HTTP_DENY" in got["url"]
    # the worker's policy is checked at every delivery: refused, not retried, logged
    r = await http.post(
        "/api/webhooks",
        json={"url": denied.url, "events": ["plan.completed"]},
    )
    assert r.status_code == 201, r.text
    hook = r.json()
    doc = plan(f"dn-{uuid.uuid4().hex[:8]}")
    await run(http, doc)

    async def given_up() -> list[dict[str, Any]]:
        log = (await http.get(f"/api/webhooks/{hook['id']}/deliveries")).json()
        return [d for d in log["deliveries"] if d["status"] == "failed"]

    try:
        failed = await until(given_up)
    finally:
        denied.stop()
    assert denied.received == []
    assert len(failed) == 1 and failed[0]["attempts"] == 1
    assert "PLANSMITH_HTTP_DENY" in failed[0]["last_error"]
    assert "not retried" in failed[0]["last_error"]
    assert failed[0]["attempt_log"][0]["status_code"] is None


# --- the delivery log and redelivery -------------------------------------------------------


async def test_failed_attempts_are_logged_given_up_and_a_redelivery_arrives(
    start: Serve, receiver: Receiver
) -> None:
    http = await start(webhooks={"max_attempts": 2})
    receiver.status = 503
    r = await http.post(
        "/api/webhooks", json={"url": receiver.url, "events": ["step.completed", "plan.completed"]}
    )
    hook = r.json()
    assert hook["has_secret"] is False
    doc = plan(f"rd-{uuid.uuid4().hex[:8]}")
    await run(http, doc)

    async def both_given_up() -> list[dict[str, Any]]:
        log = (await http.get(f"/api/webhooks/{hook['id']}/deliveries")).json()
        done = [d for d in log["deliveries"] if d["status"] == "failed"]
        return done if len(done) == 2 else []

    failed = await until(both_given_up)
    assert [d["event"] for d in failed] == ["plan.completed", "step.completed"]  # newest first
    for d in failed:
        assert d["attempts"] == 2 and d["last_status_code"] == 503
        assert "given up after 2 attempts" in d["last_error"]
        assert [a["number"] for a in d["attempt_log"]] == [1, 2]
        assert all(a["status_code"] == 503 and not a["ok"] for a in d["attempt_log"])
        assert d["attempt_log"][0]["response"] == '{"ok": true}'
        assert d["payload"]["id"] == d["id"] and d["payload"]["plan"]["id"] == doc["id"]
    assert len(receiver.events(doc["id"])) == 4  # 2 attempts each, all answered 503
    for one in receiver.events(doc["id"]):
        assert "x-plansmith-signature" not in one.headers  # no secret: unsigned

    receiver.status = 200
    target = failed[0]
    r = await http.post(f"/api/webhooks/{hook['id']}/deliveries/{target['id']}/redeliver")
    assert r.status_code == 202, r.text
    assert r.json()["delivery"]["status"] == "pending" and r.json()["dispatcher_woken"] is True

    async def delivered() -> dict[str, Any] | None:
        log = (await http.get(f"/api/webhooks/{hook['id']}/deliveries")).json()
        d = next(d for d in log["deliveries"] if d["id"] == target["id"])
        return d if d["status"] == "delivered" else None

    d = await until(delivered)
    assert d["redeliveries"] == 1 and d["attempts"] == 3 and d["attempt_log"][-1]["ok"]
    last = receiver.events(doc["id"])[-1]
    assert last.headers["x-plansmith-delivery"] == target["id"]
    missing = await http.post(f"/api/webhooks/{hook['id']}/deliveries/nope/redeliver")
    assert missing.status_code == 404
    assert (await http.get("/api/webhooks/wh_unknown/deliveries")).status_code == 404
    assert (await http.get(f"/api/webhooks/{hook['id']}/deliveries?limt=1")).status_code == 422


# --- a plan's own webhooks -------------------------------------------------------------------


async def test_a_plan_names_its_own_webhook_signed_with_a_worker_secret(
    start: Serve, receiver: Receiver, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PLANSMITH_SECRET_HOOK_KEY", SECRET)
    http = await start()
    doc = plan(
        f"own-{uuid.uuid4().hex[:8]}",
        webhooks=[
            {
                "url": receiver.url,
                "events": ["step.started", "plan.completed"],
                "secret": "{{ secrets.HOOK_KEY }}",
            }
        ],
    )
    other = plan(f"other-{uuid.uuid4().hex[:8]}")
    await run(http, doc)
    await run(http, other)
    got = await until(
        lambda: asyncio.sleep(0, r if len(r := receiver.events(doc["id"])) == 2 else None)
    )
    assert sorted(g.event for g in got) == ["plan.completed", "step.started"]
    assert all(g.signed_with(SECRET) for g in got)
    hooks = (await http.get("/api/webhooks")).json()["webhooks"]
    assert [(h["plan_id"], h["has_secret"]) for h in hooks] == [(doc["id"], True)]
    assert SECRET not in str(hooks) and "HOOK_KEY" not in str(hooks)
    assert receiver.events(other["id"]) == []  # a plan's webhook hears that plan only
    # an admin can switch a plan's webhook off: it stays listed, and nothing is sent to it
    hook = hooks[0]
    r = await http.delete(f"/api/webhooks/{hook['id']}")
    assert r.status_code == 200 and r.json()["outcome"] == "switched_off"
    after = (await http.get(f"/api/webhooks/{hook['id']}")).json()
    assert after["active"] is False and after["plan_id"] == doc["id"]
    log = (await http.get(f"/api/webhooks/{hook['id']}/deliveries")).json()["deliveries"]
    assert {d["status"] for d in log} == {"delivered"}
    r = await http.post(f"/api/webhooks/{hook['id']}/deliveries/{log[0]['id']}/redeliver")
    assert r.status_code == 409 and "switched off" in r.json()["detail"], r.text


async def test_a_slow_receiver_times_out_and_never_holds_the_plan(
    start: Serve, receiver: Receiver
) -> None:
    http = await start(webhooks={"timeout_s": 0.5, "max_attempts": 2})
    receiver.delay_s = 3.0  # answers long after the attempt's time is up
    r = await http.post(
        "/api/webhooks", json={"url": receiver.url, "events": ["step.started", "step.completed"]}
    )
    hook = r.json()
    doc = {
        "id": f"slow-{uuid.uuid4().hex[:8]}",
        "options": {"require_approval": False},
        "steps": [
            {"id": "a", "tool": "wait", "params": {"seconds": 0}},
            {"id": "b", "tool": "wait", "params": {"seconds": 0}, "depends_on": ["a"]},
        ],
    }
    await run(http, doc)

    async def completed() -> bool:
        st = (await http.get(f"/api/plans/{doc['id']}/status")).json()
        return st["status"] == "completed"

    await until(completed, timeout=10)
    log = (await http.get(f"/api/webhooks/{hook['id']}/deliveries")).json()["deliveries"]
    assert log and not any(d["status"] == "delivered" for d in log)  # done before any answer

    async def given_up() -> list[dict[str, Any]]:
        got = (await http.get(f"/api/webhooks/{hook['id']}/deliveries")).json()["deliveries"]
        return got if len(got) == 4 and all(d["status"] == "failed" for d in got) else []

    for d in await until(given_up, timeout=30):
        assert [a["error"] for a in d["attempt_log"]] == [
            "no answer within 0.5s (PLANSMITH_WEBHOOK_TIMEOUT_S)"
        ] * 2
        assert all(a["duration_ms"] < 3000 for a in d["attempt_log"])

"""``plansmith accept-replan`` / ``reject-replan``: the CLI decides a proposal of the
planner (``on_error: replan``) like any control, and refuses with a reason (exit 2)."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator

import pytest

from tests.e2e.test_cli import cli_env, plansmith
from tests.helpers import make_plan, start, wait_for
from tests.key_server import KeyServer

pytestmark = pytest.mark.slow


@pytest.fixture
def server() -> Iterator[KeyServer]:
    with KeyServer() as srv:
        yield srv


async def test_cli_accepts_the_planners_proposal(env, client, worker, task_queue, server):
    plan = make_plan(
        [
            {"id": "up", "tool": "http_request", "params": {"url": server.url("/ok")}},
            {
                "id": "fetch",
                "tool": "http_request",
                "params": {"url": server.url("/flaky?fail=2")},
                "depends_on": ["up"],
            },
        ],
        on_error="replan",
        require_approval=True,
    )
    handle = await start(client, plan, task_queue)
    await handle.execute_update("approve", {"by": "alice"})
    await wait_for(
        handle,
        lambda s: (
            s.waiting_for is not None
            and s.waiting_for.kind == "replan"
            and s.waiting_for.proposal is not None
            and s.waiting_for.proposal.state == "proposed"
        ),
    )
    e = cli_env(env, task_queue)
    code, _, err = await plansmith("reject-replan", plan.id, "--by", "bob", env_vars=e)
    assert code == 2 and "--reason" in err  # reject needs a reason
    code, out, err = await plansmith(
        "accept-replan", plan.id, "--by", "carol", "--step-id", "fetch", env_vars=e
    )
    assert code == 0, err
    detail = json.loads(out)["detail"]
    assert detail.startswith("replan #1 accepted: correct step fetch (max_retries")
    assert (await asyncio.wait_for(handle.result(), 60)).status == "completed"
    code, _, err = await plansmith("accept-replan", plan.id, "--by", "carol", env_vars=e)
    assert code == 2 and "already ended completed" in err
    assert len(server.requests("/ok")) == 1

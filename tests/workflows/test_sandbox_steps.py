"""Generated code as plan steps, through PlanWorkflow on the local dev server.

The main worker (``worker`` fixture: PlanWorkflow and execute_step) polls the plan's
queue; a second worker hosts ``run_code`` on a fresh queue that the plans map the logical
``sandbox`` queue to, as a dedicated sandbox pool would. The acceptance plan
(examples/generated_code.yaml) must complete with its output visible; escape attempts run
as steps of one plan while the workers keep serving other plans. The only network
traffic goes to a server this module starts on 127.0.0.1.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import tempfile
import uuid
from collections.abc import AsyncIterator, Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio
import yaml
from temporalio.testing import WorkflowEnvironment
from temporalio.worker import Worker

from config import Settings, get_settings
from plans.models import Plan
from plans.run_state import AuditEntry
from tests.activities.test_sandbox import FILL, SIX_CHILDREN, sandbox_processes
from tests.helpers import activity_deps, make_plan, start, status
from worker import sandbox_activities_for

ROOT = Path(__file__).resolve().parents[2]


@contextlib.asynccontextmanager
async def sandbox_pool(
    env: WorkflowEnvironment, settings: Settings | None = None
) -> AsyncIterator[str]:
    """A worker of the sandbox pool: run_code only, on a queue of its own (returned)."""
    queue = f"sandbox-{uuid.uuid4()}"
    async with Worker(
        env.client,
        task_queue=queue,
        activities=sandbox_activities_for(activity_deps(settings=settings)),
        max_concurrent_activities=12,
        max_heartbeat_throttle_interval=timedelta(seconds=1),
        default_heartbeat_throttle_interval=timedelta(seconds=1),
    ):
        yield queue


@pytest_asyncio.fixture
async def sandbox_queue(env: WorkflowEnvironment) -> AsyncIterator[str]:
    async with sandbox_pool(env) as queue:
        yield queue


@pytest.fixture
def host_secret() -> Iterator[Path]:
    """A world-readable file on the host: only the sandbox's view of the filesystem hides it."""
    secret_dir = Path(tempfile.mkdtemp(prefix="secret-"))
    secret_dir.chmod(0o755)
    path = secret_dir / "worker.env"
    yield path
    path.unlink(missing_ok=True)
    secret_dir.rmdir()


def py(sid: str, code: str, **params: Any) -> dict[str, Any]:
    return {"id": sid, "tool": "python", "params": {"code": code, **params}}


async def test_generated_code_plan_completes_with_its_result_and_file_visible(
    client, worker, task_queue, sandbox_queue, caplog
) -> None:
    caplog.set_level(logging.INFO, logger="plansmith.sandbox")
    doc = yaml.safe_load((ROOT / "examples" / "generated_code.yaml").read_text())
    doc["id"] = f"generated-code-{uuid.uuid4().hex[:8]}"
    plan = Plan.model_validate(doc)
    handle = await start(client, plan, task_queue, task_queues={"sandbox": sandbox_queue})
    result = await asyncio.wait_for(handle.result(), 30)
    assert result.status == "completed", result.final_steps
    out = result.final_steps["compute"].output
    assert out["ok"] is True and out["exit_code"] == 0
    assert out["json"] == {
        "totals": {"eu": 120.5, "us": 345.25, "apac": 99.9},
        "grand_total": 565.65,
    }
    report = out["files"]["report.csv"]
    assert report["content"].splitlines() == [
        "region,total",
        "apac,99.9",
        "eu,120.5",
        "us,345.25",
    ]
    record = out["sandbox"]
    assert record["outcome"] == "ok" and record["step_id"] == "compute"
    assert record["limits"]["timeout_s"] == 10 and record["limits"]["memory_mb"] == 256
    assert record["peak_memory_bytes"] > 0 and record["files_out"] == ["report.csv"]
    assert result.final_steps["check"].status == "completed"
    # visible to whoever watches the plan
    st = await status(handle)
    assert {s.id: s.status for s in st.steps} == {"compute": "completed", "check": "completed"}
    # every run of generated code is in the plan's audit trail: code hash, limits, outcome
    audit = await handle.query("audit", result_type=list[AuditEntry])
    runs = [a for a in audit if a.action == "run_code"]
    assert len(runs) == 1 and runs[0].by == "sandbox" and runs[0].step_id == "compute"
    assert record["code_sha256"][:12] in runs[0].detail
    logged = [r.sandbox_run for r in caplog.records if hasattr(r, "sandbox_run")]
    assert any(
        rec["plan_id"] == plan.id and rec["code_sha256"] == record["code_sha256"] for rec in logged
    )


async def test_escape_attempts_as_plan_steps_are_contained_while_other_plans_run(
    client, worker, task_queue, sandbox_queue, local_server, host_secret, monkeypatch, caplog
) -> None:
    caplog.set_level(logging.INFO, logger="plansmith.sandbox")
    port, connections = local_server
    api_key = f"sk-ant-test-{uuid.uuid4().hex}"
    db_url = f"postgresql://app:{uuid.uuid4().hex}@db/app"
    monkeypatch.setenv("ANTHROPIC_API_KEY", api_key)
    monkeypatch.setenv("DATABASE_URL", db_url)
    host_secret.write_text(f"ANTHROPIC_API_KEY={api_key}\n")
    host_secret.chmod(0o644)
    host_file = Path(tempfile.gettempdir()) / f"escape-{uuid.uuid4().hex}.txt"
    marker = f"marker-{uuid.uuid4().hex}"

    steal = f"""
import json, os
stolen = {{"env": dict(os.environ), "init_env": open("/proc/1/environ").read()}}
for path in [{str(host_secret)!r}, {str(ROOT / "pyproject.toml")!r}]:
    try:
        stolen[path] = open(path).read()
    except OSError as e:
        stolen[path] = type(e).__name__
print(json.dumps(stolen))
"""
    daemon = f"""
import os, sys, time
if os.fork() == 0:
    os.setsid()
    if os.fork() == 0:
        fd = os.open("/dev/null", os.O_RDWR)
        for n in (0, 1, 2):
            os.dup2(fd, n)
        os.execv(sys.executable, [sys.executable, "-c", "import time; time.sleep(600)  # {marker}"])
    os._exit(0)
time.sleep(0.3)
print("daemon started")
"""
    escape = make_plan(
        [
            py(
                "network",
                f"import socket\nsocket.create_connection(('127.0.0.1', {port}), timeout=3)",
            ),
            py("secrets", steal),
            py(
                "outside",
                f"open({str(host_file)!r}, 'w').write('escaped')\n"
                "open('/usr/lib/escape.txt', 'w').write('escaped')\n",
            ),
            py("fork-bomb", "import os\nwhile True:\n    os.fork()\n", processes=16),
            py("memory-bomb", "x = bytearray(10 * 1024**3)\n", memory_mb=64),
            py(
                "disk-bomb",
                "with open('big', 'wb') as f:\n"
                "    for _ in range(10 * 1024):\n"
                "        f.write(b'\\0' * 2**20)\n",
                file_size_mb=4,
            ),
            py("loop", "while True:\n    pass\n", timeout_s=3, cpu_s=30),
            py("daemon", daemon),
        ],
        on_error="continue",
        max_parallel_steps=10,
    )
    queues = {"sandbox": sandbox_queue}
    escaping = await start(client, escape, task_queue, task_queues=queues)

    # meanwhile, both workers keep serving other plans
    await asyncio.sleep(0.5)
    plain = make_plan(
        [
            {
                "id": "shape",
                "tool": "transform",
                "params": {"data": [1, 2], "expression": "sum(@)"},
            },
            {"id": "count", "tool": "count", "params": {"key": uuid.uuid4().hex}},
        ]
    )
    quick = make_plan([py("hello", "print(sum(range(10)))")])
    others = await asyncio.wait_for(
        asyncio.gather(
            (await start(client, plain, task_queue)).result(),
            (await start(client, quick, task_queue, task_queues=queues)).result(),
        ),
        15,
    )
    assert [r.status for r in others] == ["completed", "completed"]
    assert others[1].final_steps["hello"].output["stdout"] == "45\n"
    st = await status(escaping)
    assert st.status == "executing", "the other plans must finish while the escape plan still runs"
    assert {s.id: s.status for s in st.steps}["loop"] == "running"

    result = await asyncio.wait_for(escaping.result(), 30)
    steps = result.final_steps
    assert result.status == "partial"  # on_error: continue; the secrets and daemon steps completed
    expected_failures = {
        "network": "no network",
        "outside": "read-only",
        "fork-bomb": "process limit of 16",
        "memory-bomb": "memory limit of 64 MB",
        "disk-bomb": "file size limit of 4 MB",
        "loop": "wall-clock timeout of 3 s",
    }
    for sid, reason in expected_failures.items():
        assert steps[sid].status == "failed", (sid, steps[sid])
        assert reason in (steps[sid].error or ""), (sid, steps[sid].error)
        assert steps[sid].attempts == 1, "a contained attack is not retried"

    stolen = steps["secrets"].output
    assert steps["secrets"].status == "completed"
    assert api_key not in json.dumps(stolen) and db_url not in json.dumps(stolen)
    taken = stolen["json"]
    assert set(taken["env"]) == {"PATH", "HOME", "TMPDIR", "LANG", "USER"}
    assert taken["init_env"] == "PATH=/usr/bin:/bin\0"
    assert taken[str(host_secret)] == "FileNotFoundError"
    assert taken[str(ROOT / "pyproject.toml")] == "FileNotFoundError"

    assert steps["daemon"].status == "completed"
    assert steps["daemon"].output["sandbox"]["left_behind"] >= 1

    # nothing reached the network, the host's files, or outlived its step
    assert connections == []
    assert not host_file.exists()
    assert sandbox_processes(marker) == []
    assert sandbox_processes() == []

    # every run was logged with its code hash, limits and outcome
    logged = {
        r.sandbox_run["step_id"]: r.sandbox_run
        for r in caplog.records
        if hasattr(r, "sandbox_run") and r.sandbox_run["plan_id"] == escape.id
    }
    assert set(logged) == {s["id"] for s in escape.model_dump()["steps"]}
    assert logged["fork-bomb"]["outcome"] == "process_limit"
    assert logged["loop"]["outcome"] == "timeout"
    assert all(len(rec["code_sha256"]) == 64 and rec["limits"] for rec in logged.values())

    # and the sandbox pool is still healthy
    after = make_plan([py("after", "print('still here')")])
    done = await (await start(client, after, task_queue, task_queues=queues)).result()
    assert done.status == "completed"
    assert done.final_steps["after"].output["stdout"] == "still here\n"


async def test_steps_that_hold_too_much_together_are_stopped_by_the_whole_sandbox_limits(
    client, worker, task_queue, sandbox_queue
) -> None:
    marker = f"marker-{uuid.uuid4().hex}"
    plan = make_plan(
        [
            py("children", SIX_CHILDREN.replace("{marker}", marker), memory_mb=256),
            py("tmpfs", FILL.replace("{where}", "/tmp"), memory_mb=256, disk_mb=512),
            py(
                "fork-bomb",
                "import os\nwhile True:\n    try:\n        os.fork()\n"
                "    except OSError:\n        pass\n",
                processes=8,
            ),
            py("fine", "print(sum(range(10)))", memory_mb=256),
        ],
        on_error="continue",
        max_parallel_steps=1,
    )
    handle = await start(client, plan, task_queue, task_queues={"sandbox": sandbox_queue})
    result = await asyncio.wait_for(handle.result(), 60)
    steps = result.final_steps
    assert result.status == "partial"
    for sid in ("children", "tmpfs"):
        assert steps[sid].status == "failed", (sid, steps[sid])
        assert "memory limit of 256 MB for the whole sandbox exceeded" in (steps[sid].error or "")
        assert steps[sid].attempts == 1
    assert "tmpfs files" in (steps["tmpfs"].error or "")
    assert steps["fork-bomb"].status == "failed"
    assert "process limit of 8 processes/threads for the whole sandbox" in (
        steps["fork-bomb"].error or ""
    )
    assert steps["fine"].status == "completed" and steps["fine"].output["stdout"] == "45\n"
    assert sandbox_processes(marker) == [] and sandbox_processes() == []


async def test_a_worker_without_isolation_refuses_the_step_clearly(
    env, client, worker, task_queue
) -> None:
    no_bwrap = get_settings().replace(sandbox={"bwrap": "/nonexistent/bwrap"})
    async with sandbox_pool(env, no_bwrap) as sandbox_queue:
        plan = make_plan([py("code", "print('must not run')")])
        result = await (
            await start(client, plan, task_queue, task_queues={"sandbox": sandbox_queue})
        ).result()
    step = result.final_steps["code"]
    assert result.status == "failed" and step.status == "failed"
    assert step.error is not None
    assert step.error.startswith("SandboxUnavailable: sandbox isolation is unavailable")
    assert "PLANSMITH_SANDBOX_ISOLATION=none" in step.error
    assert step.attempts == 1

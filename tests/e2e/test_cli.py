"""The `plansmith` CLI as a user runs it (subprocesses against the test dev server), and
the `temporal` CLI steering a plan."""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import subprocess
import sys
import textwrap
import uuid
from pathlib import Path

import pytest

from plansmith.devserver import temporal_cli_path
from tests.helpers import make_plan, start, wait_for, worker_with

ROOT = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.slow


def cli_env(env, task_queue: str) -> dict[str, str]:
    return {
        **os.environ,
        "TEMPORAL_ADDRESS": env.client.service_client.config.target_host,
        "PLANSMITH_TASK_QUEUE": task_queue,
    }


async def plansmith(
    *args: str, env_vars: dict[str, str] | None = None, timeout: float = 60
) -> tuple[int, str, str]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "plansmith.cli",
        *args,
        cwd=ROOT,
        env=env_vars or dict(os.environ),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(proc.communicate(), timeout)
    return proc.returncode or 0, out.decode(), err.decode()


def write(tmp_path: Path, text: str) -> str:
    p = tmp_path / f"plan-{uuid.uuid4().hex[:6]}.yaml"
    p.write_text(textwrap.dedent(text))
    return str(p)


def test_every_verb_has_its_command_and_every_control_its_verb():
    from plans.controls import CONTROL_MODELS
    from plansmith.cli.main import CONTROL_ARGS, build_parser, command_for

    assert list(CONTROL_ARGS) == list(CONTROL_MODELS)
    verbs = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    for verb in verbs.choices:
        assert callable(command_for(verb)), verb


HEAVY = {"temporalio", "fastapi", "sqlalchemy", "sqlmodel", "anthropic", "httpx", "worker"}


@pytest.mark.parametrize(
    ("argv", "allowed"),
    [
        (["--help"], {"plansmith", "workflows"}),
        (
            ["validate", "examples/ci_diamond.yaml"],
            {"plansmith", "workflows", "config", "plans", "contracts"},
        ),
    ],
)
def test_help_and_validate_load_only_what_they_need(argv: list[str], allowed: set[str]):
    """``--help`` loads the standard library only (and the plain errors of the plan
    client); ``validate`` the configuration, the plan domain and the tool catalog."""
    probe = (
        "import sys, contextlib\n"
        "from plansmith.cli.main import run_cli\n"
        "with contextlib.redirect_stdout(None), contextlib.suppress(SystemExit):\n"
        f"    run_cli({argv!r})\n"
        "print(' '.join(sorted({m.split('.')[0] for m in sys.modules})))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", probe], cwd=ROOT, capture_output=True, text=True, check=True
    ).stdout.split()
    project = {"plansmith", "workflows", "config", "plans", "contracts", "store", "api"}
    assert not HEAVY & set(out)
    assert project & set(out) <= allowed
    if "--help" in argv:
        assert "pydantic" not in out


async def test_validate_accepts_the_examples():
    plans = [*sorted((ROOT / "examples").glob("*.yaml")), ROOT / "examples" / "execution_plan.json"]
    for example in plans:
        code, out, err = await plansmith("validate", str(example))
        assert code == 0, err
        assert "valid" in out


async def test_validate_names_the_steps_of_a_cycle_an_unknown_tool_and_a_bad_template(tmp_path):
    path = write(
        tmp_path,
        """
        steps:
          - {id: fetch, tool: htp_request, params: {url: "http://127.0.0.1:1/"}}
          - {id: build, tool: wait, params: {seconds: 1}, depends_on: [deploy]}
          - {id: deploy, tool: wait, params: {seconds: 1}, depends_on: [build]}
          - {id: report, tool: transform, params: {data: "{{ steps.fetchh.output }}", expression: "@"}}
    """,
    )
    code, out, err = await plansmith("validate", path)
    assert code == 2
    assert out == ""
    assert "steps[0].tool: unknown tool 'htp_request' (did you mean 'http_request'?)" in err
    assert "dependency cycle" in err and "build" in err and "deploy" in err
    assert "steps[3].params.data" in err and "unknown step 'fetchh'" in err


async def test_validate_reports_unreadable_files(tmp_path):
    code, _, err = await plansmith("validate", str(tmp_path / "missing.yaml"))
    assert code == 2 and "no such file" in err
    bad = tmp_path / "bad.yaml"
    bad.write_text("steps: [unclosed")
    code, _, err = await plansmith("validate", str(bad))
    assert code == 2 and "not valid JSON/YAML" in err


async def test_run_watch_shows_progress_and_exit_code(env, worker, task_queue, tmp_path):
    code, out, err = await plansmith(
        "run",
        str(ROOT / "examples" / "data_pipeline.yaml"),
        "--watch",
        "--id",
        f"dp-{uuid.uuid4().hex[:8]}",
        env_vars=cli_env(env, task_queue),
    )
    assert code == 0, err
    assert "completed" in out and "✓ aggregate" in out and "✓ check" in out
    # Each change with its time; a finished step with how long it ran.
    finished = [line for line in out.splitlines() if "✓ aggregate" in line]
    assert len(finished) == 1, out
    assert re.fullmatch(
        r"\[\d\d:\d\d:\d\d\] ✓ aggregate +completed \(attempts: 1\) in \d+\.\d\ds", finished[0]
    ), finished[0]
    started = [line for line in out.splitlines() if "▶ aggregate" in line]
    assert all(re.match(r"\[\d\d:\d\d:\d\d\] ▶ aggregate +running", line) for line in started)
    failing = write(
        tmp_path,
        """
        options: {require_approval: false, on_error: continue}
        steps:
          - {id: ok, tool: transform, params: {data: [1, 2], expression: "length(@)"}}
          - {id: broken, tool: http_request, params: {url: "http://127.0.0.1:1/nothing-listens-here"}}
    """,
    )
    code, out, _ = await plansmith("run", failing, "--watch", env_vars=cli_env(env, task_queue))
    assert code == 1
    assert "✗ broken" in out and "partial" in out


async def test_temporal_cli_signal_approves_and_plansmith_refuses_late_controls(
    env, client, worker, task_queue
):
    plan = make_plan(
        [{"id": "a", "tool": "transform", "params": {"data": 1, "expression": "@"}}],
        require_approval=True,
    )
    handle = await start(client, plan, task_queue)
    await wait_for(handle, lambda s: s.status == "pending_approval")
    address = env.client.service_client.config.target_host
    proc = await asyncio.create_subprocess_exec(
        temporal_cli_path(),
        "workflow",
        "signal",
        "--address",
        address,
        "--workflow-id",
        plan.workflow_id,
        "--name",
        "approve",
        "--input",
        json.dumps({"by": "ops"}),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    _, err = await proc.communicate()
    assert proc.returncode == 0, err.decode()
    assert (await handle.result()).status == "completed"

    code, out, err = await plansmith(
        "approve", plan.id, "--by", "late", env_vars=cli_env(env, task_queue)
    )
    assert code == 2
    assert "approve refused: the plan already ended completed" in err
    code, out, _ = await plansmith("status", plan.id, env_vars=cli_env(env, task_queue))
    assert code == 0 and json.loads(out)["status"] == "completed"
    code, _, err = await plansmith("status", "no-such-plan", env_vars=cli_env(env, task_queue))
    assert code == 2 and "no plan" in err


async def test_cli_controls_are_updates_refused_with_a_reason(env, client, worker, task_queue):
    plan = make_plan(
        [{"id": "a", "tool": "wait", "params": {"seconds": 0.2}}], require_approval=True
    )
    handle = await start(client, plan, task_queue)
    await wait_for(handle, lambda s: s.status == "pending_approval")
    e = cli_env(env, task_queue)
    code, _, err = await plansmith("approve", plan.id, "--by", "bob", "--version", "7", env_vars=e)
    assert code == 2 and "stale approval for version 7" in err
    code, out, err = await plansmith(
        "approve", plan.id, "--by", "bob", "--comment", "ok", env_vars=e
    )
    assert code == 0, err
    assert json.loads(out)["accepted"] is True
    assert (await handle.result()).status == "completed"
    code, out, _ = await plansmith("audit", plan.id, env_vars=e)
    entries = json.loads(out)
    # the refused stale approval is part of the audit trail too
    assert [(a["by"], a["accepted"]) for a in entries] == [("bob", False), ("bob", True)]
    assert "stale approval" in entries[0]["detail"] and entries[0]["via"] == "update"


async def test_status_without_a_worker_fails_cleanly_and_run_refuses_a_running_plan(
    env, client, tmp_path
):
    lonely_queue = f"nobody-{uuid.uuid4()}"
    plan = make_plan([{"id": "a", "tool": "wait", "params": {"seconds": 1}}])
    handle = await start(client, plan, lonely_queue)
    e = cli_env(env, lonely_queue)
    code, _, err = await plansmith("status", plan.id, env_vars=e)
    assert code == 2
    assert "no worker answered the status query" in err and "Traceback" not in err
    path = write(
        tmp_path,
        """
        options: {require_approval: false}
        steps: [{id: a, tool: wait, params: {seconds: 1}}]
    """,
    )
    code, _, err = await plansmith("run", path, "--id", plan.id, env_vars=e)
    assert code == 2 and "already running" in err
    await handle.terminate("test cleanup")


async def temporal(env, *args: str) -> tuple[int, str, str]:
    proc = await asyncio.create_subprocess_exec(
        temporal_cli_path(),
        *args,
        "--address",
        env.client.service_client.config.target_host,
        "-o",
        "json",
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(proc.communicate(), 30)
    return proc.returncode or 0, out.decode(), err.decode()


async def test_a_pause_question_asked_with_the_temporal_cli_is_answered_with_plansmith(
    env, client, worker, task_queue
):
    """Pause with a question -> execution_state shows it -> answer -> resume -> completed."""
    k = uuid.uuid4().hex
    plan = make_plan(
        [
            {"id": "step_1", "tool": "wait", "params": {"seconds": 0.5}},
            {
                "id": "step_2",
                "tool": "count",
                "params": {"key": k, "value": "{{ answer }}"},
                "depends_on": ["step_1"],
            },
        ]
    )
    handle = await start(client, plan, task_queue)
    await wait_for(handle, lambda s: s.steps[0].status == "running")
    pause = {
        "by": "ops",
        "step_id": "step_2",
        "question": "This step will modify production data. Proceed?",
    }
    code, out, err = await temporal(
        env,
        "workflow",
        "update",
        "execute",
        "--workflow-id",
        plan.workflow_id,
        "--name",
        "pause",
        "--input",
        json.dumps(pause),
    )
    assert code == 0, err
    code, out, err = await temporal(
        env, "workflow", "query", "--workflow-id", plan.workflow_id, "--name", "execution_state"
    )
    assert code == 0, err
    state = json.loads(out)["queryResult"][0]
    assert state["state"] == "waiting_clarification"
    assert state["step_id"] == "step_2"
    assert state["question"] == pause["question"]
    assert state["paused_at"]
    e = cli_env(env, task_queue)
    code, _, err = await plansmith(
        "answer-clarification",
        plan.id,
        "--step-id",
        "step_2",
        "--answer",
        "yes",
        "--by",
        "ann",
        env_vars=e,
    )
    assert code == 0, err
    code, out, _ = await plansmith("execution-state", plan.id, env_vars=e)
    assert json.loads(out)["state"] == "paused"
    code, _, err = await plansmith(
        "resume", plan.id, "--feedback", "Yes, proceed", "--by", "ann", env_vars=e
    )
    assert code == 0, err
    res = await handle.result()
    assert res.status == "completed"
    st = await wait_for(handle, lambda s: True)
    assert st.feedback[-1] == "Yes, proceed"
    assert {s.id: s.output for s in st.steps}["step_2"]["value"] == "yes", (
        "the answer is part of the step's input"
    )


async def test_a_cli_correction_after_approval_waits_for_approve_step(
    env, client, worker, task_queue
):
    plan = make_plan(
        [
            # a gate holds b and c back while the CLI corrects them, however slow it is
            {"id": "a", "tool": "wait", "params": {"seconds": 0}, "requires_approval": True},
            {"id": "b", "tool": "wait", "params": {"seconds": 0}, "depends_on": ["a"]},
            {"id": "c", "tool": "wait", "params": {"seconds": 0}, "depends_on": ["a"]},
        ],
        require_approval=True,
    )
    handle = await start(client, plan, task_queue)
    await wait_for(handle, lambda s: s.status == "pending_approval")
    e = cli_env(env, task_queue)
    code, _, err = await plansmith("approve", plan.id, "--by", "alice", env_vars=e)
    assert code == 0, err
    change = json.dumps({"params": {"seconds": 0.1}})
    code, out, err = await plansmith(
        "apply-correction",
        plan.id,
        "--by",
        "bot",
        "--step-id",
        "b",
        "--updated-step",
        change,
        env_vars=e,
    )
    assert code == 0, err
    assert "waits for a person to approve the change" in json.loads(out)["detail"]
    code, out, err = await plansmith(  # the sender approves their own change at once
        "apply-correction",
        plan.id,
        "--by",
        "carol",
        "--step-id",
        "c",
        "--updated-step",
        change,
        "--approve",
        env_vars=e,
    )
    assert code == 0, err
    assert "approved by carol" in json.loads(out)["detail"]
    code, _, err = await plansmith(
        "approve-step", plan.id, "--by", "dan", "--step-id", "a", env_vars=e
    )
    assert code == 0, err
    st = await wait_for(handle, lambda s: any(w.step_id == "b" for w in s.waiting))
    assert [w.step_id for w in st.waiting] == ["b"]
    code, _, err = await plansmith(
        "approve-step", plan.id, "--by", "dan", "--step-id", "b", "--version", "2", env_vars=e
    )
    assert code == 0, err
    assert (await handle.result()).status == "completed"


async def test_validate_holds_the_step_limit_and_deep_documents(tmp_path):
    big = tmp_path / "big.json"
    steps = [{"id": f"s{i}", "tool": "wait", "params": {"seconds": 0}} for i in range(30)]
    big.write_text(json.dumps({"steps": steps}))
    code, _, err = await plansmith(
        "validate", str(big), env_vars={**os.environ, "PLANSMITH_MAX_PLAN_STEPS": "20"}
    )
    assert code == 2, err
    assert "steps: a plan has at most 20 steps (PLANSMITH_MAX_PLAN_STEPS); this one has 30" in err
    code, out, err = await plansmith("validate", str(big))
    assert code == 0 and "30 step(s)" in out, err
    deep = tmp_path / "deep.json"
    deep.write_text('{"steps": ' + "[" * 20_000 + "]" * 20_000 + "}")
    code, _, err = await plansmith("validate", str(deep))
    assert code == 2 and "nested too deeply" in err and "Traceback" not in err, err


async def test_status_of_an_ended_plan_needs_no_worker(env, client, task_queue):
    """A query of a closed workflow makes a worker replay its whole run (seconds for a big
    plan, and nothing at all with no worker up): `status` reads how the plan ended from
    the store instead, with every step's output."""
    plan = make_plan(
        [
            {"id": "a", "tool": "transform", "params": {"data": [1, 2, 3], "expression": "@"}},
            {
                "id": "b",
                "tool": "transform",
                "depends_on": ["a"],
                "params": {"data": [4, 5], "expression": "length(@)"},
            },
        ]
    )
    async with worker_with(client, task_queue):
        assert (await (await start(client, plan, task_queue)).result()).status == "completed"
    e = cli_env(env, task_queue)
    code, out, err = await plansmith("status", plan.id, env_vars=e)
    assert code == 0, err
    st = json.loads(out)
    assert st["status"] == "completed" and st["progress"] == 1.0
    assert {s["id"]: s["output"] for s in st["steps"]} == {"a": [1, 2, 3], "b": 2}
    # the same question put to the workflow finds nobody to replay it
    code, _, err = await plansmith("audit", plan.id, env_vars=e, timeout=90)
    assert code == 2 and "no worker answered" in err


async def test_run_an_execution_plan_in_its_own_format(env, worker, task_queue):
    """The execution-plan format (Go field names) runs as it is: its steps, in seconds."""
    code, out, err = await plansmith(
        "run",
        str(ROOT / "examples" / "execution_plan.json"),
        "--watch",
        "--id",
        f"ep-{uuid.uuid4().hex[:8]}",
        env_vars=cli_env(env, task_queue),
    )
    assert code == 0, err
    assert "✓ collect" in out and "✓ total" in out and "✓ publish" in out
    assert '"result": {"published": true}' in out

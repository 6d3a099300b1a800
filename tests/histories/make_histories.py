"""Record the histories that ``tests/workflows/test_replay.py`` replays.

Run from the project root::

    .venv/bin/python -m tests.histories.make_histories            # every scenario
    .venv/bin/python -m tests.histories.make_histories diamond    # just some

It starts its own local dev server (in memory, on 127.0.0.1 only) and a worker, runs
each scenario below to its end, checks that it ended as intended, and writes the
workflow's history to ``tests/histories/<name>.json``. Plan ids are fixed
(``hist-<name>``), so regenerating rewrites the same files. Files of scenarios that are
not run are left alone: histories recorded by older code are worth keeping.

Regenerate only when a change is *meant* to alter the workflow's commands (see README.md).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import sys
import tempfile
import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from temporalio.client import Client, WorkflowFailureError, WorkflowHandle
from temporalio.client import WorkflowUpdateFailedError as UpdateFailed
from temporalio.contrib.pydantic import pydantic_data_converter
from temporalio.testing import WorkflowEnvironment
from temporalio.worker import Worker

import tests.tools_for_tests  # noqa: F401  registers count, flaky and boom
from contracts.limits import limiter_workflow_id
from contracts.webhooks import dispatcher_id
from plans.limits import ConcurrencyLimits
from plans.models import Plan
from plansmith.devserver import temporal_cli_path
from tests.fast_crash import chain_plan, crash_mid_chain
from tests.helpers import activity_deps, status, wait_for, worker_with
from tests.webhook_receiver import Receiver
from worker import sandbox_activities_for
from workflows.plan_input import SEARCH_ATTRIBUTES, PlanInput, PlanResult
from workflows.plan_workflow import PlanWorkflow
from workflows.starter import resume_from_failure

HERE = Path(__file__).resolve().parent
PLAN_ID_PREFIX = "hist-"
IDENTITY = "plansmith-make-histories"  # keeps host names and pids out of the files
TASK_QUEUE = "plansmith-histories"  # the server is fresh each time: a fixed name is safe

log = logging.getLogger("make_histories")

Handle = WorkflowHandle[PlanWorkflow, PlanResult]
Scenario = Callable[[Client, str], Awaitable[Handle]]
SCENARIOS: dict[str, tuple[str, Scenario]] = {}
_RECEIVERS: dict[str, Receiver] = {}  # local webhook receivers the scenarios started


def scenario(name: str, expect: str) -> Callable[[Scenario], Scenario]:
    """Register a scenario named ``name`` whose plan must end with status ``expect``."""

    def register(fn: Scenario) -> Scenario:
        SCENARIOS[name] = (expect, fn)
        return fn

    return register


def plan_of(name: str, steps: list[dict[str, Any]], **options: Any) -> Plan:
    inputs = options.pop("inputs", {})
    return Plan.model_validate(
        {
            "id": f"{PLAN_ID_PREFIX}{name}",
            "title": f"replay history: {name}",
            "inputs": inputs,
            "options": {"require_approval": False, **options},
            "steps": steps,
        }
    )


async def start(client: Client, plan: Plan, task_queue: str) -> Handle:
    return await client.start_workflow(
        PlanWorkflow.run, PlanInput(plan=plan), id=plan.workflow_id, task_queue=task_queue
    )


def wait_step(sid: str, seconds: float, deps: list[str] | None = None) -> dict:
    return {"id": sid, "tool": "wait", "params": {"seconds": seconds}, "depends_on": deps or []}


def count_step(sid: str, key: str, deps: list[str] | None = None, **kw: Any) -> dict:
    return {"id": sid, "tool": "count", "params": {"key": key}, "depends_on": deps or [], **kw}


async def refused(call: Awaitable[Any], reason: str) -> None:
    """An update the workflow must refuse (recorded in its audit trail, returned as an error)."""
    try:
        await call
    except UpdateFailed as e:
        if reason not in str(e.cause):
            raise AssertionError(f"refused for another reason: {e.cause}") from e
        return
    raise AssertionError(f"update was accepted; expected a refusal mentioning {reason!r}")


def step_is(sid: str, *states: str) -> Callable[[Any], bool]:
    return lambda st: any(s.id == sid and s.status in states for s in st.steps)


# --- scenarios ---------------------------------------------------------------------------


@scenario("diamond", expect="completed")
async def diamond(client: Client, tq: str) -> Handle:
    """src -> (left || right) -> join, with templates from inputs and step outputs."""
    plan = plan_of(
        "diamond",
        [
            {
                "id": "src",
                "tool": "transform",
                "params": {"data": {"items": [3, 4, 5]}, "expression": "items"},
            },
            {
                "id": "left",
                "tool": "transform",
                "params": {"data": {"xs": "{{ steps.src.output }}"}, "expression": "sum(xs)"},
                "depends_on": ["src"],
            },
            {
                "id": "right",
                "tool": "wait",
                "params": {"seconds": 0.2, "result": "{{ inputs.who }}"},
                "depends_on": ["src"],
            },
            {
                "id": "join",
                "tool": "count",
                "params": {
                    "key": "hist-diamond",
                    "value": "total={{ steps.left.output }} for {{ steps.right.output.result }}",
                },
                "depends_on": ["left", "right"],
            },
        ],
        inputs={"who": "ops"},
    )
    return await start(client, plan, tq)


@scenario("flaky_retried", expect="completed")
async def flaky_retried(client: Client, tq: str) -> Handle:
    plan = plan_of(
        "flaky_retried",
        [
            {
                "id": "flaky",
                "tool": "flaky",
                "params": {"key": "hist-flaky", "failures": 2},
                "max_retries": 2,
                "retry_delay_s": 0.05,
            }
        ],
    )
    return await start(client, plan, tq)


def failing_dag(name: str) -> list[dict[str, Any]]:
    #   bad -> child ; ok -> ok-child
    return [
        {"id": "bad", "tool": "boom", "params": {"key": f"{name}-bad", "permanent": True}},
        count_step("child", f"{name}-child", ["bad"]),
        {"id": "ok", "tool": "count", "params": {"key": f"{name}-ok", "sleep_s": 0.3}},
        count_step("ok-child", f"{name}-okc", ["ok"]),
    ]


@scenario("on_error_continue", expect="partial")
async def on_error_continue(client: Client, tq: str) -> Handle:
    plan = plan_of("on_error_continue", failing_dag("continue"), on_error="continue")
    return await start(client, plan, tq)


@scenario("on_error_stop", expect="failed")
async def on_error_stop(client: Client, tq: str) -> Handle:
    plan = plan_of("on_error_stop", failing_dag("stop"), on_error="stop")
    return await start(client, plan, tq)


@scenario("approved_by_signal", expect="completed")
async def approved_by_signal(client: Client, tq: str) -> Handle:
    plan = plan_of(
        "approved_by_signal", [count_step("a", "hist-approved-signal")], require_approval=True
    )
    handle = await start(client, plan, tq)
    await wait_for(handle, lambda s: s.status == "pending_approval")
    await handle.signal("approve", {"who": "nobody"})  # invalid: audited as refused
    await handle.signal("approve", {"by": "ops", "comment": "ship it"})
    return handle


@scenario("approved_by_update", expect="completed")
async def approved_by_update(client: Client, tq: str) -> Handle:
    plan = plan_of(
        "approved_by_update",
        [count_step("a", "hist-approved-update"), wait_step("b", 0.05, ["a"])],
        require_approval=True,
    )
    handle = await start(client, plan, tq)
    st = await wait_for(handle, lambda s: s.status == "pending_approval")
    await refused(
        handle.execute_update("approve", {"by": "bob", "version": st.version + 1}),
        "stale approval",
    )
    await refused(handle.execute_update("approve", {"by": "bob", "digest": "0000"}), "digest")
    await refused(handle.execute_update("resume", {"by": "bob"}), "resume refused")
    await handle.execute_update(
        "approve", {"by": "bob", "version": st.version, "digest": st.digest}
    )
    return handle


@scenario("auto_policy", expect="completed")
async def auto_policy(client: Client, tq: str) -> Handle:
    """require_approval=auto: low-risk, idempotent tools run without a person. The decision
    reads the tool catalog, so changing a tool's risk changes what this replays into."""
    plan = plan_of(
        "auto_policy",
        [
            {
                "id": "shape",
                "tool": "transform",
                "params": {"data": [1, 2], "expression": "length(@)"},
            },
            wait_step("settle", 0.05, ["shape"]),
        ],
        require_approval="auto",
    )
    return await start(client, plan, tq)


@scenario("adaptive_policy", expect="completed")
async def adaptive_policy(client: Client, tq: str) -> Handle:
    """require_approval=auto under the adaptive policy: the assess_approval activity (risk
    and a new agent's trust) asks a person, and the critical step waits at a gate too."""
    plan = plan_of(
        "adaptive_policy",
        [
            {
                "id": "shape",
                "tool": "transform",
                "params": {"data": [1, 2], "expression": "length(@)"},
            },
            count_step(
                "purge",
                "hist-purge",
                ["shape"],
                params={
                    "key": "hist-purge",
                    "value": "DROP TABLE users on the production database",
                },
            ),
        ],
        require_approval="auto",
    ).model_copy(update={"agent_id": "hist-agent"})
    handle = await start(client, plan, tq)
    await wait_for(handle, lambda st: st.status == "pending_approval")  # a new agent: ask
    await handle.execute_update("approve", {"by": "ops"})
    await wait_for(handle, step_is("purge", "waiting_approval"))  # critical: ask again
    await handle.execute_update("approve_step", {"by": "dba", "step_id": "purge"})
    return handle


@scenario("llm_steps", expect="completed")
async def llm_steps(client: Client, tq: str) -> Handle:
    """The offline model behind an llm step that calls a tool (a child activity), a
    decision with branches, and a validation with an LLM judge."""
    plan = plan_of(
        "llm_steps",
        [
            {
                "id": "agent",
                "kind": "llm",
                "params": {
                    "prompt": 'Count it: use count with {"key": "hist-llm"}',
                    "tools": ["count"],
                },
            },
            {
                "id": "route",
                "kind": "decision",
                "depends_on": ["agent"],
                "params": {
                    "question": "ship or hold the counted release?",
                    "options": ["ship", "hold"],
                    "context": "ship it",
                    "branches": {"ship": ["ship"], "hold": ["hold"]},
                },
            },
            count_step("ship", "hist-ship", ["route"]),
            count_step("hold", "hist-hold", ["route"]),
            {
                "id": "judge",
                "kind": "validation",
                "depends_on": ["ship", "hold"],
                "params": {
                    "checks": [{"expr": "steps.route.output.choice == 'ship'"}],
                    "judge": {
                        "criteria": ["it names 'hist-ship'"],
                        "subject": "{{ steps.ship.output }}",
                    },
                },
            },
        ],
    )
    handle = await start(client, plan, tq)  # the worker answers with the offline model
    await handle.result()
    return handle


@scenario("rejected", expect="rejected")
async def rejected(client: Client, tq: str) -> Handle:
    plan = plan_of("rejected", [count_step("a", "hist-rejected")], require_approval=True)
    handle = await start(client, plan, tq)
    await wait_for(handle, lambda s: s.status == "pending_approval")
    await handle.execute_update("reject", {"by": "ops", "reason": "wrong target"})
    return handle


@scenario("approval_timeout", expect="rejected")
async def approval_timeout(client: Client, tq: str) -> Handle:
    plan = plan_of(
        "approval_timeout",
        [count_step("a", "hist-approval-timeout")],
        require_approval=True,
        approval_timeout_s=0.5,
        on_approval_timeout="reject",
    )
    return await start(client, plan, tq)


@scenario("cancel_update", expect="cancelled")
async def cancel_update(client: Client, tq: str) -> Handle:
    plan = plan_of("cancel_update", [wait_step("long", 30), wait_step("after", 0.05, ["long"])])
    handle = await start(client, plan, tq)
    await wait_for(handle, step_is("long", "running"))
    await handle.execute_update("cancel", {"by": "ops", "reason": "wrong day"})
    return handle


@scenario("temporal_cancel", expect="cancelled")
async def temporal_cancel(client: Client, tq: str) -> Handle:
    plan = plan_of("temporal_cancel", [wait_step("long", 30), wait_step("after", 0.05, ["long"])])
    handle = await start(client, plan, tq)
    await wait_for(handle, step_is("long", "running"))
    await handle.cancel()
    return handle


def gated(name: str) -> list[dict[str, Any]]:
    return [
        count_step("build", f"{name}-build"),
        count_step("deploy", f"{name}-deploy", ["build"], requires_approval=True),
        count_step("notify", f"{name}-notify", ["deploy"]),
    ]


@scenario("step_gate_approved", expect="completed")
async def step_gate_approved(client: Client, tq: str) -> Handle:
    handle = await start(client, plan_of("step_gate_approved", gated("gate-ok")), tq)
    await wait_for(handle, step_is("deploy", "waiting_approval"))
    await refused(
        handle.execute_update("approve_step", {"by": "ann", "step_id": "deploy", "version": 2}),
        "stale decision",
    )
    await handle.execute_update("approve_step", {"by": "ann", "step_id": "deploy", "version": 1})
    return handle


@scenario("step_gate_rejected", expect="partial")
async def step_gate_rejected(client: Client, tq: str) -> Handle:
    handle = await start(client, plan_of("step_gate_rejected", gated("gate-no")), tq)
    await wait_for(handle, step_is("deploy", "waiting_approval"))
    await handle.execute_update(
        "reject_step", {"by": "ann", "step_id": "deploy", "reason": "freeze week"}
    )
    return handle


@scenario("pause_resume", expect="completed")
async def pause_resume(client: Client, tq: str) -> Handle:
    plan = plan_of("pause_resume", [wait_step("a", 0.5), count_step("b", "hist-pause", ["a"])])
    handle = await start(client, plan, tq)
    await wait_for(handle, step_is("a", "running"))
    await handle.execute_update("pause", {"by": "ann", "reason": "check the output first"})
    # the running step finishes; nothing new starts while paused
    await wait_for(handle, lambda s: s.status == "paused" and step_is("a", "completed")(s))
    await handle.execute_update("resume", {"by": "ann", "feedback": "looks fine, go on"})
    return handle


@scenario("ask_then_skip", expect="partial")
async def ask_then_skip(client: Client, tq: str) -> Handle:
    plan = plan_of(
        "ask_then_skip",
        [
            {"id": "bad", "tool": "boom", "params": {"key": "ask-bad", "permanent": True}},
            count_step("after", "ask-after", ["bad"]),
        ],
        on_error="ask",
    )
    handle = await start(client, plan, tq)
    await wait_for(handle, lambda s: s.status == "waiting_correction")
    await handle.execute_update(
        "skip_step", {"by": "ops", "step_id": "bad", "reason": "not needed today"}
    )
    return handle


@scenario("ask_correct_retry", expect="completed")
async def ask_correct_retry(client: Client, tq: str) -> Handle:
    plan = plan_of(
        "ask_correct_retry",
        [
            {"id": "fix", "tool": "boom", "params": {"key": "fix-bad", "permanent": True}},
            count_step("after", "fix-after", ["fix"]),
        ],
        on_error="ask",
    )
    handle = await start(client, plan, tq)
    await wait_for(handle, lambda s: s.status == "waiting_correction")
    correction = {"updated_step": {"tool": "count", "params": {"key": "fix-good"}}}
    await handle.execute_update(
        "apply_correction", {"by": "ops", "step_id": "fix", "correction": correction}
    )
    await handle.execute_update("retry_step", {"by": "ops", "step_id": "fix"})
    return handle


@scenario("replan_on_error", expect="completed")
async def replan_on_error(client: Client, tq: str) -> Handle:
    """on_error: replan: the offline planner proposes more retries for a transient
    failure; a person accepts; the failed step runs again, its completed upstream not."""
    plan = plan_of(
        "replan_on_error",
        [
            count_step("upstream", "replan-upstream"),
            {
                "id": "fetch",
                "tool": "flaky",
                "params": {"key": "replan-fetch", "failures": 2},
                "depends_on": ["upstream"],
                "max_retries": 0,
                "retry_delay_s": 0,
            },
            count_step("after", "replan-after", ["fetch"]),
        ],
        on_error="replan",
        require_approval=True,
    )
    handle = await start(client, plan, tq)
    await handle.execute_update("approve", {"by": "alice"})
    await wait_for(
        handle,
        lambda s: any(p.state == "proposed" for p in s.replans),
    )
    await handle.execute_update("accept_replan", {"by": "rita", "step_id": "fetch"})
    return handle


@scenario("clarification", expect="completed")
async def clarification(client: Client, tq: str) -> Handle:
    plan = plan_of(
        "clarification",
        [
            count_step(
                "ask",
                "hist-clarify",
                requires_clarification=True,
                clarification_question="which region?",
            )
        ],
    )
    handle = await start(client, plan, tq)
    await wait_for(handle, step_is("ask", "waiting_clarification"))
    await handle.signal("answer_clarification", {"by": "ann", "answer": "eu-west-1"})
    return handle


@scenario("total_timeout", expect="failed")
async def total_timeout(client: Client, tq: str) -> Handle:
    plan = plan_of(
        "total_timeout",
        [wait_step("slow", 30), count_step("after", "hist-timeout", ["slow"])],
        total_timeout_s=1,
    )
    return await start(client, plan, tq)


@scenario("when_skips_branch", expect="completed")
async def when_skips_branch(client: Client, tq: str) -> Handle:
    plan = plan_of(
        "when_skips_branch",
        [
            {
                "id": "probe",
                "tool": "transform",
                "params": {"data": {"env": "staging"}, "expression": "env"},
            },
            count_step(
                "prod-only", "when-prod", ["probe"], when="steps.probe.output == 'production'"
            ),
            count_step("prod-after", "when-prod-after", ["prod-only"]),
            count_step("always", "when-always", ["probe"]),
        ],
    )
    return await start(client, plan, tq)


@scenario("continued_as_new", expect="completed")
async def continued_as_new(client: Client, tq: str) -> Handle:
    """A chain long enough to continue as new: the first run's history ends with it."""
    plan = plan_of(
        "continued_as_new",
        [count_step(f"s{i:02d}", f"can-{i}", [f"s{i - 1:02d}"] if i else []) for i in range(12)],
    )
    handle = await client.start_workflow(
        PlanWorkflow.run,
        PlanInput(plan=plan, max_history_events=50),
        id=plan.workflow_id,
        task_queue=tq,
    )
    # record the first run, whose history ends by continuing as new
    return client.get_workflow_handle(
        plan.workflow_id, run_id=handle.first_execution_run_id, result_type=PlanResult
    )


@scenario("resumed_from_failure", expect="completed")
async def resumed_from_failure(client: Client, tq: str) -> Handle:
    """Failed on a flaky step, then resumed: the new run carries the completed step."""
    key = f"resume-flaky-{uuid.uuid4().hex[:8]}"
    plan = plan_of(
        "resumed_from_failure",
        [
            count_step("first", "resume-first"),
            {
                "id": "flaky",
                "tool": "flaky",
                "params": {"key": key, "failures": 1},
                "depends_on": ["first"],
            },
            count_step("last", "resume-last", ["flaky"]),
        ],
    )
    handle = await start(client, plan, tq)
    if (await handle.result()).status.value != "failed":
        raise AssertionError("the first run should fail on the flaky step")
    new, _ = await resume_from_failure(client, plan.id or "", "ops", tq)
    return new


@scenario("gate_timeout", expect="partial")
async def gate_timeout(client: Client, tq: str) -> Handle:
    """A step gate nobody answers: rejected by its durable timer."""
    plan = plan_of("gate_timeout", gated("gate-timeout"), step_approval_timeout_s=0.5)
    return await start(client, plan, tq)


@scenario("resumed_same_key", expect="completed")
async def resumed_same_key(client: Client, tq: str) -> Handle:
    """Like resumed_from_failure, recorded since idempotency keys follow the request
    (the ``request-idempotency-key`` patch): the resumed step sends its old key."""
    key = f"same-key-flaky-{uuid.uuid4().hex[:8]}"
    plan = plan_of(
        "resumed_same_key",
        [
            count_step("first", "same-key-first"),
            {
                "id": "flaky",
                "tool": "flaky",
                "params": {"key": key, "failures": 1},
                "depends_on": ["first"],
            },
        ],
    )
    handle = await start(client, plan, tq)
    if (await handle.result()).status.value != "failed":
        raise AssertionError("the first run should fail on the flaky step")
    new, _ = await resume_from_failure(client, plan.id or "", "ops", tq)
    return new


@scenario("judge_gate_approved", expect="completed")
async def judge_gate_approved(client: Client, tq: str) -> Handle:
    """An llm step calls a tool (a child activity under a request key), then a validation
    step's judge criterion the offline model cannot assess waits for a person
    (on_unassessed: ask), who passes it."""
    plan = plan_of(
        "judge_gate_approved",
        [
            {
                "id": "agent",
                "kind": "llm",
                "params": {
                    "prompt": 'Count it: use count with {"key": "hist-judge-agent"}',
                    "tools": ["count"],
                },
            },
            {
                "id": "review",
                "kind": "validation",
                "depends_on": ["agent"],
                "params": {
                    "judge": {
                        "criteria": ["mentions 'offline'", "is tidy"],
                        "subject": "{{ steps.agent.output }}",
                    },
                    "on_unassessed": "ask",
                },
            },
            count_step("after", "hist-judge-after", ["review"]),
        ],
    )
    handle = await start(client, plan, tq)
    await wait_for(handle, step_is("review", "waiting_approval"))
    await handle.execute_update("approve_step", {"by": "ann", "step_id": "review"})
    return handle


@scenario("secrets", expect="completed")
async def secrets(client: Client, tq: str) -> Handle:
    """``{{ secrets.NAME }}``: the check_secrets activity first, then a tool step given the
    value (its length comes back; the history keeps only the reference)."""
    os.environ["PLANSMITH_SECRET_HIST_TOKEN"] = "replay-secret-value"  # read by the worker
    plan = plan_of(
        "secrets",
        [
            {
                "id": "measure",
                "tool": "transform",
                "params": {"data": {"t": "{{ secrets.HIST_TOKEN }}"}, "expression": "length(t)"},
            }
        ],
    )
    return await start(client, plan, tq)


@scenario("fast_path", expect="completed")
async def fast_path(client: Client, tq: str) -> Handle:
    """Since the ``fast-path`` patch: a chain mixing fast steps (transforms, a check-only
    validation: local activities, recorded as markers) with ordinary ones (``wait``, a
    ``count``, a transform with ``fast: false``: activity tasks)."""
    return await start(client, fast_chain("fast_path", "hist-fast-path"), tq)


@scenario("fast_path_step_ids", expect="completed")
async def fast_path_step_ids(client: Client, tq: str) -> Handle:
    """Since the ``fast-path-step-ids`` patch: the ``fast_path`` chain, its local
    activities named by the step id (their activity id) instead of a summary."""
    return await start(client, fast_chain("fast_path_step_ids", "hist-fast-ids"), tq)


def fast_chain(name: str, key: str) -> Plan:
    """Fast steps mixed with ordinary ones, ending in a ``count`` under ``key``."""
    return plan_of(
        name,
        [
            {
                "id": "src",
                "tool": "transform",
                "params": {"data": {"items": [3, 4, 5]}, "expression": "items"},
            },
            {
                "id": "sum",
                "tool": "transform",
                "params": {"data": {"xs": "{{ steps.src.output }}"}, "expression": "sum(xs)"},
                "depends_on": ["src"],
            },
            {
                "id": "pause",
                "tool": "wait",
                "params": {"seconds": 0.1, "result": "{{ steps.sum.output }}"},
                "depends_on": ["sum"],
            },
            {
                "id": "check",
                "kind": "validation",
                "params": {"checks": [{"name": "twelve", "expr": "steps.sum.output == 12"}]},
                "depends_on": ["pause"],
            },
            {
                "id": "slow",
                "tool": "transform",
                "fast": False,
                "params": {"data": {"n": "{{ steps.sum.output }}"}, "expression": "n"},
                "depends_on": ["check"],
            },
            {
                "id": "twice",
                "tool": "transform",
                "params": {"data": {"n": "{{ steps.slow.output }}"}, "expression": "[n, n]"},
                "depends_on": ["slow"],
            },
            count_step("done", key, ["twice"]),
        ],
    )


@scenario("fast_path_crash", expect="completed")
async def fast_path_crash(client: Client, tq: str) -> Handle:
    """A worker process SIGKILLed in the middle of a fast-path chain (fast ``tick`` steps
    around one ordinary step), and a new worker process that finishes it
    (:mod:`tests.fast_crash`); the history holds the dead worker's timed-out workflow
    task and the fast steps the new worker ran again."""
    log = Path(tempfile.mkdtemp(prefix="plansmith-histories-")) / "ticks.log"
    plan = chain_plan(f"{PLAN_ID_PREFIX}fast_path_crash", log, steps=8, ordinary_at=3)
    crash = await crash_mid_chain(client, f"{tq}-crash", plan, log, after=5, identity=IDENTITY)
    if crash.durable < 3:
        raise AssertionError(f"fast_path_crash: the crash came too early: {crash}")
    return crash.handle


@scenario("snapshot_no_repeat", expect="completed")
async def snapshot_no_repeat(client: Client, tq: str) -> Handle:
    """Since the ``snapshot-no-repeat`` patch: store snapshots while steps run (a wait
    longer than the snapshot interval) and at the end, none repeating the one before."""
    plan = plan_of(
        "snapshot_no_repeat",
        [
            {"id": "first", "tool": "transform", "params": {"data": [1, 2], "expression": "@"}},
            wait_step("long", 1.5, ["first"]),
            count_step("last", "hist-snapshot-no-repeat", ["long"]),
        ],
    )
    return await start(client, plan, tq)


@scenario("snapshot_after_interval", expect="completed")
async def snapshot_after_interval(client: Client, tq: str) -> Handle:
    """Since the ``snapshot-after-interval`` patch: the run's first store snapshot waits
    one interval (a timer first, not an activity), then the last one goes at the end."""
    plan = plan_of(
        "snapshot_after_interval",
        [
            {"id": "first", "tool": "transform", "params": {"data": [1, 2], "expression": "@"}},
            wait_step("long", 1.5, ["first"]),
            count_step("last", "hist-snapshot-after-interval", ["long"]),
        ],
    )
    return await start(client, plan, tq)


@scenario("short_plan_one_snapshot", expect="completed")
async def short_plan_one_snapshot(client: Client, tq: str) -> Handle:
    """Since the ``snapshot-after-interval`` patch: a plan that ends within the snapshot
    interval cancels the first snapshot's timer and is written once, at its end."""
    plan = plan_of(
        "short_plan_one_snapshot",
        [
            {"id": "a", "tool": "transform", "params": {"data": [1], "expression": "@"}},
            count_step("b", "hist-short-plan-one-snapshot", ["a"]),
        ],
    )
    return await start(client, plan, tq)


LIMITER_HISTORY = HERE / "limiter" / "plan_limiter.json"


@scenario("concurrency_limits", expect="completed")
async def concurrency_limits(client: Client, tq: str) -> Handle:
    """Since the ``concurrency-limits`` patch: with a limit of one plan, this plan waits
    ``queued`` (request_plan_slot, then the plan_slot_granted signal) behind a plan whose
    step gate holds the slot, starts when that one ends, and releases its own slot. The
    queue's limiter's history is written to limiter/plan_limiter.json."""
    limits = ConcurrencyLimits(max_plans=1, check_every_s=5)
    holder_plan = plan_of(
        "concurrency_limits_holder",
        [{"id": "gate", "tool": "wait", "params": {"seconds": 0}, "requires_approval": True}],
    )
    holder = await client.start_workflow(
        PlanWorkflow.run,
        PlanInput(plan=holder_plan, limits=limits),
        id=holder_plan.workflow_id,
        task_queue=tq,
    )
    await wait_for(holder, lambda s: s.status == "waiting_approval")
    plan = plan_of("concurrency_limits", [count_step("a", "hist-concurrency-limits")])
    handle = await client.start_workflow(
        PlanWorkflow.run, PlanInput(plan=plan, limits=limits), id=plan.workflow_id, task_queue=tq
    )
    await wait_for(handle, lambda s: s.status == "queued")
    await holder.signal("approve_step", {"by": "ops", "step_id": "gate"})
    await handle.result()
    limiter = client.get_workflow_handle(limiter_workflow_id(tq))
    history = await limiter.fetch_history()
    LIMITER_HISTORY.parent.mkdir(exist_ok=True)
    LIMITER_HISTORY.write_text(json.dumps(json.loads(history.to_json()), indent=1) + "\n")
    await limiter.terminate("histories recorded")
    return handle


@scenario("webhooks", expect="completed")
async def webhooks(client: Client, tq: str) -> Handle:
    """A plan that names its own webhook (``options.webhooks``): the plan's commands are
    those of any plan (its events go out through the store and the webhook dispatcher,
    never from the plan's workflow); the dispatcher's own history is recorded beside it
    (:func:`record_dispatcher`)."""
    receiver = _RECEIVERS.setdefault("webhooks", Receiver().start())
    plan = plan_of(
        "webhooks",
        [
            {"id": "a", "tool": "transform", "params": {"data": [1], "expression": "@"}},
            count_step("b", "hist-webhooks", ["a"]),
        ],
        webhooks=[{"url": receiver.url, "events": ["step.completed", "plan.completed"]}],
    )
    return await start(client, plan, tq)


async def record_dispatcher(client: Client, tq: str, out: Path) -> Path:
    """The webhook dispatcher's history once it sent the ``webhooks`` plan's deliveries and
    ended (nothing pending), to ``dispatcher/webhook_dispatcher.json``."""
    handle = client.get_workflow_handle(dispatcher_id(tq))
    await asyncio.wait_for(handle.result(), timeout=60)
    history = await handle.fetch_history()
    path = out / "dispatcher" / "webhook_dispatcher.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(json.loads(history.to_json()), indent=1) + "\n")
    log.info("webhook dispatcher: %d events -> %s", len(history.events), path)
    return path


@scenario("code_steps", expect="partial")
async def code_steps(client: Client, tq: str) -> Handle:
    """Since the ``code-steps`` patch: a ``kind: code`` step with a gate (the offline model
    writes its code, the step waits with the code shown, a person approves, the sandbox
    runs it) and one the offline model cannot write code for (its failure goes back to the
    model once, then the step fails; ``on_error: continue``). A sandbox worker of its own
    hosts ``run_code`` until the plan ends."""
    sandbox_queue = f"{TASK_QUEUE}-sandbox"
    schema = {
        "type": "object",
        "properties": {"totals": {"type": "object"}, "grand_total": {"type": "number"}},
        "required": ["totals", "grand_total"],
    }
    orders = [{"region": "eu", "amount": 2}, {"region": "us", "amount": 3}]
    plan = plan_of(
        "code_steps",
        [
            {
                "id": "sum",
                "kind": "code",
                "description": "Sum of amount per region",
                "requires_approval": True,
                "params": {"input": orders, "output_schema": schema, "timeout_s": 10},
            },
            {
                "id": "poem",
                "kind": "code",
                "description": "A poem about the orders",
                "params": {"input": orders, "output_schema": schema, "max_code_repairs": 1},
            },
        ],
        on_error="continue",
    )
    async with Worker(
        client, task_queue=sandbox_queue, activities=sandbox_activities_for(activity_deps())
    ):
        handle = await client.start_workflow(
            PlanWorkflow.run,
            PlanInput(plan=plan, task_queues={"sandbox": sandbox_queue}),
            id=plan.workflow_id,
            task_queue=tq,
        )
        await wait_for(handle, step_is("sum", "waiting_approval"))
        await handle.execute_update("approve_step", {"by": "ops", "step_id": "sum"})
        await handle.result()
    return handle


# --- driver ------------------------------------------------------------------------------


async def run_one(client: Client, tq: str, name: str, out: Path) -> Path:
    expect, fn = SCENARIOS[name]
    handle = await asyncio.wait_for(fn(client, tq), timeout=30)
    try:
        res = await asyncio.wait_for(handle.result(), timeout=30)
        got = res.status.value
    except WorkflowFailureError:
        got = (await status(handle)).status.value  # handle.cancel(): the run is CANCELED
    if got != expect:
        st = await status(handle)
        raise AssertionError(
            f"{name}: ended {got}, expected {expect}: {[(s.id, s.status) for s in st.steps]}"
        )
    history = await handle.fetch_history()
    path = out / f"{name}.json"
    # indent for reviewable diffs; WorkflowHistory.from_json reads it back unchanged
    path.write_text(json.dumps(json.loads(history.to_json()), indent=1) + "\n")
    log.info("%s: %s, %d events -> %s", name, got, len(history.events), path.name)
    return path


async def main(names: list[str], out: Path) -> None:
    # the worker records the runs in a throwaway store, not in ./plansmith.db
    os.environ["DATABASE_URL"] = (
        f"sqlite:///{tempfile.mkdtemp(prefix='plansmith-histories-')}/store.db"
    )
    async with await WorkflowEnvironment.start_local(
        dev_server_existing_path=temporal_cli_path(),
        data_converter=pydantic_data_converter,
        search_attributes=SEARCH_ATTRIBUTES,
        ip="127.0.0.1",
        ui=False,
        identity=IDENTITY,
    ) as env:
        tq = TASK_QUEUE
        async with worker_with(env.client, tq):  # the offline model answers
            await asyncio.gather(*(run_one(env.client, tq, n, out) for n in names))
            if "webhooks" in names:
                await record_dispatcher(env.client, tq, out)
    for receiver in _RECEIVERS.values():
        receiver.stop()


def cli() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("names", nargs="*", help=f"scenarios (default all): {', '.join(SCENARIOS)}")
    parser.add_argument("--out", type=Path, default=HERE, help="folder for the JSON files")
    args = parser.parse_args()
    unknown = [n for n in args.names if n not in SCENARIOS]
    if unknown:
        parser.error(f"unknown scenario(s) {', '.join(unknown)}; known: {', '.join(SCENARIOS)}")
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    # flaky and boom fail on purpose; their activity failures are not news
    logging.getLogger("temporalio.activity").setLevel(logging.ERROR)
    args.out.mkdir(parents=True, exist_ok=True)
    asyncio.run(main(args.names or list(SCENARIOS), args.out))
    # Leave without interpreter finalization: the SDK's Rust threads can still call into
    # Python then and abort the process ("PyGILState_Release ... must be current",
    # temporalio/sdk-python#300) after every file is written.
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


if __name__ == "__main__":
    cli()

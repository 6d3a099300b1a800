"""The planner end to end: the GeneratePlan workflow on a real dev server and worker, the
plans it makes run to completion by PlanWorkflow, the REST route and the CLI verb — all
with the offline model (no key, no network: the only HTTP server is one the test starts
on 127.0.0.1)."""

from __future__ import annotations

import asyncio
import json
import os
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import pytest_asyncio
from fastapi import FastAPI
from temporalio.client import Client
from temporalio.testing import WorkflowEnvironment

from activities.llm.base import LLMRequest, LLMResponse
from activities.llm.offline.model import OfflineModel
from api.drafts import StoreDrafts
from contracts.errors import LLMError, NoModelFits
from contracts.planning import PlanningFailed, PlanRequest
from contracts.tools import catalog
from plans.models import Plan, PlanStatus, StepStatus
from plans.validation import parse_plan, validate_plan
from store import knowledge
from store.db import session_scope
from tests.activities.test_planner import CYCLE_AND_UNKNOWN_TOOL, Scripted, answer
from tests.api.serving import BASE_URL, JSON
from tests.api.test_plans_routes import make_app, wait_status
from tests.e2e.test_cli import cli_env, plansmith
from tests.helpers import StartWorker, make_plan, start, store_engine, wait_for, worker_with
from workflows.errors import PlannerUnavailable
from workflows.planner_workflow import run_planner
from workflows.starter import start_plan

NOTES = "Release 2.4: plans are generated offline; the login bug is fixed."
TASK = "fetch the release notes and summarise them"


@pytest.fixture
def notes_url(text_server: tuple[str, list[str]]) -> str:
    """Release notes served on 127.0.0.1 by the test."""
    return f"{text_server[0]}/release-notes"


def assert_valid(doc: dict[str, Any]) -> Plan:
    plan = parse_plan(doc)
    assert validate_plan(plan, catalog()) == []
    return plan


async def run_to_end(client: Client, doc: dict[str, Any], task_queue: str) -> Any:
    plan = Plan.model_validate({**doc, "id": f"gen-{uuid.uuid4().hex[:10]}"})
    handle = await start_plan(client, plan, task_queue)
    return await asyncio.wait_for(handle.result(), 60)


# --- through Temporal ----------------------------------------------------------------------


async def test_generated_plan_fetches_summarises_and_completes(
    client, worker, task_queue, notes_url
):
    result = await run_planner(
        client,
        PlanRequest(task=TASK, context=f"The release notes are at {notes_url}"),
        task_queue,
    )
    assert result.offline and result.model.startswith("offline:")
    plan = assert_valid(result.plan)
    assert [(s.kind.value, s.tool) for s in plan.steps] == [
        ("tool", "http_request"),
        ("llm", None),
    ]
    assert plan.options.require_approval == "auto"  # medium-risk tools: no wait for a person
    run = await run_to_end(client, result.plan, task_queue)
    assert run.status == PlanStatus.COMPLETED, run.outcome
    fetched, summary = (run.final_steps[s.id].output for s in plan.steps)
    assert fetched["body"] == "text from /release-notes"
    assert summary["offline"] is True
    assert summary["text"].startswith("[offline]") and "text from /release-notes" in summary["text"]


async def test_the_acceptance_task_without_a_url_runs_to_completion(client, worker, task_queue):
    result = await run_planner(client, PlanRequest(task=TASK), task_queue)
    plan = assert_valid(result.plan)
    assert [s.kind.value for s in plan.steps] == ["llm", "llm"]
    run = await run_to_end(client, result.plan, task_queue)
    assert run.status == PlanStatus.COMPLETED, run.outcome
    assert all(s.status == StepStatus.COMPLETED for s in run.final_steps.values())
    assert all(s.output["text"].startswith("[offline]") for s in run.final_steps.values())


async def test_offline_answers_decisions_structured_output_and_the_judge(
    client, worker, task_queue
):
    schema = {
        "type": "object",
        "properties": {"headline": {"type": "string", "minLength": 5}},
        "required": ["headline"],
    }
    plan = make_plan(
        [
            {"id": "notes", "tool": "transform", "params": {"data": NOTES, "expression": "@"}},
            {
                "id": "choose",
                "kind": "decision",
                "depends_on": ["notes"],
                "params": {
                    "question": "Is a bug fixed in this release? {{ steps.notes.output }}",
                    "options": ["announce the bug fix", "stay quiet"],
                },
            },
            {
                "id": "announce",
                "kind": "llm",
                "depends_on": ["choose"],
                "when": "steps.choose.output.choice == 'announce the bug fix'",
                "params": {"prompt": "Announce: {{ steps.notes.output }}", "output_schema": schema},
            },
            {
                "id": "quiet",
                "kind": "llm",
                "depends_on": ["choose"],
                "when": "steps.choose.output.choice == 'stay quiet'",
                "params": {"prompt": "say nothing"},
            },
            {
                "id": "review",
                "kind": "validation",
                "depends_on": ["announce"],
                "params": {
                    "checks": [
                        {
                            "name": "headline",
                            "expr": "len(steps.announce.output.json.headline) >= 5",
                        }
                    ],
                    "judge": {
                        "criteria": ["mentions '2.4'", "is friendly"],
                        "subject": "{{ steps.notes.output }}",
                    },
                    # "is friendly" has no quoted term: the offline judge cannot assess
                    # it, so a person passes it (it never passes by itself)
                    "on_unassessed": "ask",
                },
            },
        ]
    )
    handle = await start(client, plan, task_queue, tools=catalog())
    await wait_for(handle, lambda s: s.status == "waiting_approval", timeout=60)
    await handle.execute_update("approve_step", {"by": "ed", "step_id": "review"})
    run = await asyncio.wait_for(handle.result(), 60)
    assert run.status == PlanStatus.COMPLETED, run.outcome
    steps = run.final_steps
    assert steps["choose"].output["choice"] == "announce the bug fix"
    assert steps["choose"].output["reason"].startswith("[offline]")
    assert steps["quiet"].status == StepStatus.SKIPPED
    assert steps["announce"].output["json"] == {"headline": "[offline]"}
    verdicts = steps["review"].output["judge"]["verdicts"]
    assert [(v["passed"], v["assessed"]) for v in verdicts] == [(True, True), (False, False)]
    assert verdicts[1]["reason"].startswith("no model assessed this criterion")
    assert steps["review"].output["passed"] is True
    assert steps["review"].output["passed_by"] == "ed"


async def test_a_plan_that_stays_invalid_fails_once_with_the_problems(
    client, start_worker: StartWorker, task_queue
):
    model = Scripted(answer(CYCLE_AND_UNKNOWN_TOOL))
    await start_worker(model)
    with pytest.raises(PlanningFailed) as caught:
        await run_planner(client, PlanRequest(task="release", max_repair_rounds=1), task_queue)
    assert caught.value.rounds == 2
    assert len(model.requests) == 2  # PlanningFailed is not retried by Temporal
    text = "\n".join(str(p) for p in caught.value.problems)
    assert "steps[0].tool: unknown tool 'htp_request'" in text
    assert "dependency cycle" in text
    assert len(caught.value.repairs) == 1


class Flaky:
    """Fails with ``error`` ``failures`` times, then answers offline."""

    def __init__(self, error: LLMError, failures: int = 1):
        self.error, self.failures, self.calls = error, failures, 0

    async def complete(self, request: LLMRequest) -> LLMResponse:
        self.calls += 1
        if self.calls <= self.failures:
            raise self.error
        return await OfflineModel().complete(request)


async def test_model_errors_are_retried_only_when_retrying_can_help(client, task_queue):
    overloaded = Flaky(LLMError("overloaded", retryable=True, kind="LLMOverloaded", status=529))
    async with worker_with(client, task_queue, overloaded):
        result = await run_planner(client, PlanRequest(task=TASK), task_queue)
    assert_valid(result.plan)
    assert overloaded.calls == 2

    refused = Flaky(LLMError("invalid x-api-key", retryable=False, kind="LLMAuthError", status=401))
    async with worker_with(client, task_queue, refused):
        with pytest.raises(LLMError) as caught:
            await run_planner(client, PlanRequest(task=TASK), task_queue)
    assert refused.calls == 1
    assert caught.value.kind == "LLMAuthError" and not caught.value.retryable
    assert caught.value.status == 401 and "invalid x-api-key" in str(caught.value)


async def test_an_unknown_model_is_refused_with_the_configured_ones(client, worker, task_queue):
    with pytest.raises(NoModelFits) as caught:
        await run_planner(client, PlanRequest(task=TASK, model="no-such-model"), task_queue)
    assert "no-such-model" in str(caught.value) and "configured models" in str(caught.value)


async def test_no_worker_is_said_quickly(client, task_queue):
    t0 = time.monotonic()
    with pytest.raises(PlannerUnavailable) as caught:
        await run_planner(client, PlanRequest(task=TASK), task_queue, no_worker_after_s=1)
    assert "no worker" in str(caught.value) and time.monotonic() - t0 < 10


async def test_lessons_from_the_store_are_applied_and_the_run_is_recorded(
    client, start_worker: StartWorker, task_queue
):
    task = f"reconcile the zebra ledger {uuid.uuid4().hex[:6]} and email the totals"
    with session_scope(store_engine(), write=True) as session:
        lesson = knowledge.add_lesson(
            session,
            source="rejection",
            what_wrong="the totals were emailed before the ledger was reconciled",
            fix="reconcile first, email after",
            task=task,
            plan_id=f"old-{uuid.uuid4().hex[:6]}",
        )
    seen: list[LLMRequest] = []

    class Watching(OfflineModel):
        async def complete(self, request: LLMRequest) -> LLMResponse:
            seen.append(request)
            return await super().complete(request)

    wid = f"generate-test-{uuid.uuid4().hex[:8]}"
    await start_worker(Watching())
    result = await run_planner(client, PlanRequest(task=task), task_queue, workflow_id=wid)
    assert lesson["id"] in [x.id for x in result.lessons_applied]
    lessons_text = seen[0].messages[0]["content"][0]["text"]
    assert f"[lesson {lesson['id']}]" in lessons_text and "reconcile first" in lessons_text
    with session_scope(store_engine()) as session:
        record = next(g for g in knowledge.list_generations(session) if g.id == wid)
        assert record.ok and record.offline and record.rounds == 1
        assert lesson["id"] in record.lessons_applied
        applied = next(x for x in knowledge.list_lessons(session) if x["id"] == lesson["id"])
        assert applied["times_applied"] == 1


# --- the REST route ------------------------------------------------------------------------


@pytest_asyncio.fixture
async def http(env: WorkflowEnvironment, task_queue: str) -> AsyncIterator[httpx.AsyncClient]:
    """The API of ``task_queue`` (a test adds the worker it needs)."""
    app: FastAPI = make_app(env.client, task_queue)
    async with (
        app.router.lifespan_context(app),
        httpx.AsyncClient(
            transport=httpx.ASGITransport(app=app), base_url=BASE_URL, headers=JSON, timeout=60
        ) as c,
    ):
        yield c


async def test_api_generates_saves_and_executes_a_plan(http, worker, notes_url):
    r = await http.post(
        "/api/plans/generate",
        json={
            "task": TASK,
            "context": {"notes": notes_url},
            "constraints": ["keep the summary short"],
            "agent_id": "planner-test",
            "save": True,
        },
    )
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["offline"] is True and body["model"].startswith("offline:")
    assert body["rounds"] == 1 and body["repairs"] == []
    assert body["constraints"] == [
        {
            "constraint": "keep the summary short",
            "how": "[offline] noted; the offline model cannot reason about it",
        }
    ]
    plan_id = body["plan_id"]
    assert body["plan"]["id"] == plan_id and body["plan"]["agent_id"] == "planner-test"
    assert_valid(body["plan"])
    draft = (await http.get(f"/api/plans/{plan_id}")).json()
    assert draft["status"] == "draft" and draft["plan"]["steps"][0]["tool"] == "http_request"
    with session_scope(store_engine()) as session:  # the planner run knows its plan
        assert [g.plan_id for g in knowledge.list_generations(session)].count(plan_id) == 1
    r = await http.post(f"/api/plans/{plan_id}/execute")
    assert r.status_code == 202, r.text
    st = await wait_status(http, plan_id, lambda s: s["status"] in ("completed", "failed"), 60)
    assert st["status"] == "completed", st


async def test_api_lists_every_problem_when_no_valid_plan_comes(http, start_worker: StartWorker):
    await start_worker(Scripted(answer(CYCLE_AND_UNKNOWN_TOOL)))
    r = await http.post("/api/plans/generate", json={"task": "release", "max_repair_rounds": 1})
    assert r.status_code == 422, r.text
    body = r.json()
    assert body["code"] == "planning_failed" and "2 round(s)" in body["detail"]
    found = {(p["location"], p["message"].split(" (")[0]) for p in body["problems"]}
    assert ("steps[0].tool", "unknown tool 'htp_request'") in found
    assert any(p["message"].startswith("dependency cycle") for p in body["problems"])


async def test_api_bad_requests_and_model_errors(http, env, task_queue):
    async with worker_with(env.client, task_queue):
        r = await http.post("/api/plans/generate", json={"task": "   "})
        assert r.status_code == 422 and r.json()["problems"][0]["location"] == "task"
        r = await http.post("/api/plans/generate", json={"task": "x", "max_repair_rounds": 9})
        assert r.status_code == 422 and r.json()["problems"][0]["location"] == "max_repair_rounds"
        r = await http.post("/api/plans/generate", json={"task": "x", "model": "no-such-model"})
        assert r.status_code == 422 and r.json()["problems"][0]["location"] == "model"
    refused = Flaky(LLMError("invalid x-api-key", retryable=False, kind="LLMAuthError", status=401))
    async with worker_with(env.client, task_queue, refused):
        r = await http.post("/api/plans/generate", json={"task": "x"})
    assert r.status_code == 502 and r.json()["code"] == "llm_error"
    assert "invalid x-api-key" in r.json()["detail"]


async def test_api_without_a_worker_answers_503(env):
    app = make_app(env.client, f"nobody-{uuid.uuid4().hex[:6]}")
    async with (
        app.router.lifespan_context(app),
        httpx.AsyncClient(
            transport=httpx.ASGITransport(app=app), base_url=BASE_URL, headers=JSON, timeout=30
        ) as c,
    ):
        t0 = time.monotonic()
        r = await c.post("/api/plans/generate", json={"task": TASK})
    assert r.status_code == 503 and "no worker" in r.json()["detail"]
    assert time.monotonic() - t0 < 15


# --- the CLI verb --------------------------------------------------------------------------


@pytest.mark.slow
async def test_cli_plan_then_run_completes(env, worker, task_queue, notes_url, tmp_path):
    code, out, err = await plansmith(
        "plan",
        TASK,
        "--context",
        f"the notes are at {notes_url}",
        "--constraint",
        "keep it short",
        env_vars=cli_env(env, task_queue),
    )
    assert code == 0, err
    doc = json.loads(out)
    assert_valid(doc)
    assert "offline model" in err and "keep it short: [offline]" in err
    assert "runs without waiting for approval" in err
    path = Path(tmp_path) / "plan.json"
    path.write_text(out)
    code, out, err = await plansmith("run", str(path), "--watch", env_vars=cli_env(env, task_queue))
    assert code == 0, out + err
    assert "completed" in out and "text from /release-notes" in out


@pytest.mark.slow
async def test_cli_plan_failure_and_bad_input(env, start_worker: StartWorker, task_queue):
    await start_worker(Scripted(answer(CYCLE_AND_UNKNOWN_TOOL)))
    code, out, err = await plansmith(
        "plan", "release", "--rounds", "1", env_vars=cli_env(env, task_queue)
    )
    assert code == 1 and out == ""
    assert "could not make a valid plan in 2 round(s)" in err
    assert "steps[0].tool: unknown tool 'htp_request'" in err and "dependency cycle" in err
    code, _, err = await plansmith("plan", "x", "--rounds", "9", env_vars=cli_env(env, task_queue))
    assert code == 2 and "max_repair_rounds" in err
    code, _, err = await plansmith("plan", "x", "--context", "@/nonexistent/file", "--local")
    assert code == 2 and "no such file" in err


@pytest.mark.slow
async def test_cli_plan_local_needs_no_temporal_and_save_makes_a_draft(tmp_path):
    env_vars = {k: v for k, v in os.environ.items() if k != "ANTHROPIC_API_KEY"}
    env_vars["TEMPORAL_ADDRESS"] = "127.0.0.1:1"  # nothing listens: --local must not need it
    context = Path(tmp_path) / "context.json"
    context.write_text(json.dumps({"notes": "https://example.invalid/notes"}))
    code, out, err = await plansmith(
        "plan", TASK, "--local", "--save", "--context", f"@{context}", env_vars=env_vars
    )
    assert code == 0, err
    doc = json.loads(out)
    assert_valid(doc)
    assert doc["steps"][0]["params"] == {"url": "https://example.invalid/notes"}
    assert "offline model" in err and f"saved as draft {doc['id']}" in err
    draft = await StoreDrafts(store_engine()).get(doc["id"])
    assert draft is not None and draft.plan.steps[0].tool == "http_request"
    code, _, err = await plansmith("plan", TASK, env_vars=env_vars)
    assert code == 2 and "cannot reach Temporal" in err and "--local" in err

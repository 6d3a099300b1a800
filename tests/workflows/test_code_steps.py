"""``kind: code`` steps: the code model writes Python, the sandbox runs it, the output
is checked against the step's ``output_schema`` and a failure goes back to the model.

Through PlanWorkflow on the local dev server, with a worker of the plan's queue (the
model's activity) and one of the sandbox pool (``run_code``, bubblewrap), as in
test_sandbox_steps.py. The model is the offline one, a scripted one, or the real
Anthropic client answered by respx; nothing leaves the machine.
"""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import httpx2
import pytest_asyncio
import respx
import yaml
from temporalio.client import Client
from temporalio.testing import WorkflowEnvironment

from activities.llm.anthropic_model import AnthropicModel
from activities.llm.code_writer import MAX_CODE_CHARS, WRITE_CODE, code_problems, write_code
from activities.llm.offline.model import OfflineModel
from activities.llm.steps import CHOOSE, run_decision
from config import ModelConfig, get_settings
from contracts.models import ModelSelector
from contracts.tools import catalog
from plans.models import Plan, PlanStatus, StepStatus
from plans.risk import assess_step
from plans.run_state import AuditEntry, LogEntry
from plans.validation import validate_plan
from tests.activities.test_llm_anthropic import message
from tests.helpers import StartWorker, make_plan, start, status, wait_for
from tests.llm_fakes import RespxTransport, ScriptedModel, tool_use
from tests.workflows.test_sandbox_steps import sandbox_pool

ROOT = Path(__file__).resolve().parents[2]
SCHEMA = {
    "type": "object",
    "properties": {
        "totals": {"type": "object", "additionalProperties": {"type": "number"}},
        "grand_total": {"type": "number"},
    },
    "required": ["totals", "grand_total"],
}
ORDERS = [
    {"region": "eu", "amount": 10, "status": "paid"},
    {"region": "us", "amount": 5.5, "status": "paid"},
    {"region": "eu", "amount": 2, "status": "paid"},
]
RAISES = "import json, sys\nrows = json.load(sys.stdin)\nprint(json.dumps(1 / 0))\n"
WRONG_SHAPE = 'import json\nprint(json.dumps({"totals": "none"}))\n'
WORKS = """import json, sys
rows = json.load(sys.stdin)
totals = {}
for r in rows:
    totals[r["region"]] = totals.get(r["region"], 0) + r["amount"]
print(json.dumps({"totals": totals, "grand_total": sum(totals.values())}))
"""
EXPECTED = {"totals": {"eu": 12, "us": 5.5}, "grand_total": 17.5}


@pytest_asyncio.fixture
async def sandbox_queue(env: WorkflowEnvironment) -> AsyncIterator[str]:
    async with sandbox_pool(env) as queue:
        yield queue


def code_step(sid: str = "compute", **params: Any) -> dict[str, Any]:
    return {
        "id": sid,
        "kind": "code",
        "description": "Totals of amount per region, and their sum",
        "params": {"input": ORDERS, "output_schema": SCHEMA, "timeout_s": 10, **params},
    }


async def audit_of(handle: Any) -> list[AuditEntry]:
    return await handle.query("audit", result_type=list[AuditEntry])


# --- the offline model and the example ------------------------------------------------


async def test_the_example_runs_offline_with_its_code_visible_and_audited(
    client: Client, worker: Any, task_queue: str, sandbox_queue: str
) -> None:
    doc = yaml.safe_load((ROOT / "examples" / "code_step.yaml").read_text())
    doc["id"] = f"code-step-{uuid.uuid4().hex[:8]}"
    plan = Plan.model_validate(doc)
    assert validate_plan(plan, catalog()) == []
    handle = await start(client, plan, task_queue, task_queues={"sandbox": sandbox_queue})
    result = await asyncio.wait_for(handle.result(), 60)
    assert result.status == "completed", result.final_steps
    out = result.final_steps["compute"].output
    assert out["json"] == {
        "totals": {"eu": 120.5, "us": 345.25, "apac": 99.9},
        "grand_total": 565.65,
    }
    assert out["offline"] is True and out["code_attempts"] == 1
    assert result.final_steps["check"].status == "completed"
    st = await status(handle)
    compute = next(s for s in st.steps if s.id == "compute")
    assert compute.kind == "code" and compute.code == out["code"]
    assert "json.load(sys.stdin)" in compute.code and "'paid'" in compute.code
    (attempt,) = compute.code_attempts
    assert attempt["status"] == "completed" and attempt["code"] == compute.code
    audit = await audit_of(handle)
    written = [a for a in audit if a.action == "code_written"]
    ran = [a for a in audit if a.action == "run_code"]
    assert len(written) == 1 and written[0].step_id == "compute"
    assert attempt["sha256"] in written[0].detail
    assert len(ran) == 1 and attempt["sha256"][:12] in ran[0].detail  # the sandbox ran it


async def test_offline_model_refuses_what_it_cannot_write_and_the_step_fails_bounded(
    client: Client, worker: Any, task_queue: str, sandbox_queue: str
) -> None:
    step = code_step(max_code_repairs=1)
    step["description"] = "Translate the orders into French poetry"
    plan = make_plan([step])
    handle = await start(client, plan, task_queue, task_queues={"sandbox": sandbox_queue})
    result = await asyncio.wait_for(handle.result(), 60)
    assert result.status == PlanStatus.FAILED
    error = result.final_steps["compute"].error or ""
    assert "failed 2 time(s)" in error and "max_code_repairs is 1" in error
    assert "offline model" in error
    st = await status(handle)
    assert [a["status"] for a in st.steps[0].code_attempts] == ["failed", "failed"]


async def test_an_approval_timeout_never_runs_generated_code_nobody_saw(ts: Any) -> None:
    env, tq = ts
    plan = make_plan(
        [{**code_step(), "description": "Sum of amount per region", "requires_approval": True}],
        step_approval_timeout_s=900,
        on_step_approval_timeout="approve",
    )
    handle = await start(env.client, plan, tq, search_attributes=False, persist=False)
    await handle.result()
    st = await status(handle)
    assert st.steps[0].status == StepStatus.SKIPPED
    assert "nobody approved this step's generated code" in (st.steps[0].skip_detail or "")
    assert [a["status"] for a in st.steps[0].code_attempts] == ["not run"]
    assert not [a for a in await audit_of(handle) if a.action == "run_code"]


# --- a scripted model: repairs, the gate ---------------------------------------------


async def test_a_gate_shows_the_code_before_it_runs_and_approval_runs_that_very_code(
    client: Client, start_worker: StartWorker, task_queue: str, sandbox_queue: str
) -> None:
    model = ScriptedModel(tool_use(WRITE_CODE, {"code": WORKS}))
    await start_worker(model)
    plan = make_plan([{**code_step(), "requires_approval": True}])
    handle = await start(client, plan, task_queue, task_queues={"sandbox": sandbox_queue})
    st = await wait_for(handle, lambda s: s.steps[0].status == StepStatus.WAITING_APPROVAL)
    assert st.steps[0].code == WORKS  # written, shown, not run
    assert st.waiting_for is not None and st.waiting_for.kind == "step_approval"
    assert st.waiting_for.code == WORKS and "generated code" in (st.waiting_for.question or "")
    assert [a.action for a in await audit_of(handle) if a.action == "run_code"] == []
    await handle.execute_update("approve_step", {"by": "amy", "step_id": "compute"})
    result = await asyncio.wait_for(handle.result(), 60)
    assert result.status == "completed"
    assert result.final_steps["compute"].output["json"] == EXPECTED
    assert len(model.requests) == 1  # the approved code ran; nothing was written again
    audit = await audit_of(handle)
    assert [a.action for a in audit if a.action in ("code_written", "run_code")] == [
        "code_written",
        "run_code",
    ]


async def test_repaired_code_of_a_gated_step_waits_for_a_person_again(
    client: Client, start_worker: StartWorker, task_queue: str, sandbox_queue: str
) -> None:
    model = ScriptedModel(
        tool_use(WRITE_CODE, {"code": RAISES}), tool_use(WRITE_CODE, {"code": WORKS})
    )
    await start_worker(model)
    plan = make_plan([{**code_step(), "requires_approval": True}])
    handle = await start(client, plan, task_queue, task_queues={"sandbox": sandbox_queue})
    await wait_for(handle, lambda s: s.steps[0].status == StepStatus.WAITING_APPROVAL)
    await handle.execute_update("approve_step", {"by": "amy", "step_id": "compute"})
    st = await wait_for(
        handle,
        lambda s: s.steps[0].status == StepStatus.WAITING_APPROVAL and s.steps[0].code == WORKS,
    )
    first, second = st.steps[0].code_attempts
    assert first["status"] == "failed" and "ZeroDivisionError" in first["error"]
    assert second["status"] == "waiting"
    await handle.execute_update("approve_step", {"by": "bob", "step_id": "compute"})
    result = await asyncio.wait_for(handle.result(), 60)
    assert result.final_steps["compute"].output["json"] == EXPECTED


async def test_output_that_is_not_json_is_sent_back_and_repairs_are_bounded(
    client: Client, start_worker: StartWorker, task_queue: str, sandbox_queue: str
) -> None:
    model = ScriptedModel(tool_use(WRITE_CODE, {"code": "print('hello')\n"}))
    await start_worker(model)
    plan = make_plan([code_step(max_code_repairs=0)])
    handle = await start(client, plan, task_queue, task_queues={"sandbox": sandbox_queue})
    result = await asyncio.wait_for(handle.result(), 60)
    assert result.status == PlanStatus.FAILED
    error = result.final_steps["compute"].error or ""
    assert "OutputNotJson" in error and "max_code_repairs is 0" in error
    assert len(model.requests) == 1


# --- the real Anthropic client, answered by respx --------------------------------------


async def test_write_code_through_anthropic_fails_twice_then_works(
    client: Client, start_worker: StartWorker, task_queue: str, sandbox_queue: str
) -> None:
    """The code model's first code raises, the second prints output that does not match
    the schema, the third works: the step completes with output matching its schema, and
    both failures are visible in status, the logs and the audit trail."""
    sent: list[dict[str, Any]] = []
    codes = [RAISES, WRONG_SHAPE, WORKS]

    def reply(request: httpx.Request) -> httpx.Response:
        sent.append(json.loads(request.content))
        n = len(sent)
        call = {"type": "tool_use", "id": f"toolu_{n}", "name": WRITE_CODE}
        return httpx.Response(
            200, json=message([{**call, "input": {"code": codes[n - 1]}}], stop_reason="tool_use")
        )

    router = respx.Router(base_url="https://api.anthropic.com", assert_all_mocked=True)
    router.post("/v1/messages").mock(side_effect=reply)
    plan = make_plan([code_step()])
    async with httpx2.AsyncClient(transport=RespxTransport(router)) as http:
        await start_worker(AnthropicModel("sk-ant-test-code", http_client=http))
        handle = await start(client, plan, task_queue, task_queues={"sandbox": sandbox_queue})
        result = await asyncio.wait_for(handle.result(), 60)
    assert result.status == "completed", result.final_steps
    out = result.final_steps["compute"].output
    assert out["json"] == EXPECTED and out["code"] == WORKS and out["code_attempts"] == 3
    assert out["offline"] is False

    # the forced write_code call went to the code model
    code_model = ModelSelector.load(get_settings()).code_model().name
    assert [s["model"] for s in sent] == [code_model] * 3
    assert all(s["tool_choice"] == {"type": "tool", "name": WRITE_CODE} for s in sent)
    assert sent[0]["tools"][0]["input_schema"]["required"] == ["code"]
    # each repair is asked with the failed code and its error
    second = json.dumps(sent[1]["messages"])
    assert "ZeroDivisionError" in second and "1 / 0" in second
    third = json.dumps(sent[2]["messages"])
    assert "OutputSchemaMismatch" in third and "output.totals" in third

    st = await status(handle)
    attempts = st.steps[0].code_attempts
    assert [a["status"] for a in attempts] == ["failed", "failed", "completed"]
    assert "ZeroDivisionError" in attempts[0]["error"] and attempts[0]["code"] == RAISES
    assert "is not of type 'object'" in attempts[1]["error"]
    logs = await handle.query("logs", result_type=list[LogEntry])
    assert any("(attempt 1) failed: CodeFailed" in log.message for log in logs)
    audit = await audit_of(handle)
    assert len([a for a in audit if a.action == "code_written"]) == 3
    assert len([a for a in audit if a.action == "code_failed"]) == 2
    assert len([a for a in audit if a.action == "run_code"]) == 3


# --- in the activity and the domain ----------------------------------------------------


async def test_write_code_refuses_empty_and_oversized_code_and_asks_again() -> None:
    selector = ModelSelector.load(get_settings())
    model = ScriptedModel(
        tool_use(WRITE_CODE, {"code": "x" * (MAX_CODE_CHARS + 1)}),
        tool_use(WRITE_CODE, {"code": "print(1)"}),
    )
    out = await write_code(
        {"output_schema": {"type": "integer"}}, {"description": "one"}, model, selector
    )
    assert out["code"] == "print(1)" and out["model_calls"] == 2
    assert "above the limit" in json.dumps(model.requests[1].messages[-1])
    assert code_problems({"code": "  "}) == ["code: a non-empty string is required"]


async def test_offline_code_for_a_count_takes_the_schemas_shape() -> None:
    selector = ModelSelector.load(get_settings())
    out = await write_code(
        {"input": {"orders": ORDERS}, "output_schema": {"type": "integer"}},
        {"description": "Count orders where status is paid"},
        OfflineModel(),
        selector,
    )
    assert "print(json.dumps(overall))" in out["code"] and "'paid'" in out["code"]


def test_a_code_step_is_validated_and_risk_assessed_like_a_python_step() -> None:
    plan = make_plan([{"id": "c", "kind": "code", "description": "x", "params": {}}])
    problems = [p.message for p in validate_plan(plan, catalog())]
    assert any("needs an 'output_schema'" in m for m in problems)
    bad = make_plan([{"id": "c", "kind": "code", "params": {"output_schema": {"type": "nope"}}}])
    messages = [p.message for p in validate_plan(bad, catalog())]
    assert any("needs a description" in m for m in messages)
    assert any("not a valid JSON Schema" in m for m in messages)
    good = make_plan([code_step()])
    assert validate_plan(good, catalog()) == []
    risk = assess_step(good, good.steps[0], catalog())
    assert any("code model writes Python" in r for r in risk.reasons)
    # the same as a python step with the same input (its amounts read as money)
    as_python = make_plan(
        [{"id": "compute", "tool": "python", "params": {"code": "1", "input": ORDERS}}]
    )
    same = assess_step(as_python, as_python.steps[0], catalog())
    assert risk.level == same.level == "high" and risk.reasons[1:] == same.reasons[1:]
    plain = make_plan([code_step(input=[1, 2, 3])])
    assert assess_step(plain, plain.steps[0], catalog()).level == catalog()["python"].risk


async def test_decisions_go_to_the_reasoning_model() -> None:
    selector = ModelSelector(
        [
            ModelConfig(name="general-one", capabilities=["general"], priority=1),
            ModelConfig(name="thinker", capabilities=["reasoning"], priority=50),
        ]
    )
    model = ScriptedModel(tool_use(CHOOSE, {"choice": "a", "reason": "because"}))
    await run_decision({"question": "a or b?", "options": ["a", "b"]}, {}, model, selector)
    assert model.requests[0].model == "thinker"
    assert selector.roles()["reasoning"] == "thinker"
    general_only = ModelSelector([ModelConfig(name="general-one", capabilities=["general"])])
    model = ScriptedModel(tool_use(CHOOSE, {"choice": "b", "reason": "because"}))
    await run_decision({"question": "a or b?", "options": ["a", "b"]}, {}, model, general_only)
    assert model.requests[0].model == "general-one"

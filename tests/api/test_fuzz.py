"""Schemathesis against the app's own OpenAPI document: no server error, ever.

The schema is loaded with schemathesis' Python API from the ASGI app; every operation
gets generated requests — valid ones (positive) and schema-violating ones (negative) —
sent to the real app (httpx + ASGI) backed by the dev server and a worker. Half of the
requests that take a plan id aim at a live plan waiting for approval, so control bodies
reach the workflow's validators and transition rules, not only the 404 path.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import httpx

# Everything schemathesis imports lazily is imported here, up front: the fuzzing runs in a
# thread while the in-process worker runs workflows, whose sandbox swaps the import
# machinery, and a first import at that moment can fail (seen: SystemError from the AST).
import schemathesis
import schemathesis.generation.dictionaries
import schemathesis.transport.asgi
import schemathesis.transport.requests
import schemathesis.transport.wsgi
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st
from schemathesis import GenerationMode
from schemathesis.checks import (
    content_type_conformance,
    negative_data_rejection,
    not_a_server_error,
    response_schema_conformance,
    status_code_conformance,
)
from temporalio.testing import WorkflowEnvironment

from plans.models import ID_RE
from tests.api.serving import BASE_URL, JSON
from tests.api.test_plans_routes import TEST_CONFIG, make_app, plan_doc, wait_step

POSITIVE_EXAMPLES = 15
NEGATIVE_EXAMPLES = 8
NOT_LIVE = ("/api/plans/{plan_id}/events",)  # a live plan's stream only ends with the plan


def _httpx_kwargs(case: Any) -> dict[str, Any]:
    kw = case.as_transport_kwargs(base_url=BASE_URL)
    out: dict[str, Any] = {
        "method": kw["method"],
        "url": kw["url"],
        "headers": kw.get("headers") or {},
        "params": kw.get("params") or None,
    }
    if kw.get("cookies"):
        out["cookies"] = kw["cookies"]
    if "json" in kw:
        out["json"] = kw["json"]
    elif kw.get("data") is not None:
        data = kw["data"]
        out["content" if isinstance(data, bytes | str) else "data"] = data
    return out


async def test_no_server_error_for_any_generated_request(
    env: WorkflowEnvironment, worker: Any, task_queue: str, tmp_path: Path
):
    # The API keeps its store apart from the worker's: the webhooks the fuzzing subscribes
    # (to generated URLs) are in a store no worker delivers from, so no delivery is ever
    # attempted to them, by this test's worker or a later test's.
    store = f"sqlite:///{tmp_path / 'api-store.db'}"
    app = make_app(env.client, task_queue, database_url=store)
    # schemathesis reads the document through Starlette's test client (Host: testserver)
    reader = TEST_CONFIG.model_copy(update={"allowed_hosts": ("testserver",)})
    schema = schemathesis.openapi.from_asgi(
        "/openapi.json", make_app(env.client, task_queue, config=reader, database_url=store)
    )
    loop = asyncio.get_running_loop()
    # POST /api/plans/generate runs the planner on the worker: offline (the ``worker``
    # fixture's model), so nothing leaves the machine.
    async with (
        app.router.lifespan_context(app),
        httpx.AsyncClient(
            transport=httpx.ASGITransport(app=app), base_url=BASE_URL, timeout=60
        ) as http,
    ):
        live = plan_doc(
            [wait_step("a"), wait_step("b", 0, ["a"], requires_approval=True)],
            require_approval=True,
        )
        assert (await http.post("/api/plans", json=live)).status_code == 201
        r = await http.post(f"/api/plans/{live['id']}/execute", headers=JSON)
        assert r.status_code == 202, r.text
        served: list[tuple[str, str, int]] = []

        def send(case: Any) -> httpx.Response:
            request = asyncio.wait_for(http.request(**_httpx_kwargs(case)), timeout=30)
            try:
                response = asyncio.run_coroutine_threadsafe(request, loop).result()
            except TimeoutError:
                raise AssertionError(f"no answer within 30 s: {case.as_curl_command()}") from None
            served.append((case.method, case.path, response.status_code))
            return response

        def run(op: Any, mode: GenerationMode, examples: int, checks: list[Any]) -> None:
            @given(case=op.as_strategy(generation_mode=mode), aim=st.booleans())
            @settings(
                max_examples=examples,
                deadline=None,
                database=None,
                derandomize=True,
                phases=[Phase.explicit, Phase.generate],
                suppress_health_check=list(HealthCheck),
            )
            def check(case: Any, aim: bool) -> None:
                # Only valid requests are aimed at the live plan: a negative case's broken
                # part may be its path.
                params = case.path_parameters or {}
                if op.path in NOT_LIVE and ID_RE.match(str(params.get("plan_id"))):
                    # The example id may name a plan the fuzzing started, whose stream
                    # would last until it ends: watch plans that cannot exist instead.
                    params["plan_id"] = f"nothing-{abs(hash(params['plan_id'])) % 10**9}"
                elif aim and mode == GenerationMode.POSITIVE:
                    for key in ("plan_id", "execution_id"):
                        if key in params:
                            params[key] = live["id"]
                response = send(case)
                case.validate_response(response, checks=checks)

            check()

        positive = [
            not_a_server_error,
            status_code_conformance,
            content_type_conformance,
            response_schema_conformance,
        ]
        negative = [not_a_server_error, status_code_conformance, negative_data_rejection]

        def fuzz() -> None:
            operations = [r.ok() for r in schema.get_all_operations()]
            assert len(operations) >= 30
            for op in operations:
                parts = (op.path_parameters, op.headers, op.cookies, op.query, op.body)
                run(op, GenerationMode.POSITIVE, POSITIVE_EXAMPLES, positive)
                if any(len(part) for part in parts):  # else nothing sent can be wrong
                    run(op, GenerationMode.NEGATIVE, NEGATIVE_EXAMPLES, negative)

        await asyncio.to_thread(fuzz)

    statuses = {code for _, _, code in served}
    assert all(code < 500 or code in (502, 503) for code in statuses), statuses
    assert not any(code in (502, 503) for code in statuses), "Temporal and the worker were up"
    # The run reached the workflow, not only validation and 404s.
    assert {200, 202, 404, 409, 422} <= statuses, statuses
    assert len(served) > 400, len(served)

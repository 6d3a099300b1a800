"""``GET /api/plans/{id}/risk`` fills the templates over ``inputs`` to judge a step's
params: under the expressions' budget, off the event loop. A document whose input
templates would sort for a minute answers within seconds, and the API keeps answering
others meanwhile (real HTTP requests against the app)."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import httpx

from tests.api.test_plans_routes import app, http, plan_doc  # noqa: F401 - fixtures

# 10 000 sorts of 20 000 characters each: about a minute of CPU without a budget.
COSTLY = "{{ inputs.t and [len(sorted(inputs.s)) for c in inputs.t] }}"


async def test_risk_of_costly_input_templates_is_bounded_and_off_the_loop(
    http: httpx.AsyncClient,  # noqa: F811
) -> None:
    doc = plan_doc(
        [
            {
                "id": "call",
                "tool": "http_request",
                "params": {
                    "url": "http://127.0.0.1:9/deploy",
                    "method": "POST",
                    "headers": {f"X-{i}": COSTLY for i in range(20)},
                },
            }
        ]
    )
    doc["inputs"] = {"s": "x" * 20_000, "t": "y" * 10_000}
    r = await http.post("/api/plans", json=doc)
    assert r.status_code == 201, r.text

    latencies: list[float] = []

    async def others() -> None:
        while len(latencies) < 200:
            began = time.monotonic()
            got = await http.get(f"/api/plans/{doc['id']}")
            assert got.status_code == 200
            latencies.append(time.monotonic() - began)
            await asyncio.sleep(0.01)

    poller = asyncio.create_task(others())
    began = time.monotonic()
    risk = await http.get(f"/api/plans/{doc['id']}/risk")
    took = time.monotonic() - began
    # the other requests' times, at least one (the risk may answer before the first)
    deadline = time.monotonic() + 20
    while not latencies and time.monotonic() < deadline:
        await asyncio.sleep(0.01)
    poller.cancel()
    assert risk.status_code == 200, risk.text
    body: dict[str, Any] = risk.json()
    assert body["level"] in ("low", "medium", "high", "critical")
    assert took < 10, f"risk took {took:.1f} s"
    assert latencies and max(latencies) < 5, latencies

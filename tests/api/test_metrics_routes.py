"""``/api/metrics/*``, ``GET /metrics`` (Prometheus) and the dashboard's files, against a
temporary SQLite store filled by :func:`tests.store.test_metrics.fill_store`; no Temporal."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from fastapi import FastAPI
from prometheus_client.parser import text_string_to_metric_families
from temporalio.client import Client

from api.app import create_app
from config import Settings, get_settings
from store import db
from tests.api.serving import serve
from tests.store.test_metrics import DAY, fill_store

CONFIG = {"log_format": "text", "log_level": "WARNING", "rpc_timeout_s": 20}


async def no_temporal(settings: Settings) -> Client:
    raise RuntimeError("these tests run without Temporal")


def build_app(database_url: str, api_keys: str | None = None) -> FastAPI:
    settings = get_settings().replace(
        api={**CONFIG, "keys": api_keys}, store={"database_url": database_url}
    )
    app = create_app(settings=settings, connect=no_temporal, database_url=database_url)
    return app


def midday() -> datetime:
    """Noon UTC today, or yesterday before noon: the runs filled in then sit far from
    midnight (the day buckets are certain) and never in the future."""
    now = datetime.now(UTC)
    noon = now.replace(hour=12, minute=0, second=0, microsecond=0)
    return noon if now >= noon else noon - timedelta(days=1)


FILLED_AT = midday()


def filled_store_url(tmp_path: Any, now: datetime = FILLED_AT) -> str:
    url = f"sqlite:///{tmp_path / 'metrics.db'}"
    engine = db.make_engine(url)
    db.migrate(engine)
    fill_store(engine, now)
    engine.dispose()
    return url


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    out = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


@pytest.fixture
def url(tmp_path: Any) -> str:
    return filled_store_url(tmp_path)


async def test_plan_quality_and_corrections(url: str) -> None:
    async with serve(build_app(url)) as http:
        r = await http.get("/api/metrics/plans/alpha")
        assert r.status_code == 200, r.text
        body = r.json()
        assert body["quality"]["score"] == 0.925 and body["corrections"] == []
        assert body["quality"]["components"]["validation_problems"]["detail"]["problems"] == 2

        beta = (await http.get("/api/metrics/plans/beta")).json()
        assert beta["quality"]["score"] == 0.8078
        assert [(c["version"], c["by"], c["fields"]) for c in beta["corrections"]] == [
            (2, "alice", ["b.description"])
        ]

        r = await http.get("/api/metrics/plans/nope")
        assert r.status_code == 404 and r.json()["code"] == "not_found"
        r = await http.get("/api/metrics/plans/Not_An-Id!")
        assert r.status_code == 422

        listed = (await http.get("/api/metrics/plans", params={"limit": 2})).json()
        assert [p["plan_id"] for p in listed["plans"]] == ["zeta", "eps"]
        for bad in ({"limit": 0}, {"limit": 501}, {"lmit": 3}):
            r = await http.get("/api/metrics/plans", params=bad)
            assert r.status_code == 422, bad
            assert r.json()["problems"], bad


async def test_success_trends_waiting_planner_agents(url: str) -> None:
    async with serve(build_app(url)) as http:
        r = await http.get("/api/metrics/success", params={"by": "tool"})
        assert r.status_code == 200, r.text
        rows = {row["key"]: row for row in r.json()["rows"]}
        assert rows["fetch"]["success_rate"] == 0.8 and rows["store"]["steps"]["failed"] == 1
        agents = (await http.get("/api/metrics/success")).json()
        assert agents["by"] == "agent" and agents["since"] is None
        assert {row["key"] for row in agents["rows"]} == {"bot-a", "bot-b", None}
        recent = (await http.get("/api/metrics/success", params={"days": 1})).json()
        assert {row["key"] for row in recent["rows"]} == {"bot-b", None}
        r = await http.get("/api/metrics/success", params={"by": "colour"})
        assert r.status_code == 422 and r.json()["problems"][0]["location"] == "query.by"

        t = (await http.get("/api/metrics/trends", params={"days": 7})).json()
        assert t["bucket"] == "day" and len(t["points"]) == 7
        by_day = {datetime.fromisoformat(p["start"]): p for p in t["points"]}
        today = FILLED_AT.replace(hour=0)
        assert [by_day[today - n * DAY]["finished"] for n in (2, 1, 0)] == [2, 1, 1]
        assert by_day[today - 2 * DAY]["mean_quality"] == 0.8664
        assert sum(p["finished"] for p in t["points"]) == 4
        r = await http.get("/api/metrics/trends", params={"days": 100, "bucket": "hour"})
        assert r.status_code == 422 and "buckets" in r.json()["detail"]
        r = await http.get("/api/metrics/trends", params={"bucket": "month"})
        assert r.status_code == 422

        w = (await http.get("/api/metrics/waiting")).json()
        assert w["count"] == 2
        assert [(p["plan_id"], p["kind"]) for p in w["plans"]] == [
            ("delta", "plan_approval"),
            ("eps", "step_approval"),
        ]
        assert (await http.get("/api/metrics/waiting", params={"limit": 1})).json()["count"] == 2

        p = (await http.get("/api/metrics/planner")).json()
        assert (p["runs"], p["problems"], p["offline_share"]) == (3, 7, 0.3333)

        a = (await http.get("/api/metrics/agents")).json()
        by = {row["agent_id"]: row for row in a["agents"]}
        assert by["bot-a"]["mean_quality"] == 0.8664 and by["bot-a"]["success_rate"] == 1.0
        # the same trust as GET /api/agents/{agent_id}/trust
        assert by["bot-a"]["trust"]["score"] > by["bot-b"]["trust"]["score"] >= 0
        assert by[None]["trust"] is None


async def test_prometheus_text_parses_and_has_the_store_figures(url: str) -> None:
    async with serve(build_app(url)) as http:
        assert (await http.get("/api/metrics/waiting")).status_code == 200
        assert (await http.get("/api/metrics/plans/nope")).status_code == 404
        r = await http.get("/metrics")
        assert r.status_code == 200, r.text
        assert r.headers["content-type"].startswith("text/plain")
        got = samples(r.text)

        def v(name: str, **labels: str) -> float:
            return got[(name, tuple(sorted(labels.items())))]

        assert v("plansmith_store_up") == 1
        assert v("plansmith_plans", status="completed") == 2
        assert v("plansmith_plans", status="rejected") == 0
        assert v("plansmith_plans_waiting") == 2
        assert v("plansmith_waits", kind="plan_approval") == 1
        assert v("plansmith_waits", kind="correction") == 0
        age = (datetime.now(UTC) - FILLED_AT).total_seconds() + 3 * 3600
        assert age - 60 < v("plansmith_wait_oldest_seconds", kind="plan_approval") <= age
        assert v("plansmith_runs_finished_total", agent="bot-a", status="completed") == 2
        assert v("plansmith_runs_finished_total", agent="", status="partial") == 1
        assert v("plansmith_agent_success_ratio", agent="bot-a") == 1.0
        assert v("plansmith_agent_success_ratio", agent="bot-b") == 0.0
        assert (
            v("plansmith_steps_finished_total", kind="tool", tool="fetch", status="completed") == 4
        )
        assert v("plansmith_steps_finished_total", kind="tool", tool="store", status="skipped") == 1
        assert v("plansmith_planner_runs_total", outcome="ok") == 2
        assert v("plansmith_planner_runs_total", outcome="failed") == 1
        assert v("plansmith_planner_rounds_total") == 6
        assert v("plansmith_planner_problems_total") == 7
        assert v("plansmith_llm_tokens_total", source="planner", direction="input") == 3000
        assert v("plansmith_llm_tokens_total", source="steps", direction="output") == 0
        route = "/api/metrics/waiting"
        assert v("plansmith_http_requests_total", method="GET", route=route, status="200") == 1
        assert (
            v(
                "plansmith_http_requests_total",
                method="GET",
                route="/api/metrics/plans/{plan_id}",
                status="404",
            )
            == 1
        )
        assert v("plansmith_http_request_duration_seconds_count", method="GET", route=route) == 1
        assert v("plansmith_store_scrape_seconds") < 5

        r = await http.get("/metrics", headers={"Accept": "application/openmetrics-text"})
        assert r.headers["content-type"].startswith("application/openmetrics-text")
        assert r.text.rstrip().endswith("# EOF")


async def test_api_keys(url: str) -> None:
    async with serve(build_app(url, api_keys="s3cr3t:alice")) as http:
        for path in ("/api/metrics/waiting", "/api/metrics/agents", "/metrics"):
            r = await http.get(path)
            assert r.status_code == 401, path
            assert (await http.get(path, headers={"X-API-Key": "nope"})).status_code == 401
            ok = await http.get(path, headers={"Authorization": "Bearer s3cr3t"})
            assert ok.status_code == 200, path
        # the page and its files hold no data: no key needed
        page = await http.get("/dashboard")
        assert page.status_code == 200 and "text/html" in page.headers["content-type"]
        assert "default-src 'none'" in page.headers["content-security-policy"]
        for name, kind in (("dashboard.js", "javascript"), ("dashboard.css", "css")):
            r = await http.get(f"/dashboard/static/{name}")
            assert r.status_code == 200 and kind in r.headers["content-type"]
        assert (await http.get("/dashboard/static/secret.py")).status_code == 404
        assert (await http.get("/dashboard/static/..%2Fapp.py")).status_code == 404


async def test_empty_store_and_broken_store(tmp_path: Any) -> None:
    empty = f"sqlite:///{tmp_path / 'empty.db'}"
    async with serve(build_app(empty)) as http:
        w = (await http.get("/api/metrics/waiting")).json()
        assert w == {"count": 0, "plans": []}
        t = (await http.get("/api/metrics/trends")).json()
        assert len(t["points"]) == 30 and not any(p["finished"] for p in t["points"])
        assert (await http.get("/api/metrics/agents")).json()["agents"] == []
        assert (await http.get("/api/metrics/plans")).json() == {"plans": []}
        assert (await http.get("/api/metrics/planner")).json()["runs"] == 0
        got = samples((await http.get("/metrics")).text)
        assert got[("plansmith_plans_waiting", ())] == 0

    broken = f"sqlite:///{tmp_path}/no/such/dir/store.db"
    async with serve(build_app(broken)) as http:
        r = await http.get("/api/metrics/waiting")
        assert r.status_code == 503 and r.json()["code"] == "unavailable"
        assert (await http.get("/api/metrics/plans/alpha")).status_code == 503
        r = await http.get("/metrics")  # the scrape still answers: the store is down
        assert r.status_code == 200
        got = samples(r.text)
        assert got[("plansmith_store_up", ())] == 0
        assert ("plansmith_plans", (("status", "completed"),)) not in got


@pytest.fixture(autouse=True)
def _quiet_logs(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level("ERROR")

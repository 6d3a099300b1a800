"""The model selector (which model does what), ``PLANSMITH_MODELS``, the store's models
and ``/api/models``; a SQLite store of each test's own, no Temporal, no network."""

from __future__ import annotations

import contextlib
import json
import logging
import threading
from collections.abc import AsyncIterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from temporalio.client import Client

from activities.llm.selector import load_selector
from api.app import create_app
from config import ConfigError, ModelConfig, Settings, get_settings, load_settings, parse_models
from contracts.errors import NoModelFits
from contracts.models import ModelSelector
from store import knowledge
from store.db import get_engine, migrate, session_scope
from tests.api.serving import BASE_URL, JSON

SONNET, HAIKU = "claude-sonnet-5-5", "claude-haiku-5-5"


def settings_with(**store: Any) -> Settings:
    return get_settings().replace(models={"models": None}, store=store)


def selector_of(settings: Settings) -> ModelSelector:
    """What a worker with ``settings`` selects from: its settings and its store."""
    return load_selector(settings, get_engine(settings.store.database_url))


def m(name: str, caps: list[str], priority: int = 100, **kw: Any) -> ModelConfig:
    return ModelConfig(name=name, capabilities=caps, priority=priority, **kw)


# --- choosing -------------------------------------------------------------------------


def test_the_defaults_give_sonnet_for_planning_and_code_and_haiku_for_fast_work():
    selector = ModelSelector.load(settings_with())
    assert selector.planning_model().name == SONNET
    assert selector.code_model().name == SONNET
    assert selector.fast_model().name == HAIKU
    assert selector.default_model().name == SONNET  # both are general; sonnet's priority wins
    assert selector.roles() == {
        "planning": SONNET,
        "code": SONNET,
        "fast": HAIKU,
        "reasoning": SONNET,
        "default": SONNET,
    }
    assert {x.source for x in selector.models} == {"settings"}


def test_a_model_needs_every_capability_asked_and_the_lowest_priority_wins():
    selector = ModelSelector(
        [
            m("big", ["planning", "reasoning", "general"], priority=50),
            m("cheap-b", ["fast", "general"], priority=10),
            m("cheap-a", ["fast", "general"], priority=10),  # same priority: by name
            m("best", ["planning", "reasoning"], priority=1, enabled=False),
        ]
    )
    assert selector.model_for(["fast"]).name == "cheap-a"
    assert selector.model_for(["general"]).name == "cheap-a"
    assert selector.model_for(["planning", "reasoning"]).name == "big"  # "best" is disabled
    assert selector.model_for(["planning", "general"]).name == "big"
    with pytest.raises(NoModelFits):
        selector.model_for(["planning", "fast"])  # nobody has both


def test_a_step_names_its_model_or_its_capabilities_or_gets_the_default():
    selector = ModelSelector.load(settings_with())
    # an explicit name wins over capabilities
    assert selector.resolve(HAIKU, ["planning"]).name == HAIKU
    assert selector.resolve(None, ["fast"]).name == HAIKU
    assert selector.resolve(None, ["code_generation"]).name == SONNET
    assert selector.resolve().name == SONNET  # "general"
    assert selector.resolve(None, [], default="fast").name == HAIKU
    assert selector.get(HAIKU).max_tokens == 4096


def test_no_model_fits_says_what_was_asked_and_lists_every_model():
    selector = ModelSelector(
        [m("alpha", ["fast", "general"], 1), m("beta", ["planning"], 2, enabled=False)]
    )
    with pytest.raises(NoModelFits) as raised:
        selector.model_for(["vision", "planning"])
    text = str(raised.value)
    assert "vision" in text and "planning" in text
    assert "alpha [fast, general]" in text
    assert "beta [planning], disabled" in text
    assert raised.value.capabilities == ["vision", "planning"]

    with pytest.raises(NoModelFits) as raised:
        selector.resolve("claude-opus-9")
    assert "'claude-opus-9' is not configured" in str(raised.value)
    assert "alpha" in str(raised.value) and "beta" in str(raised.value)

    with pytest.raises(NoModelFits, match="'beta' is disabled"):
        selector.get("beta")

    with pytest.raises(NoModelFits, match="no models are configured"):
        ModelSelector([]).default_model()


# --- PLANSMITH_MODELS -----------------------------------------------------------------


def test_plansmith_models_is_read_from_the_environment(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv(
        "PLANSMITH_MODELS",
        json.dumps(
            [
                {"name": "opus", "capabilities": ["planning", "general"], "priority": 5},
                {"name": "haiku", "capabilities": ["fast"], "max_tokens": 1024},
                {"name": "old", "capabilities": ["code_generation"], "enabled": False},
            ]
        ),
    )
    monkeypatch.setenv("PLANSMITH_LLM_TIMEOUT_S", "33")
    settings = load_settings()
    assert settings.models.llm_timeout_s == 33
    selector = ModelSelector.load(settings)
    assert [x.name for x in selector.models] == ["opus", "haiku", "old"]
    assert selector.planning_model().name == "opus"
    assert selector.fast_model().max_tokens == 1024
    with pytest.raises(NoModelFits):
        selector.code_model()  # "old" is disabled, and the defaults are not added
    assert not any(x.name == SONNET for x in selector.models)


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("[{'name': 'x'}]", "PLANSMITH_MODELS is not valid JSON"),
        ('{"name": "x", "capabilities": []}', "must be a JSON list"),
        ('[{"name": "x"}]', "0.capabilities: Field required"),
        ('[{"name": "x", "capabilites": ["fast"]}]', "0.capabilites"),
        ('[{"name": "x", "capabilities": ["a"], "max_tokens": 0}]', "0.max_tokens"),
        (
            '[{"name": "x", "capabilities": ["a"]}, {"name": "x", "capabilities": ["b"]}]',
            "names a model more than once: x",
        ),
    ],
)
def test_a_bad_plansmith_models_fails_at_settings_load_naming_the_variable(
    monkeypatch: pytest.MonkeyPatch, value: str, expected: str
):
    monkeypatch.setenv("PLANSMITH_MODELS", value)
    with pytest.raises(ConfigError) as raised:
        load_settings()
    assert "PLANSMITH_MODELS" in str(raised.value)
    assert expected in str(raised.value)
    with pytest.raises(ValueError, match="PLANSMITH_MODELS"):
        parse_models(value)


# --- the store ------------------------------------------------------------------------


@pytest.fixture
def db_url(tmp_path: Path) -> str:
    url = f"sqlite:///{tmp_path}/store.db"
    migrate(url)
    return url


def put(url: str, name: str, caps: list[str], **kw: Any) -> None:
    with session_scope(get_engine(url), write=True) as s:
        knowledge.put_model_config(s, name=name, capabilities=caps, **kw)


def test_store_models_override_the_settings_by_name_and_can_hide_them(db_url: str):
    settings = settings_with(database_url=db_url)
    assert selector_of(settings).fast_model().name == HAIKU

    put(db_url, "claude-haiku-6", ["fast", "general"], priority=15, max_tokens=8000)
    put(db_url, SONNET, ["planning", "general"], priority=10, enabled=False)
    selector = selector_of(settings)
    by_name = {x.name: x for x in selector.models}
    assert by_name["claude-haiku-6"].source == "store"
    assert by_name[SONNET].source == "store" and not by_name[SONNET].enabled
    assert by_name[HAIKU].source == "settings"
    assert selector.fast_model().name == "claude-haiku-6"  # priority 15 < 20
    assert selector.fast_model().max_tokens == 8000
    assert selector.default_model().name == "claude-haiku-6"
    with pytest.raises(NoModelFits, match="planning"):
        selector.planning_model()  # the store disabled sonnet
    with pytest.raises(NoModelFits, match="disabled"):
        selector.resolve(SONNET)

    # the store changes the priority of a settings model
    put(db_url, HAIKU, ["fast", "general"], priority=1)
    assert selector_of(settings).default_model().name == HAIKU


def test_without_a_readable_store_the_settings_alone_answer(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
):
    settings = settings_with(database_url=f"sqlite:///{tmp_path}/no/such/dir/store.db")
    with caplog.at_level(logging.WARNING, logger="plansmith.llm"):
        selector = selector_of(settings)
    assert [x.name for x in selector.models] == [SONNET, HAIKU]
    assert any(
        "cannot read the models configured in the store" in r.message for r in caplog.records
    )


# --- /api/models ----------------------------------------------------------------------


async def _no_temporal(settings: Settings) -> Client:
    raise RuntimeError("these tests need no Temporal")


@contextlib.asynccontextmanager
async def api(
    db_url: str,
    *,
    key: str | None = None,
    api_keys: str | None = None,
    ollama_url: str | None = None,
) -> AsyncIterator[httpx.AsyncClient]:
    settings = get_settings().replace(
        models={"models": None, "anthropic_api_key": key, "ollama_url": ollama_url},
        store={"database_url": db_url},
        api={"keys": api_keys, "rpc_timeout_s": 10.0},
    )
    app: FastAPI = create_app(
        settings=settings,
        connect=_no_temporal,
        database_url=db_url,
    )
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app), base_url=BASE_URL, headers=JSON, timeout=30
    ) as http:
        yield http


async def test_get_models_lists_the_models_and_the_choices(db_url: str):
    async with api(db_url) as http:
        r = await http.get("/api/models")
        assert r.status_code == 200, r.text
        body = r.json()
        assert [x["name"] for x in body["models"]] == [SONNET, HAIKU]
        assert body["models"][1] == {
            "name": HAIKU,
            "capabilities": ["fast", "general"],
            "max_tokens": 4096,
            "priority": 20,
            "enabled": True,
            "provider": "anthropic",
            "reachable": True,
            "source": "settings",
        }
        assert body["providers"] == []
        assert body["choices"] == {
            "planning": SONNET,
            "code": SONNET,
            "fast": HAIKU,
            "reasoning": SONNET,
            "default": SONNET,
        }
        assert body["offline"] is True  # no ANTHROPIC_API_KEY: the offline model answers
        r = await http.get("/api/models", params={"sourse": "store"})
        assert r.status_code == 422  # an unknown query parameter is an error

    async with api(db_url, key="sk-ant-test") as http:
        assert (await http.get("/api/models")).json()["offline"] is False


async def test_put_and_delete_change_what_the_selector_picks(db_url: str):
    async with api(db_url) as http:
        r = await http.put(
            "/api/models/claude-haiku-6",
            json={"capabilities": ["fast", "general"], "max_tokens": 2048, "priority": 5},
        )
        assert r.status_code == 201, r.text
        assert r.json() == {
            "name": "claude-haiku-6",
            "capabilities": ["fast", "general"],
            "max_tokens": 2048,
            "priority": 5,
            "enabled": True,
            "provider": "anthropic",
            "reachable": True,
            "source": "store",
        }
        r = await http.put("/api/models/claude-haiku-6", json={"capabilities": ["fast"]})
        assert r.status_code == 200 and r.json()["priority"] == 100  # replaced whole

        # hide the settings' sonnet: nothing plans any more, haiku is the default
        r = await http.put(f"/api/models/{SONNET}", json={"capabilities": [], "enabled": False})
        assert r.status_code == 201
        body = (await http.get("/api/models")).json()
        assert body["choices"] == {
            "planning": None,
            "code": None,
            "fast": HAIKU,
            "reasoning": None,
            "default": HAIKU,
        }
        sonnet = next(x for x in body["models"] if x["name"] == SONNET)
        assert sonnet["source"] == "store" and sonnet["enabled"] is False

        # the worker's selector sees the same (same store)
        selector = selector_of(settings_with(database_url=db_url))
        assert selector.fast_model().name == HAIKU  # priority 20 < 100
        with pytest.raises(NoModelFits):
            selector.planning_model()

        # deleting the store's sonnet brings back the settings' one
        r = await http.delete(f"/api/models/{SONNET}")
        assert r.status_code == 200, r.text
        after = r.json()
        assert after["choices"]["planning"] == SONNET
        assert next(x for x in after["models"] if x["name"] == SONNET)["source"] == "settings"

        r = await http.delete(f"/api/models/{SONNET}")
        assert r.status_code == 404 and r.json()["code"] == "not_found"
        assert "only in the settings" in r.json()["detail"]
        r = await http.delete("/api/models/never-configured")
        assert r.status_code == 404 and "not configured in the store" in r.json()["detail"]
        assert (await http.delete("/api/models/claude-haiku-6")).status_code == 200


@pytest.mark.parametrize(
    ("body", "location"),
    [
        ({}, "capabilities"),
        ({"capabilities": "fast"}, "capabilities"),
        ({"capabilities": [""]}, "capabilities[0]"),
        ({"capabilities": ["fast"], "max_tokens": 0}, "max_tokens"),
        ({"capabilities": ["fast"], "priority": 10**12}, "priority"),
        ({"capabilities": ["fast"], "enable": False}, "enable"),
    ],
)
async def test_put_refuses_a_bad_body_with_422(db_url: str, body: Any, location: str):
    async with api(db_url) as http:
        r = await http.put("/api/models/some-model", json=body)
        assert r.status_code == 422, r.text
        assert location in [p["location"] for p in r.json()["problems"]]
        assert (await http.get("/api/models")).json()["models"][0]["name"] == SONNET
        assert len((await http.get("/api/models")).json()["models"]) == 2  # nothing stored


async def test_put_refuses_a_bad_model_name(db_url: str):
    async with api(db_url) as http:
        r = await http.put("/api/models/-bad name", json={"capabilities": ["fast"]})
        assert r.status_code == 422
        assert r.json()["problems"][0]["location"] == "path.name"


async def test_the_models_routes_need_an_api_key_when_keys_are_configured(db_url: str):
    async with api(db_url, api_keys="k-alice:alice,k-root:root:admin") as http:
        assert (await http.get("/api/models")).status_code == 401
        r = await http.put("/api/models/x-model", json={"capabilities": ["fast"]})
        assert r.status_code == 401
        assert (await http.delete("/api/models/x-model")).status_code == 401
        assert (
            len((await http.get("/api/models", headers={"X-API-Key": "k-alice"})).json()["models"])
            == 2
        )

        # changing the models needs an admin key: alice's (an operator's) is refused
        alice = {"Authorization": "Bearer k-alice"}
        r = await http.put("/api/models/x-model", json={"capabilities": ["fast"]}, headers=alice)
        assert r.status_code == 403 and "needs an admin key" in r.json()["detail"], r.text
        assert (await http.delete("/api/models/x-model", headers=alice)).status_code == 403
        auth = {"Authorization": "Bearer k-root"}
        r = await http.put("/api/models/x-model", json={"capabilities": ["fast"]}, headers=auth)
        assert r.status_code == 201
        assert (await http.delete("/api/models/x-model", headers=auth)).status_code == 200


# --- providers: Anthropic and Ollama ----------------------------------------------------

OLLAMA_URL = "http://127.0.0.1:11434"
LOCAL = [
    {
        "name": "qwen3:8b",
        "capabilities": ["planning", "reasoning", "general"],
        "priority": 30,
        "provider": "ollama",
    },
    {
        "name": "qwen2.5-coder:7b",
        "capabilities": ["code_generation"],
        "priority": 30,
        "provider": "ollama",
    },
    {
        "name": "llama3.2:3b",
        "capabilities": ["fast", "general"],
        "priority": 40,
        "provider": "ollama",
    },
]


def with_providers(key: str | None, ollama: str | None) -> Settings:
    models = [m.model_dump(exclude={"source"}) for m in get_settings().models.configured()]
    return get_settings().replace(
        models={
            "models": json.dumps(models + LOCAL),
            "anthropic_api_key": key,
            "ollama_url": ollama,
        }
    )


def test_with_ollama_and_no_anthropic_key_the_selector_picks_ollama_models_by_capability():
    selector = ModelSelector.load(with_providers(None, OLLAMA_URL))
    assert selector.providers == {"ollama"}
    assert selector.roles() == {
        "planning": "qwen3:8b",
        "code": "qwen2.5-coder:7b",
        "fast": "llama3.2:3b",
        "reasoning": "qwen3:8b",
        "default": "qwen3:8b",
    }
    assert selector.resolve(None, ["reasoning"]).provider == "ollama"
    # an Anthropic model named outright cannot be reached: said, not sent to Ollama
    with pytest.raises(NoModelFits, match="ANTHROPIC_API_KEY is not set") as raised:
        selector.resolve(SONNET)
    assert "claude-haiku-5-5 [fast, general], unreachable" in str(raised.value)


def test_with_both_providers_the_priority_decides_and_with_neither_every_model_is_offline():
    both = ModelSelector.load(with_providers("sk-ant-x", OLLAMA_URL))
    assert both.roles() == {
        "planning": SONNET,
        "code": SONNET,
        "fast": HAIKU,
        "reasoning": SONNET,
        "default": SONNET,
    }
    assert both.get("llama3.2:3b").provider == "ollama"  # by name, either provider
    anthropic_only = ModelSelector.load(with_providers("sk-ant-x", None))
    assert anthropic_only.roles()["fast"] == HAIKU
    with pytest.raises(NoModelFits, match="PLANSMITH_OLLAMA_URL is not set"):
        anthropic_only.get("llama3.2:3b")
    offline = ModelSelector.load(with_providers(None, None))
    assert offline.providers == frozenset()
    assert offline.get("llama3.2:3b").name == "llama3.2:3b"  # the offline model answers
    assert offline.roles()["planning"] == SONNET


def test_a_store_model_can_be_an_ollama_model(db_url: str):
    put(db_url, "phi4:14b", ["planning", "general"], priority=1, provider="ollama")
    settings = settings_with(database_url=db_url).replace(models={"ollama_url": OLLAMA_URL})
    selector = selector_of(settings)
    assert selector.planning_model().name == "phi4:14b"
    assert selector.planning_model().provider == "ollama"
    with pytest.raises(NoModelFits, match="no enabled model"):
        selector.fast_model()  # the default Haiku needs ANTHROPIC_API_KEY


async def test_put_configures_an_ollama_model_that_the_listing_shows_and_the_choices_use(
    db_url: str,
):
    async with api(db_url, ollama_url=OLLAMA_URL) as http:
        body = (await http.get("/api/models")).json()
        assert body["providers"] == ["ollama"] and body["offline"] is False
        assert all(not x["reachable"] for x in body["models"])  # the Anthropic defaults
        assert body["choices"] == {
            "planning": None,
            "code": None,
            "fast": None,
            "reasoning": None,
            "default": None,
        }

        r = await http.put(
            "/api/models/llama3.1:8b",
            json={"capabilities": ["planning", "fast", "general"], "provider": "ollama"},
        )
        assert r.status_code == 201, r.text
        assert r.json() == {
            "name": "llama3.1:8b",
            "capabilities": ["fast", "general", "planning"],
            "max_tokens": 4096,
            "priority": 100,
            "enabled": True,
            "provider": "ollama",
            "reachable": True,
            "source": "store",
        }
        body = (await http.get("/api/models")).json()
        assert body["choices"] == {
            "planning": "llama3.1:8b",
            "code": None,
            "fast": "llama3.1:8b",
            "reasoning": None,
            "default": "llama3.1:8b",
        }
        r = await http.put("/api/models/x", json={"capabilities": ["fast"], "provider": "openai"})
        assert r.status_code == 422 and r.json()["problems"][0]["location"] == "provider"

    async with api(db_url, key="sk-ant-x", ollama_url=OLLAMA_URL) as http:
        body = (await http.get("/api/models")).json()
        assert body["providers"] == ["anthropic", "ollama"]
        assert body["choices"]["planning"] == SONNET  # priority 10 < 100
        assert all(x["reachable"] for x in body["models"])


class FakeOllama:
    """A tiny Ollama stand-in on 127.0.0.1 (``/api/tags``, ``/api/show``), started and
    stopped by the test; it records the paths asked."""

    def __init__(self, tags: Any, capabilities: dict[str, list[str]]):
        asked: list[str] = []
        self.asked = asked

        class Handler(BaseHTTPRequestHandler):
            def _answer(self, status: int, body: Any) -> None:
                data = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def do_GET(self) -> None:
                asked.append(f"GET {self.path}")
                if self.path == "/api/tags":
                    self._answer(200, tags)
                else:
                    self._answer(404, {"error": "not found"})

            def do_POST(self) -> None:
                raw = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                name = json.loads(raw)["model"]
                asked.append(f"POST {self.path} {name}")
                if name in capabilities:
                    self._answer(200, {"capabilities": capabilities[name]})
                else:
                    self._answer(500, {"error": "boom"})

            def log_message(self, *args: Any) -> None:
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


async def test_get_models_ollama_lists_the_servers_models_and_whether_they_call_tools(
    db_url: str,
):
    tags = {
        "models": [
            {
                "name": "qwen3:8b",
                "size": 5_200_000_000,
                "details": {
                    "family": "qwen3",
                    "parameter_size": "8.2B",
                    "quantization_level": "Q4_K_M",
                },
            },
            {"name": "gemma2:2b", "size": 1_600_000_000, "details": {"family": "gemma2"}},
            {"name": "odd:1", "size": -5, "details": "garbage"},
            {"no": "name"},
        ]
    }
    fake = FakeOllama(
        tags, {"qwen3:8b": ["completion", "tools", "thinking"], "gemma2:2b": ["completion"]}
    )
    try:
        async with api(db_url, ollama_url=fake.url) as http:
            r = await http.put(
                "/api/models/qwen3:8b", json={"capabilities": ["planning"], "provider": "ollama"}
            )
            assert r.status_code == 201
            r = await http.get("/api/models/ollama")
            assert r.status_code == 200, r.text
            body = r.json()
            assert body["url"] == fake.url
            assert body["models"] == [
                {
                    "name": "qwen3:8b",
                    "size": 5_200_000_000,
                    "family": "qwen3",
                    "parameter_size": "8.2B",
                    "quantization": "Q4_K_M",
                    "capabilities": ["completion", "tools", "thinking"],
                    "tools": True,
                    "configured": True,
                },
                {
                    "name": "gemma2:2b",
                    "size": 1_600_000_000,
                    "family": "gemma2",
                    "parameter_size": None,
                    "quantization": None,
                    "capabilities": ["completion"],
                    "tools": False,
                    "configured": False,
                },
                {
                    "name": "odd:1",
                    "size": None,
                    "family": None,
                    "parameter_size": None,
                    "quantization": None,
                    "capabilities": None,  # /api/show failed: unknown, not fatal
                    "tools": None,
                    "configured": False,
                },
            ]
        assert sorted(fake.asked) == [
            "GET /api/tags",
            "POST /api/show gemma2:2b",
            "POST /api/show odd:1",
            "POST /api/show qwen3:8b",
        ]
    finally:
        fake.close()

    # the server gone: 502, naming it; no PLANSMITH_OLLAMA_URL: 409
    async with api(db_url, ollama_url=fake.url) as http:
        r = await http.get("/api/models/ollama")
        assert r.status_code == 502 and r.json()["code"] == "ollama_unavailable"
        assert fake.url in r.json()["detail"]
    async with api(db_url) as http:
        r = await http.get("/api/models/ollama")
        assert r.status_code == 409 and "PLANSMITH_OLLAMA_URL" in r.json()["detail"]

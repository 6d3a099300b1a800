"""Shared fixtures: one local dev server per session (signals, updates, queries), one
time-skipping server per session (timers), both from the pip-installed binaries, and a
worker on a fresh task queue per test (answering with the offline model)."""

from __future__ import annotations

import contextlib
import os
import socket
import tempfile
import threading
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio
import sqlalchemy as sa
from sqlalchemy.engine import Engine, make_url
from temporalio.client import Client
from temporalio.testing import WorkflowEnvironment
from temporalio.worker import Worker

import tests.tools_for_tests  # noqa: F401  registers the test tools
from activities.llm.base import ChatModel
from config import Settings
from plansmith.devserver import dynamic_config_args, temporal_cli_path, test_server_path
from store import db
from tests.helpers import StartWorker, worker_with
from workflows.plan_input import SEARCH_ATTRIBUTES
from workflows.transport import data_converter as plansmith_converter


def pytest_configure(config: pytest.Config) -> None:
    """Workers in the tests record plans in a store of their own, never in ./plansmith.db
    (subprocesses the tests start inherit it)."""
    store_dir = tempfile.mkdtemp(prefix="plansmith-tests-")
    os.environ["DATABASE_URL"] = f"sqlite:///{store_dir}/store.db"
    # No test talks to the real Anthropic API: without a key the offline model answers,
    # and the Anthropic path is tested against a mocked transport (test_llm_anthropic).
    os.environ.pop("ANTHROPIC_API_KEY", None)


TESTS = Path(__file__).resolve().parent
KINDS = ("unit", "integration", "e2e")
UNIT = {"plans", "config", "test_architecture.py"}


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Mark each test by where it lives: tests/plans (and tests/config,
    tests/test_architecture.py) are ``unit``, tests/e2e is ``e2e``, the rest ``integration``
    -- unless its file says otherwise with a module-level ``pytestmark``."""
    for item in items:
        if any(item.get_closest_marker(kind) for kind in KINDS):
            continue
        first = item.path.resolve().relative_to(TESTS).parts[0]
        kind = "unit" if first in UNIT else "e2e" if first == "e2e" else "integration"
        item.add_marker(kind)


@pytest_asyncio.fixture(scope="session")
async def env() -> AsyncIterator[WorkflowEnvironment]:
    async with await WorkflowEnvironment.start_local(
        dev_server_existing_path=temporal_cli_path(),
        data_converter=plansmith_converter(),
        search_attributes=SEARCH_ATTRIBUTES,
        dev_server_extra_args=dynamic_config_args(),  # as `plansmith server` runs it
    ) as e:
        yield e


@pytest_asyncio.fixture(scope="session")
async def ts_env() -> AsyncIterator[WorkflowEnvironment]:
    async with await WorkflowEnvironment.start_time_skipping(
        test_server_existing_path=test_server_path(),
        data_converter=plansmith_converter(),
    ) as e:
        yield e


@pytest.fixture
def task_queue() -> str:
    return f"tq-{uuid.uuid4()}"


@pytest_asyncio.fixture
async def client(env: WorkflowEnvironment) -> Client:
    return env.client


@pytest_asyncio.fixture
async def worker(env: WorkflowEnvironment, task_queue: str) -> AsyncIterator[Worker]:
    """The worker of ``task_queue``; its model steps and planner answer offline (a test
    that needs another model starts its own: :func:`tests.helpers.worker_with`)."""
    w = worker_with(env.client, task_queue)
    async with w:
        yield w


@pytest_asyncio.fixture
async def start_worker(env: WorkflowEnvironment, task_queue: str) -> AsyncIterator[StartWorker]:
    """Instead of ``worker``: ``await start_worker(model, settings)`` starts the worker of
    ``task_queue`` with a model (and settings) of the test's choosing; it stops with the
    test."""
    async with contextlib.AsyncExitStack() as stack:

        async def start(
            chat_model: ChatModel | None = None, settings: Settings | None = None
        ) -> Worker:
            w = worker_with(env.client, task_queue, chat_model, settings)
            return await stack.enter_async_context(w)

        yield start


@pytest.fixture
def text_server() -> Iterator[tuple[str, list[str]]]:
    """An HTTP server on 127.0.0.1 answering every GET with ``text from <path>`` (the
    release notes of the planner tests); returns its base URL and the paths asked."""
    asked: list[str] = []

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            asked.append(self.path)
            body = f"text from {self.path}".encode()
            self.send_response(200)
            self.send_header("Content-Type", "text/plain")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: Any) -> None:
            pass

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}", asked
    httpd.shutdown()
    httpd.server_close()


@pytest.fixture
def local_server() -> Iterator[tuple[int, list[str]]]:
    """A TCP server on 127.0.0.1 that records every connection it accepts."""
    srv = socket.create_server(("127.0.0.1", 0))
    srv.settimeout(0.2)
    seen: list[str] = []
    stop = threading.Event()

    def serve() -> None:
        while not stop.is_set():
            try:
                conn, addr = srv.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            seen.append(f"{addr[0]}:{addr[1]}")
            conn.close()

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    port = srv.getsockname()[1]
    # the server works: the test itself can reach it
    socket.create_connection(("127.0.0.1", port), timeout=2).close()
    deadline = time.monotonic() + 2
    while not seen and time.monotonic() < deadline:
        time.sleep(0.01)
    assert len(seen) == 1
    seen.clear()
    yield port, seen
    stop.set()
    srv.close()
    thread.join(timeout=2)


PG_ADMIN_URL = os.environ.get(
    "PLANSMITH_TEST_POSTGRES_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test"
)


# --- databases ------------------------------------------------------------------------


@pytest.fixture(scope="session")
def pg_database() -> Iterator[str]:
    """A fresh PostgreSQL database for this test session, dropped at the end."""
    admin = db.make_engine(PG_ADMIN_URL, isolation_level="AUTOCOMMIT", poolclass=sa.NullPool)
    name = f"plansmith_test_{uuid.uuid4().hex[:12]}"
    try:
        with admin.connect() as conn:
            conn.execute(sa.text(f'CREATE DATABASE "{name}"'))
    except sa.exc.OperationalError as e:
        pytest.fail(
            f"PostgreSQL is not reachable at {PG_ADMIN_URL} ({e.orig}).\n"
            "The store tests need it. Start it (e.g. `pg_ctlcluster --skip-systemctl-redirect "
            "$(ls /etc/postgresql) main start`) or point PLANSMITH_TEST_POSTGRES_URL at a "
            "server where this user may CREATE DATABASE.",
            pytrace=False,
        )
    url = make_url(db.normalize_url(PG_ADMIN_URL)).set(database=name)
    try:
        yield url.render_as_string(hide_password=False)
    finally:
        with admin.connect() as conn:
            conn.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


@pytest.fixture(params=["sqlite", "postgresql"])
def db_url(request: pytest.FixtureRequest, tmp_path: Any) -> Iterator[str]:
    """An empty database: a SQLite file, or a fresh schema in the session's PG database."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'store.db'}"
        return
    base: str = request.getfixturevalue("pg_database")
    schema = f"t_{uuid.uuid4().hex[:12]}"
    admin = db.make_engine(base, poolclass=sa.NullPool)
    with admin.begin() as conn:
        conn.execute(sa.text(f'CREATE SCHEMA "{schema}"'))
    admin.dispose()
    url = make_url(base).update_query_dict({"options": f"-csearch_path={schema}"})
    yield url.render_as_string(hide_password=False)


@pytest.fixture
def engine(db_url: str) -> Iterator[Engine]:
    eng = db.make_engine(db_url)
    db.migrate(eng)
    yield eng
    eng.dispose()

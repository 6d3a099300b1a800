"""The store's bounds on waiting for the database: settings (validated, named by their
variable) and what they become for PostgreSQL and SQLite. Nothing here connects to a
server; the timeouts at work against a cut or hung PostgreSQL are in
tests/api/test_store_outage.py."""

from __future__ import annotations

from typing import Any

import pytest
import sqlalchemy as sa

from config import ConfigError, load_settings
from config.settings import StoreSettings
from store.db import make_engine, postgres_connect_args


def test_the_timeouts_come_from_their_variables(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PLANSMITH_DB_CONNECT_TIMEOUT_S", "3")
    monkeypatch.setenv("PLANSMITH_DB_STATEMENT_TIMEOUT_S", "12.5")
    monkeypatch.setenv("PLANSMITH_DB_LOCK_TIMEOUT_S", "0")
    monkeypatch.setenv("PLANSMITH_DB_READ_THREADS", "3")
    store = load_settings(env_file=None).store
    assert (store.connect_timeout_s, store.statement_timeout_s, store.lock_timeout_s) == (
        3,
        12.5,
        0,
    )
    assert store.read_threads == 3
    args = postgres_connect_args("postgresql+psycopg://u@db.example.invalid/x", store)
    assert args["connect_timeout"] == 3
    assert args["options"] == "-c statement_timeout=12500 -c lock_timeout=0"
    assert args["keepalives"] == 1


@pytest.mark.parametrize(
    ("variable", "value"),
    [
        ("PLANSMITH_DB_CONNECT_TIMEOUT_S", "0"),
        ("PLANSMITH_DB_STATEMENT_TIMEOUT_S", "-1"),
        ("PLANSMITH_DB_READ_THREADS", "0"),
        ("PLANSMITH_DB_POOL_TIMEOUT_S", "soon"),
    ],
)
def test_a_wrong_value_names_its_variable(
    monkeypatch: pytest.MonkeyPatch, variable: str, value: str
) -> None:
    monkeypatch.setenv(variable, value)
    with pytest.raises(ConfigError) as e:
        load_settings(env_file=None)
    assert variable in str(e.value)


def test_options_in_the_url_are_kept_and_win() -> None:
    cfg = StoreSettings(statement_timeout_s=30, lock_timeout_s=10)
    url = "postgresql+psycopg://u@h/db?options=-csearch_path%3Dt1%20-c%20statement_timeout%3D5s"
    options = postgres_connect_args(url, cfg)["options"]
    assert options == "-csearch_path=t1 -c statement_timeout=5s -c lock_timeout=10000"


def test_engines_carry_the_bounds() -> None:
    cfg = StoreSettings(connect_timeout_s=2, pool_timeout_s=1.5, busy_timeout_s=4)
    pg = make_engine("postgresql://u@db.example.invalid/x", settings=cfg)  # opens nothing
    try:
        assert pg.pool.timeout() == 1.5
        seen: dict[str, Any] = {}

        class Stop(Exception):
            pass

        @sa.event.listens_for(pg, "do_connect")
        def _capture(_dialect: Any, _rec: Any, _cargs: Any, cparams: dict[str, Any]) -> None:
            seen.update(cparams)
            raise Stop  # what psycopg would be given; no connection is opened

        with pytest.raises(Stop):
            pg.connect()
        assert seen["connect_timeout"] == 2
        assert seen["options"] == "-c statement_timeout=30000 -c lock_timeout=10000"
    finally:
        pg.dispose()
    lite = make_engine("sqlite://", settings=cfg)
    try:
        with lite.connect() as conn:
            assert conn.execute(sa.text("PRAGMA busy_timeout")).scalar() == 4000
    finally:
        lite.dispose()

"""Engine, sessions and migrations for the store.

``DATABASE_URL`` picks the database: SQLite by default (``sqlite:///plansmith.db``),
PostgreSQL with ``postgresql://...`` (driven by psycopg 3). SQLite connections get WAL,
foreign keys and a busy timeout; write sessions take SQLite's write lock up front
(``BEGIN IMMEDIATE``) so concurrent writers queue instead of failing.

A slow or dead database must not hang a process (the ``store`` settings): PostgreSQL
connections are opened with ``connect_timeout`` and TCP keepalives, and start with
``statement_timeout`` and ``lock_timeout`` (the server cancels what runs or waits longer);
a free connection of the pool is waited for ``pool_timeout_s`` at most. What the caller
gets then is an ordinary SQLAlchemy error.

The schema belongs to Alembic (``store/migrations``): :func:`migrate` upgrades a database
to the newest revision, serialised between processes (an advisory lock on PostgreSQL, the
write lock on SQLite), so every worker and API process may call it at start.
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from functools import lru_cache
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine
from sqlmodel import Session

from config import get_settings
from config.settings import StoreSettings

MIGRATIONS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "migrations")
HEAD_REVISION = "0008"  # the newest migration (tests check the database reaches it)
MIGRATION_LOCK_ID = 0x706C616E736D6974  # "plansmit": pg_advisory_xact_lock key
_BEGIN = "plansmith_sqlite_begin"


def normalize_url(url: str) -> str:
    """``postgres://`` and ``postgresql://`` use psycopg 3 (the driver installed)."""
    for prefix in ("postgres://", "postgresql://"):
        if url.startswith(prefix):
            return "postgresql+psycopg://" + url[len(prefix) :]
    return url


def _ms(seconds: float) -> int:
    return max(0, round(seconds * 1000))


def postgres_connect_args(url: str, cfg: StoreSettings) -> dict[str, Any]:
    """psycopg connection arguments that bound every wait on the server (pure: opens
    nothing). Options already in the URL are kept, and a timeout they set wins."""
    query = sa.engine.make_url(url).query.get("options") or ""
    options = " ".join(query) if isinstance(query, tuple) else str(query)
    extra = [
        f"-c {name}={_ms(value)}"
        for name, value in (
            ("statement_timeout", cfg.statement_timeout_s),
            ("lock_timeout", cfg.lock_timeout_s),
        )
        if name not in options
    ]
    return {
        "connect_timeout": max(1, round(cfg.connect_timeout_s)),
        "options": " ".join(o for o in (options.strip(), *extra) if o),
        # a peer that vanished without a FIN is noticed within about a minute
        "keepalives": 1,
        "keepalives_idle": 30,
        "keepalives_interval": 10,
        "keepalives_count": 3,
    }


def make_engine(url: str, *, settings: StoreSettings | None = None, **kwargs: Any) -> Engine:
    """A new engine for ``url``, set up for this store (see the module docstring); the
    timeouts come from ``settings`` (default: the ``store`` settings)."""
    cfg = settings or get_settings().store
    url = normalize_url(url)
    if not url.startswith("sqlite"):
        kwargs.setdefault("pool_pre_ping", True)
        if "poolclass" not in kwargs:
            kwargs.setdefault("pool_timeout", cfg.pool_timeout_s)
        if url.startswith("postgresql"):
            kwargs["connect_args"] = {
                **postgres_connect_args(url, cfg),
                **kwargs.get("connect_args", {}),
            }
        return sa.create_engine(url, **kwargs)
    busy_s = cfg.busy_timeout_s
    connect_args = kwargs.pop("connect_args", {})
    connect_args.setdefault("check_same_thread", False)
    connect_args.setdefault("timeout", busy_s)
    engine = sa.create_engine(url, connect_args=connect_args, **kwargs)

    @sa.event.listens_for(engine, "connect")
    def _on_connect(dbapi_conn: Any, _record: Any) -> None:
        # Let SQLAlchemy, not the sqlite3 module, issue BEGIN (see _on_begin).
        dbapi_conn.isolation_level = None
        cur = dbapi_conn.cursor()
        cur.execute("PRAGMA journal_mode=WAL")
        cur.execute("PRAGMA foreign_keys=ON")
        cur.execute("PRAGMA synchronous=NORMAL")
        cur.execute(f"PRAGMA busy_timeout={_ms(busy_s)}")
        cur.close()

    @sa.event.listens_for(engine, "begin")
    def _on_begin(conn: Connection) -> None:
        mode = conn.get_execution_options().get(_BEGIN, "DEFERRED")
        conn.exec_driver_sql(f"BEGIN {mode}")

    return engine


def _database_url() -> str:
    return get_settings().store.database_url


@lru_cache(maxsize=8)
def _cached_engine(url: str) -> Engine:
    return make_engine(url)


def get_engine(url: str | None = None) -> Engine:
    """The process-wide engine for ``url`` (default: ``DATABASE_URL`` from settings)."""
    return _cached_engine(normalize_url(url or _database_url()))


def writer(engine: Engine) -> Engine:
    """The same engine, whose transactions take SQLite's write lock when they begin."""
    return engine.execution_options(**{_BEGIN: "IMMEDIATE"})


# SQLite lets one transaction write at a time. Writers of one process take turns on a
# lock of their own, in order, instead of all beginning at once and all but one retrying
# through SQLite's busy handler, which sleeps between tries (up to 100 ms each): with 8
# store threads writing snapshots of 20 plans, that made a write's p95 about a second.
# Writers in other processes (the API, a second worker) still meet the busy handler.
_sqlite_write_locks: dict[str, threading.Lock] = {}
_sqlite_write_locks_guard = threading.Lock()


def _write_lock(engine: Engine) -> threading.Lock | contextlib.nullcontext[None]:
    if engine.dialect.name != "sqlite":
        return contextlib.nullcontext()
    key = str(engine.url)
    with _sqlite_write_locks_guard:
        return _sqlite_write_locks.setdefault(key, threading.Lock())


@contextmanager
def session_scope(engine: Engine, *, write: bool = False) -> Iterator[Session]:
    """A session that commits when the block ends without error and rolls back otherwise.

    ``write``: the transaction writes (on SQLite it takes the write lock when it begins,
    after the writers of this process before it have finished)."""
    with (
        _write_lock(engine) if write else contextlib.nullcontext(),
        Session(writer(engine) if write else engine, expire_on_commit=False) as session,
    ):
        try:
            yield session
            session.commit()
        except BaseException:
            session.rollback()
            raise


# --- migrations -----------------------------------------------------------------------


def alembic_config() -> Any:
    """An Alembic ``Config`` for the store's migrations, independent of the working dir."""
    from alembic.config import Config

    cfg = Config()
    cfg.set_main_option("script_location", MIGRATIONS)
    return cfg


def lock_for_migration(connection: Connection) -> None:
    """Serialise migrations between processes (called by ``env.py`` in its transaction)."""
    if connection.dialect.name == "postgresql":
        connection.execute(sa.text("SELECT pg_advisory_xact_lock(:k)"), {"k": MIGRATION_LOCK_ID})


def migrate(target: str | Engine | None = None, revision: str = "head") -> None:
    """Upgrade the database (a URL, an engine, or ``DATABASE_URL``) to ``revision``."""
    alembic_log = logging.getLogger("alembic")
    if alembic_log.level == logging.NOTSET:  # left to the process's INFO level, importing
        alembic_log.setLevel(logging.WARNING)  # it and migrating print ten lines of setup
    from alembic import command

    engine = target if isinstance(target, Engine) else get_engine(target)
    cfg = alembic_config()
    with writer(engine).connect() as conn:
        unbounded = conn.dialect.name == "postgresql"
        if unbounded:  # a migration may wait for another process's, and may take long
            conn.exec_driver_sql("SET statement_timeout = 0")
            conn.exec_driver_sql("SET lock_timeout = 0")
            conn.commit()
        try:
            cfg.attributes["connection"] = conn
            command.upgrade(cfg, revision)
            conn.commit()
        finally:
            if unbounded:
                with contextlib.suppress(sa.exc.SQLAlchemyError):
                    conn.rollback()
                    conn.exec_driver_sql("RESET statement_timeout")
                    conn.exec_driver_sql("RESET lock_timeout")
                    conn.commit()


def current_revision(target: str | Engine | None = None) -> str | None:
    """The revision the database is at (None: never migrated)."""
    from alembic.runtime.migration import MigrationContext

    engine = target if isinstance(target, Engine) else get_engine(target)
    with engine.connect() as conn:
        return MigrationContext.configure(conn).get_current_revision()


_migrated: set[str] = set()
_migrate_lock = threading.Lock()


def ensure_migrated(engine: Engine) -> Engine:
    """Migrate ``engine``'s database once per process; returns the engine."""
    key = engine.url.render_as_string(hide_password=False)
    if key not in _migrated:
        with _migrate_lock:
            if key not in _migrated:
                migrate(engine)
                _migrated.add(key)
    return engine

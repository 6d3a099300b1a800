"""What every write in the store shares: an ``INSERT`` that knows ``ON CONFLICT`` on
SQLite and PostgreSQL, rows sent in batches, and timestamps made UTC."""

from __future__ import annotations

import threading
from collections.abc import Callable, Hashable, Iterable, Sequence
from datetime import UTC, datetime
from typing import Any

from sqlalchemy.dialects import postgresql, sqlite
from sqlmodel import Session, SQLModel

BATCH = 500  # rows per INSERT: well under SQLite's and PostgreSQL's bound-parameter limits


def insert(session: Session, model: type[SQLModel]) -> Any:
    """An INSERT with ON CONFLICT support for the session's database."""
    return insert_for(session.get_bind().dialect.name, model)


def insert_for(dialect: str, model: type[SQLModel]) -> Any:
    """An INSERT with ON CONFLICT support for ``dialect`` (``sqlite``, ``postgresql``)."""
    table = model.__table__  # type: ignore[attr-defined]
    if dialect == "postgresql":
        return postgresql.insert(table)
    if dialect == "sqlite":
        return sqlite.insert(table)
    raise NotImplementedError(f"the store supports SQLite and PostgreSQL, not {dialect}")


def batches(rows: Sequence[dict[str, Any]]) -> Iterable[Sequence[dict[str, Any]]]:
    """``rows`` in slices of at most :data:`BATCH`."""
    for i in range(0, len(rows), BATCH):
        yield rows[i : i + BATCH]


def count_rows(session: Session, stmt: Any, rows: Sequence[dict[str, Any]] | None = None) -> int:
    """How many rows ``stmt`` returns (an INSERT ... RETURNING: how many it wrote), run
    with ``rows`` as its parameters when given (one execution for all of them)."""
    if rows is None:
        return len(session.execute(stmt).all())
    return len(session.execute(stmt, list(rows)).all())


_statements: dict[tuple[str, Hashable], Any] = {}
_statements_lock = threading.Lock()


def cached_statement(session: Session, key: Hashable, build: Callable[[str], Any]) -> Any:
    """The statement ``build(dialect)`` for the session's database, built once per
    process and ``key``. Its rows come as parameters, not in its VALUES: a statement
    built anew for every write, rows inside, costs SQLAlchemy a new cache key and a new
    compilation each time (most of a snapshot's write time before)."""
    dialect = session.get_bind().dialect.name
    stmt = _statements.get((dialect, key))
    if stmt is None:
        with _statements_lock:
            stmt = _statements.setdefault((dialect, key), build(dialect))
    return stmt


def utc(at: datetime) -> datetime:
    """``at`` in UTC; a naive value is taken to be UTC already."""
    return at.replace(tzinfo=UTC) if at.tzinfo is None else at.astimezone(UTC)

"""The tables, bounds and SQL helpers every planning-metrics query shares."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from datetime import UTC, datetime
from typing import Any

import sqlalchemy as sa
from sqlmodel import Session

from plans.models import TERMINAL_PLAN_STATUSES, PlanStatus, StepStatus
from store.models import (
    PlanGenerationRecord,
    PlanRecord,
    PlanVersionRecord,
    RunRecord,
    StepResultRecord,
)

HISTORY_STEPS = 5000  # newest completed steps that teach the expected durations
MAX_RUNS = 20_000  # finished runs a trend reads at most
MAX_PLANS = 2000  # plans whose quality one call computes at most
MAX_WAITING = 5000  # waiting runs read at most
IN_CHUNK = 500  # values per IN (...) list

FINISHED = sorted(s.value for s in TERMINAL_PLAN_STATUSES)
WAITING = [
    PlanStatus.PENDING_APPROVAL.value,
    PlanStatus.WAITING_APPROVAL.value,
    PlanStatus.WAITING_CLARIFICATION.value,
    PlanStatus.WAITING_CORRECTION.value,
    PlanStatus.PAUSED.value,
]
STEP_DONE = [
    StepStatus.COMPLETED.value,
    StepStatus.FAILED.value,
    StepStatus.SKIPPED.value,
    StepStatus.CANCELLED.value,
]

PLANS: sa.Table = PlanRecord.__table__  # type: ignore[attr-defined]
RUNS: sa.Table = RunRecord.__table__  # type: ignore[attr-defined]
STEPS: sa.Table = StepResultRecord.__table__  # type: ignore[attr-defined]
VERSIONS: sa.Table = PlanVersionRecord.__table__  # type: ignore[attr-defined]
GENERATIONS: sa.Table = PlanGenerationRecord.__table__  # type: ignore[attr-defined]


def as_utc(now: datetime | None) -> datetime:
    """``now`` in UTC (naive: taken as UTC; None: the current time)."""
    if now is None:
        return datetime.now(UTC)
    return now.replace(tzinfo=UTC) if now.tzinfo is None else now.astimezone(UTC)


def dialect(session: Session) -> str:
    return session.get_bind().dialect.name


def db_key(session: Session) -> str:
    """The database's URL without its password: a cache key per database."""
    return session.get_bind().engine.url.render_as_string(hide_password=True)


def chunks(values: Sequence[Any], size: int = IN_CHUNK) -> Iterator[Sequence[Any]]:
    for i in range(0, len(values), size):
        yield values[i : i + size]


def rate(num: int, den: int) -> float | None:
    return round(num / den, 4) if den else None


def mean(values: Sequence[float]) -> float | None:
    return round(sum(values) / len(values), 4) if values else None


def seconds_between(session: Session, start: Any, end: Any) -> Any:
    """``end - start`` in seconds, in SQL."""
    if dialect(session) == "postgresql":
        return sa.func.extract("epoch", end - start)
    return (sa.func.julianday(end) - sa.func.julianday(start)) * 86400.0


def json_number(session: Session, column: Any, key: str) -> Any:
    """``column[key]`` as a number when it is one (else NULL), in SQL."""
    if dialect(session) == "postgresql":
        value = column.op("->")(key)
        return sa.case(
            (
                sa.func.jsonb_typeof(value) == "number",
                sa.cast(column.op("->>")(key), sa.Float),
            ),
            else_=None,
        )
    path = f"$.{key}"
    return sa.case(
        (
            sa.func.json_type(column, path).in_(["integer", "real"]),
            sa.func.json_extract(column, path),
        ),
        else_=None,
    )


def json_length(session: Session, column: Any) -> Any:
    """The length of the JSON array in ``column`` (0 when NULL), in SQL."""
    if dialect(session) == "postgresql":
        return sa.func.coalesce(sa.func.jsonb_array_length(column), 0)
    return sa.func.coalesce(sa.func.json_array_length(column), 0)

"""Reads of a plan from the store, for when Temporal cannot answer.

Temporal stays the truth for a live plan (the routes query the workflow first); these
answer once the workflow is gone from Temporal (retention, ``delete``, another Temporal)
or Temporal cannot be reached. Every change of a running plan is written to the store by
the workflow's ``record_snapshot`` activity, so these are the plan's last recorded state.
Each read runs in one of the API's own store threads (:class:`StorePool`,
``PLANSMITH_DB_READ_THREADS``), never in the event loop's default executor, and is
bounded by ``PLANSMITH_API_TIMEOUT_S``: a slow or hung database answers 503 within that
time, and once every store thread is held by it, at once; ``/healthz``, ``/readyz`` and
reads answered by Temporal do not queue behind it.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import Awaitable, Callable
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any, TypeVar

import sqlalchemy as sa
from sqlalchemy.engine import Engine
from sqlmodel import Session

from api.errors import ApiError, api_error_of, unavailable
from plans.models import Plan, PlanStatus
from plans.run_state import AuditEntry, LogEntry, PlanVersion
from plans.views import (
    INTERACTIVE_STATES,
    ExecutionState,
    LogsQuery,
    StatusView,
    StepsPage,
    StepsQuery,
)
from store import blobs, knowledge, reads
from store.db import ensure_migrated, session_scope
from store.models import PlanDetailPublic, PlanRecordPublic, RunRecord
from workflows.client import page_of
from workflows.errors import PlanClosed, PlanNotFound, TemporalUnavailable

T = TypeVar("T")


async def temporal_or_store(
    from_temporal: Callable[[], Awaitable[T]], from_store: Callable[[], Awaitable[T | None]]
) -> T:
    """Ask the workflow; when Temporal does not know it (404) or cannot answer (503), ask
    the store. The first error stands when the store does not have the plan either; a
    store that cannot be read makes it a 503 (the plan may well exist)."""
    try:
        return await from_temporal()
    except (ApiError, PlanNotFound, TemporalUnavailable) as e:
        if api_error_of(e).status not in (404, 503):
            raise
        try:
            found = await from_store()
        except ApiError as store_error:
            if store_error.status == 503:  # the store cannot say: neither can we
                raise store_error from None
            raise e from None
        if found is None:
            raise
        return found


async def open_or_recorded(
    ask: Callable[[bool], Awaitable[T]],
    recorded: Callable[[], Awaitable[T | None]],
    ended: Callable[[], Awaitable[bool]],
) -> T:
    """``ask(open_only=True)`` the workflow; once it has closed, what the store recorded
    of it (when the store holds the end of its newest run): a query of a closed workflow
    makes a worker replay the whole run, seconds for a big plan, and needs a worker up.
    The workflow is asked after all when the store cannot say."""
    try:
        return await ask(True)
    except PlanClosed:
        try:
            found = await recorded() if await ended() else None
        except ApiError:  # the store cannot be read: the workflow answers
            found = None
        return found if found is not None else await ask(False)


class StoreBusy(Exception):
    """Every store thread is taken (the database is slow or hung): nothing was started."""


class StorePool:
    """The threads that talk to the store: at most ``size`` calls run at once, and a call
    that finds them all taken fails at once (:class:`StoreBusy`) rather than queue.

    A call that times out keeps its thread until the database lets go of it (the
    connection, statement and lock timeouts of :mod:`store.db` bound that), so a hung
    database holds at most ``size`` threads, never the default executor's.
    """

    def __init__(self, size: int = 8, name: str = "plansmith-store"):
        self.size = size
        self._executor = ThreadPoolExecutor(max_workers=size, thread_name_prefix=name)
        self._lock = threading.Lock()
        self.busy = 0  # calls started and not finished (timed-out ones included)

    def _release(self, _: Future[Any]) -> None:
        with self._lock:
            self.busy -= 1

    def submit(self, fn: Callable[..., T], *args: Any) -> Future[T]:
        """Start ``fn(*args)`` on a free store thread; :class:`StoreBusy` when none is."""
        with self._lock:
            if self.busy >= self.size:
                raise StoreBusy(f"all {self.size} store threads are waiting for the database")
            self.busy += 1
        try:
            future = self._executor.submit(fn, *args)
        except BaseException:
            with self._lock:
                self.busy -= 1
            raise
        future.add_done_callback(self._release)  # also when it is cancelled before it ran
        return future

    async def call(self, fn: Callable[..., T], *args: Any, timeout_s: float | None = None) -> T:
        """``fn(*args)`` on a store thread, awaited at most ``timeout_s`` (TimeoutError)."""
        return await asyncio.wait_for(asyncio.wrap_future(self.submit(fn, *args)), timeout_s)

    def shutdown(self) -> None:
        self._executor.shutdown(wait=False, cancel_futures=True)


class PlanStore:
    def __init__(self, engine: Engine, timeout_s: float = 10.0, pool: StorePool | None = None):
        self.engine = engine
        self.timeout_s = timeout_s
        self.pool = pool or StorePool()

    async def call(self, fn: Callable[..., T], *args: Any, timeout_s: float | None = None) -> T:
        """``fn(*args)`` (blocking, talks to the store) on a store thread, bounded by the
        API's timeout; 503 when the store fails, does not answer, or every store thread
        is already waiting for it."""
        timeout = self.timeout_s if timeout_s is None else timeout_s
        try:
            return await self.pool.call(fn, *args, timeout_s=timeout)
        except StoreBusy as e:
            raise unavailable(f"the database is not answering: {e}") from None
        except TimeoutError:
            raise unavailable(f"the database did not answer within {timeout:g}s") from None
        except sa.exc.SQLAlchemyError as e:
            raise unavailable(f"the database cannot be used: {type(e).__name__}") from None

    async def run(self, fn: Callable[[Session], T], *, write: bool = False) -> T:
        """Run ``fn`` in a store session (committed when ``write``), on a store thread,
        bounded by the API's timeout; 503 when the store fails or does not answer."""

        def run() -> T:
            ensure_migrated(self.engine)
            with session_scope(self.engine, write=write) as session:
                return fn(session)

        return await self.call(run)

    async def _read(self, fn: Callable[[Session], T]) -> T:
        return await self.run(fn)

    async def ping(self, timeout_s: float) -> None:
        """``select 1``, bounded (raises on failure or timeout; :class:`StoreBusy` at once
        when every store thread waits for the database)."""

        def run() -> None:
            with self.engine.connect() as conn:
                conn.execute(sa.text("select 1"))

        await self.pool.call(run, timeout_s=timeout_s)

    async def migrate(self) -> None:
        await self.pool.call(ensure_migrated, self.engine)

    async def link_generation(self, generation_id: str | None, plan_id: str) -> None:
        """Note which plan a planner run became (metrics read it); a warning, never an
        error, when the store cannot be written."""
        if not generation_id:
            return
        try:
            await self.run(
                lambda s: knowledge.link_generation(s, generation_id, plan_id), write=True
            )
        except Exception as e:
            logging.getLogger("plansmith.api").warning(
                "could not link planner run %s to plan %s: %s", generation_id, plan_id, e
            )

    async def status(self, plan_id: str) -> StatusView | None:
        return await self._read(lambda s: reads.get_status(s, plan_id))

    async def blob(self, key: str) -> bytes | None:
        """A large step output kept by reference (the ``output_ref`` of its step)."""
        return await self._read(lambda s: blobs.get_blob(s, key))

    async def ended(self, plan_id: str) -> bool:
        """The plan's newest recorded run has ended (one row read)."""

        def read(s: Session) -> bool:
            status = reads.get_run_status(s, plan_id)
            return status is not None and status.terminal

        return bool(await self._read(read))

    async def steps(
        self, plan_id: str, query: StepsQuery, ended_only: bool = False
    ) -> StepsPage | None:
        """A page of the steps of the plan's newest recorded run; with ``ended_only``,
        None unless that run ended (one row read for a plan still running)."""

        def read(s: Session) -> StepsPage | None:
            if ended_only:
                status = reads.get_run_status(s, plan_id)
                if status is None or not status.terminal:
                    return None
            view = reads.get_status(s, plan_id)
            return page_of(view, query) if view is not None else None

        return await self._read(read)

    async def execution_state(self, plan_id: str) -> ExecutionState | None:
        view = await self.status(plan_id)
        if view is None:
            return None
        first = view.waiting_for
        return ExecutionState(
            plan_id=plan_id,
            state=INTERACTIVE_STATES[view.status],  # type: ignore[arg-type]
            status=view.status,
            step_id=first.step_id if first else None,
            question=first.question if first and first.kind == "clarification" else None,
            paused_at=None,
            waiting_for=first,
        )

    async def logs(self, plan_id: str, query: LogsQuery) -> list[LogEntry] | None:
        def read(s: Session) -> list[LogEntry] | None:
            if reads.get_status(s, plan_id) is None:
                return None
            rows = reads.get_logs(s, plan_id, query.level, query.limit, step_id=query.step_id)
            return [
                LogEntry(at=r.at, level=r.level, message=r.message, step_id=r.step_id)  # type: ignore[arg-type]
                for r in rows
            ]

        return await self._read(read)

    async def audit(self, plan_id: str) -> list[AuditEntry] | None:
        def read(s: Session) -> list[AuditEntry] | None:
            if reads.get_status(s, plan_id) is None:
                return None
            return [
                AuditEntry.model_validate(r.model_dump(exclude={"plan_id", "run_id", "seq"}))
                for r in reads.get_audit(s, plan_id)
            ]

        return await self._read(read)

    async def versions(self, plan_id: str) -> list[PlanVersion] | None:
        def read(s: Session) -> list[PlanVersion] | None:
            if reads.get_status(s, plan_id) is None:
                return None
            return [
                PlanVersion.model_validate(
                    v.model_dump(include={"version", "by", "at", "step_id", "change", "diff"})
                )
                for v in reads.get_versions(s, plan_id)
            ]

        return await self._read(read)

    async def plan(self, plan_id: str) -> tuple[PlanDetailPublic, Plan] | None:
        def read(s: Session) -> tuple[PlanDetailPublic, Plan] | None:
            detail = reads.get_plan(s, plan_id)
            if detail is None or not detail.last_run_id or detail.document is None:
                return None
            return detail, Plan.model_validate(detail.document)

        return await self._read(read)

    async def list(
        self, status: PlanStatus | None, limit: int, offset: int
    ) -> list[tuple[PlanRecordPublic, dict[str, Any] | None]]:
        """Plans, most recently updated first, each with its newest run's row (if any)."""

        def read(s: Session) -> list[tuple[PlanRecordPublic, dict[str, Any] | None]]:
            out = []
            for p in reads.list_plans(s, status, limit=limit, offset=offset):
                run = s.get(RunRecord, (p.id, p.last_run_id)) if p.last_run_id else None
                out.append((p, run.model_dump() if run else None))
            return out

        return await self._read(read)


async def unless_store_down(read: Awaitable[T]) -> T | None:
    """``await read`` (a store read such as the draft lookup); None when the store cannot
    be used (503), so the caller goes on to Temporal, which keeps answering for the
    plans it runs while the database is down."""
    try:
        return await read
    except ApiError as e:
        if e.status != 503:
            raise
        logging.getLogger("plansmith.api").info("store read skipped: %s", e.detail)
        return None


class StoreOrSkip:
    """Store reads a control may do without (the draft lookups): a 503 is remembered in
    ``error`` and the read answers None, so the control goes on to Temporal."""

    def __init__(self) -> None:
        self.error: ApiError | None = None

    async def skip(self, read: Awaitable[T]) -> T | None:
        try:
            return await read
        except ApiError as e:
            if e.status != 503:
                raise
            self.error = self.error or e
            return None

    def tolerant(self, drafts: Any) -> Any:
        """``drafts`` whose ``get`` answers None (not a draft) when the store is down."""
        outer = self

        class _Tolerant:
            def __getattr__(self, name: str) -> Any:
                return getattr(drafts, name)

            async def get(self, plan_id: str) -> Any:
                return await outer.skip(drafts.get(plan_id))

        return _Tolerant()

"""Server-sent events for a plan: ``GET /api/plans/{plan_id}/events``.

The server watches the plan for its clients: one *feed* per plan and API process, shared
by all its watchers, reads the plan every ``PLANSMITH_SSE_POLL_S`` (0.25 s) while
someone watches, and appends an event to a journal for every change it sees:

- ``plan``   — the plan's status, progress, version, ``waiting_for`` or outcome changed;
- ``step``   — one step's status, attempts, version or error changed (``seq``: the
  workflow's change number, from a worker with the ``changes`` query);
- ``resync`` — the watcher missed events (it fell too far behind, or came back with an id
  this process no longer holds): a fresh snapshot follows; drop what you knew;
- ``end``    — the plan reached a final status (the same data as ``plan``); the stream ends;
- ``error``  — the plan could not be read for ``sse_give_up_s`` (30 s); the stream ends.

What the feed reads: the workflow's ``changes`` query (the step changes numbered after
the last one it saw: its cost does not grow with the plan), and the ``status`` query only
when the plan's own status changes, when a step waits for or leaves a person, or at most
once a second while steps change (for ``waiting_for``, versions, the outcome). When the
workflow's journal of changes dropped some the feed missed (``complete`` false), it reads
the status and every page of the ``steps`` query and journals what differs. A worker
without the ``changes`` query (an older one) is read with ``status`` alone, and the steps
whose status changed between two reads are journaled: there, changes faster than the
poll interval are seen as one change (a step that started and finished between two polls
is reported ``completed`` once). ``step`` events of change-driven feeds carry no
``output`` (read it from ``/status`` or ``/steps``).

Every event has an id ``<feed>:<n>`` where ``n`` grows by one per event. A new watcher
first gets a snapshot (one ``plan`` event and one ``step`` event per step, all with the
id of the journal's head), then every later event as it happens. A watcher that
reconnects with ``Last-Event-ID`` (browsers do it by themselves) gets exactly the events
after that one while the journal still holds them (up to 2,000 events, kept
``PLANSMITH_SSE_LINGER_S`` after the last watcher left); an id of another process or of
before a restart: a fresh snapshot; an id whose events the journal no longer holds, or a
watcher that falls that far behind while streaming: a ``resync`` event, then the
snapshot. Reconnecting after the ``end`` event answers 204, which tells an
``EventSource`` to stop. A comment line is sent every 15 s of silence so proxies keep the
connection open.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import secrets
import time
from collections import deque
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Literal

from pydantic import BaseModel, Field

from api.errors import ApiError, api_error_of
from api.telemetry import untraced
from config import ApiSettings
from plans.models import PlanStatus, StepStatus
from plans.run_state import WaitingFor
from plans.views import ChangesView, StatusView, StepChange, StepsPage, StepsQuery, StepView
from workflows.errors import PlanClientError, PlanClosed, QueryUnsupported

log = logging.getLogger("plansmith.api")
JOURNAL_SIZE = 2000
STATUS_REFRESH_S = 1.0  # while steps change, the status is read at most this often
PAGE = 1000  # steps per page of a resync
WAITS = {StepStatus.WAITING_APPROVAL, StepStatus.WAITING_CLARIFICATION}

Fetch = Callable[[], Awaitable[StatusView]]
Changes = Callable[[int], Awaitable[ChangesView]]
Steps = Callable[[StepsQuery], Awaitable[StepsPage]]


class PlanEvent(BaseModel):
    """Data of ``plan`` and ``end`` events."""

    plan_id: str
    status: PlanStatus
    progress: float
    version: int
    waiting_for: WaitingFor | None = None
    outcome: str | None = None
    paused_by: str | None = None
    observed_at: datetime


class StepEvent(BaseModel):
    """Data of ``step`` events."""

    plan_id: str
    step_id: str
    status: StepStatus
    attempts: int
    version: int
    started_at: datetime | None = None
    completed_at: datetime | None = None
    error: str | None = None
    skip_reason: str | None = None
    skip_detail: str | None = None
    output: Any = None
    seq: int | None = Field(
        default=None, description="the workflow's change number (None: seen by polling status)"
    )
    observed_at: datetime


class ResyncEvent(BaseModel):
    """Data of ``resync`` events: a snapshot follows."""

    plan_id: str
    reason: str
    observed_at: datetime


class ErrorEvent(BaseModel):
    """Data of ``error`` events."""

    plan_id: str
    detail: str
    observed_at: datetime


EventKind = Literal["plan", "step", "resync", "end", "error"]


class EventsDoc(BaseModel):
    """What one server-sent event carries (documentation of the stream)."""

    id: str = Field(description="`<feed>:<n>`; send it back as Last-Event-ID to resume")
    event: EventKind
    data: PlanEvent | StepEvent | ResyncEvent | ErrorEvent


@dataclass
class Event:
    seq: int
    kind: EventKind
    data: dict[str, Any]


def _plan_key(v: StatusView) -> tuple[Any, ...]:
    w = v.waiting_for.model_dump(mode="json") if v.waiting_for else None
    return (v.status, v.progress, v.version, json.dumps(w, sort_keys=True), v.outcome, v.paused_by)


def _step_key(s: StepView) -> tuple[Any, ...]:
    return (s.status, s.attempts, s.version, s.error, s.skip_reason, s.started_at, s.completed_at)


def _now() -> datetime:
    return datetime.now(UTC)


def plan_event(v: StatusView) -> dict[str, Any]:
    return PlanEvent(
        plan_id=v.plan_id,
        status=v.status,
        progress=v.progress,
        version=v.version,
        waiting_for=v.waiting_for,
        outcome=v.outcome,
        paused_by=v.paused_by,
        observed_at=_now(),
    ).model_dump(mode="json")


def step_event(plan_id: str, s: StepView, seq: int | None = None) -> dict[str, Any]:
    return StepEvent(
        plan_id=plan_id,
        step_id=s.id,
        status=s.status,
        attempts=s.attempts,
        version=s.version,
        started_at=s.started_at,
        completed_at=s.completed_at,
        error=s.error,
        skip_reason=s.skip_reason,
        skip_detail=s.skip_detail,
        output=s.output,
        seq=seq,
        observed_at=_now(),
    ).model_dump(mode="json")


def changed_step(prev: StepView | None, c: StepChange) -> StepView:
    """The step as ``c`` leaves it. A change the step has already moved on from carries
    no time and no attempts (the workflow keeps only the step's current ones): the
    step's earlier values stay."""
    update: dict[str, Any] = {"status": c.status, "error": c.error}
    if c.attempts or prev is None:
        update["attempts"] = c.attempts
    if c.status == StepStatus.RUNNING:
        update |= {"completed_at": None, "output": None}
        if c.at is not None or prev is None:
            update["started_at"] = c.at
    elif c.status.terminal:
        update["completed_at"] = c.at
    if prev is None:
        return StepView(
            id=c.step_id,
            kind="",
            status=c.status,
            attempts=c.attempts,
            version=1,
            started_at=update.get("started_at"),
            completed_at=update.get("completed_at"),
            error=c.error,
        )
    return prev.model_copy(update=update)


Sent = tuple[str, str, dict[str, Any]]
"""An event as a watcher gets it: its id, its kind and its data."""


def encode(event_id: str | None, kind: str | None, data: dict[str, Any]) -> bytes:
    lines = []
    if event_id is not None:
        lines.append(f"id: {event_id}")
    if kind is not None:
        lines.append(f"event: {kind}")
    lines.append("data: " + json.dumps(data, separators=(",", ":"), default=str))
    return ("\n".join(lines) + "\n\n").encode()


class Feed:
    """One plan's journal of events, fed by one poller while someone watches."""

    def __init__(
        self,
        hub: EventHub,
        plan_id: str,
        fetch: Fetch,
        first: StatusView,
        *,
        changes: Changes | None = None,
        steps: Steps | None = None,
        all_steps: list[StepView] | None = None,
    ):
        self.hub, self.plan_id, self.fetch = hub, plan_id, fetch
        self.read_changes, self.read_steps = changes, steps
        self.mode: Literal["changes", "status"] = "changes" if changes else "status"
        self.epoch = secrets.token_hex(4)
        self.seq = 0
        self.journal: deque[Event] = deque(maxlen=JOURNAL_SIZE)
        self.current = first
        # every step as last seen, in plan order (the status of a big plan lists only its
        # active steps: the pages of the steps query complete it)
        self.known: dict[str, StepView] = {s.id: s for s in (all_steps or first.steps)}
        self.change_seq = first.seq  # the workflow's newest change journaled
        self.status_read_at = time.monotonic()
        self.polls = 0  # reads of the plan (changes or status), for tests and metrics
        self.closed = False  # no event will follow (the plan ended, or it cannot be read)
        self.final: Event | None = None
        self.subscribers = 0
        self.idle_since = time.monotonic()
        self._wake = asyncio.Event()
        self.task: asyncio.Task[None] | None = None
        if first.status.terminal:
            self._append("end", plan_event(first))
            self._close()

    # --- journal -----------------------------------------------------------------

    def event_id(self, seq: int) -> str:
        return f"{self.epoch}:{seq}"

    def _append(self, kind: EventKind, data: dict[str, Any]) -> Event:
        self.seq += 1
        ev = Event(self.seq, kind, data)
        self.journal.append(ev)
        if kind in ("end", "error"):
            self.final = ev
        return ev

    def _notify(self) -> None:
        self._wake.set()
        self._wake = asyncio.Event()

    def _close(self) -> None:
        self.closed = True

    def _progress(self) -> float:
        if not self.known:
            return 1.0
        done = sum(1 for s in self.known.values() if s.status.terminal)
        return round(done / len(self.known), 4)

    def _observe_plan(self, view: StatusView, final: bool) -> None:
        """Journal a ``plan`` event if the plan changed, and ``end`` when ``final``."""
        if _plan_key(self.current) != _plan_key(view):
            self._append("plan", plan_event(view))
        self.current = view
        if final and view.status.terminal:
            self._append("end", plan_event(view))
            self._close()

    def _observe_steps(self, steps: list[StepView], plan_id: str) -> None:
        for s in steps:
            prev = self.known.get(s.id)
            if prev is None or _step_key(prev) != _step_key(s):
                self.known[s.id] = s
                self._append("step", step_event(plan_id, s))

    def observe(self, view: StatusView, steps: list[StepView] | None = None) -> int:
        """Journal every change from what the feed knew to ``view`` (and ``steps``, every
        step when the view does not list them all); returns how many."""
        before = self.seq
        listed = steps if steps is not None else view.steps
        self._observe_steps(listed, view.plan_id)
        self._observe_plan(view, final=True)
        if view.seq > self.change_seq:
            self.change_seq = view.seq
        if self.seq != before:
            self._notify()
        return self.seq - before

    def apply(self, cv: ChangesView) -> tuple[int, bool]:
        """Journal the step changes of a ``changes`` answer; returns how many, and whether
        the status should be read now (a step waits for or leaves a person)."""
        applied, person = 0, False
        for c in cv.changes:
            if c.seq <= self.change_seq:
                continue
            self.change_seq = c.seq
            prev = self.known.get(c.step_id)
            if prev is not None and prev.status == c.status and c.attempts in (0, prev.attempts):
                continue  # already known (a resync read it)
            if c.status in WAITS or (prev is not None and prev.status in WAITS):
                person = True
            step = changed_step(prev, c)
            self.known[c.step_id] = step
            self._append("step", step_event(cv.plan_id, step, seq=c.seq))
            applied += 1
        return applied, person

    def fail(self, detail: str) -> None:
        self._append(
            "error",
            ErrorEvent(plan_id=self.plan_id, detail=detail, observed_at=_now()).model_dump(
                mode="json"
            ),
        )
        self._close()
        self._notify()

    # --- reading the plan --------------------------------------------------------

    async def every_step(self, view: StatusView) -> list[StepView] | None:
        """Every step of the plan: ``view``'s own list, or the pages of the steps query
        when it lists only the active ones (None: no steps query to read them with)."""
        if view.steps_complete:
            return view.steps
        if self.read_steps is None:
            return None
        found: list[StepView] = []
        while True:
            page = await self.read_steps(StepsQuery(offset=len(found), limit=PAGE))
            found += page.steps
            if not page.steps or len(found) >= page.total:
                return found

    async def resync(self) -> None:
        """The workflow dropped changes the feed did not see: read the status and every
        step, and journal what differs."""
        view = await self.fetch()
        self.status_read_at = time.monotonic()
        self.observe(view, await self.every_step(view))

    async def closed_since(self) -> None:
        """The workflow closed since the last read: the status (the store's, for an ended
        plan) lists its newest numbered changes (``recent``); when they reach back to the
        last one journaled, they are journaled as the changes query would have given
        them, else the feed resyncs from every step."""
        view = await self.fetch()
        self.status_read_at = time.monotonic()
        missed = [c for c in view.recent if c.seq > self.change_seq]
        if view.seq > self.change_seq and (not missed or missed[0].seq != self.change_seq + 1):
            self.observe(view, await self.every_step(view))  # more changed than it lists
            return
        self.apply(
            ChangesView(
                plan_id=view.plan_id,
                status=view.status,
                seq=view.seq,
                complete=True,
                changes=missed,
            )
        )
        self._observe_plan(view, final=True)  # every step change is journaled already

    async def poll_changes(self) -> None:
        assert self.read_changes is not None
        before = self.seq
        try:
            while True:
                try:
                    cv = await self.read_changes(self.change_seq)
                except PlanClosed:
                    # the workflow closed since the last read: its end is in the store
                    await self.closed_since()
                    return
                if not cv.complete:
                    await self.resync()
                    return
                applied, person = self.apply(cv)
                if len(cv.changes) < PAGE:  # else: more changes wait for the next read
                    break
            if self.seq != before:
                # watchers get the step changes now, not after the status read below
                self._notify()
                before = self.seq
            now = time.monotonic()
            status_changed = cv.status != self.current.status
            if (
                status_changed
                or person
                or cv.status.terminal
                or (applied and now - self.status_read_at >= STATUS_REFRESH_S)
            ):
                view = await self.fetch()
                self.status_read_at = now
                # The changes answer is the moment of truth for the end: its changes
                # are all journaled; a status read later may be newer than them.
                self._observe_plan(view, final=cv.status.terminal)
            elif applied:
                self._observe_plan(
                    self.current.model_copy(update={"progress": self._progress()}), final=False
                )
        finally:
            if self.seq != before:
                self._notify()

    async def read_once(self) -> None:
        self.polls += 1
        if self.mode == "changes":
            try:
                await self.poll_changes()
                return
            except QueryUnsupported:
                self.mode = "status"  # an older worker: compare status answers instead
        self.observe(await self.fetch())

    # --- the poller --------------------------------------------------------------

    async def run(self) -> None:
        cfg = self.hub.config
        failing_since: float | None = None
        read_at = time.monotonic()
        try:
            while True:
                # one read every sse_poll_s, start to start: a slow read (a busy worker)
                # does not add its own time to the next wait
                wait = cfg.sse_poll_s - (time.monotonic() - read_at)
                await asyncio.sleep(
                    max(cfg.sse_poll_s / 5, wait) if not self.closed else min(cfg.sse_linger_s, 1.0)
                )
                read_at = time.monotonic()
                if self.subscribers == 0 and time.monotonic() - self.idle_since >= cfg.sse_linger_s:
                    return
                if self.closed:
                    continue
                try:
                    await self.read_once()
                except (ApiError, PlanClientError) as exc:
                    e = api_error_of(exc)
                    now = time.monotonic()
                    failing_since = failing_since or now
                    if e.status == 404 or now - failing_since >= cfg.sse_give_up_s:
                        self.fail(e.detail)
                    continue
                except Exception as e:  # never let the poller die silently
                    log.exception("event feed of plan %s: reading it failed", self.plan_id)
                    self.fail(f"the plan's status could not be read: {type(e).__name__}")
                    continue
                failing_since = None
        finally:
            self.hub.drop(self)

    # --- watchers ----------------------------------------------------------------

    def resume_point(self, last_event_id: str | None) -> int | None:
        """The sequence number to continue after, or None for a snapshot."""
        if not last_event_id:
            return None
        epoch, _, raw = last_event_id.strip().partition(":")
        if epoch != self.epoch or not raw.isdigit():
            return None
        last = int(raw)
        oldest = self.journal[0].seq if self.journal else self.seq + 1
        if last > self.seq or last < oldest - 1:
            return None
        return last

    def finished_for(self, last_event_id: str | None) -> bool:
        """The watcher already saw the final event: nothing more will ever come."""
        after = self.resume_point(last_event_id)
        return self.final is not None and after is not None and after >= self.final.seq

    def snapshot(self) -> list[Sent]:
        """The plan and every step as the feed knows them, with the id of its head."""
        head = self.event_id(self.seq)
        view = self.current
        out: list[Sent] = [(head, "plan", plan_event(view))]
        out += [(head, "step", step_event(view.plan_id, s)) for s in self.known.values()]
        return out

    def _resync(self, reason: str) -> Sent:
        data = ResyncEvent(plan_id=self.plan_id, reason=reason, observed_at=_now())
        return (self.event_id(self.seq), "resync", data.model_dump(mode="json"))

    async def stream(self, last_event_id: str | None) -> AsyncIterator[bytes]:
        """The events as ``text/event-stream`` (a comment line for each silence)."""
        yield f"retry: {self.hub.config.sse_retry_ms}\n\n".encode()
        async for batch in self.events(last_event_id):
            yield b"".join(encode(*e) for e in batch) if batch else b": ping\n\n"

    async def events(self, last_event_id: str | None) -> AsyncGenerator[list[Sent], None]:
        """The watcher's events, in batches (every event waiting is one batch: a fast
        plan makes many); an empty batch after ``sse_ping_s`` of silence. Counts as a
        watcher of the feed from the first step to the end."""
        cfg = self.hub.config
        self.subscribers += 1
        try:
            after = self.resume_point(last_event_id)
            if after is None:
                first: list[Sent] = []
                if last_event_id and last_event_id.strip().startswith(f"{self.epoch}:"):
                    # this feed's id, but its journal moved on (an id of another process
                    # or an earlier feed gets the snapshot alone, as a new watcher)
                    first.append(self._resync("the events after Last-Event-ID are no longer held"))
                after = self.seq  # the snapshot's point: what follows it comes after
                final = self.final
                first += self.snapshot()
                if final is not None:
                    first.append((self.event_id(final.seq), final.kind, final.data))
                yield first
                if final is not None:
                    return
            while True:
                # taken before reading the journal: events appended while this watcher's
                # batch is being sent set it, so they are not left waiting for the next
                wake = self._wake
                if self.journal and self.journal[0].seq > after + 1:
                    # this watcher fell behind what the journal holds: start it afresh
                    after, final = self.seq, self.final
                    again = [self._resync("the watcher fell behind the journal"), *self.snapshot()]
                    if final is not None:
                        yield [*again, (self.event_id(final.seq), final.kind, final.data)]
                        return
                    yield again
                batch: list[Sent] = []
                for ev in [e for e in self.journal if e.seq > after]:
                    batch.append((self.event_id(ev.seq), ev.kind, ev.data))
                    after = ev.seq
                    if ev.kind in ("end", "error"):
                        yield batch
                        return
                if batch:
                    yield batch
                if self.closed and self.final is not None and after >= self.final.seq:
                    return
                try:
                    await asyncio.wait_for(wake.wait(), timeout=cfg.sse_ping_s)
                except TimeoutError:
                    yield []
                if self.hub.closing:
                    return
        finally:
            self.hub.release(self)


class _Gate:
    """One plan id's lock, and how many openers hold it or wait for it."""

    __slots__ = ("lock", "users")

    def __init__(self) -> None:
        self.lock = asyncio.Lock()
        self.users = 0


class EventHub:
    """The feeds of one process, keyed by plan id.

    Openers of one plan id take turns (one first read makes its feed); the lock of a plan
    id exists only while someone holds or waits for it, so ids that never became a feed
    (unknown plans, probes) leave nothing behind.
    """

    def __init__(self, config: ApiSettings):
        self.config = config
        self.feeds: dict[str, Feed] = {}
        self._locks: dict[str, _Gate] = {}
        self.closing = False

    @contextlib.asynccontextmanager
    async def _turn(self, plan_id: str) -> AsyncIterator[None]:
        gate = self._locks.get(plan_id)
        if gate is None:
            gate = self._locks[plan_id] = _Gate()
        gate.users += 1
        try:
            async with gate.lock:
                yield
        finally:
            gate.users -= 1
            if gate.users == 0 and self._locks.get(plan_id) is gate:
                del self._locks[plan_id]

    async def open(
        self,
        plan_id: str,
        fetch: Fetch,
        changes: Changes | None = None,
        steps: Steps | None = None,
    ) -> Feed:
        """The plan's feed, made (with a first read that may raise ApiError or a
        PlanClientError) if needed.

        Opening does not count as watching: :meth:`Feed.stream` does, from its first step
        to its end, so a response that never starts streaming leaves nothing behind.
        """
        async with self._turn(plan_id):
            feed = self.feeds.get(plan_id)
            if feed is not None and feed.final is not None and feed.final.kind == "error":
                # It gave up reading the plan: try afresh rather than repeat the old error.
                self.drop(feed)
                if feed.task is not None:
                    feed.task.cancel()
                feed = None
            first: StatusView | None = None
            if feed is not None and feed.closed:
                # An ended plan may have been resumed (a new run of the same workflow).
                first = await fetch()
                if first.status.terminal and first.created_at == feed.current.created_at:
                    first = None
                else:
                    self.drop(feed)
                    if feed.task is not None:
                        feed.task.cancel()
                    feed = None
            if feed is None:
                first = first or await fetch()
                feed = Feed(self, plan_id, fetch, first, changes=changes, steps=steps)
                if not first.steps_complete:
                    every = await feed.every_step(first)
                    if every is not None:
                        feed.known = {s.id: s for s in every}
                self.feeds[plan_id] = feed
                # its polls join no watcher's trace (api/telemetry.py)
                feed.task = asyncio.create_task(
                    feed.run(), name=f"events:{plan_id}", context=untraced()
                )
            feed.idle_since = time.monotonic()
            return feed

    def release(self, feed: Feed) -> None:
        feed.subscribers = max(0, feed.subscribers - 1)
        if feed.subscribers == 0:
            feed.idle_since = time.monotonic()

    def drop(self, feed: Feed) -> None:
        if self.feeds.get(feed.plan_id) is feed:
            del self.feeds[feed.plan_id]

    async def close(self) -> None:
        """Stop every poller and end every stream (at shutdown)."""
        self.closing = True
        tasks = [f.task for f in self.feeds.values() if f.task is not None]
        for f in list(self.feeds.values()):
            f._notify()
        for t in tasks:
            t.cancel()
        for t in tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await t

"""Persistence activities: the workflow's state into the store, large outputs out of
workflow history.

* ``record_snapshot`` (activity, :class:`SnapshotActivities`): writes a
  :class:`contracts.snapshots.PlanSnapshot` through :func:`store.recording.record_snapshot`.
  Idempotent, so Temporal may retry it freely and snapshots may arrive twice or out of
  order. When the snapshot's events made webhook deliveries (in the same transaction), it
  wakes the webhook dispatcher (:func:`activities.webhooks.kick_dispatcher`).
* :func:`store_output` / :func:`load_output` / :func:`offload_output` (plain functions,
  for use *inside* activities such as ``execute_step``): an output bigger than the limit
  (``large_output_bytes`` in settings, default 256 KiB) is kept in the store's ``blobs``
  table and only an :class:`contracts.snapshots.OutputRef` goes back to the workflow. They
  are not activities on purpose: an activity's input and result are recorded in history,
  which is what a large output must stay out of.
* :func:`offload_after_effect`: :func:`offload_output` for an output whose tool already
  ran. The store write is retried on its own, with backoff, inside the activity (which
  keeps heartbeating); if the store still refuses it, :class:`OutputNotStored` is raised
  and the step fails *without* a retry, because retrying the activity would run the tool
  -- and its effect, say a ``POST`` -- again. Keeping the result for a later attempt is
  not an option: a large output cannot travel in heartbeat details or history, and a
  worker's memory does not survive the worker.

Every function here takes the store's engine (the worker's, :class:`ActivityDeps`); the
schema is migrated on first use in the process (:func:`store.db.ensure_migrated`, safe
with several processes).
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

from sqlalchemy.engine import Engine
from temporalio import activity

from activities.deps import ActivityDeps
from contracts.snapshots import (
    PREVIEW_CHARS,
    RECORD_SNAPSHOT,
    OutputRef,
    PlanSnapshot,
    RecordResult,
    as_output_ref,
)
from store import blobs, recording
from store.db import ensure_migrated, session_scope

__all__ = [
    "RECORD_SNAPSHOT",
    "OutputNotStored",
    "SnapshotActivities",
    "load_output",
    "offload_after_effect",
    "offload_output",
    "resolve_refs",
    "store_output",
    "write_snapshot",
]

logger = logging.getLogger(__name__)
T = TypeVar("T")

# How a large output's store write is retried after its tool ran (module constants, so a
# test can make them short): up to STORE_TRIES tries, waiting STORE_FIRST_DELAY_S, then
# twice as long each time up to STORE_MAX_DELAY_S, and never past the activity's deadline.
STORE_TRIES = 6
STORE_FIRST_DELAY_S = 0.5
STORE_MAX_DELAY_S = 8.0
# Tries of record_snapshot whose wake-up call to the webhook dispatcher failed before it
# gives the wake-up up (the snapshot itself is written on the first).
KICK_TRIES = 3


# The worker's own threads for store writes: a hung database (connections open, nothing
# answered) holds at most these, never the event loop's default executor that the other
# activities use. A call waiting for a free one is bounded by its activity's timeout.
STORE_THREADS = 8
_store_threads = ThreadPoolExecutor(max_workers=STORE_THREADS, thread_name_prefix="store-write")


async def in_store_thread(fn: Callable[..., T], *args: Any) -> T:
    """``fn(*args)`` (blocking, talks to the store) on one of the worker's store threads."""
    return await asyncio.get_running_loop().run_in_executor(_store_threads, fn, *args)


# --- snapshots ------------------------------------------------------------------------


def write_snapshot(snapshot: PlanSnapshot, engine: Engine) -> RecordResult:
    """Write one snapshot in its own transaction (blocking)."""
    with session_scope(ensure_migrated(engine), write=True) as session:
        return recording.record_snapshot(session, snapshot)


class SnapshotActivities:
    """``record_snapshot``, writing to the store of ``deps``."""

    def __init__(self, deps: ActivityDeps):
        self.deps = deps

    @activity.defn(name=RECORD_SNAPSHOT)
    async def record_snapshot(self, snapshot: PlanSnapshot) -> RecordResult:
        """Write a plan run's snapshot to the store (idempotent; retry freely)."""
        if snapshot.logs_lost or snapshot.audit_lost:
            activity.logger.warning(
                "plan %s run %s: %d log and %d audit entries left the workflow's bounded "
                "lists before they were sent to the store (snapshots are too far apart)",
                snapshot.plan_id,
                snapshot.run_id,
                snapshot.logs_lost,
                snapshot.audit_lost,
            )
        result = await in_store_thread(write_snapshot, snapshot, self.deps.engine)
        if result.deliveries:
            # webhook deliveries wait in the store (written with the snapshot): wake the
            # dispatcher. If that fails the activity is retried, which writes nothing new
            # and wakes it again. The plan never waits for a delivery itself.
            from activities.webhooks import kick_dispatcher

            try:
                await kick_dispatcher(
                    activity.client(), activity.info().task_queue, f"plan {snapshot.plan_id}"
                )
            except Exception as e:
                if activity.info().attempt < KICK_TRIES:
                    raise
                # never hold the plan longer: the deliveries wait in the store for the
                # next kick (another snapshot, a worker's start, a redeliver)
                activity.logger.warning(
                    "plan %s: could not wake the webhook dispatcher (%s: %s); its "
                    "deliveries wait in the store",
                    snapshot.plan_id,
                    type(e).__name__,
                    e,
                )
        return result


# --- large outputs --------------------------------------------------------------------


def _encode(output: Any) -> bytes:
    return json.dumps(output, ensure_ascii=False, separators=(",", ":"), default=str).encode()


def fits_inline(output: Any, limit: int) -> bool:
    """Whether :func:`offload_output` would return ``output`` itself (no store write)."""
    return output is None or len(_encode(output)) <= limit


def store_output(
    plan_id: str,
    run_id: str | None,
    step_id: str,
    output: Any,
    engine: Engine,
) -> OutputRef:
    """Keep ``output`` (as JSON) in the store and return the reference to it (blocking).

    The key is ``out/<plan>/<run>/<step>/<sha256>``: the same output stored again (a
    retried attempt) lands on the same row.
    """
    data = _encode(output)
    digest = hashlib.sha256(data).hexdigest()
    key = f"out/{plan_id}/{run_id or '-'}/{step_id}/{digest}"
    with session_scope(ensure_migrated(engine), write=True) as session:
        blob = blobs.put_blob(session, data, key=key)
    text = data[: PREVIEW_CHARS * 4].decode(errors="ignore")[:PREVIEW_CHARS]
    return OutputRef(
        output_ref=blob.key,
        size=blob.size,
        sha256=blob.sha256,
        preview=text + (f"... [truncated, {len(data)} bytes]" if len(data) > len(text) else ""),
    )


def load_output(ref: OutputRef | dict[str, Any], engine: Engine) -> Any:
    """The output an :class:`OutputRef` (or its dict) stands for (blocking)."""
    found = as_output_ref(ref)
    if found is None:
        raise ValueError("not an output reference")
    with session_scope(ensure_migrated(engine)) as session:
        data = blobs.get_blob(session, found.output_ref)
    if data is None:
        raise LookupError(f"output {found.output_ref!r} is not in the store")
    return json.loads(data)


def offload_output(
    plan_id: str,
    run_id: str | None,
    step_id: str,
    output: Any,
    limit: int,
    engine: Engine,
) -> Any:
    """``output`` itself when its JSON is at most ``limit`` bytes (``large_output_bytes``
    in settings), else the dict of an :class:`OutputRef` to it (blocking).

    Call it on a step's output before returning it from the activity."""
    if fits_inline(output, limit):
        return output
    return store_output(plan_id, run_id, step_id, output, engine).model_dump()


class OutputNotStored(Exception):
    """A step's output could not be stored after its tool ran (the store kept failing)."""


async def offload_after_effect(
    plan_id: str,
    run_id: str | None,
    step_id: str,
    output: Any,
    limit: int,
    engine: Engine,
    deadline: float | None = None,
) -> Any:
    """:func:`offload_output`, retried on its own: the tool already ran, so only the store
    write is tried again (up to :data:`STORE_TRIES` times with backoff, and not past
    ``deadline``, a :func:`time.monotonic` instant). Raises :class:`OutputNotStored`
    naming the last error when every try failed. The blob key is the output's digest, so
    a write that did land before an error is simply found again."""
    delay = STORE_FIRST_DELAY_S
    tries = 0
    while True:
        tries += 1
        try:
            return await in_store_thread(
                offload_output, plan_id, run_id, step_id, output, limit, engine
            )
        except Exception as e:  # the store is down, locked, full...: only this is retried
            last = f"{type(e).__name__}: {e}"
        late = deadline is not None and time.monotonic() + delay > deadline
        if tries >= STORE_TRIES or late:
            size = len(_encode(output))
            raise OutputNotStored(
                f"the output ({size} bytes) could not be stored after {tries} "
                f"tr{'y' if tries == 1 else 'ies'}: {last}"
            ) from None
        logger.warning(
            "plan %s step %s: storing the output failed (try %d of %d, next in %.1fs): %s",
            plan_id,
            step_id,
            tries,
            STORE_TRIES,
            delay,
            last,
        )
        await asyncio.sleep(delay)
        delay = min(delay * 2, STORE_MAX_DELAY_S)


def resolve_refs(value: Any, engine: Engine) -> Any:
    """``value`` with every output reference in it (at any depth) replaced by the output:
    for an activity whose params were rendered from an offloaded output (blocking)."""
    if as_output_ref(value) is not None:
        return load_output(value, engine)
    if isinstance(value, dict):
        return {k: resolve_refs(v, engine) for k, v in value.items()}
    if isinstance(value, list):
        return [resolve_refs(v, engine) for v in value]
    return value

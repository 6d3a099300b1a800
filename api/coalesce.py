"""Single flight: concurrent callers of one key share one call in progress.

Many watchers polling ``GET /api/plans/{id}/status`` of one plan at once cause one
``status`` query to the workflow, not one each: the first caller's query is awaited by
the others, and its answer (or error) is theirs. A call that finished is not cached: the
next caller asks again.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Hashable
from typing import Any, Generic, TypeVar

T = TypeVar("T")


class SingleFlight(Generic[T]):
    def __init__(self) -> None:
        self._calls: dict[Hashable, asyncio.Future[T]] = {}
        self.calls = 0  # calls made
        self.shared = 0  # callers that joined a call in progress rather than make one

    async def run(self, key: Hashable, call: Callable[[], Awaitable[T]]) -> T:
        pending = self._calls.get(key)
        if pending is not None:
            self.shared += 1
            # shield: one waiter cancelled (a client gone) does not cancel the others' call
            return await asyncio.shield(pending)
        self.calls += 1
        task: asyncio.Future[T] = asyncio.ensure_future(call())
        self._calls[key] = task

        def forget(_: Any) -> None:
            if self._calls.get(key) is task:
                del self._calls[key]
            if not task.cancelled():
                task.exception()  # retrieved: no "never retrieved" warning when nobody waits

        task.add_done_callback(forget)
        return await asyncio.shield(task)

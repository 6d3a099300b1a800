"""Plans created with ``POST /api/plans`` and not executed yet.

For now they live in this process's memory (:class:`MemoryDrafts`): a draft is lost when
the API restarts, and several API processes do not share drafts. The store being built
(``store/``) will provide a durable :class:`DraftStore`; the routes only use this
protocol, so swapping it is one line in ``api/app.py``. Once a draft is executed its
document lives in its workflow (the ``plan`` query) and the draft is removed.
"""

from __future__ import annotations

import asyncio
from datetime import datetime
from typing import Protocol

from pydantic import BaseModel

from plans.models import Plan


class Draft(BaseModel):
    plan: Plan
    created_at: datetime
    created_by: str


class DraftExists(Exception):
    """A different document already has this plan id."""


class DraftsFull(Exception):
    """The in-memory store reached its size limit."""


class DraftStore(Protocol):
    async def add(self, draft: Draft) -> tuple[Draft, bool]:
        """Store ``draft``; returns (stored draft, created). Adding the very same document
        again is not an error (returns the first one, created=False); a different
        document under the same id raises :class:`DraftExists`."""
        ...

    async def get(self, plan_id: str) -> Draft | None: ...

    async def list(self) -> list[Draft]: ...

    async def remove(self, plan_id: str) -> None: ...


class MemoryDrafts:
    """Drafts in a dict, bounded (a full store refuses new drafts rather than drop any)."""

    def __init__(self, max_drafts: int = 10_000):
        self._drafts: dict[str, Draft] = {}
        self._max = max_drafts
        self._lock = asyncio.Lock()

    async def add(self, draft: Draft) -> tuple[Draft, bool]:
        plan_id = draft.plan.id or ""
        async with self._lock:
            existing = self._drafts.get(plan_id)
            if existing is not None:
                if existing.plan.digest() == draft.plan.digest():
                    return existing, False
                raise DraftExists(plan_id)
            if len(self._drafts) >= self._max:
                raise DraftsFull(f"{len(self._drafts)} plans wait to be executed")
            self._drafts[plan_id] = draft
            return draft, True

    async def get(self, plan_id: str) -> Draft | None:
        return self._drafts.get(plan_id)

    async def list(self) -> list[Draft]:
        return sorted(self._drafts.values(), key=lambda d: d.created_at, reverse=True)

    async def remove(self, plan_id: str) -> None:
        self._drafts.pop(plan_id, None)

"""Plans created with ``POST /api/plans`` and not executed yet, kept in the store.

A draft is a plan row of status ``draft`` that no run was started for, with its document
as version 1 (:func:`store.drafts.save_plan`); it survives an API restart and every
API process on the same ``DATABASE_URL`` sees it. Once a draft is executed its workflow
owns it (the ``plan`` query, and the store through the workflow's snapshots): ``remove``
marks the row as executed (``last_run_id = ""`` until the run's first snapshot names the
run), so the routes stop treating it as a draft at once. The routes only use the
:class:`DraftStore` protocol.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any, Protocol, TypeVar

import sqlalchemy as sa
from pydantic import BaseModel
from sqlalchemy.engine import Engine
from sqlmodel import Session

from api.errors import conflict, unavailable
from api.store_reads import StoreBusy, StorePool
from plans.controls import ApproveInput, ControlResult
from plans.models import Plan, PlanStatus
from plans.run_state import Approval, PlanRun, new_run
from store.db import ensure_migrated, session_scope
from store.drafts import save_plan
from store.models import PlanRecord, PlanVersionRecord

# A plan row not executed yet: a draft, or a draft a person approved.
DRAFT_STATUSES = (PlanStatus.DRAFT.value, PlanStatus.APPROVED.value)

T = TypeVar("T")

# last_run_id of a draft that was executed but whose run has not written a snapshot yet.
EXECUTED = ""


class Draft(BaseModel):
    plan: Plan
    created_at: datetime
    created_by: str
    # a person approved the draft before it ran: bound to the digest they saw
    approval: Approval | None = None


class DraftExists(Exception):
    """A different document (or an executed plan) already has this plan id."""


class DraftStore(Protocol):
    async def add(self, draft: Draft) -> tuple[Draft, bool]:
        """Store ``draft``; returns (stored draft, created). Adding the very same document
        again is not an error (returns the first one, created=False); a different
        document under the same id raises :class:`DraftExists`."""
        ...

    async def get(self, plan_id: str) -> Draft | None: ...

    async def list(self) -> list[Draft]: ...

    async def remove(self, plan_id: str) -> None: ...

    async def approve(self, plan_id: str, approval: Approval) -> Draft | None:
        """Record a person's approval of the draft (None: not a draft any more); the first
        approval stands, a second one raises :class:`DraftAlreadyApproved`."""
        ...


class DraftAlreadyApproved(Exception):
    def __init__(self, approval: Approval):
        super().__init__(f"already approved by {approval.by}")
        self.approval = approval


def _draft(session: Session, plan_id: str) -> Draft | None:
    record = session.get(PlanRecord, plan_id)
    if record is None or record.status not in DRAFT_STATUSES or record.last_run_id is not None:
        return None
    version = session.get(PlanVersionRecord, (plan_id, 1))
    if version is None or version.document is None:
        return None
    return Draft(
        plan=Plan.model_validate(version.document),
        created_at=record.created_at,
        created_by=version.by,
        approval=Approval.model_validate(record.draft_approval) if record.draft_approval else None,
    )


class StoreDrafts:
    """Drafts in the store (see the module docstring); each call runs on one of the API's
    store threads (:class:`api.store_reads.StorePool`), bounded by ``timeout_s``."""

    def __init__(self, engine: Engine, pool: StorePool | None = None, timeout_s: float = 10.0):
        self.engine = engine
        self.pool = pool or StorePool()
        self.timeout_s = timeout_s

    async def _in_thread(self, fn: Callable[..., T], *args: Any) -> T:
        """``fn(*args)`` on a store thread; a database that cannot be used, does not
        answer in time or holds every store thread is a 503 that names only the error's
        type (its message may carry the database's address)."""
        try:
            return await self.pool.call(fn, *args, timeout_s=self.timeout_s)
        except StoreBusy:
            raise unavailable(
                "the database is not answering (every store thread waits for it)"
            ) from None
        except TimeoutError:
            raise unavailable(f"the database did not answer within {self.timeout_s:g}s") from None
        except sa.exc.SQLAlchemyError as e:
            raise unavailable(f"the database cannot be used: {type(e).__name__}") from None

    def _add(self, draft: Draft) -> tuple[Draft, bool]:
        plan_id = draft.plan.id or ""
        ensure_migrated(self.engine)
        with session_scope(self.engine, write=True) as session:
            _, created = save_plan(session, draft.plan, at=draft.created_at, by=draft.created_by)
            if created:
                return draft, True
            existing = _draft(session, plan_id)
        if existing is None or existing.plan.digest() != draft.plan.digest():
            raise DraftExists(plan_id)
        return existing, False

    def _get(self, plan_id: str) -> Draft | None:
        ensure_migrated(self.engine)
        with session_scope(self.engine) as session:
            return _draft(session, plan_id)

    def _list(self) -> list[Draft]:
        ensure_migrated(self.engine)
        with session_scope(self.engine) as session:
            rows = session.execute(
                sa.select(PlanRecord.id)  # type: ignore[call-overload]
                .where(PlanRecord.status.in_(DRAFT_STATUSES))  # type: ignore[attr-defined]
                .where(PlanRecord.last_run_id.is_(None))  # type: ignore[union-attr]
            ).all()
            drafts = [d for (pid,) in rows if (d := _draft(session, pid)) is not None]
        return sorted(drafts, key=lambda d: d.created_at, reverse=True)

    def _remove(self, plan_id: str) -> None:
        ensure_migrated(self.engine)
        with session_scope(self.engine, write=True) as session:
            session.execute(
                sa.update(PlanRecord)
                .where(
                    PlanRecord.id == plan_id,  # type: ignore[arg-type]
                    PlanRecord.last_run_id.is_(None),  # type: ignore[union-attr]
                )
                .values(last_run_id=EXECUTED)
            )

    def _approve(self, plan_id: str, approval: Approval) -> Draft | None:
        ensure_migrated(self.engine)
        with session_scope(self.engine, write=True) as session:
            draft = _draft(session, plan_id)
            if draft is None:
                return None
            if draft.approval is not None:
                raise DraftAlreadyApproved(draft.approval)
            record = session.get(PlanRecord, plan_id)
            assert record is not None
            record.draft_approval = approval.model_dump(mode="json")
            record.status = PlanStatus.APPROVED.value
            session.add(record)
            return draft.model_copy(update={"approval": approval})

    async def add(self, draft: Draft) -> tuple[Draft, bool]:
        return await self._in_thread(self._add, draft)

    async def approve(self, plan_id: str, approval: Approval) -> Draft | None:
        return await self._in_thread(self._approve, plan_id, approval)

    async def get(self, plan_id: str) -> Draft | None:
        return await self._in_thread(self._get, plan_id)

    async def list(self) -> list[Draft]:
        return await self._in_thread(self._list)

    async def remove(self, plan_id: str) -> None:
        await self._in_thread(self._remove, plan_id)


async def draft_run(drafts: DraftStore, plan_id: str) -> PlanRun | None:
    """A draft's state as a fresh run would have it (status ``draft``, nothing ran)."""
    draft = await drafts.get(plan_id)
    if draft is None:
        return None
    run = new_run(draft.plan, draft.created_at)
    run.versions[0].by = draft.plan.agent_id or draft.created_by
    run.approval = draft.approval
    return run


async def refuse_draft(drafts: DraftStore, plan_id: str, what: str) -> None:
    """409 when ``plan_id`` is a draft: ``what`` needs its workflow."""
    if await drafts.get(plan_id) is not None:
        raise conflict(
            f"{what} refused: plan {plan_id} is a draft that was not executed yet; "
            f"POST /api/plans/{plan_id}/execute first",
            code="not_executed",
        )


async def approve_draft(
    drafts: DraftStore, plan_id: str, arg: dict[str, Any]
) -> ControlResult | None:
    """``approve`` sent to a draft: a person approves the plan before it runs, bound to the
    version and digest they saw (a stale ``version`` or ``digest`` is a 409). Executing it
    then runs it without asking again, unless the document changed. None: not a draft."""
    draft = await drafts.get(plan_id)
    if draft is None:
        return None
    msg = ApproveInput.model_validate(arg)
    from api.limits import off_loop

    digest = await off_loop(draft.plan.digest)  # grows with the plan
    if msg.version is not None and msg.version != 1:
        raise conflict(
            f"approve refused: stale approval for version {msg.version}; the plan is at version 1",
            code="stale",
        )
    if msg.digest is not None and msg.digest != digest:
        raise conflict(
            f"approve refused: digest {msg.digest} does not match the current plan ({digest})",
            code="stale",
        )
    approval = Approval(
        by=msg.by, at=datetime.now(UTC), comment=msg.comment, version=1, digest=digest
    )
    try:
        approved = await drafts.approve(plan_id, approval)
    except DraftAlreadyApproved as e:
        raise conflict(
            f"approve refused: the plan was already approved by {e.approval.by}",
            code="already_approved",
        ) from None
    if approved is None:
        return None  # executed meanwhile: its workflow decides
    return ControlResult(
        control="approve",
        status=PlanStatus.APPROVED.value,
        version=1,
        detail=f"plan approved at version 1 (digest {digest}) before it runs; "
        f"POST /api/plans/{plan_id}/execute runs it without asking again",
    )

"""Large step outputs, kept in the ``blobs`` table and passed through workflow history by
reference only. A key is written once and never changes."""

from __future__ import annotations

import hashlib
from datetime import UTC, datetime

import sqlalchemy as sa
from sqlmodel import Session

from store.models import BlobRecord, BlobRecordPublic
from store.upsert import insert


class BlobMismatch(ValueError):
    """A blob key already holds different bytes (keys are immutable)."""


def put_blob(
    session: Session, data: bytes, key: str | None = None, media_type: str = "application/json"
) -> BlobRecordPublic:
    """Keep ``data`` under ``key`` (default ``sha256:<hex>``), once; the same bytes again
    are a no-op, other bytes under an existing key raise :class:`BlobMismatch`."""
    digest = hashlib.sha256(data).hexdigest()
    key = key or f"sha256:{digest}"
    now = datetime.now(UTC)
    session.execute(
        insert(session, BlobRecord)
        .values(
            key=key, size=len(data), sha256=digest, media_type=media_type, created_at=now, data=data
        )
        .on_conflict_do_nothing(index_elements=["key"])
    )
    blobs = BlobRecord.__table__.c  # type: ignore[attr-defined]
    row = session.execute(
        sa.select(blobs.key, blobs.size, blobs.sha256, blobs.media_type, blobs.created_at).where(
            blobs.key == key
        )
    ).one()
    if row.sha256 != digest:
        raise BlobMismatch(f"blob {key!r} already holds other data")
    return BlobRecordPublic.model_validate(row._mapping)


def get_blob(session: Session, key: str) -> bytes | None:
    """The bytes kept under ``key``, checked against their digest; None if unknown."""
    blob = session.get(BlobRecord, key)
    if blob is None:
        return None
    if hashlib.sha256(blob.data).hexdigest() != blob.sha256:
        raise BlobMismatch(f"blob {key!r} is corrupt (sha256 differs)")
    return bytes(blob.data)
